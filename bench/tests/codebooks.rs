//! The committed codebooks are exactly what the generator produces from
//! `data/minilm/items_public.f32` (run `scripts/gen-codebook.sh` after
//! changing the generator or its options).

use omega_tv_sync::codec::Codebook;
use omega_tv_sync_bench::data::{data_dir, read_rows};
use omega_tv_sync_bench::fit::{self, profiles};
use std::path::Path;

#[test]
fn committed_codebooks_regenerate_byte_for_byte() {
    let items = read_rows(&data_dir().join("items_public.f32")).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/codebooks");
    for p in profiles() {
        let committed = std::fs::read(dir.join(p.file)).unwrap();
        let fresh = fit::generate(&items, &p.opts).blob;
        let cb = Codebook::from_bytes(&fresh).unwrap();
        assert_eq!(cb.has_basis(), p.opts.basis);
        assert!(
            fresh == committed,
            "{}: regenerated blob ({} B, id {:#010x}) differs from core/codebooks/{}; run scripts/gen-codebook.sh",
            p.name,
            fresh.len(),
            cb.id(),
            p.file
        );
    }
}
