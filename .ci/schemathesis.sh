#!/usr/bin/env bash
# Runs schemathesis (from PyPI, in a venv) against the join server's management API, described by
# its own OpenAPI document: it must find no 5xx answer and no response that contradicts the
# schema (status codes, content types, headers, bodies).
#
# A join server runs on a temporary data directory; a few devices are imported (one bound to a
# home NetID) so that generated requests reach real devices as well as unknown ones. Schemathesis
# runs twice: with an admin key (which sees every device) and with an owner key (which claims).
# The server is stopped at the end, whatever happens. The API speaks HTTPS with the self-signed
# certificate `joinserver init` wrote (DATA/tls/api.crt), which both clients trust as their CA.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

VENV="${SCHEMATHESIS_VENV:-target/schemathesis-venv}"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis>=4,<5"
fi

cargo build --locked -p joinserver
JS=target/debug/joinserver
DATA="$(mktemp -d)"
PID=""
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$DATA"
}
trap cleanup EXIT

"$JS" init --data-dir "$DATA" >/dev/null
ADMIN="$("$JS" api-keys create --data-dir "$DATA" --role admin --name ci-admin)"
OWNER="$("$JS" api-keys create --data-dir "$DATA" --role owner --name ci-owner)"
# Devices the generated requests can reach: one operator-bound (claimed), two unclaimed.
cat > "$DATA/devices.csv" <<CSV
dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token
0004A30B00000001,70B3D57ED0000001,1.0.4,2B7E151628AED2A6ABF7158809CF4F3C,,000013,TOKEN0000001
0004A30B00000002,70B3D57ED0000001,1.0.3,2B7E151628AED2A6ABF7158809CF4F3C,,,TOKEN0000002
0004A30B00000003,70B3D57ED0000001,1.1,2B7E151628AED2A6ABF7158809CF4F3C,000102030405060708090A0B0C0D0E0F,,TOKEN0000003
CSV
"$JS" devices import --data-dir "$DATA" "$DATA/devices.csv" >/dev/null

"$JS" serve --data-dir "$DATA" --listen 127.0.0.1:0 --metrics "" --api-listen 127.0.0.1:0 \
    >"$DATA/serve.out" 2>"$DATA/serve.err" &
PID=$!
API=""
for _ in $(seq 1 100); do
    API="$(sed -n 's/.* api=\([0-9.:]*\).*/\1/p' "$DATA/serve.out")"
    [ -n "$API" ] && break
    sleep 0.1
done
[ -n "$API" ] || { echo "joinserver did not start:"; cat "$DATA/serve.err"; exit 1; }

grep -q ' api_scheme=https' "$DATA/serve.out" || { echo "the API is not HTTPS:"; cat "$DATA/serve.out"; exit 1; }
CA="$DATA/tls/api.crt"

run_schemathesis() {
    "$VENV/bin/schemathesis" run "https://$API/api/v1/openapi.json" \
        --tls-verify "$CA" \
        --header "Authorization: Bearer $1" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-50}" \
        --workers 1 \
        --seed "${SCHEMATHESIS_SEED:-1}"
}
# Claims are the owner role's: as the admin they only meet 403. As an owner (who owns device 2,
# claimed here) they reach the token check, the failed-claim limits (429) and the device's state.
curl --fail-with-body -sS --cacert "$CA" -o "$DATA/claim.json" -X PUT \
    "https://$API/api/v1/devices/0004A30B00000002/claim" \
    -H "Authorization: Bearer $OWNER" -H 'Content-Type: application/json' \
    -d '{"owner_token": "TOKEN0000002", "home_net_id": "000013"}' ||
    { echo "the owner's claim of device 2 failed: $(cat "$DATA/claim.json")"; exit 1; }
echo "-- as an admin (sees every device; may not claim)"
run_schemathesis "$ADMIN"
echo "-- as an owner (claims; sees only its own devices)"
run_schemathesis "$OWNER"
