#!/bin/bash
# The network server on PostgreSQL, one or several instances, against the simulator, all as
# separate processes on 127.0.0.1 (docs/benchmarks.md, "Scale-out on PostgreSQL").
#   STORE=postgres|embedded (default postgres), INSTANCES network servers and as many join servers
#   (default 2; embedded: 1 of each) on one database, network server i with its own DevAddr
#   sub-block of NetID 000000 and talking to join server i.
#   N devices (default 20000, mixed 1.0.3/1.0.4/1.1) join within W (default 10s) through G
#   gateways (default 4, gateway i to instance i mod INSTANCES), each transmission heard by 1..K
#   (default 2) of them; SCENARIO (default steady) and EXTRA (more `simulator run` options).
#   SCHEDULER=on|off (default on): the network servers' downlink scheduler ([scheduler] enabled).
#   With the simulator's default ideal radio, off answers every Join-request in its first window
#   (the behaviour the scale-out runs before the scheduler measured); on, a storm of N devices
#   through G gateways is bounded by their downlink airtime and duty cycle.
#   PG_URL: an existing database (else a PostgreSQL 15 is started in the run directory, as the
#   `postgres` user when run as root, and removed at the end).
# Build first: cargo build --release -p joinserver -p netserver -p simulator
# Prints the simulator's summary, each process's CPU seconds over the run, and the run directory.
set -euo pipefail
N=${N:-20000}; W=${W:-10s}; G=${G:-4}; K=${K:-2}; SEED=${SEED:-1}; SCENARIO=${SCENARIO:-steady}
EXTRA=${EXTRA:---uplink-interval 7s --duration 40s}; STORE=${STORE:-postgres}; INSTANCES=${INSTANCES:-2}
SCHEDULER=${SCHEDULER:-on}
BIN=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
D=$(mktemp -d "${TMPDIR:-/tmp}/pg-scaleout.XXXX")
chmod 755 "$D"
PIDS=()
PGDATA=
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$PGDATA" ]; then as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"; }
# PostgreSQL refuses to run as root: then as the `postgres` user (Debian's package creates it),
# else as `nobody`.
PGUSER_RUN=$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u "$PGUSER_RUN" -- "$@"; else "$@"; fi; }

if [ "$STORE" = postgres ] && [ -z "${PG_URL:-}" ]; then
  PGDATA=$D/pg/data; mkdir -p "$D/pg"; if [ "$(id -u)" = 0 ]; then chown "$PGUSER_RUN" "$D/pg"; fi
  PORT=$(free_port SOCK_STREAM)
  as_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 >"$D/pg/initdb.log"
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$D/pg/server.log" -w \
    -o "-p $PORT -k $D/pg -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=256MB" start >/dev/null
  PG_URL=postgres://postgres@127.0.0.1:$PORT/postgres
fi
[ "$STORE" = embedded ] && INSTANCES=1

"$BIN/simulator" manifest --devices "$N" --seed "$SEED" --mac-version mix --out "$D/fleet.csv" 2>/dev/null
# Join servers: one on its embedded store, or INSTANCES on the same database (instance i serves
# network server i), sharing one data directory's secrets.
JS_STORE=()
[ "$STORE" = postgres ] && JS_STORE=(--store-url "$PG_URL")
"$BIN/joinserver" init --data-dir "$D/js" "${JS_STORE[@]}" >/dev/null
"$BIN/joinserver" devices import --data-dir "$D/js" "${JS_STORE[@]}" "$D/fleet.csv" >/dev/null
LINKS=(); JSPIDS=()
for i in $(seq 0 $((INSTANCES - 1))); do
  "$BIN/joinserver" serve --data-dir "$D/js" "${JS_STORE[@]}" --listen 127.0.0.1:0 --metrics "" >"$D/js$i.out" 2>"$D/js$i.err" &
  PIDS+=($!); JSPIDS+=($!)
  LINK=
  for _ in $(seq 200); do
    LINK=$(grep -ohE "link=127\.0\.0\.1:[0-9]+" "$D/js$i.out" "$D/js$i.err" | head -1 | cut -d= -f2 || true)
    [ -n "$LINK" ] && break; sleep 0.1
  done
  [ -n "$LINK" ] || { cat "$D/js$i.err"; exit 1; }
  LINKS+=("$LINK")
