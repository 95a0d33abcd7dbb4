//! The server's wide reconstruction (`constellation::codebooks::wide`), one
//! pattern at a time and eight at a time, gives the baseline's embeddings
//! bit for bit on every vector unit this CPU has.
//!
//! It lives here, not beside the module, because this package's dev
//! profile is optimised (opt-level 3, `Cargo.toml`) and the server's is
//! not (opt-level 1, which does not vectorise loops): `wide::on` is
//! `#[inline]`, so this crate compiles its own copy of each unit's function
//! at opt-level 3, the vector code the release build runs.

use constellation::codebooks::{indexed, wide, wide::Unit};
use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codes};
use omega_tv_sync::{Embedding, Error, DIM};
use omega_tv_sync_testkit::{rows, SplitMix64};

/// Asserts `got` is `want` bit for bit (or the same error); `what` names
/// the case.
fn assert_same(want: &Result<Embedding, Error>, got: &Result<Embedding, Error>, what: &str) {
    match (want, got) {
        (Ok(x), Ok(y)) => assert_eq!(
            x.as_array().map(f32::to_bits),
            y.as_array().map(f32::to_bits),
            "{what}: embeddings differ"
        ),
        _ => assert_eq!(want, got, "{what}"),
    }
}

#[test]
fn the_wide_reconstruction_is_the_baseline_one() {
    let units: Vec<Unit> = [Unit::Avx512, Unit::Avx2]
        .into_iter()
        .filter(|u| u.available())
        .collect();
    if units.is_empty() {
        eprintln!("!!! SKIPPED: no AVX2 or AVX-512 on this CPU; the wide reconstruction is the baseline here");
        return;
    }
    let pats = rows("patterns_public.f32");
    let mut rng = SplitMix64::new(17);
    for book in [minilm_v1(), minilm_small_v1()] {
        // As the server holds it: with the decoder index and, for
        // `minilm-v1`, the float basis (the small profile has no basis).
        let book = indexed(book.unwrap());
        assert_eq!(book.has_float_basis(), book.float_basis_len() > 0);
        let id = book.id();
        let mut compared = 0;
        let mut all = Vec::new();
        let mut same = |c: &Codes| {
            all.push(*c);
            let want = wide::on(Unit::Baseline, &book, c).expect("always available");
            for &u in &units {
                let got = wide::on(u, &book, c).expect("available");
                assert_same(&want, &got, &format!("codebook {id:08x}, {}", u.name()));
            }
            compared += 1;
        };
        for p in &pats {
            same(&book.quantize(&Embedding::new(*p).unwrap()));
        }
        // Exactly 0 to 9 nonzero components: every remainder of the loop's
        // four-row passes.
        for nonzero in 0..10 {
            for _ in 0..20 {
                let mut c = [0i16; DIM];
                let mut set = 0;
                while set < nonzero {
                    let j = rng.below(DIM as u64) as usize;
                    if c[j] == 0 {
                        c[j] = (rng.below(400) as i16 - 200) | 1;
                        set += 1;
                    }
                }
                same(&c);
            }
        }
        for spread in [3i32, 40, 3000, 32767] {
            for _ in 0..200 {
                let c: Codes = std::array::from_fn(|_| {
                    (rng.below(2 * spread as u64 + 1) as i32 - spread) as i16
                });
                same(&c);
            }
        }
        // The extremes, and the all-zero codes (the normalised mean).
        same(&[i16::MAX; DIM]);
        same(&[i16::MIN; DIM]);
        same(&[0; DIM]);
        assert_eq!(compared, pats.len() + 200 + 800 + 3);
        // The batched path (eight patterns per pass over the basis), on
        // every unit, over all of the codes above: one by one's results.
        let want: Vec<_> = all
            .iter()
            .map(|c| wide::on(Unit::Baseline, &book, c).expect("always available"))
            .collect();
        for u in units.iter().copied().chain([Unit::Baseline]) {
            let mut got: Vec<_> = all.iter().map(|_| Err(Error::Truncated)).collect();
            assert!(wide::on_many(u, &book, &all, &mut got));
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                let what = format!("codebook {id:08x}, {} batched, pattern {i}", u.name());
                assert_same(w, g, &what);
            }
        }
    }
}
