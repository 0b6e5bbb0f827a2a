#!/usr/bin/env bash
# Regenerates the measured tables of docs/benchmarks.md in one run on this machine:
#   1. the fan-out comparison with the peers (benches/peers/run.sh), hubcast included;
#   2. telemetry, idle connections and the connection storm against a release hubcast;
#   3. the hub micro-benchmarks (criterion);
#   4. `hubcast-load report`, which rewrites the tables between the report markers.
#
# Usage: benches/run.sh
# Scale with SUBSCRIBERS (fan-out, default 10000), DURATION (seconds per phase, default 10),
# IDLE_WS (default 100000), IDLE_WT (default 20000), PUBLISHERS (telemetry, default 1000).
# RUN_PEERS=0 keeps the fan-out results of an earlier run in target/bench/peers.
# A full run takes about 15 minutes on 2 cores. Results land in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
DURATION=${DURATION:-10}
IDLE_WS=${IDLE_WS:-100000}
IDLE_WT=${IDLE_WT:-20000}
PUBLISHERS=${PUBLISHERS:-1000}
RUN_PEERS=${RUN_PEERS:-1}
HTTP=127.0.0.1:18080
QUIC=127.0.0.1:18443

# Every connection takes a file descriptor in the load generator and, for TCP, one in the
# server, so both run with the hard limit.
ulimit -n "$(ulimit -Hn)"

if [[ $RUN_PEERS == 0 ]]; then
    find "$OUT" -maxdepth 1 -name '*.json' -delete 2>/dev/null || true
else
    rm -rf "$OUT"
fi
mkdir -p "$OUT"
# The same targets as benches/peers/run.sh builds, so neither build repeats the other.
cargo build --release --bin hubcast --bin hubcast-load --example peer-raw-tcp --example peer-raw-quinn

SERVER_PID=
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# Starts a fresh hubcast, so each scenario begins from an empty server.
start_server() {
    stop_server
    target/release/hubcast --http-listen "$HTTP" --quic-listen "$QUIC" \
        --cert-dir "$OUT/certs" --heartbeat 60 --idle-timeout 120 \
        >"$OUT/hubcast-$1.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "http://$HTTP/healthz" >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "hubcast did not start; see $OUT/hubcast-$1.log" >&2
    exit 1
}

load() {
    target/release/hubcast-load "$@" --pid "$SERVER_PID" >/dev/null
}

if [[ $RUN_PEERS != 0 ]]; then
    echo "== fan-out, hubcast and its peers side by side"
    # A peer that loses messages fails its run, which its result records and the report shows.
    if ! benches/peers/run.sh; then
        echo "some peer runs failed; the report marks them" >&2
    fi
fi
# hubcast must not lose an event, so its own failed runs stop the benchmark.
for result in "$OUT"/peers/hubcast-*.json; do
    if ! grep -q '"ok": true' "$result"; then
        echo "$result records a failed hubcast run" >&2
        exit 1
    fi
done

echo "== telemetry"
start_server telemetry
load_telemetry() {
    target/release/hubcast-load telemetry --server "$QUIC" --pid "$SERVER_PID" "$@" >/dev/null
}
load_telemetry --publishers "$PUBLISHERS" --subscribers 100 --rate 100 \
    --duration "$DURATION" --json "$OUT/telemetry-paced.json"
start_server telemetry-max
load_telemetry --publishers 100 --subscribers 100 --rate max \
    --duration "$DURATION" --json "$OUT/telemetry-max.json"
stop_server
# The raw quinn ceiling in the shape of the paced run: one connection per publisher and the same
# total rate, so that both move the same number of packets. benches/peers/run.sh measures the
# echo at full rate over 100 connections, the shape of telemetry-max.
target/release/examples/peer-raw-quinn --connections "$PUBLISHERS" --size 100 \
    --rate "$((PUBLISHERS * 100))" --duration "$DURATION" >"$OUT/raw-quinn-paced.json"

echo "== idle connections"
start_server idle-ws
load idle --target hubcast-ws --server "$HTTP" --connections "$IDLE_WS" \
    --json "$OUT/idle-ws.json"
start_server idle-wt
load idle --target hubcast-wt --server "$QUIC" --publish "$HTTP" --connections "$IDLE_WT" \
    --json "$OUT/idle-wt.json"

echo "== connection storm"
for target in hubcast-ws hubcast-sse hubcast-h3sse hubcast-wt; do
    start_server "storm-$target"
    server=$HTTP
    if [[ $target == hubcast-h3sse || $target == hubcast-wt ]]; then
        server=$QUIC
    fi
    load storm --target "$target" --server "$server" --publish "$HTTP" \
        --duration "$DURATION" --json "$OUT/storm-$target.json"
done
stop_server

echo "== hub micro-benchmarks"
cargo bench --bench hub

target/release/hubcast-load report "$OUT" docs/benchmarks.md --command benches/run.sh
echo "docs/benchmarks.md updated"
