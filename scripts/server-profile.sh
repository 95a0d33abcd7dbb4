#!/usr/bin/env bash
# Where the real server's CPU goes in the server bench: runs
# `bench --bin server` with CHANGED patterns per sync, records
# `perf record --call-graph dwarf` of the process during the real server's
# phase only (not the bare handler's), and prints the share of each part
# of the server, every sample attributed by its thread and call stack
# (docs/benchmarks.md, "Server"):
#   scripts/server-profile.sh [CHANGED] [SECONDS]     (default 1 changed, 4 s recorded)
# Needs `perf` with permission to record the process (perf_event_paranoid <= 1, or root).
set -euo pipefail
cd "$(dirname "$0")/.."
changed="${1:-1}"
secs="${2:-4}"
command -v perf >/dev/null || { echo "perf is missing" >&2; exit 1; }
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
cargo build --release -q -p omega-tv-sync-bench --bin server
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$target/release/server" --clients 32 --seconds $((secs + 2)) --compare-changed "$changed" \
    >"$dir/out" 2>"$dir/err" &
pid=$!
# The real server's phase starts when the bench says so; skip its first 0.5 s.
for _ in $(seq 1 600); do
    grep -q "redb, $changed changed" "$dir/err" && break
    sleep 0.05
done
sleep 0.5
echo "recording $secs s of the real server's phase ($changed changed per sync)..." >&2
perf record -q -F 1000 --call-graph dwarf,16384 -p "$pid" -o "$dir/perf.data" -- sleep "$secs" \
    2>/dev/null >/dev/null
wait "$pid"
grep -E "ratio" "$dir/out"
echo "attributing samples (perf script)..." >&2
perf script -i "$dir/perf.data" 2>/dev/null | python3 -c '
import collections, re, sys
# (part, thread name prefix, frames that must all be in the stack; none = any),
# first match wins.
w = "constellation-w"
parts = [
    ("writer: journal append, fdatasync", w, [r"Journal::append", r"fdatasync|sync_data"]),
    ("writer: journal append, the rest", w, [r"Journal::append|journal::record|Overlay::publish"]),
    ("writer: fold or commit, fdatasync", w, [r"fdatasync|sync_data"]),
    ("writer: fold or commit, the rest", w, [r"WriteTransaction::commit"]),
    ("writer: applying the syncs", w, [r"apply_with|auth::guarded"]),
    ("writer: queue, wake-ups", w, []),
    ("aggregation", "srv-rt", [r"aggregate::"]),
    ("entropy decoder", "srv-rt", [r"decode_by"]),
    ("predecode and page: snapshot reads", "srv-rt",
     [r"sync::apply::predecode|sync::apply::prebuild|store::read"]),
    ("frame validation", "srv-rt", [r"sync::validate"]),
    ("hyper, tokio, the socket, the allocator", "srv-rt", []),
]
count = collections.Counter()
comm, stack = None, []
def flush():
    if comm is None or not stack:
        return
    joined = "\n".join(stack)
    for name, prefix, frame in parts:
        if comm.startswith(prefix) and all(re.search(f, joined) for f in frame):
            count[name] += 1
            return
for line in sys.stdin:
    if not line.strip():
        flush()
        comm, stack = None, []
    elif line[0] not in " \t":
        comm = line.split()[0]
    else:
        fields = line.strip().split(None, 1)
        if len(fields) == 2:
            stack.append(fields[1])
flush()
server = sum(count.values())
if server == 0:
    sys.exit("no samples of the server threads")
print(f"| part | share of the server CPU ({server} samples) |")
print("|---|---:|")
for name, _, _ in parts:
    print(f"| {name} | {100 * count[name] / server:.0f}% |")
'
