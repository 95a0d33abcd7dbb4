//! Fuzz target bodies for the core's decoders. Each takes arbitrary bytes,
//! must never panic, and checks invariants that hold for every input
//! (`assert!` turns a broken one into a crash the fuzzer reports). The
//! return value says whether the input was accepted as a whole: real frames
//! (the seed corpora) must be.
//!
//! This file is compiled three times: into the fuzz crate, and included by
//! `core/tests/fuzz_replay.rs` (which also writes the seed corpora from real
//! vectors) and `server/tests/fuzz_replay.rs`.

use std::sync::OnceLock;

use omega_tv_sync::codec::{self, Codebook, Codes, MAX_CODED_LEN};
use omega_tv_sync::sync::{Config, GlobalSink, Outcome, SyncClient};
use omega_tv_sync::wire::{
    Ack, Conflict, DownloadHead, FrameReader, FrameWriter, GlobalRemove, GlobalUpsert, Kind,
    Record, ServerState, TrendRecord, OVERHEAD,
};
use omega_tv_sync::{
    Category, ContentId, DeviceId, Embedding, Error, GlobalPattern, Pattern, PatternId, Region,
    Response, TrendSignal, DIM,
};

/// Device id of every client the targets build (snapshots must carry it).
pub const DEVICE: &str = "stb-fuzz-0001";
/// Slots of the clients the targets build.
pub const SLOTS: usize = 8;
/// The client type the targets use.
pub type Client = SyncClient<'static, SLOTS>;

/// The small-flash codebook blob, mutated by the `codec` target.
pub static SMALL_BLOB: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../core/codebooks/minilm-small-v1.bin"
));

/// The default codebook.
pub fn book() -> Codebook<'static> {
    static B: OnceLock<Codebook<'static>> = OnceLock::new();
    *B.get_or_init(|| codec::minilm_v1().expect("shipped codebook"))
}

/// The small-flash codebook.
pub fn small_book() -> Codebook<'static> {
    static B: OnceLock<Codebook<'static>> = OnceLock::new();
    *B.get_or_init(|| codec::minilm_small_v1().expect("shipped codebook"))
}

/// The first rows of `data/minilm/patterns_public.f32`: real embeddings.
pub fn vectors() -> &'static [Embedding] {
    static V: OnceLock<Vec<Embedding>> = OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/minilm/patterns_public.f32"
        );
        let bytes = std::fs::read(path).expect("data/minilm/patterns_public.f32");
        bytes
            .chunks_exact(DIM * 4)
            .take(16)
            .map(|c| Embedding::from_le_bytes(c).expect("unit vector"))
            .collect()
    })
}

/// The fixed base deltas are decoded against: the codes of a real vector.
pub fn base_codes() -> &'static Codes {
    static B: OnceLock<Codes> = OnceLock::new();
    B.get_or_init(|| book().quantize(&vectors()[0]))
}

/// A base at the top of the `i16` range, so that most deltas leave it.
pub const EDGE_BASE: Codes = [i16::MAX; DIM];

/// The client configuration every target uses.
pub fn config() -> Config {
    Config::new(DeviceId::new(DEVICE).expect("valid id"))
}

/// A valid pattern `id` with embedding `e`.
pub fn pattern(id: &str, e: &Embedding, rate: f32, n: u32, category: &str) -> Pattern {
    Pattern::new(
        PatternId::new(id).expect("id"),
        e.clone(),
        rate,
        n,
        Category::new(category).expect("category"),
    )
    .expect("pattern")
}

/// Decodes `code` with `cb` (against `base` when given); on success checks
/// that encoding the result and decoding it again gives the same codes
/// within [`MAX_CODED_LEN`] bytes, whatever the input was.
pub fn decode_checked(
    cb: &Codebook<'_>,
    code: &[u8],
    base: Option<&Codes>,
) -> Result<Codes, Error> {
    let mut out: Codes = [0; DIM];
    cb.decode(code, base, &mut out)?;
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = cb
        .encode(&out, base, &mut buf)
        .expect("any codes encode within MAX_CODED_LEN");
    assert!(n <= MAX_CODED_LEN);
    let mut again: Codes = [0; DIM];
    cb.decode(&buf[..n], base, &mut again)
        .expect("re-encoded codes decode");
    assert_eq!(out, again, "decode(encode(codes)) != codes");
    Ok(out)
}

