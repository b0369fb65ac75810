#!/bin/bash
# What a running join server spends picking up provisioning done by another process
# (docs/benchmarks.md): 300,000 devices, then three `joinserver devices remove` commands 3 s
# apart; prints the server's CPU time (user + system, 10 ms ticks) after each, and its
# "devices reloaded" log lines. Build first: cargo build --release -p joinserver -p simulator
#   joinserver/scripts/reload-cost.sh [JOINSERVER_BINARY]
set -euo pipefail
M=$(cd "$(dirname "$0")/../.." && pwd)/target/release
BIN=${1:-$M/joinserver}
D=$(mktemp -d "${TMPDIR:-/tmp}/reload-cost.XXXX")
trap 'kill ${P:-} 2>/dev/null || true; rm -rf "$D"' EXIT
"$M/simulator" manifest --devices 300000 --seed 3 --mac-version mix --out "$D/fleet.csv" 2>/dev/null
"$M/joinserver" init --data-dir "$D/js" >/dev/null
"$M/joinserver" devices import --data-dir "$D/js" "$D/fleet.csv" >/dev/null
"$BIN" serve --data-dir "$D/js" --listen 127.0.0.1:0 --metrics "" >"$D/out" 2>"$D/err" &
P=$!
for _ in $(seq 200); do grep -q "link=" "$D/out" "$D/err" 2>/dev/null && break; sleep 0.1; done
sleep 2
cpu() { awk '{print $14 + $15}' "/proc/$P/stat"; }
for eui in $(sed -n '2p;3p;4p' "$D/fleet.csv" | cut -d, -f1); do
  a=$(cpu)
  "$M/joinserver" devices remove --data-dir "$D/js" "$eui" >/dev/null
  sleep 3
  echo "cpu_ms $(( ($(cpu) - a) * 10 ))"
done
grep -h "devices reloaded" "$D/err" "$D/out" | sed 's/.*INFO //'
