//! A NOR flash in RAM for exercising the `flash` feature on the target:
//! erase sets `0xff`, writes clear bits, 4-byte words, 1 KB pages.

use embedded_storage_async::nor_flash::{ErrorType, NorFlash, NorFlashErrorKind, ReadNorFlash};

/// Erase page size.
pub const PAGE: usize = 1024;
/// Pages in the flash.
pub const PAGES: usize = 16;

/// `PAGES` pages of RAM behaving like NOR flash.
pub struct RamFlash<'a> {
    data: &'a mut [u8; PAGE * PAGES],
}

impl<'a> RamFlash<'a> {
    /// Wraps (and erases) `data`.
    pub fn new(data: &'a mut [u8; PAGE * PAGES]) -> Self {
        data.fill(0xff);
        RamFlash { data }
    }

    fn range(
        &self,
        offset: u32,
        len: usize,
        align: usize,
    ) -> Result<core::ops::Range<usize>, NorFlashErrorKind> {
        let o = offset as usize;
        if !o.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(NorFlashErrorKind::NotAligned);
        }
        match o.checked_add(len) {
            Some(end) if end <= self.data.len() => Ok(o..end),
            _ => Err(NorFlashErrorKind::OutOfBounds),
        }
    }
}

impl ErrorType for RamFlash<'_> {
    type Error = NorFlashErrorKind;
}

impl ReadNorFlash for RamFlash<'_> {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl NorFlash for RamFlash<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = PAGE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let r = self.range(from, (to as usize).saturating_sub(from as usize), PAGE)?;
        self.data[r].fill(0xff);
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let r = self.range(offset, bytes.len(), 4)?;
        for (d, s) in self.data[r].iter_mut().zip(bytes) {
            *d &= *s;
        }
        Ok(())
    }
}