/// `data` with its CRC trailer recomputed, so that mutations reach the
/// record decoders instead of stopping at the checksum (real frames are
/// unchanged). Shorter than a frame: returned as is.
pub fn fix_crc(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    if v.len() >= OVERHEAD {
        let end = v.len() - 4;
        let crc = omega_tv_sync::wire::crc32(&v[..end]);
        v[end..].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

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

/// Counts what a sync response handed to the application.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct CountingSink {
    /// Calls of any kind.
    pub calls: usize,
}

impl GlobalSink for CountingSink {
    fn reset(&mut self) {
        self.calls += 1;
    }
    fn global_upsert(&mut self, p: &GlobalPattern) {
        assert!(p.validate().is_ok(), "the sink got an invalid pattern");
        self.calls += 1;
    }
    fn global_remove(&mut self, _id: u32, _version: u64) {
        self.calls += 1;
    }
    fn trend(&mut self, _signal: &TrendSignal, _version: u64) {
        self.calls += 1;
    }
}

/// The state every `download` input is applied to: a client whose patterns
/// `p0`..`p2` are acknowledged and `p3` conflicted without the server's
/// state (so it is re-sent absolute), as a snapshot.
pub fn download_base() -> &'static [u8] {
    static S: OnceLock<Vec<u8>> = OnceLock::new();
    S.get_or_init(|| {
        let v = vectors();
        let mut c = Client::new(book(), config());
        for (i, e) in v.iter().take(4).enumerate() {
            c.upsert(&pattern(&format!("p{i}"), e, 0.9, 20, "drama"), 0)
                .expect("upsert");
        }
        let mut tx = vec![0u8; 16 * 1024];
        let n = c.prepare(&mut tx).expect("prepare");
        let mut rx = vec![0u8; 4096];
        let mut w = FrameWriter::new(&mut rx, Kind::Download, book().id()).expect("writer");
        w.push(&Record::DownloadHead(DownloadHead {
            seq: 1,
            global_version: 10,
            more: false,
            reset: false,
            next_sync_s: 600,
        }))
        .expect("head");
        for i in 0..3 {
            w.push(&Record::Ack(Ack {
                id: PatternId::new(&format!("p{i}")).expect("id"),
                revision: 1,
            }))
            .expect("ack");
        }
        w.push(&Record::Conflict(Conflict {
            id: PatternId::new("p3").expect("id"),
            server_rev: 7,
            state: None,
        }))
        .expect("conflict");
        let resp = w.finish().expect("frame").to_vec();
        let r = Response {
            status: 200,
            body_len: resp.len(),
            retry_after_s: None,
            signature: None,
        };
        let out = c.apply(&tx[..n], r, &resp, 0, &mut ()).expect("apply");
        assert!(matches!(out, Outcome::Synced(_)));
        let mut snap = vec![0u8; Client::MAX_SNAPSHOT_LEN];
        let n = c.snapshot(&mut snap).expect("snapshot");
        snap.truncate(n);
        snap
    })
}

/// The client of the `download` target with its request in flight: `p3`
/// absolute on revision 7, `p0` changed (a delta on revision 1), `p1`
/// removed. Returns the client and the request bytes.
pub fn download_client() -> (Client, Vec<u8>) {
    let mut c = Client::restore(book(), config(), download_base()).expect("restore");
    c.upsert(&pattern("p0", &vectors()[4], 0.95, 25, "drama"), 1_000)
        .expect("upsert");
    c.remove(&PatternId::new("p1").expect("id"), 1_000)
        .expect("remove");
    let mut tx = vec![0u8; 16 * 1024];
    let n = c.prepare(&mut tx).expect("prepare");
    tx.truncate(n);
    (c, tx)
}

/// HTTP statuses the `download` target picks from with its first byte.
pub const STATUSES: [u16; 8] = [200, 200, 200, 200, 409, 429, 503, 400];

