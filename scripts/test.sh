#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls it): installs what is missing
# (chromium, postgresql-15, python3), then runs `cargo test --workspace` and the installer web
# app's tests in a real headless Chromium against the real binaries. Nothing is skipped because
# something is missing: what cannot be installed stops the run with an error.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -- ARGS         ARGS passed on to `cargo test --workspace`
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
[ "${1:-}" = "--" ] && shift

die() { echo "scripts/test.sh: $*" >&2; exit 1; }

# Runs apt-get as root (directly, or through sudo).
apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "$* missing and not root (no sudo) to apt-get install it"
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Chromium from Debian, for the browser tests (CHROMIUM names another binary).
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    echo "== [${SECONDS} s] installing chromium (Debian)"
    apt_install chromium
    [ -x "$CHROMIUM" ] || die "$CHROMIUM still missing after apt-get install chromium"
fi
export CHROMIUM

# PostgreSQL 15 from Debian, for the PostgreSQL backends' tests: testkit::postgres runs its
# binaries on a temporary data directory and a free port (no system cluster is used).
PG_BIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/postgres" ]; then
    echo "== [${SECONDS} s] installing postgresql-15 (Debian)"
    apt_install postgresql-15
    [ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb still missing after apt-get install postgresql-15"
fi

# Mosquitto from Debian, for the MQTT integration tests (netserver/tests/integrations.rs; each
# test starts its own broker on a free loopback port: the package's service is not used).
MOSQUITTO="${MOSQUITTO:-/usr/sbin/mosquitto}"
if [ ! -x "$MOSQUITTO" ] || ! command -v mosquitto_passwd >/dev/null; then
    echo "== [${SECONDS} s] installing mosquitto (Debian)"
    apt_install mosquitto
    [ -x "$MOSQUITTO" ] || die "$MOSQUITTO still missing after apt-get install mosquitto"
fi
export MOSQUITTO

# python3 (the browser tests withdraw an API key from the store with its sqlite3 module).
command -v python3 >/dev/null || { echo "== [${SECONDS} s] installing python3 (Debian)"; apt_install python3; }

# Node.js 20.19+ (Vite 8, playwright-core); npm packages pinned by installer/package-lock.json.
command -v node >/dev/null && command -v npm >/dev/null ||
    die "node and npm (Node.js 20.19 or later) are needed for the installer app's tests"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
    die "Node.js $(node --version) is too old: the installer app needs 20.19 or later"
echo "== [${SECONDS} s] npm ci (installer/)"
(cd installer && npm ci --no-audit --no-fund --loglevel=error)

echo "== [${SECONDS} s] cargo test --workspace"
cargo test --workspace --locked "$@"

echo "== [${SECONDS} s] the installer app in headless Chromium (installer/tests/)"
# The binaries the browser tests run: cargo test built them (a no-op then). Not `cargo build -p
# ...`: with fewer packages than the workspace its dependencies' features differ (their
# dev-dependencies are left out), so it rebuilt rustls, ring and everything above them, and the
# binaries `cargo test` had left in target/debug.
cargo test --workspace --locked --no-run
(cd installer && npm run --silent check && node --test --test-concurrency=1 tests/)
