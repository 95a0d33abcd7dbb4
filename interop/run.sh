#!/bin/sh
# Runs the independent Python client against the known-answer vectors and
# against a real `constellation serve` on 127.0.0.1. Exit status non-zero on
# any failure. Honours CARGO_TARGET_DIR (the server binary is
# $CARGO_TARGET_DIR/release/constellation, else cargo metadata's target dir).
# Set OTS_INTEROP_NO_BUILD=1 to skip `cargo build`, and OTS_CONSTELLATION_BIN
# to use another server binary (.ci/run passes the debug one).
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
cd "$root" || exit 2

status=0
echo "== known-answer vectors"
python3 "$here/check_vectors.py" || status=1

if [ -z "${CARGO_TARGET_DIR:-}" ]; then
    CARGO_TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])') || exit 2
fi
export CARGO_TARGET_DIR
if [ -z "${OTS_INTEROP_NO_BUILD:-}" ]; then
    echo "== cargo build --release -p constellation"
    cargo build --release -p constellation || exit 2
fi
echo "== live protocol against constellation serve on 127.0.0.1"
python3 "$here/live.py" --bin "${OTS_CONSTELLATION_BIN:-$CARGO_TARGET_DIR/release/constellation}" || status=1

if [ "$status" -eq 0 ]; then echo "interop: all checks passed"; else echo "interop: FAILED"; fi
exit "$status"
