//! Decodes the worked example in docs/wire-format.md, so the spec and the
//! code cannot drift apart.

use omega_tv_sync::wire::{FrameReader, Kind, Record};

fn example_bytes() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md");
    let doc = std::fs::read_to_string(path).expect("docs/wire-format.md");
    let start = doc.find("<!-- example-frame -->").expect("example marker");
    let block = &doc[start..];
    let open = block.find("```\n").expect("code block") + 4;
    let close = block[open..].find("```").expect("end of code block") + open;
    block[open..close]
        .split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

#[test]
fn worked_example_decodes_as_documented() {
    let bytes = example_bytes();
    assert_eq!(bytes.len(), 51);
    let f = FrameReader::parse(&bytes).expect("valid frame");
    assert_eq!(f.kind(), Kind::Download);
    assert_eq!(f.codebook_id(), 0x1234_5678);
    assert!(!f.is_compressed());
    let recs: Vec<Record<'_>> = f.records().collect::<Result<_, _>>().expect("records");
    assert_eq!(recs.len(), 3);
    match &recs[0] {
        Record::DownloadHead(h) => {
            assert_eq!(h.seq, 7);
            assert_eq!(h.global_version, 300);
            assert!(!h.more && !h.reset);
            assert_eq!(h.next_sync_s, 600);
        }
        other => panic!("expected head, got {other:?}"),
    }
    match &recs[1] {
        Record::Ack(a) => {
            assert_eq!(a.id.as_str(), "p1");
            assert_eq!(a.revision, 4);
        }
        other => panic!("expected ack, got {other:?}"),
    }
    match &recs[2] {
        Record::Trend(t) => {
            assert_eq!(t.version, 300);
            assert_eq!(t.signal.content_id.as_str(), "heat");
            assert_eq!(t.signal.score, 2.5);
            assert_eq!(t.signal.region.as_str(), "DE");
            assert_eq!(t.signal.category.as_str(), "fresh");
            assert_eq!(t.signal.calculated_at, 1_700_000_000);
        }
        other => panic!("expected trend, got {other:?}"),
    }
    // The documented CRC is the real one.
    let crc = u32::from_le_bytes(bytes[47..51].try_into().unwrap());
    assert_eq!(crc, 0x6e4b_a3fe);
    assert_eq!(omega_tv_sync::wire::crc32(&bytes[..47]), crc);
}

#[test]
fn size_bounds_table_matches_the_constants() {
    use omega_tv_sync::wire::{self, max_len};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/wire-format.md");
    let doc = std::fs::read_to_string(path).expect("docs/wire-format.md");
    let value = |name: &str| -> usize {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("row for {name}"));
        row.split('|')
            .nth(2)
            .unwrap()
            .trim()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    assert_eq!(value("OVERHEAD"), wire::OVERHEAD);
    assert_eq!(value("max_len::UPLOAD_HEAD"), max_len::UPLOAD_HEAD);
    assert_eq!(value("max_len::PATTERN"), max_len::PATTERN);
    assert_eq!(value("MAX_UPLOAD_FRAME"), wire::MAX_UPLOAD_FRAME);
    assert_eq!(value("MIN_DOWNLOAD_FRAME"), wire::MIN_DOWNLOAD_FRAME);
    assert_eq!(value("MAX_DOWNLOAD_FRAME"), wire::MAX_DOWNLOAD_FRAME);
}
