#!/usr/bin/env bash
# CPU and wall time of one durable 4 KiB write, the sync journal's cost per
# group (docs/benchmarks.md, "Server"), two ways on the same file: `pwrite`
# then `fdatasync` (what the journal does), and one `pwrite` on a descriptor
# opened O_DIRECT | O_DSYNC (no page cache, the device write and its flush
# in the call). Each over N writes (default 3000) rewriting the blocks of a
# preallocated 256 KiB file, as the journal rewrites its blocks after the
# first epochs; CPU from getrusage (user + system), run twice alternately.
#   scripts/durable-write-cost.sh [DIR] [N]     (DIR: where the file goes, default $TMPDIR or /tmp)
set -euo pipefail
dir="${1:-${TMPDIR:-/tmp}}"
n="${2:-3000}"
python3 - "$dir" "$n" <<'PY'
import mmap, os, resource, sys, tempfile, time

d, n = sys.argv[1], int(sys.argv[2])
fd, path = tempfile.mkstemp(prefix="durable-write-", dir=d)
try:
    os.ftruncate(fd, 64 * 4096)
    for i in range(64):
        os.pwrite(fd, b"x" * 4096, i * 4096)
    os.fsync(fd)
    os.close(fd)

    def run(flags, sync):
        f = os.open(path, os.O_RDWR | flags)
        buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        buf.write(b"y" * 4096)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        for i in range(n):
            os.pwrite(f, buf, (i % 64) * 4096)
            if sync:
                os.fdatasync(f)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        os.close(f)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        return cpu / n * 1e6, (t1 - t0) / n * 1e6

    print(f"durable 4 KiB writes in {d}, {n} each:")
    print("| write | CPU µs | wall µs |")
    print("|---|---:|---:|")
    for _ in range(2):
        print("| pwrite + fdatasync | %.1f | %.1f |" % run(0, True))
        try:
            print("| O_DIRECT, O_DSYNC pwrite | %.1f | %.1f |" % run(os.O_DIRECT | os.O_DSYNC, False))
        except OSError as e:
            print(f"| O_DIRECT, O_DSYNC pwrite | not supported here ({e.strerror}) | |")
finally:
    os.unlink(path)
PY