fn snapshot_of(c: &Client) -> Vec<u8> {
    let mut buf = vec![0u8; Client::MAX_SNAPSHOT_LEN];
    let n = c.snapshot(&mut buf).expect("snapshot fits");
    buf.truncate(n);
    buf
}

/// A client with its request in flight, the request, and the client's
/// snapshot at that point.
type Prepared = (Client, Vec<u8>, Vec<u8>);

thread_local! {
    /// The client of the last input when that input changed nothing: building
    /// one costs a quantisation and an encoding, most inputs change nothing.
    static PREPARED: std::cell::RefCell<Option<Prepared>> = const { std::cell::RefCell::new(None) };
}

/// `download`: a [`SyncClient`] with a request in flight applies arbitrary
/// response bytes (first byte: the status, from [`STATUSES`]; then the
/// body, with its CRC fixed by [`fix_crc`]). A response that fails must
/// change neither the client's state nor hand anything to the application;
/// the body's records are also iterated on their own. Accepted means: synced.
pub fn download(data: &[u8]) -> Result<(), Error> {
    let Some((&sel, body)) = data.split_first() else {
        return Err(Error::Truncated);
    };
    let status = STATUSES[usize::from(sel) % STATUSES.len()];
    let body = if status == 200 {
        fix_crc(body)
    } else {
        body.to_vec()
    };
    let body = &body[..];
    if let Ok(f) = FrameReader::parse(body) {
        let n = f.records().take(body.len() + 2).count();
        assert!(n <= body.len() + 1);
    }
    let (mut c, tx, before) = PREPARED.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
        let (c, tx) = download_client();
        let before = snapshot_of(&c);
        (c, tx, before)
    });
    let seq = c.seq();
    let ids: Vec<PatternId> = ["p0", "p1", "p2", "p3"]
        .iter()
        .map(|s| PatternId::new(s).expect("id"))
        .collect();
    let acked_before: Vec<Option<Codes>> =
        ids.iter().map(|id| c.acked(id).map(|(_, k)| *k)).collect();
    let mut sink = CountingSink::default();
    let r = Response {
        status,
        body_len: body.len(),
        retry_after_s: Some(u32::from(sel >> 3)),
        signature: None,
    };
    let out = c.apply(&tx, r, body, 2_000, &mut sink);
    let result = match out {
        Ok(Outcome::Synced(s)) => {
            assert_eq!(status, 200);
            assert!(c.in_flight().is_none());
            assert_eq!(c.seq(), seq + 1);
            assert!(usize::from(s.acked) + usize::from(s.conflicts) <= 3);
            check_acks(&c, &tx, body, &ids, &acked_before);
            return Ok(());
        }
        Ok(Outcome::RetryLater { .. }) => {
            assert_eq!(c.in_flight(), Some(tx.len()), "a retry keeps the request");
            assert_eq!(sink.calls, 0);
            Err(Error::Rejected)
        }
        Ok(Outcome::Resequenced { seq: next }) => {
            assert_eq!(status, 409);
            assert!(next >= seq && c.in_flight().is_none());
            assert_eq!(sink.calls, 0);
            return Err(Error::Rejected);
        }
        Err(e) => {
            assert_eq!(sink.calls, 0, "a failed response reached the application");
            if status == 200 {
                assert_eq!(c.in_flight(), Some(tx.len()), "the request is kept");
            }
            Err(e)
        }
    };
    if c.in_flight().is_some() {
        assert_eq!(
            snapshot_of(&c),
            before,
            "a failed response ({result:?}) changed the state"
        );
        PREPARED.with(|p| *p.borrow_mut() = Some((c, tx, before)));
    }
    result
}

