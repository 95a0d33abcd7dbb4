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
    /// compressed form only when it is smaller.
    #[cfg(feature = "zstd")]
    pub fn finish_zstd(
        mut self,
        zstd: &mut crate::wire::zstd::Compressor<'_>,
        scratch: &mut [u8],
    ) -> Result<&'b [u8]> {
        let body_len = self.len - HEADER_LEN;
        if self.records > 0 && body_len > 1 {
            let limit = (body_len - 1).min(scratch.len());
            let body = &self.buf[HEADER_LEN..self.len];
            match zstd.compress(body, &mut scratch[..limit]) {
                Ok(m) if m < body_len => {
                    self.buf[HEADER_LEN..HEADER_LEN + m].copy_from_slice(&scratch[..m]);
                    self.len = HEADER_LEN + m;
                    self.buf[4] |= super::FLAG_ZSTD;
                }
                Ok(_) | Err(Error::Compression) => {}
                Err(e) => return Err(e),
            }
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
        let crc = crc32(buf.get(..len).ok_or(Error::BufferTooSmall)?);
        let t = buf
            .get_mut(len..len + TRAILER_LEN)
            .ok_or(Error::BufferTooSmall)?;
        t.copy_from_slice(&crc.to_le_bytes());
        Ok(&buf[..len + TRAILER_LEN])
    }
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
