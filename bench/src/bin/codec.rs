//! Codec benchmark on the real MiniLM vectors.
//!
//! ```text
//! cargo run --release -p omega-tv-sync-bench --bin codec -- \
//!     --patterns data/minilm/patterns_public.f32 --items data/minilm/items_public.f32
//! ```
//!
//! Prints one table comparing f32+zstd-3, int8 with a per-vector scale, the
//! default codec (absolute and closed-loop delta) and the small-flash profile,
//! then one JSON line with the headline figures. `bytes vs int8` is each
//! row's bytes over the int8 row's, measured in the same run.
//!
//! Held-out check: the default profile's generator is also run here on the
//! first 80% of the items only (3,840 of 4,800, the same ratio as the public
//! 4,800 of all 6,000), and that codebook is measured on the public patterns
//! (never in any fit) against the whole catalogue, so 20% of the items it
//! ranks were never seen by the fit (rows "held-out fit").
//!
//! Delta drift is fixed: pattern `i` becomes
//! `normalize(k * old_i + item[(7 i + 3) mod n])`, `k = 5 + (i mod 16)`, coded
//! against the acked state `quantize(old_i)`.

use omega_tv_sync::codec::{minilm_small_v1, minilm_v1, Codebook, Codes, MAX_CODED_LEN};
use omega_tv_sync::Embedding;
use omega_tv_sync_bench::data::{drift, read_rows, Row};
use omega_tv_sync_bench::fit;
use omega_tv_sync_bench::metrics::{cos, rank, recall10, Ranked};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

struct Stats {
    name: String,
    bytes: f64,
    cos_mean: f64,
    cos_min: f64,
    recall: f64,
    enc_ns: f64,
    dec_ns: f64,
    /// Quantise and reconstruct alone (codec rows).
    q_ns: Option<(f64, f64)>,
}

struct Set<'a> {
    orig: &'a [Row],
    ranked: &'a [Ranked],
    items: &'a [Row],
}

impl Set<'_> {
    fn stats(&self, name: &str, bytes: &[usize], dec: &[Row], enc_ns: f64, dec_ns: f64) -> Stats {
        let n = self.orig.len() as f64;
        let cs: Vec<f64> = self.orig.iter().zip(dec).map(|(a, b)| cos(a, b)).collect();
        let recall: f64 = (0..self.orig.len())
            .map(|i| recall10(&self.orig[i], &self.ranked[i], &dec[i], self.items))
            .sum::<f64>()
            / n;
        Stats {
            name: name.to_string(),
            bytes: bytes.iter().sum::<usize>() as f64 / n,
            cos_mean: cs.iter().sum::<f64>() / n,
            cos_min: cs.iter().copied().fold(f64::INFINITY, f64::min),
            recall,
            enc_ns,
            dec_ns,
            q_ns: None,
        }
    }
}

fn to_bytes(r: &Row) -> Vec<u8> {
    r.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn timed<T>(n: usize, mut f: impl FnMut() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_nanos() as f64 / n as f64)
}