/// After a sync: every acknowledged update's codes are exactly what the
/// device sent, decoded against the base it was sent on (nothing applied
/// twice, nothing lost).
fn check_acks(c: &Client, tx: &[u8], body: &[u8], ids: &[PatternId], before: &[Option<Codes>]) {
    let req = FrameReader::parse(tx).expect("own request");
    let resp = FrameReader::parse(body).expect("applied response parses");
    for r in resp.records() {
        let Ok(Record::Ack(a)) = r else { continue };
        let sent = req.records().find_map(|r| match r {
            Ok(Record::Pattern(p)) if p.id == a.id => Some(p),
            _ => None,
        });
        let Some(p) = sent else { continue };
        let k = ids.iter().position(|id| *id == p.id).expect("known id");
        let base = match p.coding {
            omega_tv_sync::wire::Coding::Delta => before[k].as_ref(),
            omega_tv_sync::wire::Coding::Absolute => None,
        };
        let mut expected: Codes = [0; DIM];
        book()
            .decode(p.code, base, &mut expected)
            .expect("own code");
        match c.acked(&p.id) {
            Some((rev, codes)) => {
                assert_eq!(rev, a.revision);
                assert_eq!(
                    codes, &expected,
                    "acknowledged codes differ from the sent ones"
                );
            }
            None => assert_eq!(a.revision, 0),
        }
    }
}

/// `snapshot`: [`SyncClient::restore`]. A restored client must snapshot to
/// bytes that restore to a client with the same snapshot.
pub fn snapshot(data: &[u8]) -> Result<(), Error> {
    let data = &fix_crc(data)[..];
    let c = Client::restore(book(), config(), data)?;
    let once = snapshot_of(&c);
    let again = Client::restore(book(), config(), &once).expect("own snapshot restores");
    assert_eq!(snapshot_of(&again), once, "snapshot is not a fixed point");
    assert!(c.len() <= SLOTS);
    Ok(())
}

/// Applies `(offset u24 LE, value)` patches to a copy of the small codebook
/// blob and fixes its id, so that [`Codebook::from_bytes`] sees a blob whose
/// hash matches and has to check everything else.
pub fn mutate_blob(patches: &[u8]) -> Vec<u8> {
    let mut blob = SMALL_BLOB.to_vec();
    for p in patches.chunks_exact(4) {
        let off =
            (usize::from(p[0]) | usize::from(p[1]) << 8 | usize::from(p[2]) << 16) % blob.len();
        blob[off] = p[3];
    }
    if blob.len() >= 12 {
        let id = codec::codebook_id(&blob);
        blob[8..12].copy_from_slice(&id.to_le_bytes());
    }
    blob
}

/// `codec`: first byte is the mode.
/// - bit 7 set: byte 1 is a patch count `k` (at most 32), then `k` 4-byte
///   patches for [`mutate_blob`]; a blob that [`Codebook::from_bytes`]
///   accepts must encode any codes within `MAX_CODED_LEN` and decode them
///   back, and the rest of the input is decoded with it.
/// - else bit 0 picks the codebook (default, small) and bits 1-2 the base
///   (none, a real vector's codes, the `i16` edge, none); the rest is one code.
///
/// Accepted means: the code decoded.
pub fn codec(data: &[u8]) -> Result<(), Error> {
    let Some((&mode, rest)) = data.split_first() else {
        return Err(Error::Truncated);
    };
    if mode & 0x80 != 0 {
        let Some((&k, rest)) = rest.split_first() else {
            return Err(Error::Truncated);
        };
        let k = usize::from(k % 33) * 4;
        let (patches, code) = rest.split_at(k.min(rest.len()));
        let blob = mutate_blob(patches);
        let cb = Codebook::from_bytes(&blob)?;
        let v = vectors();
        for (i, e) in v.iter().take(2).enumerate() {
            let codes = cb.quantize(e);
            let mut buf = [0u8; MAX_CODED_LEN];
            let base = if i == 0 { None } else { Some(&EDGE_BASE) };
            let n = cb
                .encode(&codes, base, &mut buf)
                .expect("a valid codebook encodes within MAX_CODED_LEN");
            let mut back: Codes = [0; DIM];
            cb.decode(&buf[..n], base, &mut back)
                .expect("a valid codebook decodes its own code");
            assert_eq!(back, codes);
        }
        let extreme: Codes = core::array::from_fn(|j| if j % 2 == 0 { i16::MAX } else { i16::MIN });
        let mut buf = [0u8; MAX_CODED_LEN];
        let n = cb
            .encode(&extreme, Some(&EDGE_BASE), &mut buf)
            .expect("the largest delta encodes within MAX_CODED_LEN");
        let mut back: Codes = [0; DIM];
        cb.decode(&buf[..n], Some(&EDGE_BASE), &mut back)
            .expect("decodes");
        assert_eq!(back, extreme);
        if code.is_empty() {
            return Ok(());
        }
        return decode_checked(&cb, code, None).map(|_| ());
    }
    let cb = if mode & 1 == 0 { book() } else { small_book() };
    let base = match (mode >> 1) & 3 {
        1 => Some(base_codes()),
        2 => Some(&EDGE_BASE),
        _ => None,
    };
    decode_checked(&cb, rest, base).map(|_| ())
}

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

