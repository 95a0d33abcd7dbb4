#!/usr/bin/env bash
# Instructions per pattern of the codec's quantize, reconstruct and entropy
# decoder on the Cortex-M4 (the firmware build: opt-level "s", fat LTO),
# counted by QEMU (mps2-an386, -icount shift=0: one virtual nanosecond per
# instruction, read through SysTick; examples/cortex-m/src/cost/main.rs):
#   scripts/codec-cost-m4.sh
# Needs qemu-system-arm and the thumbv7em-none-eabihf target (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../examples/cortex-m"
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
cargo build --release -q --bin omega-tv-sync-cortex-m-cost
timeout 300 qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
    -icount shift=0 -semihosting-config enable=on,target=native \
    -kernel "$target/thumbv7em-none-eabihf/release/omega-tv-sync-cortex-m-cost" </dev/null
