#!/usr/bin/env bash
# Regenerates the shipped codec codebooks from the catalogue items:
#   core/codebooks/minilm-v1.bin        default profile (PCA basis)
#   core/codebooks/minilm-small-v1.bin  small-flash profile (identity basis)
# Deterministic: `cargo test -p omega-tv-sync-bench --test codebooks` checks
# that the committed blobs are byte-identical to what this produces.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p omega-tv-sync-bench --bin gen-codebook
# The binary, wherever CARGO_TARGET_DIR puts it.
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')
for profile in minilm-v1 minilm-small-v1; do
    "$target/release/gen-codebook" \
        --items data/minilm/items_public.f32 \
        --profile "$profile" \
        --out "core/codebooks/$profile.bin"
done