// ---- real frames: the seed corpora are written from these ----

/// An upload of `k` real patterns (some absolute, some delta), built by a
/// client from real vectors.
pub fn real_upload(k: usize, accept_zstd: bool) -> Vec<u8> {
    let v = vectors();
    let mut cfg = config();
    cfg.accept_zstd = accept_zstd;
    let mut c = Client::new(book(), cfg);
    let k = k.min(SLOTS);
    for i in 0..k {
        let cat = ["drama", "comedy", "kids"][i % 3];
        c.upsert(
            &pattern(&format!("u{i}"), &v[i], 0.8, 12 + i as u32, cat),
            0,
        )
        .expect("upsert");
    }
    let mut tx = vec![0u8; 64 * 1024];
    let n = c.prepare(&mut tx).expect("prepare");
    tx.truncate(n);
    tx
}

/// A trend record for seeds.
pub fn trend(version: u64, id: &str, score: f32, region: &str, cat: &str) -> Record<'static> {
    Record::Trend(TrendRecord {
        version,
        signal: TrendSignal::new(
            ContentId::new(id).expect("id"),
            score,
            Region::new(region).expect("region"),
            Category::new(cat).expect("category"),
            1_700_000_000 + version,
        )
        .expect("trend"),
    })
}

/// Writes a download frame answering the `download` target's request.
pub fn real_download(records: &[Record<'_>], seq: u64, more: bool, reset: bool) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = FrameWriter::new(&mut buf, Kind::Download, book().id()).expect("writer");
    w.push(&Record::DownloadHead(DownloadHead {
        seq,
        global_version: 42,
        more,
        reset,
        next_sync_s: if more { 0 } else { 720 },
    }))
    .expect("head");
    for r in records {
        w.push(r).expect("record");
    }
    w.finish().expect("frame").to_vec()
}

/// Absolute code of real vector `i` with the default codebook.
pub fn real_code(i: usize) -> Vec<u8> {
    let cb = book();
    let mut buf = [0u8; MAX_CODED_LEN];
    let n = cb
        .encode(&cb.quantize(&vectors()[i]), None, &mut buf)
        .expect("encode");
    buf[..n].to_vec()
}

/// Real download responses to [`download_client`]'s request, each with its
/// status byte in front, and a name.
pub fn real_downloads() -> Vec<(String, Vec<u8>)> {
    let (c, _) = download_client();
    let seq = c.seq();
    let id = |s: &str| PatternId::new(s).expect("id");
    let codes: Vec<Vec<u8>> = (0..8).map(real_code).collect();
    let ack = |s: &str, revision| {
        Record::Ack(Ack {
            id: id(s),
            revision,
        })
    };
    let upsert = |gid: u32, i: usize| {
        Record::GlobalUpsert(GlobalUpsert {
            id: gid,
            version: 30 + u64::from(gid),
            success_rate: 0.81,
            sample_count: 500,
            contributors: 9,
            category: Category::new("drama").expect("category"),
            code: &codes[i],
        })
    };
    let with_status = |st: u8, body: Vec<u8>| {
        let mut v = vec![st];
        v.extend_from_slice(&body);
        v
    };
    let mut out = vec![
        ("empty".into(), real_download(&[], seq, false, false)),
        (
            "acks".into(),
            real_download(
                &[ack("p3", 8), ack("p0", 2), ack("p1", 0)],
                seq,
                false,
                false,
            ),
        ),
        (
            "conflict-state".into(),
            real_download(
                &[
                    ack("p3", 8),
                    Record::Conflict(Conflict {
                        id: id("p0"),
                        server_rev: 5,
                        state: Some(ServerState {
                            success_rate: 0.7,
                            sample_count: 40,
                            category: Category::new("drama").expect("category"),
                            code: &codes[6],
                        }),
                    }),
                    ack("p1", 0),
                ],
                seq,
                false,
                false,
            ),
        ),
        (
            "conflict-bare".into(),
            real_download(
                &[Record::Conflict(Conflict {
                    id: id("p1"),
                    server_rev: 3,
                    state: None,
                })],
                seq,
                true,
                false,
            ),
        ),
        (
            "globals".into(),
            real_download(
                &[
                    upsert(1, 5),
                    upsert(2, 7),
                    Record::GlobalRemove(GlobalRemove { id: 3, version: 41 }),
                ],
                seq,
                true,
                false,
            ),
        ),
        (
            "trends".into(),
            real_download(
                &[
                    trend(40, "heat", 2.5, "DE", "fresh"),
                    trend(41, "the-third-man", 11.0, "GB", "plot"),
                ],
                seq,
                false,
                false,
            ),
        ),
        (
            "reset-all".into(),
            real_download(
                &[
                    ack("p3", 8),
                    ack("p0", 2),
                    ack("p1", 0),
                    upsert(4, 3),
                    Record::GlobalRemove(GlobalRemove { id: 1, version: 40 }),
                    trend(42, "heat", 0.5, "FR", "rotten"),
                ],
                seq,
                false,
                true,
            ),
        ),
    ];
    for (_, body) in out.iter_mut() {
        *body = with_status(0, std::mem::take(body));
    }
    out.push((
        "reject-409".into(),
        with_status(
            4,
            br#"{"error":"stale_sequence","detail":"x","last_seq": 17}"#.to_vec(),
        ),
    ));
    out.push((
        "reject-429".into(),
        with_status(5 | (8 * 3), br#"{"error":"rate_limited"}"#.to_vec()),
    ));
    out.push(("reject-503".into(), with_status(6, Vec::new())));
    out.push((
        "reject-400".into(),
        with_status(7, br#"{"error":"checksum"}"#.to_vec()),
    ));
    out
}

/// Real snapshots: the `download` target's base, and clients after a few
/// syncs with real vectors.
pub fn real_snapshots() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("download-base".to_string(), download_base().to_vec())];
    let empty = Client::new(book(), config());
    out.push(("empty".into(), snapshot_of(&empty)));
    // After the download target's request was answered by each real response.
    for (name, resp) in real_downloads().into_iter().take(3) {
        let (mut c, tx) = download_client();
        let r = Response {
            status: 200,
            body_len: resp.len() - 1,
            retry_after_s: None,
            signature: None,
        };
        c.apply(&tx, r, &resp[1..], 5_000, &mut ())
            .expect("real response applies");
        out.push((format!("after-{name}"), snapshot_of(&c)));
    }
    out
}

/// A NOR flash in RAM for the `flash` target: 16 pages of 1 KiB, 4-byte
/// words, writes AND into the cells as real NOR does.
#[cfg(feature = "flash")]
pub mod ram_flash {
    use embedded_storage_async::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

    /// Erase page size.
    pub const PAGE: usize = 1024;
    /// Pages.
    pub const PAGES: usize = 16;

    /// The flash contents.
    pub struct RamFlash(pub Vec<u8>);

    impl RamFlash {
        fn check(&self, off: u32, len: usize, align: usize) -> Result<usize, NorFlashErrorKind> {
            let o = off as usize;
            if o % align != 0 || len % align != 0 {
                return Err(NorFlashErrorKind::NotAligned);
            }
            if o.checked_add(len).is_none_or(|e| e > self.0.len()) {
                return Err(NorFlashErrorKind::OutOfBounds);
            }
            Ok(o)
        }
    }

    impl ErrorType for RamFlash {
        type Error = NorFlashErrorKind;
    }

    impl ReadNorFlash for RamFlash {
        const READ_SIZE: usize = 1;
        async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            let o = self.check(offset, bytes.len(), 1)?;
            bytes.copy_from_slice(&self.0[o..o + bytes.len()]);
            Ok(())
        }
        fn capacity(&self) -> usize {
            self.0.len()
        }
    }

    impl NorFlash for RamFlash {
        const WRITE_SIZE: usize = 4;
        const ERASE_SIZE: usize = PAGE;
        async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            let len = (to as usize).saturating_sub(from as usize);
            let o = self.check(from, len, PAGE)?;
            self.0[o..o + len].fill(0xff);
            Ok(())
        }
        async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            let o = self.check(offset, bytes.len(), 4)?;
            for (d, s) in self.0[o..o + bytes.len()].iter_mut().zip(bytes) {
                *d &= *s;
            }
            Ok(())
        }
    }

    /// Runs a future that never waits (the RAM flash is always ready).
    pub fn block_on<F: core::future::Future>(f: F) -> F::Output {
        let mut f = core::pin::pin!(f);
        let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
        loop {
            if let core::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}

/// `flash`: [`persist::load`](omega_tv_sync::sync::persist::load) from an
/// arbitrary flash image (the input, 16 KiB at most, padded with erased bytes), as after
/// any power cut or corruption, then `restore` of what it returns. When the
/// image loads, saving a real snapshot over it must load back exactly.
/// Accepted means: a snapshot was found and restored.
#[cfg(feature = "flash")]
pub fn flash(data: &[u8]) -> Result<(), Error> {
    use omega_tv_sync::sync::persist;
    use ram_flash::{block_on, RamFlash, PAGE, PAGES};
    let mut image = vec![0xffu8; PAGE * PAGES];
    let n = data.len().min(image.len());
    image[..n].copy_from_slice(&data[..n]);
    let mut f = RamFlash(image);
    let range = 0..(PAGE * PAGES) as u32;
    let mut buf = vec![0u8; persist::work_len::<RamFlash>()];
    let mut out = vec![0u8; 8 * PAGE];
    let loaded = block_on(persist::load(&mut f, range.clone(), &mut buf, &mut out))?;
    let restored = match loaded {
        Some(len) => {
            assert!(len <= out.len());
            Client::restore(book(), config(), &out[..len]).map(|_| ())
        }
        None => Err(Error::Truncated),
    };
    // A small real snapshot (an empty client's) fits a page.
    let snap = snapshot_of(&Client::new(book(), config()));
    if block_on(persist::save(&mut f, range.clone(), &mut buf, &snap)).is_ok() {
        let got =
            block_on(persist::load(&mut f, range, &mut buf, &mut out)).expect("loads after a save");
        assert_eq!(got.map(|n| &out[..n]), Some(&snap[..]), "saved != loaded");
    }
    restored
}

/// Flash images of real snapshots saved by [`persist`](omega_tv_sync::sync::persist)
/// (one save, and several), for the `flash` seeds.
#[cfg(feature = "flash")]
pub fn real_flash_images() -> Vec<(String, Vec<u8>)> {
    use omega_tv_sync::sync::persist;
    use ram_flash::{block_on, RamFlash, PAGE, PAGES};
    let range = 0..(PAGE * PAGES) as u32;
    let mut buf = vec![0u8; persist::work_len::<RamFlash>()];
    let mut out = Vec::new();
    let mut f = RamFlash(vec![0xff; PAGE * PAGES]);
    let small = snapshot_of(&Client::new(book(), config()));
    let large = download_base().to_vec();
    for i in 0..6 {
        let snap = if i % 2 == 0 { &small } else { &large };
        block_on(persist::save(&mut f, range.clone(), &mut buf, snap)).expect("save");
        if i == 0 || i == 1 || i == 5 {
            out.push((format!("saved-{}", i + 1), f.0.clone()));
        }
    }
    out
}
