use super::*;
use crate::types::{Category, ContentId, PatternId, Region, TrendSignal};
use crate::Error;

const CB: u32 = 0xC0DE_B00C;

fn id(s: &str) -> PatternId {
    PatternId::new(s).unwrap()
}

fn upload(buf: &mut [u8], code: &[u8]) -> usize {
    let mut w = FrameWriter::new(buf, Kind::Upload, CB).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq: 7,
        since: 300,
        caps: Caps {
            max_globals: 32,
            max_trends: 16,
            max_bytes: 16384,
        },
    }))
    .unwrap();
    w.push(&Record::Pattern(PatternUpdate {
        id: id("p1"),
        base_rev: 3,
        success_rate: 0.8,
        sample_count: 42,
        category: Category::new("drama").unwrap(),
        coding: Coding::Delta,
        code,
    }))
    .unwrap();
    w.push(&Record::Removal(PatternRemoval {
        id: id("p9"),
        base_rev: 2,
    }))
    .unwrap();
    w.finish().unwrap().len()
}

fn download(buf: &mut [u8], code: &[u8]) -> usize {
    let mut w = FrameWriter::new(buf, Kind::Download, CB).unwrap();
    let recs = [
        Record::DownloadHead(DownloadHead {
            seq: 7,
            global_version: 310,
            more: true,
            reset: false,
            next_sync_s: 600,
        }),
        Record::Ack(Ack {
            id: id("p1"),
            revision: 4,
        }),
        Record::Conflict(Conflict {
            id: id("p2"),
            server_rev: 9,
            state: Some(ServerState {
                success_rate: 0.75,
                sample_count: 12,
                category: Category::new("comedy").unwrap(),
                code,
            }),
        }),
        Record::Conflict(Conflict {
            id: id("p3"),
            server_rev: 0,
            state: None,
        }),
        Record::GlobalUpsert(GlobalUpsert {
            id: 17,
            version: 305,
            success_rate: 0.9,
            sample_count: 1000,
            contributors: 6,
            category: Category::new("drama").unwrap(),
            code,
        }),
        Record::GlobalRemove(GlobalRemove {
            id: 3,
            version: 306,
        }),
        Record::Trend(TrendRecord {
            version: 310,
            signal: TrendSignal::new(
                ContentId::new("the_quiet_american").unwrap(),
                2.5,
                Region::new("DE").unwrap(),
                Category::new("fresh").unwrap(),
                1_700_000_000,
            )
            .unwrap(),
        }),
    ];
    for r in &recs {
        w.push(r).unwrap();
    }
    w.finish().unwrap().len()
}

fn code() -> [u8; 40] {
    core::array::from_fn(|i| (i * 37 + 11) as u8)
}

#[test]
fn upload_round_trip() {
    let c = code();
    let mut buf = [0u8; 512];
    let n = upload(&mut buf, &c);
    let f = FrameReader::parse(&buf[..n]).unwrap();
    assert_eq!(f.kind(), Kind::Upload);
    assert_eq!(f.codebook_id(), CB);
    let recs: heapless::Vec<Record<'_>, 8> = f.records().map(|r| r.unwrap()).collect();
    assert_eq!(recs.len(), 3);
    match &recs[1] {
        Record::Pattern(p) => {
            assert_eq!(p.id.as_str(), "p1");
            assert_eq!(p.base_rev, 3);
            assert_eq!(p.code, &c[..]);
            assert_eq!(p.coding, Coding::Delta);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&recs[0], Record::UploadHead(h) if h.seq == 7 && h.since == 300));
}

#[test]
fn download_round_trip() {
    let c = code();
    let mut buf = [0u8; 1024];
    let n = download(&mut buf, &c);
    let f = FrameReader::parse(&buf[..n]).unwrap();
    let tags: heapless::Vec<u8, 8> = f.records().map(|r| r.unwrap().tag()).collect();
    assert_eq!(&tags[..], &[0x10, 0x11, 0x12, 0x12, 0x13, 0x14, 0x15]);
    let recs: heapless::Vec<Record<'_>, 8> = f.records().map(|r| r.unwrap()).collect();
    assert!(matches!(&recs[2], Record::Conflict(k) if k.state.as_ref().unwrap().code == &c[..]));
    assert!(matches!(&recs[3], Record::Conflict(k) if k.state.is_none()));
}

#[test]
fn records_out_of_place_are_refused() {
    let mut buf = [0u8; 256];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, CB).unwrap();
    // The head must come first.
    assert_eq!(
        w.push(&Record::Removal(PatternRemoval {
            id: id("x"),
            base_rev: 0
        })),
        Err(Error::UnknownKind)
    );
    // A download record never goes into an upload.
    w.push(&Record::UploadHead(UploadHead {
        seq: 1,
        since: 0,
        caps: Caps {
            max_globals: 1,
            max_trends: 1,
            max_bytes: 4096,
        },
    }))
    .unwrap();
    assert_eq!(
        w.push(&Record::Ack(Ack {
            id: id("x"),
            revision: 1
        })),
        Err(Error::UnknownKind)
    );
    // A frame with no records cannot be finished.
    let mut b2 = [0u8; 64];
    let w2 = FrameWriter::new(&mut b2, Kind::Download, CB).unwrap();
    assert_eq!(w2.finish().unwrap_err(), Error::Truncated);
}

