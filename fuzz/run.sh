#!/usr/bin/env bash
# Runs one fuzz target for a bounded time on its committed seeds and a local
# grown corpus, and prints libFuzzer's final statistics.
#   fuzz/run.sh <target> <seconds> [extra libFuzzer flags]
set -euo pipefail
cd "$(dirname "$0")"
t=$1; secs=$2; shift 2
mkdir -p "corpus/$t" "artifacts/$t"
exec cargo +nightly fuzz run -O -a "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 \
    -max_len=131072 -len_control=100 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="artifacts/$t/" "$@"
