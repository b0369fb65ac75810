#!/bin/bash
# Join-storm benchmark against the real binaries on 127.0.0.1 (see docs/benchmarks.md).
#   N devices (default 100000, mixed 1.0.3/1.0.4/1.1) join within W (default 10s), through
#   G virtual gateways (default 4), each join heard by 1..K of them (default 2).
#   SCENARIO (default storm) and EXTRA (more `simulator run` options) select other runs, e.g.
#   SCENARIO=steady EXTRA="--uplink-interval 2s --duration 40s" for steady uplinks.
# Build first: cargo build --release -p joinserver -p netserver -p simulator
# Prints one summary line from the JSON report, the network server's join results and kernel drops,
# and the run directory (report.json, ts.csv, logs, netserver.metrics).
set -euo pipefail
N=${N:-100000}; W=${W:-10s}; G=${G:-4}; K=${K:-2}; SEED=${SEED:-1}; SCENARIO=${SCENARIO:-storm}; EXTRA=${EXTRA:-}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
D=$(mktemp -d "${TMPDIR:-/tmp}/storm-bench.XXXX")
"$BIN/simulator" manifest --devices "$N" --seed "$SEED" --mac-version mix --out "$D/fleet.csv" 2>/dev/null
# The network server's application events go to the simulator, which counts what was delivered,
# packed into datagrams of up to PACK bytes (default 8192; 0: one event per datagram).
# (The port is free when probed and taken by the simulator a moment later: a small race that a
# script cannot close, since the network server must know the address before the simulator runs.)
EVENTS=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# shellcheck source=servers.sh
. "$(dirname "$0")/servers.sh"
PACK=${PACK:-8192}
# NS_CONFIG=FILE: the network server's TOML configuration (e.g. `[scheduler] enabled = false`
# for a fleet joining faster than four gateways' duty cycle allows: the uplink benchmarks).
NS_ARGS=()
[ -n "${NS_CONFIG:-}" ] && NS_ARGS=(--config "$NS_CONFIG")
# MQTT=0 or MQTT=1: the events go through a local Mosquitto broker (anonymous, loopback) at that
# QoS instead, in ChirpStack's shapes, and the simulator counts them with --delivery mqtt://.
# The broker keeps any number of QoS 1 messages in flight to the simulator (its default of 20
# would make the simulator's leg, not the network server, the limit). SUBQOS=0 makes the
# simulator's subscription QoS 0 (default 1): the network server still publishes at MQTT's QoS.
if [ -n "${MQTT:-}" ]; then
  BROKER=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\nmax_queued_messages 1000000\nmax_inflight_messages 0\n' "$BROKER" >"$D/mosquitto.conf"
  "${MOSQUITTO:-/usr/sbin/mosquitto}" -c "$D/mosquitto.conf" >"$D/mosquitto.log" 2>&1 &
  MQ=$!
  sleep 0.5
  start_servers "${NS_ARGS[@]}" --events "mqtt://127.0.0.1:$BROKER?qos=$MQTT"
  trap 'kill $JS ${NS:-} $MQ 2>/dev/null || true' EXIT
  COUNT=(--delivery "mqtt://127.0.0.1:$BROKER?qos=${SUBQOS:-1}")
else
  start_servers "${NS_ARGS[@]}" --events "udp://$EVENTS$([ "$PACK" = 0 ] || echo "?pack=$PACK")"
  COUNT=(--event-listen "$EVENTS")
fi
# The network server's CPU (utime + stime, clock ticks) once a second, seconds counted from the
# simulator's start as in ts.csv: $D/netserver-cpu.csv (second,ticks).
# The join server's likewise: $D/joinserver-cpu.csv.
T0=$(date +%s.%N)
for p in "netserver:$NS" "joinserver:$JS"; do
  ( while [ -r "/proc/${p#*:}/stat" ]; do
      awk -v t0="$T0" -v now="$(date +%s.%N)" '{ printf "%.1f,%d\n", now - t0, $14 + $15 }' "/proc/${p#*:}/stat"
      sleep 1
    done ) >"$D/${p%%:*}-cpu.csv" 2>/dev/null &
done
# PROFILE=1: `perf record` (cpu-clock samples with DWARF call graphs, PROFILE_HZ per second,
# default 499) of each server for the whole run, into $D/netserver.perf and $D/joinserver.perf
# (`perf report -i FILE --no-children` reads them; see docs/benchmarks.md).
PERFS=()
if [ -n "${PROFILE:-}" ]; then
  for p in "netserver:$NS" "joinserver:$JS"; do
    perf record -F "${PROFILE_HZ:-499}" --call-graph dwarf,16384 -p "${p#*:}" -o "$D/${p%%:*}.perf" \
      >"$D/${p%%:*}.perf.log" 2>&1 &
    PERFS+=($!)
  done
  sleep 0.5
fi
# shellcheck disable=SC2086
"$BIN/simulator" run --manifest "$D/fleet.csv" --netserver "$GWMP" --scenario "$SCENARIO" --join-window "$W" \
  --gateways "$G" --heard-by "$K" --quiet --report-json "$D/report.json" --timeseries-csv "$D/ts.csv" \
  "${COUNT[@]}" $EXTRA >"$D/table.txt"
python3 - "$D/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); j = r["joins"]; l = r["join_latency_ms"]
print(f"devices {r['devices']} accepted {j['accepted']} attempted {j['attempted']} rx1 {j['accepted_rx1']} "
      f"rx2 {j['accepted_rx2']} timed_out {j['timed_out']} missed_window {j['missed_window']} failed {j['failed']} "
      f"duration_s {r['duration_s']} latency_ms p50 {l['p50']} p99 {l['p99']} max {l['max']} "
      f"uplinks_sent {r['uplinks']['sent']} delivered {r['uplinks']['delivered']} lost {r['uplinks']['lost']} "
      f"duplicates {r['uplinks']['duplicates']} push_data {r['gwmp']['push_data']} push_ack {r['gwmp']['push_ack']}")
PY
save_server_metrics
for p in "${PERFS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
for p in "${PERFS[@]}"; do wait "$p" 2>/dev/null || true; done
echo "$D"