#[test]
fn full_buffer_leaves_frame_intact() {
    let c = [1u8; 200];
    let mut buf = [0u8; 300];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, CB).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq: 1,
        since: 0,
        caps: Caps {
            max_globals: 1,
            max_trends: 1,
            max_bytes: 4096,
        },
    }))
    .unwrap();
    let p = Record::Pattern(PatternUpdate {
        id: id("p"),
        base_rev: 0,
        success_rate: 1.0,
        sample_count: 10,
        category: Category::new("c").unwrap(),
        coding: Coding::Absolute,
        code: &c,
    });
    w.push(&p).unwrap();
    let before = w.len();
    assert_eq!(w.push(&p), Err(Error::BufferTooSmall));
    assert_eq!(w.len(), before);
    assert_eq!(w.records(), 2);
    let frame = w.finish().unwrap();
    let f = FrameReader::parse(frame).unwrap();
    assert_eq!(f.records().filter(|r| r.is_ok()).count(), 2);
}

#[test]
fn writer_validates_like_reader() {
    let mut buf = [0u8; 4096];
    let mut w = FrameWriter::new(&mut buf, Kind::Upload, CB).unwrap();
    w.push(&Record::UploadHead(UploadHead {
        seq: 1,
        since: 0,
        caps: Caps {
            max_globals: 1,
            max_trends: 1,
            max_bytes: 4096,
        },
    }))
    .unwrap();
    let mk = |rate: f32, code: &'static [u8]| {
        Record::Pattern(PatternUpdate {
            id: id("p"),
            base_rev: 0,
            success_rate: rate,
            sample_count: 10,
            category: Category::new("c").unwrap(),
            coding: Coding::Absolute,
            code,
        })
    };
    assert_eq!(w.push(&mk(f32::NAN, &[1])), Err(Error::NonFinite));
    assert_eq!(w.push(&mk(1.5, &[1])), Err(Error::RateOutOfRange));
    assert_eq!(w.push(&mk(0.5, &[])), Err(Error::Truncated));
    static BIG: [u8; MAX_CODE_LEN + 1] = [0; MAX_CODE_LEN + 1];
    assert_eq!(w.push(&mk(0.5, &BIG)), Err(Error::Oversize));
}

