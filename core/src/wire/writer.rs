//! Writes a frame into a caller buffer.

use serde::Serialize;

use super::records::check_code;
use super::{
    crc32, Kind, Record, FLAG_ACCEPT_ZSTD, FORMAT_VERSION, HEADER_LEN, MAGIC, TRAILER_LEN,
};
use crate::types::check_rate;
use crate::{Error, Result};

/// Builds one frame in a caller-provided buffer.
///
/// The buffer must hold the whole frame: [`OVERHEAD`](super::OVERHEAD) bytes
/// plus the records (see [`max_len`](super::max_len) for each record's
/// largest size). [`push`](Self::push) fails with [`Error::BufferTooSmall`]
/// and leaves the frame as it was when a record does not fit, so a caller can
/// stop there and send the rest in the next frame.
pub struct FrameWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
    kind: Kind,
    records: usize,
}

impl<'b> FrameWriter<'b> {
    /// Starts a frame of `kind` coded with codebook `codebook_id`.
    pub fn new(buf: &'b mut [u8], kind: Kind, codebook_id: u32) -> Result<Self> {
        if buf.len() < HEADER_LEN + TRAILER_LEN {
            return Err(Error::BufferTooSmall);
        }
        buf[0..2].copy_from_slice(&MAGIC);
        buf[2] = FORMAT_VERSION;
        buf[3] = kind as u8;
        buf[4] = 0;
        buf[5..9].copy_from_slice(&codebook_id.to_le_bytes());
        Ok(FrameWriter {
            buf,
            len: HEADER_LEN,
            kind,
            records: 0,
        })
    }

    /// Appends a record. The first record must be the kind's head
    /// ([`Error::UnknownKind`] otherwise, and for a tag this kind does not
    /// carry); values are validated as the reader would
    /// ([`Error::RateOutOfRange`], [`Error::Oversize`], ...).
    pub fn push(&mut self, record: &Record<'_>) -> Result<()> {
        let tag = record.tag();
        if !Record::allowed(self.kind, tag, self.records == 0) {
            return Err(Error::UnknownKind);
        }
        validate(record)?;
        let end = self.buf.len() - TRAILER_LEN;
        let room = self
            .buf
            .get_mut(self.len..end)
            .ok_or(Error::BufferTooSmall)?;
        let (t, rest) = room.split_first_mut().ok_or(Error::BufferTooSmall)?;
        *t = tag;
        let n = match record {
            Record::UploadHead(r) => encode(r, rest)?,
            Record::Pattern(r) => encode(r, rest)?,
            Record::Removal(r) => encode(r, rest)?,
            Record::DownloadHead(r) => encode(r, rest)?,
            Record::Ack(r) => encode(r, rest)?,
            Record::Conflict(r) => encode(r, rest)?,
            Record::GlobalUpsert(r) => encode(r, rest)?,
            Record::GlobalRemove(r) => encode(r, rest)?,
            Record::Trend(r) => encode(r, rest)?,
            Record::Snapshot(bytes) => {
                let dst = rest.get_mut(..bytes.len()).ok_or(Error::BufferTooSmall)?;
                dst.copy_from_slice(bytes);
                bytes.len()
            }
        };
        self.len += 1 + n;
        self.records += 1;
        Ok(())
    }

    /// Bytes written so far (header and records, not the trailer).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records pushed so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Bytes still free for records.
    pub fn remaining(&self) -> usize {
        self.buf.len() - TRAILER_LEN - self.len
    }

    /// Marks an upload as coming from a device that can decompress a zstd
    /// response body.
    pub fn accept_zstd(&mut self) {
        self.buf[4] |= FLAG_ACCEPT_ZSTD;
    }

    /// Like [`finish`](Self::finish), but first compresses the body with
    /// `zstd` (through `scratch`, which needs the body's size) and keeps the
    /// compressed form only when it is smaller ([`compress_body`]).
    #[cfg(feature = "zstd")]
    pub fn finish_zstd(
        mut self,
        zstd: &mut crate::wire::zstd::Compressor<'_>,
        scratch: &mut [u8],
    ) -> Result<&'b [u8]> {
        if self.records > 0 {
            self.len = compress_body(self.buf, self.len, zstd, scratch)?;
        }
        self.finish()
    }

    /// Appends the CRC and returns the finished frame. A frame without its
    /// head record is [`Error::Truncated`].
    pub fn finish(self) -> Result<&'b [u8]> {
        if self.records == 0 {
            return Err(Error::Truncated);
        }
        let FrameWriter { buf, len, .. } = self;
        let end = seal(buf, len)?;
        Ok(&buf[..end])
    }
}

/// Compresses the body of the unsealed frame `frame[..len]` (header and
/// records, no trailer yet) in place when zstd makes it smaller, and then
/// sets [`FLAG_ZSTD`](super::FLAG_ZSTD) in its header. Returns the frame's
/// length after it: `len` when it stays as it was (a body under two bytes,
/// or one zstd does not shrink). `scratch` receives the compressed body:
/// `len - HEADER_LEN - 1` bytes let every gain through, fewer only limit
/// it. A `len` shorter than the header is [`Error::Truncated`], one past
/// `frame` [`Error::BufferTooSmall`]; nothing is written then.
///
/// The one implementation of a compressed body: [`FrameWriter::finish_zstd`]
/// uses it, and so does a server compressing a finished frame it keeps
/// uncompressed; [`seal`] then appends the CRC.
#[cfg(feature = "zstd")]
pub fn compress_body(
    frame: &mut [u8],
    len: usize,
    zstd: &mut crate::wire::zstd::Compressor<'_>,
    scratch: &mut [u8],
) -> Result<usize> {
    let body_len = len.checked_sub(HEADER_LEN).ok_or(Error::Truncated)?;
    let body = frame.get(HEADER_LEN..len).ok_or(Error::BufferTooSmall)?;
    if body_len <= 1 {
        return Ok(len);
    }
    let limit = (body_len - 1).min(scratch.len());
    match zstd.compress(body, &mut scratch[..limit]) {
        Ok(m) if m < body_len => {
            frame[HEADER_LEN..HEADER_LEN + m].copy_from_slice(&scratch[..m]);
            frame[4] |= super::FLAG_ZSTD;
            Ok(HEADER_LEN + m)
        }
        Ok(_) | Err(Error::Compression) => Ok(len),
        Err(e) => Err(e),
    }
}

/// Seals the frame `frame[..len]` (header and body): appends the CRC-32 of
/// those bytes as the trailer and returns the sealed frame's length
/// (`len + TRAILER_LEN`); [`Error::BufferTooSmall`] when the trailer does
/// not fit in `frame`.
pub fn seal(frame: &mut [u8], len: usize) -> Result<usize> {
    let crc = crc32(frame.get(..len).ok_or(Error::BufferTooSmall)?);
    let end = len.checked_add(TRAILER_LEN).ok_or(Error::BufferTooSmall)?;
    let t = frame.get_mut(len..end).ok_or(Error::BufferTooSmall)?;
    t.copy_from_slice(&crc.to_le_bytes());
    Ok(end)
}

fn encode<T: Serialize>(value: &T, dst: &mut [u8]) -> Result<usize> {
    Ok(postcard::to_slice(value, dst)?.len())
}

fn validate(record: &Record<'_>) -> Result<()> {
    match record {
        Record::Pattern(p) => {
            check_rate(p.success_rate)?;
            check_code(p.code)
        }
        Record::Conflict(c) => c.validate(),
        Record::GlobalUpsert(g) => g.validate(),
        _ => Ok(()),
    }
}