done
EVENTS=127.0.0.1:$(free_port SOCK_DGRAM)
GWMPS=; NSPIDS=(); NSMS=()
for i in $(seq 0 $((INSTANCES - 1))); do
  printf '[network]\ndev_addr_prefix = "%02X000000/8"\n[scheduler]\nenabled = %s\n' "$i" \
    "$([ "$SCHEDULER" = off ] && echo false || echo true)" >"$D/ns$i.toml"
  STORE_ARGS=()
  [ "$STORE" = postgres ] && STORE_ARGS=(--store-url "$PG_URL")
  "$BIN/netserver" serve --config "$D/ns$i.toml" --data-dir "$D/ns$i" --join-server "${LINKS[$i]}" \
    --link-key "$D/js/secrets/link.key" --ns-kek "$D/js/secrets/ns.kek" --listen 127.0.0.1:0 \
    --metrics 127.0.0.1:0 --events "udp://$EVENTS?pack=8192" "${STORE_ARGS[@]}" >"$D/ns$i.out" 2>"$D/ns$i.err" &
  PIDS+=($!); NSPIDS+=($!)
  GWMP=
  for _ in $(seq 200); do
    GWMP=$(grep -oE "gwmp=[0-9.:]+" "$D/ns$i.out" 2>/dev/null | head -1 | cut -d= -f2 || true)
    [ -n "$GWMP" ] && break; sleep 0.1
  done
  [ -n "$GWMP" ] || { cat "$D/ns$i.err"; exit 1; }
  NSMS+=("$(grep -oE "metrics=[0-9.:]+" "$D/ns$i.out" | head -1 | cut -d= -f2)")
  GWMPS=${GWMPS:+$GWMPS,}$GWMP
done
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The cluster's postmaster and its backends (only this script's cluster).
pg_cpu() {
  [ -n "$PGDATA" ] || { echo 0; return; }
  local pm; pm=$(head -1 "$PGDATA/postmaster.pid")
  for p in "$pm" $(pgrep -P "$pm" || true); do cpu "$p"; done | awk '{t += $1} END {print t + 0}'
}
sub() { awk -v a="$1" -v b="$2" 'BEGIN {print a - b}'; }
declare -A C0
for p in "${JSPIDS[@]}" "${NSPIDS[@]}"; do C0[$p]=$(cpu "$p"); done
PG0=$(pg_cpu)
# shellcheck disable=SC2086
"$BIN/simulator" run --manifest "$D/fleet.csv" --netserver "$GWMPS" --scenario "$SCENARIO" --join-window "$W" \
  --gateways "$G" --heard-by "$K" --quiet --report-json "$D/report.json" --timeseries-csv "$D/ts.csv" \
  --event-listen "$EVENTS" $EXTRA >"$D/table.txt" &
SIM=$!
wait $SIM
echo "store $STORE instances $INSTANCES"
python3 - "$D/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); j = r["joins"]; l = r["join_latency_ms"]; u = r["uplinks"]
print(f"devices {r['devices']} joined {j['accepted']} attempted {j['attempted']} rx1 {j['accepted_rx1']} "
      f"timed_out {j['timed_out']} duration_s {r['duration_s']} join_latency_ms p50 {l['p50']} p99 {l['p99']} "
      f"uplinks_sent {u['sent']} delivered {u['delivered']} lost {u['lost']} duplicates {u['duplicates']}")
for k in ("uplink_latency_ms", "delivery_latency_ms"):
    if k in r: print(k, {q: r[k][q] for q in ("p50", "p99", "max") if q in r[k]})
PY
for p in "${JSPIDS[@]}"; do echo "cpu_s joinserver[$p] $(sub "$(cpu "$p")" "${C0[$p]}")"; done
for p in "${NSPIDS[@]}"; do echo "cpu_s netserver[$p] $(sub "$(cpu "$p")" "${C0[$p]}")"; done
if [ "$STORE" = postgres ]; then echo "cpu_s postgres (postmaster and backends) $(sub "$(pg_cpu)" "$PG0")"; fi
# Each network server's shared-store, commit, uplink and join counters (the non-zero ones).
for m in "${NSMS[@]}"; do
  python3 - "$m" <<'PY' || true
import re, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
keep = re.compile(r'^netserver_(shared_store_total|counter_commits_total|joins_total|uplinks_total\{result="(ok|replay|duplicate|unknown_devaddr)")')
print(" ".join(l for l in text.splitlines() if keep.match(l) and not l.endswith(" 0")))
PY
done
echo "$D"
