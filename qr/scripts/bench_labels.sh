#!/usr/bin/env bash
# Benchmark of `qr labels` on a generated 10,000-device manifest (not committed: it is made here).
# Usage: qr/scripts/bench_labels.sh [ROWS]   (from the workspace root; builds in release mode)
# Prints the wall time of 3 runs per format and their median.
set -euo pipefail
rows=${1:-10000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build --release -j2 -p qr >/dev/null 2>&1
bin=target/release/qr
manifest="$work/manifest.csv"
{
  echo "dev_eui,join_eui,mac_version,app_key,nwk_key,home_net_id,owner_token"
  for ((i = 0; i < rows; i++)); do
    # 1.0.3 devices (no NwkKey) and 1.1 devices alternate; every third has no owner token.
    if ((i % 2 == 0)); then v=1.0.3; nwk=""; else v=1.1; nwk=$(printf '%032X' $((i * 7919))); fi
    if ((i % 3 == 0)); then tok=""; else tok=$(printf 'TK%08X' $((i * 104729))); fi
    printf '%016X,70B3D57ED0000001,%s,%032X,%s,000013,%s\n' $((0x0004A30B00000000 + i)) "$v" $((i * 31337)) "$nwk" "$tok"
  done
} >"$manifest"
for format in svg png; do
  times=()
  for run in 1 2 3; do
    rm -rf "$work/out"
    start=$(date +%s.%N)
    "$bin" labels "$manifest" --out "$work/out" --format "$format" 2>/dev/null
    end=$(date +%s.%N)
    times+=("$(echo "$end - $start" | bc)")
  done
  count=$(find "$work/out" -name "*.$format" | wc -l)
  size=$(du -sh "$work/out" | cut -f1)
  median=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
  echo "$format: $count labels ($size), runs ${times[*]} s, median $median s"
done
