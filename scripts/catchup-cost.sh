#!/usr/bin/env bash
# Instructions a device spends applying a catch-up of N global patterns
# (default 1600, what a 20,000-TV fleet publishes) and scoring 16 local
# patterns against them, reconstructing vs in the code domain; counted by
# callgrind on the host (exact, unaffected by machine load):
#   scripts/catchup-cost.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1600}"
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
cargo build --release -q -p omega-tv-sync-bench --bin catchup-cost
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg.out" \
    "$target/release/catchup-cost" "$n" 2>/dev/null
callgrind_annotate --inclusive=yes "$out/cg.out" 2>/dev/null |
    awk -v n="$n" '/catchup_cost::run_[a-z_]+ \[/ {
        gsub(",", "", $1);
        match($0, /run_[a-z_]+/);
        name = substr($0, RSTART + 4, RLENGTH - 4);
        per = (name == "space") ? $1 : $1 / n;
        unit = (name == "space") ? "instructions, once" : "instructions per global";
        if (name ~ /^score/) { per = $1 / (16 * n); unit = "instructions per (local, global) pair" }
        printf "%-16s %12.0f %s\n", name, per, unit }'
