//! Frame-level zstd: used only when it makes the frame smaller, and read back
//! exactly. Run with `--features zstd`.
#![cfg(feature = "zstd")]

use omega_tv_sync::types::{Category, ContentId, Region, TrendSignal};
use omega_tv_sync::wire::zstd::{
    Compressor, Decompressor, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_WORDS,
};
use omega_tv_sync::wire::{DownloadHead, FrameReader, FrameWriter, Kind, Record, TrendRecord};

fn movie_names() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/minilm/items_public.meta.tsv"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(2).unwrap().to_string())
        .collect()
}

fn trends_frame<'b>(
    buf: &'b mut [u8],
    names: &[String],
    zstd: Option<&mut Compressor<'_>>,
) -> &'b [u8] {
    let mut w = FrameWriter::new(buf, Kind::Download, 7).unwrap();
    w.push(&Record::DownloadHead(DownloadHead {
        seq: 3,
        global_version: 99,
        more: false,
        reset: false,
        next_sync_s: 600,
    }))
    .unwrap();
    for (i, n) in names.iter().enumerate() {
        let signal = TrendSignal::new(
            ContentId::new(n).unwrap(),
            1.0 + i as f32 / 8.0,
            Region::new(["DE", "US", "FR"][i % 3]).unwrap(),
            Category::new(["plot", "fresh", "rotten"][i % 3]).unwrap(),
            1_700_000_000 + i as u64,
        )
        .unwrap();
        w.push(&Record::Trend(TrendRecord {
            version: 50 + i as u64,
            signal,
        }))
        .unwrap();
    }
    match zstd {
        Some(c) => {
            let mut scratch = vec![0u8; 8192];
            w.finish_zstd(c, &mut scratch).unwrap()
        }
        None => w.finish().unwrap(),
    }
}

#[test]
fn compressible_download_shrinks_and_reads_back_identically() {
    let names = movie_names();
    let mut cws = vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut dws = vec![0u64; DCTX_WORKSPACE_WORDS];
    let mut c = Compressor::new(&mut cws).unwrap();
    let mut d = Decompressor::new(&mut dws).unwrap();
    let mut plain_buf = vec![0u8; 8192];
    let mut z_buf = vec![0u8; 8192];
    let plain = trends_frame(&mut plain_buf, &names[..40], None).to_vec();
    let z = trends_frame(&mut z_buf, &names[..40], Some(&mut c)).to_vec();
    let fz = FrameReader::parse(&z).unwrap();
    assert!(fz.is_compressed());
    assert!(z.len() < plain.len(), "{} vs {}", z.len(), plain.len());
    // Records are unreadable until decompressed ...
    assert!(fz.records().next().unwrap().is_err());
    let mut scratch = vec![0u8; 8192];
    let opened = fz.decompress(&mut d, &mut scratch).unwrap();
    let a: Vec<_> = opened.records().map(|r| r.unwrap()).collect();
    let fp = FrameReader::parse(&plain).unwrap();
    let b: Vec<_> = fp.records().map(|r| r.unwrap()).collect();
    assert_eq!(a, b);
    // ... and a too-small scratch is an error, not a truncation.
    let mut small = vec![0u8; 100];
    assert!(fz.decompress(&mut d, &mut small).is_err());
}

#[test]
fn incompressible_body_stays_plain() {
    // One short record: zstd's own header would make it bigger.
    let names = movie_names();
    let mut cws = vec![0u64; CCTX_WORKSPACE_WORDS];
    let mut c = Compressor::new(&mut cws).unwrap();
    let mut buf = vec![0u8; 1024];
    let f = trends_frame(&mut buf, &names[..1], Some(&mut c)).to_vec();
    let r = FrameReader::parse(&f).unwrap();
    assert!(!r.is_compressed());
    assert_eq!(r.records().count(), 2);
}
