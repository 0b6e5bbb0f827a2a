#!/usr/bin/env bash
# Runs the browser tests in tests/browser: installs what is missing (Debian's chromium and
# firefox-esr, the npm packages from package-lock.json), builds hubcast and the device
# simulator, then runs node's test runner. Exits non-zero when any step or test fails.
#
# Environment: HUBCAST_CHROMIUM and HUBCAST_FIREFOX override the browser paths
# (/usr/bin/chromium, /usr/bin/firefox-esr); extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

packages=()
[ -x "${HUBCAST_CHROMIUM:-/usr/bin/chromium}" ] || packages+=(chromium)
[ -x "${HUBCAST_FIREFOX:-/usr/bin/firefox-esr}" ] || packages+=(firefox-esr)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
if [ "${#packages[@]}" -gt 0 ]; then
  echo "browser-tests: installing ${packages[*]} with apt-get"
  if ! as_root apt-get update \
    || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${packages[@]}"; then
    echo "browser-tests: FAILED to install ${packages[*]}: the browser tests cannot run" >&2
    exit 1
  fi
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "browser-tests: Node.js $(node --version) is too old: playwright-core needs Node.js 20 or newer" >&2
  exit 1
fi

# Neither package downloads a browser; the variables keep it that way if that ever changes.
export PUPPETEER_SKIP_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/puppeteer-core ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "browser-tests: installing npm packages"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

echo "browser-tests: building hubcast and the simulator"
cargo build --bin hubcast --example simulator

echo "browser-tests: running tests/browser"
# Files run one at a time, because each starts its own browsers and servers.
node --test --test-concurrency=1 --test-timeout=300000 "$@" tests/browser/
