//! A NOR flash in RAM (feature `flash`): 16 pages of 1 KiB, 4-byte words,
//! writes AND into the cells as real NOR does; for the `flash` target, its
//! seeds and the persistence tests.

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
