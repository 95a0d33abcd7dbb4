//! `upload`: an upload frame and every pattern code in it.

use omega_tv_sync::codec::MAX_CODED_LEN;
use omega_tv_sync::wire::{FrameReader, Kind, Record};
use omega_tv_sync::Error;

use super::codec::decode_checked;
use crate::fixtures::{base_codes, book, fix_crc, small_book, EDGE_BASE};

/// `upload`: an upload frame, every record, and every pattern code decoded
/// with the default codebook, absolute and as a delta against fixed bases.
/// Accepted means: an upload whose records and absolute codes all decode.
pub fn upload(data: &[u8]) -> Result<(), Error> {
    let data = &fix_crc(data)[..];
    let f = FrameReader::parse(data)?;
    if f.kind() != Kind::Upload {
        return Err(Error::UnknownKind);
    }
    let cb = book();
    let mut patterns = 0usize;
    let mut result = Ok(());
    for (i, r) in f.records().enumerate() {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        match (i, r) {
            (0, Record::UploadHead(_)) => {}
            (0, other) => panic!("upload starts with {other:?}"),
            (_, Record::Pattern(p)) => {
                patterns += 1;
                assert!(!p.code.is_empty() && p.code.len() <= MAX_CODED_LEN);
                assert!((0.0..=1.0).contains(&p.success_rate));
                let abs = decode_checked(&cb, p.code, None);
                let _ = decode_checked(&cb, p.code, Some(base_codes()));
                let _ = decode_checked(&cb, p.code, Some(&EDGE_BASE));
                let _ = decode_checked(&small_book(), p.code, None);
                if p.coding == omega_tv_sync::wire::Coding::Absolute {
                    if let Err(e) = abs {
                        if result.is_ok() {
                            result = Err(e);
                        }
                    }
                }
            }
            (_, Record::Removal(_)) => patterns += 1,
            (_, other) => panic!("upload carries {other:?}"),
        }
    }
    assert!(patterns <= omega_tv_sync::wire::MAX_UPLOAD_PATTERNS);
    result
}
