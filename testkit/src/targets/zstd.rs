//! `zstd`: the decompressor on arbitrary input.

use omega_tv_sync::wire::{FrameReader, Kind};
use omega_tv_sync::Error;

/// Sizes of the output buffer the `zstd` target decompresses into.
#[cfg(feature = "zstd")]
pub const ZSTD_OUT: [usize; 4] = [0, 64, 4096, 70_000];

/// `zstd`: the [`Decompressor`](omega_tv_sync::wire::zstd::Decompressor) on
/// arbitrary input (first byte: output size from [`ZSTD_OUT`], and as a
/// frame kind for the records of the output). Output that fits must
/// compress and decompress back to itself; as a frame body its records must
/// iterate without panicking. Accepted means: it decompressed.
#[cfg(feature = "zstd")]
pub fn zstd(data: &[u8]) -> Result<(), Error> {
    use omega_tv_sync::wire::zstd::{
        Compressor, Decompressor, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_WORDS,
    };
    use std::cell::RefCell;
    thread_local! {
        // What the linked library asks for at run time: a sanitizer build
        // of zstd pads its workspace and needs more than the constants.
        static WS: RefCell<(Vec<u64>, Vec<u64>)> = RefCell::new((
            vec![0u64; DCTX_WORKSPACE_WORDS.max(Decompressor::workspace_bytes().div_ceil(8))],
            vec![0u64; CCTX_WORKSPACE_WORDS.max(Compressor::workspace_bytes().div_ceil(8))],
        ));
    }
    let Some((&sel, src)) = data.split_first() else {
        return Err(Error::Truncated);
    };
    let mut out = vec![0u8; ZSTD_OUT[usize::from(sel) % ZSTD_OUT.len()]];
    WS.with(|ws| {
        let (dws, cws) = &mut *ws.borrow_mut();
        let mut d = Decompressor::new(dws).expect("workspace");
        let n = d.decompress(src, &mut out)?;
        assert!(n <= out.len());
        let plain = &out[..n];
        let kind = match (sel >> 2) % 3 {
            0 => Kind::Upload,
            1 => Kind::Download,
            _ => Kind::Snapshot,
        };
        let f = FrameReader::from_body(kind, 0, plain);
        assert!(f.records().take(n + 2).count() <= n + 1);
        if !plain.is_empty() {
            let mut c = Compressor::new(cws).expect("workspace");
            let mut z = vec![0u8; n + 64 + n / 8];
            let m = c.compress(plain, &mut z).expect("room for any input");
            let mut d = Decompressor::new(dws).expect("workspace");
            let mut back = vec![0u8; n];
            let k = d.decompress(&z[..m], &mut back).expect("own output");
            assert_eq!(&back[..k], plain);
        }
        Ok(())
    })
}
