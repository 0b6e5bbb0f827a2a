#!/usr/bin/env bash
# Fan-out benchmark of hubcast and the servers users would otherwise pick, one after the other
# on this machine, plus two raw ceilings (TCP lines and quinn datagrams).
#
#   benches/peers/run.sh                         every peer
#   benches/peers/run.sh ws-hub pushpin          only these peers
#   SUBSCRIBERS=50 DURATION=2 benches/peers/run.sh   smoke run
#
# Peers: hubcast-ws hubcast-sse hubcast-h3sse hubcast-wt nats-ws ws-hub socketio pushpin
# raw-tcp raw-quinn. Each result goes to target/bench/peers/<peer>.json and each server's
# output to target/bench/peers/<server>.log (Pushpin's own logs to pushpin/log/ there).
#
# Environment:
#   SUBSCRIBERS        subscribers of the one topic (default 10000)
#   DURATION           seconds of each publishing phase (default 10)
#   QUINN_CONNECTIONS  client connections of the raw quinn echo (default 100)
#
# Ports, all on 127.0.0.1 (the system NATS on 4222 and other system services are left alone):
#   hubcast         18080 TCP (WebSocket, SSE, publish API), 18443 UDP (HTTP/3, WebTransport)
#   ws-hub          18100
#   socketio        18200
#   nats-server     18300 NATS TCP (publisher), 18301 WebSocket (subscribers)
#   pushpin         18400 client HTTP, 18401 origin, 18402-18405 handler (18403 HTTP publish)
#   raw-tcp         18500
#   raw-quinn       18600 UDP (its client endpoint takes an ephemeral port)

set -euo pipefail

cd "$(dirname "$0")/../.."

SUBSCRIBERS=${SUBSCRIBERS:-10000}
DURATION=${DURATION:-10}
QUINN_CONNECTIONS=${QUINN_CONNECTIONS:-100}
SIZE=100

OUT=target/bench/peers
PEERS_DIR=benches/peers
LOAD=target/release/hubcast-load
ALL_PEERS=(hubcast-ws hubcast-sse hubcast-h3sse hubcast-wt nats-ws ws-hub socketio pushpin raw-tcp raw-quinn)

HUBCAST_HTTP=127.0.0.1:18080
HUBCAST_QUIC=127.0.0.1:18443
WS_HUB_PORT=18100
SOCKETIO_PORT=18200
NATS_PORT=18300
NATS_WS_PORT=18301
PUSHPIN_HTTP_PORT=18400
PUSHPIN_ORIGIN_PORT=18401
PUSHPIN_PUBLISH_PORT=18403
RAW_TCP_PORT=18500
RAW_QUINN_ADDR=127.0.0.1:18600

# Pushpin writes its pid files here (rundir in benches/peers/pushpin/pushpin.conf).
PUSHPIN_RUN_DIR=target/bench/peers/pushpin/run

die() {
    echo "run.sh: $*" >&2
    exit 1
}

require_count() {
    local name=$1 value=$2
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "invalid $name=$value: expected a positive integer"
}

require_count SUBSCRIBERS "$SUBSCRIBERS"
require_count DURATION "$DURATION"
require_count QUINN_CONNECTIONS "$QUINN_CONNECTIONS"