/// Rewrites the CRC so a test can reach the body decoder with bad content.
fn reseal(frame: &mut [u8]) {
    let n = frame.len() - TRAILER_LEN;
    let crc = crc32(&frame[..n]);
    frame[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn header_errors_are_typed() {
    let c = code();
    let mut buf = [0u8; 512];
    let n = upload(&mut buf, &c);
    let good = &buf[..n];
    let mut f = [0u8; 512];
    let case = |i: usize, v: u8, f: &mut [u8; 512]| {
        f[..n].copy_from_slice(good);
        f[i] = v;
        reseal(&mut f[..n]);
        FrameReader::parse(&f[..n]).map(|_| ())
    };
    assert_eq!(case(0, b'X', &mut f), Err(Error::BadMagic));
    assert_eq!(case(2, 2, &mut f), Err(Error::UnsupportedVersion));
    assert_eq!(case(3, 9, &mut f), Err(Error::UnknownKind));
    assert_eq!(case(4, 0x80, &mut f), Err(Error::BadFlags));
    assert_eq!(
        FrameReader::parse(&good[..5]).map(|_| ()),
        Err(Error::Truncated)
    );
    let mut g = [0u8; 512];
    g[..n].copy_from_slice(good);
    g[12] ^= 1;
    assert_eq!(
        FrameReader::parse(&g[..n]).map(|_| ()),
        Err(Error::Checksum)
    );
}

#[test]
fn nan_rate_in_a_sealed_frame_is_non_finite() {
    let c = code();
    let mut buf = [0u8; 512];
    let n = upload(&mut buf, &c);
    // Find the rate 0.8f32 in the body and replace it with NaN.
    let needle = 0.8f32.to_le_bytes();
    let at = buf[..n].windows(4).position(|w| w == needle).unwrap();
    buf[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    reseal(&mut buf[..n]);
    let f = FrameReader::parse(&buf[..n]).unwrap();
    let errs: heapless::Vec<Error, 4> = f.records().filter_map(|r| r.err()).collect();
    assert_eq!(&errs[..], &[Error::NonFinite]);
}

/// Decodes everything a frame holds, as a receiver would.
fn consume(bytes: &[u8]) -> Result<usize, Error> {
    let f = FrameReader::parse(bytes)?;
    let mut n = 0;
    for r in f.records() {
        r?;
        n += 1;
    }
    Ok(n)
}

/// Same, but past the CRC: what a malicious peer that computes CRCs reaches.
fn consume_resealed(bytes: &mut [u8]) -> Result<usize, Error> {
    if bytes.len() >= OVERHEAD {
        reseal(bytes);
    }
    consume(bytes)
}

#[test]
fn every_truncation_and_single_byte_corruption_is_an_error_or_valid() {
    let c = code();
    for which in 0..2 {
        let mut buf = [0u8; 1024];
        let n = if which == 0 {
            upload(&mut buf, &c)
        } else {
            download(&mut buf, &c)
        };
        let good = buf;
        let records = consume(&good[..n]).unwrap();
        for cut in 0..n {
            assert!(
                consume(&good[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
            let mut t = good;
            let _ = consume_resealed(&mut t[..cut]);
        }
        for i in 0..n {
            for v in [
                0x00,
                0xFF,
                good[i] ^ 0x01,
                good[i] ^ 0x80,
                good[i].wrapping_add(1),
            ] {
                if v == good[i] {
                    continue;
                }
                let mut t = good;
                t[i] = v;
                // With its CRC intact, any change is caught.
                assert!(consume(&t[..n]).is_err(), "corruption at {i} accepted");
                // Resealed, the body decoder must still not panic; it may
                // accept a value that is valid.
                if let Ok(k) = consume_resealed(&mut t[..n]) {
                    assert!(k <= records + 1);
                }
            }
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    // xorshift64*, fixed seed: bounded and repeatable.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut buf = [0u8; 300];
    for round in 0..20_000 {
        let len = (next() % 300) as usize;
        for b in buf[..len].iter_mut() {
            *b = next() as u8;
        }
        if round % 2 == 0 && len >= OVERHEAD {
            // Plausible header so the body decoder is reached.
            buf[0..2].copy_from_slice(&MAGIC);
            buf[2] = FORMAT_VERSION;
            buf[3] = 1 + (round % 3) as u8;
            buf[4] = 0;
            buf[9] = [tag::UPLOAD_HEAD, tag::DOWNLOAD_HEAD, tag::SNAPSHOT][round % 3];
            reseal(&mut buf[..len]);
        }
        let _ = consume(&buf[..len]);
    }
}

#[test]
fn max_len_bounds_hold() {
    // The largest strings, the largest numbers, the largest code.
    static CODE: [u8; MAX_CODE_LEN] = [0xAB; MAX_CODE_LEN];
    let name = "ABCDEFGHIJKLMNOP";
    let mut buf = [0u8; 3 * MAX_CODE_LEN];
    let mut w = FrameWriter::new(&mut buf, Kind::Download, u32::MAX).unwrap();
    w.push(&Record::DownloadHead(DownloadHead {
        seq: u64::MAX,
        global_version: u64::MAX,
        more: true,
        reset: true,
        next_sync_s: u32::MAX,
    }))
    .unwrap();
    assert_eq!(w.len() - HEADER_LEN, max_len::DOWNLOAD_HEAD);
    let before = w.len();
    w.push(&Record::GlobalUpsert(GlobalUpsert {
        id: u32::MAX,
        version: u64::MAX,
        success_rate: 1.0,
        sample_count: u32::MAX,
        contributors: u32::MAX,
        category: Category::new(name).unwrap(),
        code: &CODE,
    }))
    .unwrap();
    assert_eq!(w.len() - before, max_len::GLOBAL_UPSERT);
    let before = w.len();
    w.push(&Record::Conflict(Conflict {
        id: id(name),
        server_rev: u32::MAX,
        state: Some(ServerState {
            success_rate: 1.0,
            sample_count: u32::MAX,
            category: Category::new(name).unwrap(),
            code: &CODE,
        }),
    }))
    .unwrap();
    assert_eq!(w.len() - before, max_len::CONFLICT);
    let mut ubuf = [0u8; 2 * MAX_CODE_LEN];
    let mut u = FrameWriter::new(&mut ubuf, Kind::Upload, 0).unwrap();
    u.push(&Record::UploadHead(UploadHead {
        seq: u64::MAX,
        since: u64::MAX,
        caps: Caps {
            max_globals: u16::MAX,
            max_trends: u16::MAX,
            max_bytes: u32::MAX,
        },
    }))
    .unwrap();
    assert_eq!(u.len() - HEADER_LEN, max_len::UPLOAD_HEAD);
    let before = u.len();
    u.push(&Record::Pattern(PatternUpdate {
        id: id(name),
        base_rev: u32::MAX,
        success_rate: 1.0,
        sample_count: u32::MAX,
        category: Category::new(name).unwrap(),
        coding: Coding::Absolute,
        code: &CODE,
    }))
    .unwrap();
    assert_eq!(u.len() - before, max_len::PATTERN);
}
