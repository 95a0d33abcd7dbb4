//! Reads a frame in place.

use super::records::{RawPatternRemoval, RawPatternUpdate};
use super::{
    crc32, tag, Ack, Conflict, DownloadHead, GlobalRemove, GlobalUpsert, Kind, Record, TrendRecord,
    UploadHead, FLAG_ACCEPT_ZSTD, FLAG_ZSTD, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_UPLOAD_PATTERNS, OVERHEAD, TRAILER_LEN,
};
use crate::{Error, Result};

/// A checked frame: magic, version, kind, flags and CRC verified. Records are
/// decoded lazily by [`records`](Self::records) and borrow from the frame.
#[derive(Clone, Copy, Debug)]
pub struct FrameReader<'b> {
    kind: Kind,
    flags: u8,
    codebook_id: u32,
    body: &'b [u8],
}

impl<'b> FrameReader<'b> {
    /// Checks the header and CRC of `frame`, which must be exactly one frame.
    ///
    /// Errors, in the order checked: [`Error::Truncated`] (shorter than a
    /// header and trailer), [`Error::BadMagic`], [`Error::UnsupportedVersion`],
    /// [`Error::UnknownKind`], [`Error::BadFlags`], [`Error::Checksum`].
    pub fn parse(frame: &'b [u8]) -> Result<Self> {
        if frame.len() < OVERHEAD {
            return Err(Error::Truncated);
        }
        let (content, trailer) = frame.split_at(frame.len() - TRAILER_LEN);
        let (head, body) = content.split_at(HEADER_LEN);
        if head[0..2] != MAGIC {
            return Err(Error::BadMagic);
        }
        if head[2] != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion);
        }
        let kind = Kind::from_u8(head[3]).ok_or(Error::UnknownKind)?;
        let flags = head[4];
        if flags & !(FLAG_ZSTD | FLAG_ACCEPT_ZSTD) != 0 {
            return Err(Error::BadFlags);
        }
        let codebook_id = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if crc32(content) != crc {
            return Err(Error::Checksum);
        }
        Ok(FrameReader {
            kind,
            flags,
            codebook_id,
            body,
        })
    }

    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The codebook the frame's codes use.
    pub fn codebook_id(&self) -> u32 {
        self.codebook_id
    }

    /// True when the body is zstd-compressed and must be decompressed before
    /// its records can be read.
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// True when the sender (a device) can take a zstd-compressed response.
    pub fn accepts_zstd(&self) -> bool {
        self.flags & FLAG_ACCEPT_ZSTD != 0
    }

    /// A reader over the decompressed records: the body is decompressed into
    /// `scratch` when it is compressed ([`Error::Decompression`] when it is
    /// corrupt or does not fit), else this same frame is returned.
    #[cfg(feature = "zstd")]
    pub fn decompress<'s>(
        &self,
        zstd: &mut crate::wire::zstd::Decompressor<'_>,
        scratch: &'s mut [u8],
    ) -> Result<FrameReader<'s>>
    where
        'b: 's,
    {
        if !self.is_compressed() {
            return Ok(*self);
        }
        let n = zstd.decompress(self.body, scratch)?;
        let body = scratch.get(..n).ok_or(Error::Decompression)?;
        Ok(FrameReader::from_body(self.kind, self.codebook_id, body))
    }

    /// The body bytes (records, or a zstd frame of them).
    pub fn body(&self) -> &'b [u8] {
        self.body
    }

    /// Iterates the records. The first is the kind's head; a compressed body
    /// yields one [`Error::BadFlags`] (decompress it first).
    pub fn records(&self) -> Records<'b> {
        Records {
            kind: self.kind,
            rest: self.body,
            count: 0,
            failed: self.is_compressed(),
            compressed: self.is_compressed(),
        }
    }

    /// Reads an uncompressed body of `kind` from `body` (records only, no
    /// header or trailer), as after decompression.
    pub fn from_body(kind: Kind, codebook_id: u32, body: &'b [u8]) -> Self {
        FrameReader {
            kind,
            flags: 0,
            codebook_id,
            body,
        }
    }
}

/// Iterator over a frame's records; stops after the first error.
#[derive(Clone, Debug)]
pub struct Records<'b> {
    kind: Kind,
    rest: &'b [u8],
    count: usize,
    failed: bool,
    compressed: bool,
}

impl<'b> Iterator for Records<'b> {
    type Item = Result<Record<'b>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.compressed {
            self.compressed = false;
            return Some(Err(Error::BadFlags));
        }
        if self.failed {
            return None;
        }
        let r = self.next_record();
        match r {
            None if self.count == 0 => {
                self.failed = true;
                Some(Err(Error::Truncated))
            }
            Some(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            other => other,
        }
    }
}

impl<'b> Records<'b> {
    fn next_record(&mut self) -> Option<Result<Record<'b>>> {
        let (&t, rest) = self.rest.split_first()?;
        if !Record::allowed(self.kind, t, self.count == 0) {
            return Some(Err(Error::UnknownKind));
        }
        if self.kind == Kind::Upload && self.count > MAX_UPLOAD_PATTERNS {
            return Some(Err(Error::Oversize));
        }
        let (rec, rest) = match decode(t, rest) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        self.rest = rest;
        self.count += 1;
        Some(Ok(rec))
    }
}

fn take<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<(T, &'a [u8])> {
    Ok(postcard::take_from_bytes(bytes)?)
}

fn decode(t: u8, bytes: &[u8]) -> Result<(Record<'_>, &[u8])> {
    Ok(match t {
        tag::UPLOAD_HEAD => {
            let (r, rest) = take::<UploadHead>(bytes)?;
            (Record::UploadHead(r), rest)
        }
        tag::PATTERN => {
            let (r, rest) = take::<RawPatternUpdate>(bytes)?;
            (Record::Pattern(r.validate()?), rest)
        }
        tag::REMOVAL => {
            let (r, rest) = take::<RawPatternRemoval>(bytes)?;
            (Record::Removal(r.validate()?), rest)
        }
        tag::DOWNLOAD_HEAD => {
            let (r, rest) = take::<DownloadHead>(bytes)?;
            (Record::DownloadHead(r), rest)
        }
        tag::ACK => {
            let (r, rest) = take::<Ack>(bytes)?;
            (Record::Ack(r), rest)
        }
        tag::CONFLICT => {
            let (r, rest) = take::<Conflict>(bytes)?;
            r.validate()?;
            (Record::Conflict(r), rest)
        }
        tag::GLOBAL_UPSERT => {
            let (r, rest) = take::<GlobalUpsert>(bytes)?;
            r.validate()?;
            (Record::GlobalUpsert(r), rest)
        }
        tag::GLOBAL_REMOVE => {
            let (r, rest) = take::<GlobalRemove>(bytes)?;
            (Record::GlobalRemove(r), rest)
        }
        tag::TREND => {
            let (r, rest) = take::<TrendRecord>(bytes)?;
            (Record::Trend(r), rest)
        }
        // A snapshot record runs to the end of the body.
        tag::SNAPSHOT => (Record::Snapshot(bytes), &bytes[bytes.len()..]),
        _ => return Err(Error::UnknownKind),
    })
}