PEERS=("$@")
if [[ ${#PEERS[@]} -eq 0 ]]; then
    PEERS=("${ALL_PEERS[@]}")
fi
for peer in "${PEERS[@]}"; do
    [[ " ${ALL_PEERS[*]} " == *" $peer "* ]] || die "unknown peer $peer: expected one of ${ALL_PEERS[*]}"
done

wants() {
    [[ " ${PEERS[*]} " == *" $1 "* ]]
}

# Every subscriber uses a socket in the load generator and one in the server (Pushpin's
# condure and the Node peers alike), and children inherit this shell's limit. Common soft
# limits are 1024, far below 10,000 subscribers, while the hard limit usually allows far
# more, so the soft limit is raised to the hard one.
ulimit -n "$(ulimit -Hn)"
open_files=$(ulimit -n)
if [[ $open_files != unlimited ]] && ((open_files < SUBSCRIBERS + 1000)); then
    die "the open file limit is $open_files, too low for SUBSCRIBERS=$SUBSCRIBERS; raise the hard limit (ulimit -Hn) or lower SUBSCRIBERS"
fi

# --- Install what is missing --------------------------------------------------------------

apt_updated=false
apt_install() {
    if ! $apt_updated; then
        apt-get update
        apt_updated=true
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

if wants nats-ws && ! command -v nats-server >/dev/null; then
    apt_install nats-server
fi
if wants pushpin && ! command -v pushpin >/dev/null; then
    # Pushpin pulls in condure and zurl. Its package tries to start a system service on the
    # default ports 7999 and 5560-5563, which this benchmark does not use.
    apt_install pushpin
fi
if wants ws-hub || wants socketio || wants pushpin; then
    command -v node >/dev/null || die "node not found: install Node.js 20 or later"
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    ((node_major >= 20)) || die "node $(node --version) is too old: the peers need Node.js 20 or later"
    # A copy of the lock file that was installed marks node_modules as current.
    installed_lock=$PEERS_DIR/node_modules/.installed-package-lock.json
    if ! cmp -s "$PEERS_DIR/package-lock.json" "$installed_lock"; then
        (cd "$PEERS_DIR" && npm ci --no-audit --no-fund)
        cp "$PEERS_DIR/package-lock.json" "$installed_lock"
    fi
fi

cargo build --release --bin hubcast --bin hubcast-load --example peer-raw-tcp --example peer-raw-quinn

mkdir -p "$OUT"

# --- Starting and stopping servers -------------------------------------------------------

# Servers started by this script, which the EXIT trap stops.
STARTED_PIDS=()

# Starts a server in the background with its output in $OUT/NAME.log and sets SERVER_PID.
start() {
    local name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
    echo "run.sh: started $name (pid $SERVER_PID): $*"
}

# Stops a process by its pid: SIGTERM, then SIGKILL after 10 s.
stop() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: pid $pid did not exit within 10 s of SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

# Drops a stopped pid from STARTED_PIDS, so a later process that reuses it is left alone.
forget() {
    local kept=() pid
    for pid in "${STARTED_PIDS[@]}"; do
        [[ $pid == "$1" ]] || kept+=("$pid")
    done
    STARTED_PIDS=("${kept[@]}")
}

PUSHPIN_STARTED=false

# The Pushpin runner stops its condure, zurl, proxy and handler on SIGTERM; any of them still
# running after that is stopped by the pid in its pid file, if that pid still runs the
# program the file is named after.
stop_pushpin_children() {
    $PUSHPIN_STARTED || return 0
    local file name pid
    for file in "$PUSHPIN_RUN_DIR"/*.pid; do
        [[ -e $file ]] || continue
        name=$(basename "$file" .pid)
        pid=$(<"$file")
        rm -f "$file"
        [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "${name:0:15}" ]] || continue
        echo "run.sh: $name (pid $pid) outlived the Pushpin runner; stopping it" >&2
        kill -TERM "$pid" 2>/dev/null || true
    done
    PUSHPIN_STARTED=false
}

stop_all() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop "$pid"
    done
    STARTED_PIDS=()
    stop_pushpin_children
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_accepts() {
    (: <>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Fails when something already listens on a TCP port, so a stale server is never measured.
require_free() {
    local port
    for port in "$@"; do
        if port_accepts "$port"; then
            die "127.0.0.1:$port already accepts connections; stop the process listening there"
        fi
    done
}

# Waits up to 30 s until TCP port $2 accepts, failing early if process $1 exits.
wait_for_port() {
    local pid=$1 port=$2
    for _ in $(seq 300); do
        port_accepts "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "pid $pid exited before 127.0.0.1:$port accepted connections; see $OUT/*.log"
        sleep 0.1
    done
    die "127.0.0.1:$port did not accept connections within 30 s; see $OUT/*.log"
}

# --- Running the load ---------------------------------------------------------------------

FAILED=()

# Runs one fan-out: load TARGET SERVER PUBLISH PID [EXTRA_OPTIONS...]; PUBLISH may be "".
load() {
    local target=$1 server=$2 publish=$3 pid=$4
    shift 4
    local options=(fanout --target "$target" --server "$server")
    [[ -n $publish ]] && options+=(--publish "$publish")
    options+=(--subscribers "$SUBSCRIBERS" --size "$SIZE" --duration "$DURATION" --rate max)
    options+=(--pid "$pid" --json "$OUT/$target.json" "$@")
    rm -f "$OUT/$target.json"
    echo "run.sh: $LOAD ${options[*]}"
    # hubcast-load exits 0 for a peer that lost events, since losses are part of its result,
    # but records a failed run in the `failure` field.
    if ! "$LOAD" "${options[@]}" || grep -qsE '"failure": ?"' "$OUT/$target.json"; then
        echo "run.sh: $target failed; see the output above and $OUT/*.log" >&2
        FAILED+=("$target")
    fi
}

run_hubcast() {
    local targets=() target
    for target in hubcast-ws hubcast-sse hubcast-h3sse hubcast-wt; do
        wants "$target" && targets+=("$target")
    done
    [[ ${#targets[@]} -gt 0 ]] || return 0
    require_free "${HUBCAST_HTTP##*:}"
    # No hubcast option caps connections or subscribers of a topic. The per-connection
    # bounds (64 subscriptions, 256 queued messages) fit one topic per subscriber and a
    # publisher that hubcast-load keeps at most 32 events ahead, so the defaults stay.
    start hubcast target/release/hubcast --http-listen "$HUBCAST_HTTP" \
        --quic-listen "$HUBCAST_QUIC" --cert-dir "$OUT/hubcast-certs"
    local pid=$SERVER_PID
    # QUIC binds before TCP, so an accepting TCP port means both are up.
    wait_for_port "$pid" "${HUBCAST_HTTP##*:}"
    for target in "${targets[@]}"; do
        case $target in
            hubcast-ws | hubcast-sse) load "$target" "$HUBCAST_HTTP" "" "$pid" ;;
            hubcast-h3sse | hubcast-wt) load "$target" "$HUBCAST_QUIC" "$HUBCAST_HTTP" "$pid" ;;
        esac
    done
    stop "$pid"
}

run_nats() {
    require_free "$NATS_PORT" "$NATS_WS_PORT"
    start nats-ws nats-server -c "$PEERS_DIR/nats.conf"
    local pid=$SERVER_PID
    wait_for_port "$pid" "$NATS_PORT"
    wait_for_port "$pid" "$NATS_WS_PORT"
    load nats-ws "127.0.0.1:$NATS_WS_PORT" "127.0.0.1:$NATS_PORT" "$pid"
    stop "$pid"
}

run_node_peer() {
    local target=$1 script=$2 port=$3
    require_free "$port"
    start "$target" node "$PEERS_DIR/$script" --port "$port"
    local pid=$SERVER_PID
    wait_for_port "$pid" "$port"
    load "$target" "127.0.0.1:$port" "" "$pid"
    stop "$pid"
}

# Prints "name cpu_seconds rss_kib" for each Pushpin process, from /proc.
pushpin_usage() {
    local ticks file name pid
    ticks=$(getconf CLK_TCK)
    for file in "$PUSHPIN_RUN_DIR"/*.pid; do
        [[ -e $file ]] || continue
        name=$(basename "$file" .pid)
        pid=$(<"$file")
        [[ -r /proc/$pid/stat ]] || continue
        # utime and stime are fields 14 and 15; the name in field 2 has no spaces here.
        awk -v name="$name" -v ticks="$ticks" -v rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")" \
            '{ printf "%s %.3f %s\n", name, ($14 + $15) / ticks, rss }' "/proc/$pid/stat"
    done
}

run_pushpin() {
    require_free "$PUSHPIN_HTTP_PORT" "$PUSHPIN_ORIGIN_PORT" "$PUSHPIN_PUBLISH_PORT"
    start pushpin-origin node "$PEERS_DIR/pushpin-origin.mjs" --port "$PUSHPIN_ORIGIN_PORT"
    local origin=$SERVER_PID
    wait_for_port "$origin" "$PUSHPIN_ORIGIN_PORT"
    rm -f "$PUSHPIN_RUN_DIR"/*.pid
    start pushpin pushpin --config "$PEERS_DIR/pushpin/pushpin.conf"
    PUSHPIN_STARTED=true
    local runner=$SERVER_PID
    wait_for_port "$runner" "$PUSHPIN_HTTP_PORT"
    wait_for_port "$runner" "$PUSHPIN_PUBLISH_PORT"
    local handler
    handler=$(<"$PUSHPIN_RUN_DIR/pushpin-handler.pid")

    # The handler does the fan-out, but condure writes to the sockets and zurl and the
    # proxy serve each subscription, so every process's CPU time is recorded as well.
    local before
    before=$(pushpin_usage)
    # Pushpin's proxy returns 502 at once when more than 100 origin requests wait for zurl
    # (OUT_HWM in Pushpin 1.36's zhttpmanager.cpp, no setting), so subscribers connect 32 at
    # a time instead of hubcast-load's default 64.
    load pushpin "127.0.0.1:$PUSHPIN_HTTP_PORT" "127.0.0.1:$PUSHPIN_PUBLISH_PORT" "$handler" \
        --connect-concurrency 32
    local after
    after=$(pushpin_usage)
    join -j 1 <(sort <<<"$before") <(sort <<<"$after") | awk '
        BEGIN { printf "{" }
        { printf "%s\"%s\":{\"cpu_s\":%.3f,\"rss_kib\":%d}", (NR > 1 ? "," : ""), $1, $4 - $2, $5 }
        END { print "}" }' >"$OUT/pushpin-processes.json"

    stop "$runner"
    stop_pushpin_children
    stop "$origin"
}

run_raw_tcp() {
    require_free "$RAW_TCP_PORT"
    start raw-tcp target/release/examples/peer-raw-tcp --listen "127.0.0.1:$RAW_TCP_PORT"
    local pid=$SERVER_PID
    wait_for_port "$pid" "$RAW_TCP_PORT"
    load raw-tcp "127.0.0.1:$RAW_TCP_PORT" "" "$pid"
    stop "$pid"
}

run_raw_quinn() {
    local command=(target/release/examples/peer-raw-quinn --connections "$QUINN_CONNECTIONS"
        --size "$SIZE" --rate max --duration "$DURATION" --listen "$RAW_QUINN_ADDR")
    echo "run.sh: ${command[*]}"
    if ! "${command[@]}" >"$OUT/raw-quinn.json" 2>"$OUT/raw-quinn.log"; then
        cat "$OUT/raw-quinn.log" >&2
        FAILED+=(raw-quinn)
    fi
}

run_hubcast
wants nats-ws && run_nats
wants ws-hub && run_node_peer ws-hub ws-hub.mjs "$WS_HUB_PORT"
wants socketio && run_node_peer socketio socketio-hub.mjs "$SOCKETIO_PORT"
wants pushpin && run_pushpin
wants raw-tcp && run_raw_tcp
wants raw-quinn && run_raw_quinn

echo "run.sh: results in $OUT/"
if [[ ${#FAILED[@]} -gt 0 ]]; then
    die "failed: ${FAILED[*]}"
fi
