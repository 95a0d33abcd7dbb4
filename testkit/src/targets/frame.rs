//! `frame_header`: the frame reader and the record iterator of any kind.

use omega_tv_sync::wire::{FrameReader, FrameWriter, Record, OVERHEAD};
use omega_tv_sync::Error;

use crate::fixtures::fix_crc;

/// Re-writes every record of `frame` with a [`FrameWriter`] and checks that
/// the result reads back as the same records: what the reader accepts, the
/// writer accepts too, and nothing is lost on the way.
fn rewrite_same(frame: &FrameReader<'_>, records: &[Record<'_>]) {
    let mut buf = vec![0u8; frame.body().len() + OVERHEAD + 64];
    let mut w = FrameWriter::new(&mut buf, frame.kind(), frame.codebook_id()).expect("room");
    for r in records {
        w.push(r).expect("a record the reader accepted is writable");
    }
    let out = w.finish().expect("finish");
    let back = FrameReader::parse(out).expect("a written frame parses");
    assert_eq!(back.kind(), frame.kind());
    assert_eq!(back.codebook_id(), frame.codebook_id());
    let again: Vec<Record<'_>> = back
        .records()
        .collect::<Result<_, _>>()
        .expect("a written frame decodes");
    assert_eq!(again.as_slice(), records, "records changed on a rewrite");
}

/// `frame_header`: [`FrameReader::parse`] of the input as it is, then of
/// the input with its CRC fixed ([`fix_crc`]) and the record iterator of any
/// kind; an accepted frame must survive a rewrite unchanged.
pub fn frame_header(data: &[u8]) -> Result<(), Error> {
    let raw = FrameReader::parse(data).map(|_| ());
    let fixed = fix_crc(data);
    let r = frame_checked(&fixed);
    if raw.is_err() && r.is_ok() {
        // Only the checksum differed.
        assert_eq!(raw, Err(Error::Checksum));
    }
    raw.and(r)
}

fn frame_checked(data: &[u8]) -> Result<(), Error> {
    let f = FrameReader::parse(data)?;
    assert!(data.len() >= OVERHEAD);
    assert_eq!(f.body(), &data[9..data.len() - 4]);
    assert_eq!(f.kind() as u8, data[3]);
    assert_eq!(f.codebook_id().to_le_bytes(), data[5..9]);
    let mut records = Vec::new();
    let mut result = Ok(());
    let mut it = f.records();
    for r in it.by_ref() {
        // Every record takes at least its tag byte (the head may be the only one).
        assert!(records.len() <= f.body().len() + 1);
        match r {
            Ok(r) => records.push(r),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_err() {
        assert!(it.next().is_none(), "records continue after an error");
        return result;
    }
    rewrite_same(&f, &records);
    Ok(())
}
