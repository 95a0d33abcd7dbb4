#!/usr/bin/env bash
# Load run: N TVs (default 20,000) of the fleet simulation against a
# separately started `constellation serve` (release builds, loopback, redb
# in a temp dir, the TVs enrolled and every request signed), so the server
# process's own CPU time and peak RSS (VmHWM)
# can be read from /proc. Prints the fleet's table and a summary line.
#
#   [FLEET_ARGS="--no-faults ..."] [SERVE_ARGS="--no-dp ..."] scripts/load.sh [DEVICES] [ROUNDS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
devices=${1:-20000}
rounds=${2:-5}
conc=${3:-64}
cargo build --release -q -p constellation -p omega-tv-sync-examples --bin constellation --bin fleet
# The binaries, wherever CARGO_TARGET_DIR puts them.
bin="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release"
dir=$(mktemp -d)
srv=""
trap '[ -n "$srv" ] && kill $srv 2>/dev/null; rm -rf "$dir"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The admin listener's bearer token (the checker reads device state there).
(umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$dir/admin-token")
# Enrol the TVs (one key each, printed once): every request is signed, as
# in production.
"$bin/constellation" device add --db "$dir/load.redb" \
    $(seq -f 'tv-%06g' 0 $((devices - 1))) >"$dir/keys.txt"
# No minimum sync interval: the simulation compresses 5-15 min into milliseconds.
"$bin/constellation" serve --db "$dir/load.redb" --listen "127.0.0.1:$port" \
    --admin-listen "127.0.0.1:$admin_port" --admin-token-file "$dir/admin-token" \
    --min-sync-interval 0 --log-level warn ${SERVE_ARGS:-} >"$dir/server.out" &
srv=$!
for _ in $(seq 100); do grep -q "^listening on" "$dir/server.out" 2>/dev/null && break; sleep 0.1; done
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$srv/stat"; }
cpu0=$(cpu)
start=$(date +%s.%N)
"$bin/fleet" --devices "$devices" --rounds "$rounds" \
    --concurrency "$conc" --server "http://127.0.0.1:$port" --keys "$dir/keys.txt" --quiet \
    --admin "http://127.0.0.1:$admin_port" --admin-token-file "$dir/admin-token" \
    --json "$dir/report.json" ${FLEET_ARGS:-} &
fleet=$!
# Once a second: wall, server CPU ticks, fleet CPU ticks, fleet VmHWM (kB).
while kill -0 $fleet 2>/dev/null; do
    f=$(awk '{print $14 + $15}' "/proc/$fleet/stat" 2>/dev/null || echo "")
    h=$(awk '/VmHWM/ {print $2}' "/proc/$fleet/status" 2>/dev/null || echo "")
    [ -n "$f" ] && echo "$(date +%s.%N) $(cpu) $f $h" >>"$dir/samples"
    sleep 1
done
wait $fleet
end=$(date +%s.%N)
cpu1=$(cpu)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$srv/status")
# Server CPU by thread name (tokio workers, the redb writer, blocking pool).
threads=$(for t in /proc/$srv/task/*; do
    printf '%s %s\n' "$(tr ' ' '_' <"$t/comm")" "$(awk '{print $14 + $15}' "$t/stat")"
done | awk -v tk="$ticks" '{c[$1] += $2; n[$1]++} END {for (k in c) printf "%s x%d %.1fs; ", k, n[k], c[k] / tk}')
curl -s "http://127.0.0.1:$admin_port/metrics" >"$dir/metrics.txt" || true
# Server-side sync latency (validation to response) from its histogram: the
# bucket bound at or below which 50% / 99% of the syncs finished.
srv_lat=$(python3 - "$dir/metrics.txt" <<'PY'
import sys
b = []
for l in open(sys.argv[1]):
    if l.startswith("constellation_sync_duration_seconds_bucket"):
        le = l.split('le="')[1].split('"')[0]
        b.append((float("inf") if le == "+Inf" else float(le), float(l.split()[-1])))
n = b[-1][1] if b else 0
q = lambda p: next((le for le, c in b if c >= p * n), float("nan"))
print("p50 <= %g ms, p99 <= %g ms (histogram buckets)" % (q(0.5) * 1000, q(0.99) * 1000))
PY
)
metrics=$(cat "$dir/metrics.txt" | grep -E '^constellation_(group_commits_total|group_commit_items_total|aggregation_runs_total|syncs_total|published_total)' | tr '\n' ' ' || true)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$srv/status")
fleet_rss=$(awk 'BEGIN {m = 0} $4 > m {m = $4} END {print m}' "$dir/samples")
run_s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["wall_s"])' "$dir/report.json")
# CPU during the simulation phase (the report's wall_s from the start),
# before the sequential settle and read-back: percent of one core.
phase=$(awk -v t0="$start" -v run="$run_s" -v tk="$ticks" -v s0="$cpu0" '
    NR == 1 {f0 = $3}
    $1 - t0 <= run {t = $1; s = $2; f = $3}
    END {d = t - t0; printf "server %.0f%%, fleet %.0f%% of one core over %.0f s", 100 * (s - s0) / tk / d, 100 * (f - f0) / tk / d, d}' "$dir/samples")
wall=$(echo "$end - $start" | bc)
srv_cpu=$(echo "scale=1; ($cpu1 - $cpu0) / $ticks" | bc)
db_mb=$(du -m "$dir/load.redb" | cut -f1)
echo
echo "server: peak RSS (VmHWM) $((hwm / 1024)) MiB, RSS at end $((rss / 1024)) MiB, CPU ${srv_cpu} s; redb file ${db_mb} MiB"
echo "server CPU by thread: $threads"
echo "server metrics: $metrics"
echo "server-side sync latency: $srv_lat"
echo "fleet:  peak RSS $((fleet_rss / 1024)) MiB; wall (incl. settle and check) ${wall} s"
echo "CPU during the simulation phase: $phase (2 cores = 200%)"
python3 - "$dir/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("syncs %d in %.1f s: %.0f syncs/s, latency p50 %.2f ms, p99 %.2f ms; lost %d, duplicated %d" % (
    r["syncs"], r["wall_s"], r["syncs_per_sec"], r["latency_p50_ms"], r["latency_p99_ms"],
    r["lost_updates"], r["duplicates_applied"]))
PY