fn zstd_row(set: &Set<'_>) -> Stats {
    let n = set.orig.len();
    let raw: Vec<Vec<u8>> = set.orig.iter().map(to_bytes).collect();
    let (comp, enc_ns) = timed(n, || {
        raw.iter()
            .map(|r| zstd::bulk::compress(r, 3).expect("zstd compress"))
            .collect::<Vec<_>>()
    });
    let (dec, dec_ns) = timed(n, || {
        comp.iter()
            .map(|c| {
                let b = zstd::bulk::decompress(c, 4 * 384).expect("zstd decompress");
                let mut r = [0f32; 384];
                for (x, c) in r.iter_mut().zip(b.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                r
            })
            .collect::<Vec<_>>()
    });
    let bytes: Vec<usize> = comp.iter().map(Vec::len).collect();
    set.stats("f32 + zstd-3", &bytes, &dec, enc_ns, dec_ns)
}

fn int8_row(set: &Set<'_>) -> Stats {
    let n = set.orig.len();
    let (q, enc_ns) = timed(n, || {
        set.orig
            .iter()
            .map(|x| {
                let m = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = m / 127.0;
                let mut q = [0i8; 384];
                for (o, v) in q.iter_mut().zip(x.iter()) {
                    *o = (v / s).round() as i8;
                }
                (q, s)
            })
            .collect::<Vec<_>>()
    });
    let (dec, dec_ns) = timed(n, || {
        q.iter()
            .map(|(q, s)| {
                let mut r = [0f32; 384];
                for (o, v) in r.iter_mut().zip(q.iter()) {
                    *o = f32::from(*v) * s;
                }
                *Embedding::normalize(r).expect("nonzero").as_array()
            })
            .collect::<Vec<_>>()
    });
    set.stats(
        "int8 per-vector scale (+4 B)",
        &vec![388; n],
        &dec,
        enc_ns,
        dec_ns,
    )
}

/// Absolute coding of `set.orig`, or delta coding against `base`.
fn codec_row(name: &str, cb: &Codebook<'_>, set: &Set<'_>, base: Option<&[Codes]>) -> Stats {
    let n = set.orig.len();
    let embs: Vec<Embedding> = set
        .orig
        .iter()
        .map(|x| Embedding::new(*x).expect("unit norm"))
        .collect();
    let mut bufs = vec![[0u8; MAX_CODED_LEN]; n];
    let (lens, enc_ns) = timed(n, || {
        embs.iter()
            .zip(bufs.iter_mut())
            .enumerate()
            .map(|(i, (e, buf))| {
                let q = cb.quantize(e);
                cb.encode(&q, base.map(|b| &b[i]), buf).expect("encode")
            })
            .collect::<Vec<_>>()
    });
    let (dec, dec_ns) = timed(n, || {
        bufs.iter()
            .zip(lens.iter())
            .enumerate()
            .map(|(i, (buf, &len))| {
                let mut q = [0i16; 384];
                cb.decode(&buf[..len], base.map(|b| &b[i]), &mut q)
                    .expect("decode");
                *cb.reconstruct(&q).expect("reconstruct").as_array()
            })
            .collect::<Vec<_>>()
    });
    // The decoded codes must be exactly the quantised ones.
    for (i, e) in embs.iter().enumerate() {
        let mut q = [0i16; 384];
        cb.decode(&bufs[i][..lens[i]], base.map(|b| &b[i]), &mut q)
            .expect("decode");
        assert_eq!(q, cb.quantize(e), "round trip of pattern {i}");
    }
    black_box(&dec);
    let (qs, q_ns) = timed(n, || {
        embs.iter().map(|e| cb.quantize(e)).collect::<Vec<_>>()
    });
    let (rs, r_ns) = timed(n, || {
        qs.iter()
            .map(|q| cb.reconstruct(q).expect("reconstruct"))
            .collect::<Vec<_>>()
    });
    black_box(&rs);
    let mut st = set.stats(name, &lens, &dec, enc_ns, dec_ns);
    st.q_ns = Some((q_ns, r_ns));
    st
}

fn main() {
    let mut patterns = None;
    let mut items = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--patterns" => patterns = args.next().map(PathBuf::from),
            "--items" => items = args.next().map(PathBuf::from),
            _ => {
                eprintln!("usage: codec --patterns FILE --items FILE");
                std::process::exit(2);
            }
        }
    }
    let (Some(pp), Some(ip)) = (patterns, items) else {
        eprintln!("usage: codec --patterns FILE --items FILE");
        std::process::exit(2);
    };
    let patterns = read_rows(&pp).expect("read patterns");
    let items = read_rows(&ip).expect("read items");
    let n_items = items.len();
    let drifted: Vec<Row> = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| drift(p, &items[(7 * i + 3) % n_items], (5 + i % 16) as f64))
        .collect();
    let rk: Vec<Ranked> = patterns.iter().map(|p| rank(p, &items)).collect();
    let rk_new: Vec<Ranked> = drifted.iter().map(|p| rank(p, &items)).collect();
    let abs_set = Set {
        orig: &patterns,
        ranked: &rk,
        items: &items,
    };
    let new_set = Set {
        orig: &drifted,
        ranked: &rk_new,
        items: &items,
    };
    let cb = minilm_v1().expect("default codebook");
    let small = minilm_small_v1().expect("small codebook");
    let acked = |cb: &Codebook<'_>| -> Vec<Codes> {
        patterns
            .iter()
            .map(|p| cb.quantize(&Embedding::new(*p).expect("unit")))
            .collect()
    };
    let acked_cb = acked(&cb);
    let acked_small = acked(&small);
    // Held-out check: the default profile fitted on the first 80% of the items.
    let default_opts = fit::profiles()[0].opts.clone();
    let held_blob = fit::generate(&items[..n_items * 4 / 5], &default_opts).blob;
    let held = Codebook::from_bytes(&held_blob).expect("held-out codebook");
    let acked_held = acked(&held);
    let rows = [
        zstd_row(&abs_set),
        int8_row(&abs_set),
        codec_row("codec minilm-v1, absolute", &cb, &abs_set, None),
        codec_row(
            "codec minilm-v1, closed-loop delta",
            &cb,
            &new_set,
            Some(&acked_cb),
        ),
        codec_row("small minilm-small-v1, absolute", &small, &abs_set, None),
        codec_row(
            "small minilm-small-v1, closed-loop delta",
            &small,
            &new_set,
            Some(&acked_small),
        ),
        codec_row(
            "held-out fit (80% of items), absolute",
            &held,
            &abs_set,
            None,
        ),
        codec_row(
            "held-out fit (80% of items), closed-loop delta",
            &held,
            &new_set,
            Some(&acked_held),
        ),
    ];
    println!(
        "{} patterns, {} items; delta drift: normalize(k*old + item[(7i+3) mod n]), k = 5 + (i mod 16)",
        patterns.len(),
        n_items
    );
    println!(
        "codebooks: minilm-v1 id {:#010x} {} B flash; minilm-small-v1 id {:#010x} {} B flash",
        cb.id(),
        cb.flash_bytes(),
        small.id(),
        small.flash_bytes()
    );
    println!();
    println!(
        "held-out codebook: fitted on items 0..{} only, id {:#010x}; catalogue for recall: all {} items",
        n_items * 4 / 5,
        held.id(),
        n_items
    );
    println!();
    println!("| scheme | bytes/pattern | bytes vs int8 | cos mean | cos min | recall@10 | encode ns | decode ns | quantize ns | reconstruct ns |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let int8_bytes = rows[1].bytes;
    for r in &rows {
        let (q, rc) = r.q_ns.map_or(("".to_string(), "".to_string()), |(q, r)| {
            (format!("{q:.0}"), format!("{r:.0}"))
        });
        println!(
            "| {} | {:.1} | {:.3} | {:.6} | {:.6} | {:.4} | {:.0} | {:.0} | {} | {} |",
            r.name,
            r.bytes,
            r.bytes / int8_bytes,
            r.cos_mean,
            r.cos_min,
            r.recall,
            r.enc_ns,
            r.dec_ns,
            q,
            rc
        );
    }
    let (a, d, sa, sd) = (&rows[2], &rows[3], &rows[4], &rows[5]);
    let (ha, hd) = (&rows[6], &rows[7]);
    println!(
        "{{\"abs_bytes\":{:.2},\"delta_bytes\":{:.2},\"cos_mean\":{:.6},\"cos_min\":{:.6},\"recall10\":{:.4},\"encode_ns\":{:.0},\"decode_ns\":{:.0},\"codebook_bytes\":{},\"codebook_id\":\"{:#010x}\",\"abs_recall10\":{:.4},\"delta_recall10\":{:.4},\"small_abs_bytes\":{:.2},\"small_delta_bytes\":{:.2},\"small_cos_mean\":{:.6},\"small_cos_min\":{:.6},\"small_recall10\":{:.4},\"small_encode_ns\":{:.0},\"small_decode_ns\":{:.0},\"small_codebook_bytes\":{},\"zstd_bytes\":{:.2},\"int8_bytes\":{:.2},\"int8_recall10\":{:.4},\"heldout_abs_bytes\":{:.2},\"heldout_delta_bytes\":{:.2},\"heldout_abs_recall10\":{:.4},\"heldout_delta_recall10\":{:.4}}}",
        a.bytes,
        d.bytes,
        (a.cos_mean + d.cos_mean) / 2.0,
        a.cos_min.min(d.cos_min),
        a.recall.min(d.recall),
        (a.enc_ns + d.enc_ns) / 2.0,
        (a.dec_ns + d.dec_ns) / 2.0,
        cb.flash_bytes(),
        cb.id(),
        a.recall,
        d.recall,
        sa.bytes,
        sd.bytes,
        (sa.cos_mean + sd.cos_mean) / 2.0,
        sa.cos_min.min(sd.cos_min),
        sa.recall.min(sd.recall),
        (sa.enc_ns + sd.enc_ns) / 2.0,
        (sa.dec_ns + sd.dec_ns) / 2.0,
        small.flash_bytes(),
        rows[0].bytes,
        rows[1].bytes,
        rows[1].recall,
        ha.bytes,
        hd.bytes,
        ha.recall,
        hd.recall,
    );
}
