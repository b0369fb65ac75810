#!/bin/bash
# Crash-safety check against the real binaries on 127.0.0.1 (see docs/simulator.md, fleet state):
#   a storm of N devices (default 100000, mixed) within W (default 10s); the simulator is
#   SIGKILLed K seconds in (default 5), then run again on the same manifest. With the DevNonce
#   log every device joins at its first attempt in the second run (timed_out 0, failed 0).
#   SIMBIN selects another simulator binary (e.g. an older build, as a control).
# Build first: cargo build --release -p joinserver -p netserver -p simulator
set -euo pipefail
N=${N:-100000}; W=${W:-10s}; K=${K:-5}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
SIMBIN=${SIMBIN:-$BIN/simulator}
D=$(mktemp -d "${TMPDIR:-/tmp}/storm-kill.XXXX")
"$BIN/simulator" manifest --devices "$N" --seed 9 --mac-version mix --out "$D/fleet.csv" 2>/dev/null
# shellcheck source=servers.sh
. "$(dirname "$0")/servers.sh"
JS_METRICS=127.0.0.1:0 start_servers
ARGS=(run --manifest "$D/fleet.csv" --netserver "$GWMP" --join-window "$W" --gateways 4 --heard-by 2)
# The simulator itself in the background (not a shell function, whose $! would be a subshell).
"$SIMBIN" "${ARGS[@]}" >"$D/t1.txt" 2>"$D/s1.err" &
SIM=$!
sleep "$K"
kill -9 $SIM; wait $SIM 2>/dev/null || true
! kill -0 $SIM 2>/dev/null || { echo "the simulator survived SIGKILL" >&2; exit 1; }
sleep 1
echo "killed after ${K}s: $(grep -c . "$D/s1.err") progress lines; join server accepted so far:" \
  "$(curl -s "http://$JSM/metrics" | grep -E '^joinserver_joins_total\{result="success"' | awk '{print $2}')"
"$SIMBIN" "${ARGS[@]}" --report-json "$D/r2.json" >"$D/t2.txt" 2>"$D/s2.err"
python3 - "$D/r2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); j = r["joins"]
print("second run:", " ".join(f"{k} {j[k]}" for k in ["attempted", "accepted", "accepted_rx1", "failed", "timed_out", "missed_window"]),
      f"duration_s {r['duration_s']} latency_ms p99 {r['join_latency_ms']['p99']}")
PY
echo "join server joins_total: $(curl -s "http://$JSM/metrics" | grep -E '^joinserver_joins_total' | tr '\n' ' ')"
echo "$D"
