#!/usr/bin/env bash
# Instructions per pattern of the codec's quantize, reconstruct (also over
# the server's f32 basis) and entropy
# decoder (absolute and delta streams) on the host,
# counted by callgrind (exact, unaffected by machine load):
#   scripts/codec-cost.sh [N]     (N patterns, default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-200}"
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
cargo build --release -q -p omega-tv-sync-bench --bin codec-cost
out="$(mktemp -d)"
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
    "$target/release/codec-cost" "$n" 2>/dev/null
callgrind_annotate --inclusive=yes "$out/cg.out" 2>/dev/null |
    awk -v n="$n" '/codec_cost::run_(quantize|reconstruct|reconstruct_float|reconstruct_wide|reconstruct_many|decode_absolute|decode_delta|decode_absolute_lut|decode_delta_lut) \[/ {
        gsub(",", "", $1);
        match($0, /run_(quantize|reconstruct_float|reconstruct_wide|reconstruct_many|reconstruct|decode_absolute_lut|decode_delta_lut|decode_absolute|decode_delta)/);
        printf "%-22s %10.0f instructions per pattern\n", substr($0, RSTART + 4, RLENGTH - 4), $1 / n }'
rm -rf "$out"
