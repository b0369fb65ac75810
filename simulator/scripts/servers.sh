# Sourced by storm-bench.sh and storm-kill.sh: provisions the fleet in $D/fleet.csv on a fresh join
# server and starts it and a network server on 127.0.0.1 (ephemeral ports, logs in $D).
#   start_servers [--events udp://ADDR]   (the network server's application events, optional)
# The join server serves metrics only if JS_METRICS is set (e.g. 127.0.0.1:0); the network server
# serves them on an ephemeral port.
# Sets JS, NS (pids, killed on exit), LINK (JS↔NS link), JSM (join server metrics), GWMP and NSM
# (network server metrics).
# The network server is NetID 000000 (its default), the peer `joinserver init` creates, so it uses
# secrets/link.key and secrets/ns.kek. A network server of another NetID would first need
# `joinserver peers add --data-dir "$D/js" --net-id N` and the two files it prints.
start_servers() {
  "$BIN/joinserver" init --data-dir "$D/js" >/dev/null
  "$BIN/joinserver" devices import --data-dir "$D/js" "$D/fleet.csv" >/dev/null
  # JS_CONFIG=FILE: the join server's TOML configuration (e.g. `[store] commit_interval_ms = 10`).
  local js_args=()
  [ -n "${JS_CONFIG:-}" ] && js_args=(--config "$JS_CONFIG")
  "$BIN/joinserver" serve --data-dir "$D/js" --listen 127.0.0.1:0 --metrics "${JS_METRICS:-}" "${js_args[@]}" \
    >"$D/js.out" 2>"$D/js.err" &
  JS=$!
  trap 'kill $JS ${NS:-} 2>/dev/null || true' EXIT
  LINK=
  for _ in $(seq 100); do
    LINK=$(grep -ohE "link=127\.0\.0\.1:[0-9]+" "$D/js.out" "$D/js.err" | head -1 | cut -d= -f2 || true)
    [ -n "$LINK" ] && break; sleep 0.1
  done
  JSM=$(grep -ohE "metrics=127\.0\.0\.1:[0-9]+" "$D/js.out" "$D/js.err" | head -1 | cut -d= -f2 || true)
  "$BIN/netserver" serve --data-dir "$D/ns" --join-server "$LINK" --link-key "$D/js/secrets/link.key" \
    --ns-kek "$D/js/secrets/ns.kek" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 "$@" >"$D/ns.out" 2>"$D/ns.err" &
  NS=$!
  GWMP=
  for _ in $(seq 100); do
    GWMP=$(grep -oE "gwmp=[0-9.:]+" "$D/ns.out" | head -1 | cut -d= -f2 || true)
    [ -n "$GWMP" ] && break; sleep 0.1
  done
  NSM=$(grep -oE "metrics=[0-9.:]+" "$D/ns.out" | head -1 | cut -d= -f2 || true)
}

# Saves both servers' /metrics in $D (netserver.metrics, joinserver.metrics) and prints the
# network server's join results and kernel drops: where the joins a run lost were lost.
save_server_metrics() {
  python3 - "$D" "${NSM:-}" "${JSM:-}" <<'PY'
import sys, urllib.request
d, nsm, jsm = sys.argv[1:4]
for name, addr in (("netserver", nsm), ("joinserver", jsm)):
    if not addr:
        continue
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    except OSError as e:
        print(f"{name} metrics: {e}")
        continue
    open(f"{d}/{name}.metrics", "w").write(text)
    if name == "netserver":
        keep = ("netserver_joins_total", "netserver_gwmp_socket_drops", "netserver_link_socket_drops", "netserver_link_requests_total")
        lines = [l for l in text.splitlines() if l.startswith(keep) and not l.endswith(" 0")]
        print("netserver: " + "  ".join(lines))
PY
}
