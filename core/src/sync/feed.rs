//! The global feed: the path of the next page, applying a page, and
//! handing global records and trends of any checked download to the sink.

use super::{CodedGlobal, GlobalSink, Summary, SyncClient};
use crate::codec::Codes;
use crate::types::GlobalPattern;
use crate::wire::{FrameReader, Kind, Record};
use crate::{Error, Result};

impl<'cb, const N: usize> SyncClient<'cb, N> {
    /// Path of the `GET` feed page that continues after the device's global
    /// version: `/api/v1/global?since=V&limit=L&max_bytes=B`, at most `limit`
    /// records and `max_bytes` bytes (the caller's response buffer). Use it
    /// for the further pages after a sync whose response said `more`: the
    /// feed is read-only and cacheable, so it costs the server no write, and
    /// its pages may be larger than the sync response's `caps`.
    pub fn feed_path<'b>(&self, limit: u16, max_bytes: u32, buf: &'b mut [u8; 96]) -> &'b str {
        let mut w = 0usize;
        let mut put = |s: &[u8], buf: &mut [u8; 96]| {
            let end = (w + s.len()).min(buf.len());
            buf[w..end].copy_from_slice(&s[..end - w]);
            w = end;
        };
        let mut d = [0u8; 20];
        put(b"/api/v1/global?since=", buf);
        put(
            crate::ascii::fmt_u64(self.global_version, &mut d).as_bytes(),
            buf,
        );
        put(b"&limit=", buf);
        put(
            crate::ascii::fmt_u64(u64::from(limit.max(1)), &mut d).as_bytes(),
            buf,
        );
        put(b"&max_bytes=", buf);
        put(
            crate::ascii::fmt_u64(u64::from(max_bytes), &mut d).as_bytes(),
            buf,
        );
        core::str::from_utf8(&buf[..w]).unwrap_or("/api/v1/global")
    }

    /// Applies one page of the global feed (a download frame with `seq = 0`
    /// holding only global records and trends), checked whole before
    /// anything changes. Moves the cursor to the page's `global_version`.
    /// [`Error::Busy`] while a sync request is in flight (its response will
    /// move the cursor).
    pub fn apply_feed<S: GlobalSink>(&mut self, body: &[u8], sink: &mut S) -> Result<Summary> {
        if self.inflight.is_some() {
            return Err(Error::Busy);
        }
        let resp = FrameReader::parse(body)?;
        if resp.is_compressed() {
            return Err(Error::BadFlags);
        }
        self.check_download(&resp)?;
        let mut scratch: Codes = [0; crate::DIM];
        let mut head = None;
        let mut summary = Summary::default();
        for r in resp.records() {
            match r? {
                Record::DownloadHead(h) if h.seq == 0 => head = Some(h),
                Record::GlobalUpsert(g) => {
                    self.cb.decode(g.code, None, &mut scratch)?;
                    summary.globals += 1;
                }
                Record::GlobalRemove(_) => summary.globals += 1,
                Record::Trend(_) => summary.trends += 1,
                _ => return Err(Error::ProtocolViolation),
            }
        }
        let head = head.ok_or(Error::Truncated)?;
        self.apply_globals(&resp, head.reset, sink, &mut scratch)?;
        self.global_version = head.global_version;
        summary.more = head.more;
        Ok(summary)
    }

    /// A response must be a download frame coded with this client's codebook.
    pub(super) fn check_download(&self, resp: &FrameReader<'_>) -> Result<()> {
        if resp.kind() != Kind::Download {
            return Err(Error::UnknownKind);
        }
        if resp.codebook_id() != self.cb.id() {
            return Err(Error::UnknownCodebook);
        }
        Ok(())
    }

    /// Pass 2 of a checked download: global records and trends to the sink.
    pub(super) fn apply_globals<S: GlobalSink>(
        &self,
        resp: &FrameReader<'_>,
        reset: bool,
        sink: &mut S,
        scratch: &mut Codes,
    ) -> Result<()> {
        if reset {
            sink.reset();
        }
        for r in resp.records() {
            match r? {
                Record::GlobalUpsert(g) => {
                    self.cb.decode(g.code, None, scratch)?;
                    if S::RECONSTRUCT {
                        // Built in place (no `CodedGlobal::to_pattern`
                        // temporaries: this frame is on the sync cycle's
                        // deepest path).
                        let embedding = self.cb.reconstruct(scratch)?;
                        sink.global_upsert(&GlobalPattern {
                            id: g.id,
                            embedding,
                            success_rate: g.success_rate,
                            sample_count: g.sample_count,
                            contributors: g.contributors,
                            category: g.category,
                            version: g.version,
                        });
                    } else {
                        sink.global_codes(&CodedGlobal {
                            id: g.id,
                            codes: scratch,
                            success_rate: g.success_rate,
                            sample_count: g.sample_count,
                            contributors: g.contributors,
                            category: &g.category,
                            version: g.version,
                            codebook: &self.cb,
                        });
                    }
                }
                Record::GlobalRemove(g) => sink.global_remove(g.id, g.version),
                Record::Trend(t) => sink.trend(&t.signal, t.version),
                _ => {}
            }
        }
        Ok(())
    }
}
