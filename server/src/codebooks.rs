//! The codebooks the server accepts, behind one small trait.
//!
//! The sync path stays in the integer domain: it decodes coded bytes into
//! [`Codes`] (absolute, or a delta added to the stored codes) and stores the
//! codes. Floats appear only off the request path, in aggregation
//! ([`CodeSpace::reconstruct`]) and when a global pattern is published
//! ([`CodeSpace::quantize`]).

use std::sync::{Arc, Mutex, OnceLock};

use omega_tv_sync::codec::{self, Codebook, DecodeLut, FloatBasis};
use omega_tv_sync::{Embedding, Result};

/// Integer codes of one embedding: one `i16` per basis component.
pub use omega_tv_sync::codec::Codes;

/// What the server needs from a codebook.
pub trait CodeSpace: Send + Sync + 'static {
    /// The id carried in every frame.
    fn id(&self) -> u32;
    /// Decodes `bytes` (absolute when `base` is `None`, else a delta added to
    /// `base`) into `out`.
    fn decode(&self, bytes: &[u8], base: Option<&Codes>, out: &mut Codes) -> Result<()>;
    /// Encodes `codes` absolutely into `out`; returns the bytes written.
    fn encode(&self, codes: &Codes, out: &mut [u8]) -> Result<usize>;
    /// The (unit-norm) embedding the codes stand for.
    fn reconstruct(&self, codes: &Codes) -> Result<Embedding>;
    /// The codes of an embedding.
    fn quantize(&self, e: &Embedding) -> Codes;
}

/// The set of codebooks a server accepts, looked up by id.
#[derive(Clone, Default)]
pub struct Codebooks {
    books: Vec<Arc<dyn CodeSpace>>,
}

impl std::fmt::Debug for Codebooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.books.iter().map(|b| format!("{:08x}", b.id())))
            .finish()
    }
}

impl Codebooks {
    /// An empty set (every frame is `unknown_codebook`).
    pub fn empty() -> Self {
        Codebooks { books: Vec::new() }
    }

    /// Adds a codebook (ignored when one with the same id is present).
    pub fn with(mut self, book: Arc<dyn CodeSpace>) -> Self {
        if !self.books.iter().any(|b| b.id() == book.id()) {
            self.books.push(book);
        }
        self
    }

    /// The codebook with `id`.
    pub fn get(&self, id: u32) -> Option<&Arc<dyn CodeSpace>> {
        self.books.iter().find(|b| b.id() == id)
    }

    /// The first codebook: the one global patterns are published in.
    pub fn primary(&self) -> Option<&Arc<dyn CodeSpace>> {
        self.books.first()
    }
}

/// The core's codebooks, as the server uses them.
impl CodeSpace for Codebook<'static> {
    fn id(&self) -> u32 {
        Codebook::id(self)
    }
    fn decode(&self, bytes: &[u8], base: Option<&Codes>, out: &mut Codes) -> Result<()> {
        Codebook::decode(self, bytes, base, out)
    }
    fn encode(&self, codes: &Codes, out: &mut [u8]) -> Result<usize> {
        Codebook::encode(self, codes, None, out)
    }
    fn reconstruct(&self, codes: &Codes) -> Result<Embedding> {
        Codebook::reconstruct(self, codes)
    }
    fn quantize(&self, e: &Embedding) -> Codes {
        Codebook::quantize(self, e)
    }
}

/// A value built once per codebook id for the process's life (so its
/// memory may live as long), in `cache`; `None` if `build` fails.
fn once_per_codebook<T: Sync + 'static>(
    cache: &'static OnceLock<Mutex<Vec<&'static T>>>,
    id: u32,
    id_of: fn(&T) -> u32,
    build: impl FnOnce() -> Option<T>,
) -> Option<&'static T> {
    let built = cache.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = built.iter().find(|t| id_of(t) == id) {
        return Some(*t);
    }
    let t: &'static T = Box::leak(Box::new(build()?));
    built.push(t);
    Some(t)
}

/// `book` with the server's two caches attached, each built once per
/// codebook id and process and kept for the process's life:
/// - its slot-to-symbol index ([`DecodeLut`], 57 KB for `minilm-v1`): the
///   same codes and errors as the binary search, in 39-44% fewer
///   instructions per pattern (`docs/codec.md`, "Decoder index");
/// - an `f32` copy of its basis ([`FloatBasis`], 576 KiB, none for a
///   codebook without a basis): the same reconstructions bit for bit, in
///   about half the instructions (`docs/codec.md`, "Float basis").
///
/// Either is left out if it cannot be built (never, for the buffer lengths
/// the codebook asks for) or if the one cached under its id is another
/// blob's (`Codebook::with_lut` and `with_float_basis` compare the values).
pub fn indexed(book: Codebook<'static>) -> Codebook<'static> {
    static LUTS: OnceLock<Mutex<Vec<&'static DecodeLut<'static>>>> = OnceLock::new();
    static BASES: OnceLock<Mutex<Vec<&'static FloatBasis<'static>>>> = OnceLock::new();
    let lut = once_per_codebook(&LUTS, book.id(), DecodeLut::codebook_id, || {
        let cum = Box::leak(vec![0u16; book.lut_cum_len()].into_boxed_slice());
        let index = Box::leak(vec![0u8; book.lut_index_len()].into_boxed_slice());
        book.build_lut(cum, index).ok()
    });
    let book = lut.and_then(|l| book.with_lut(l).ok()).unwrap_or(book);
    if book.float_basis_len() == 0 {
        return book;
    }
    let basis = once_per_codebook(&BASES, book.id(), FloatBasis::codebook_id, || {
        let rows = Box::leak(vec![0f32; book.float_basis_len()].into_boxed_slice());
        book.build_float_basis(rows).ok()
    });
    basis
        .and_then(|b| book.with_float_basis(b).ok())
        .unwrap_or(book)
}

/// The codebooks this build ships: `minilm-v1` (the default, used to publish
/// global patterns) and `minilm-small-v1` (the small-flash profile).
pub fn default_codebooks() -> Codebooks {
    let mut books = Codebooks::empty();
    for book in [codec::minilm_v1(), codec::minilm_small_v1()] {
        match book {
            Ok(b) => books = books.with(Arc::new(indexed(b))),
            Err(e) => tracing::error!(error = %e, "a shipped codebook does not load"),
        }
    }
    books
}

/// Plain codes for unit tests: each code as 2 bytes little-endian, step 2^-9,
/// identity basis. Not a wire format the devices speak.
#[cfg(test)]
pub(crate) mod plain {
    use super::*;
    use omega_tv_sync::{Error, DIM};

    /// Id of the plain test codebook.
    pub const ID: u32 = 0x7e57_0001;

    pub struct Plain;

    impl Plain {
        /// Decodes absolute plain bytes (test helper).
        pub fn decode_into(&self, bytes: &[u8], out: &mut Codes) {
            let _ = self.decode(bytes, None, out);
        }
    }

    impl CodeSpace for Plain {
        fn id(&self) -> u32 {
            ID
        }
        fn decode(&self, bytes: &[u8], base: Option<&Codes>, out: &mut Codes) -> Result<()> {
            if bytes.len() != DIM * 2 {
                return Err(Error::Truncated);
            }
            for (i, c) in bytes.chunks_exact(2).enumerate() {
                let v = i16::from_le_bytes([c[0], c[1]]);
                out[i] = match base {
                    None => v,
                    Some(b) => b[i].checked_add(v).ok_or(Error::CodeOutOfRange)?,
                };
            }
            Ok(())
        }
        fn encode(&self, codes: &Codes, out: &mut [u8]) -> Result<usize> {
            let dst = out.get_mut(..DIM * 2).ok_or(Error::BufferTooSmall)?;
            for (c, v) in dst.chunks_exact_mut(2).zip(codes) {
                c.copy_from_slice(&v.to_le_bytes());
            }
            Ok(DIM * 2)
        }
        fn reconstruct(&self, codes: &Codes) -> Result<Embedding> {
            let mut v = [0f32; DIM];
            for (x, c) in v.iter_mut().zip(codes) {
                *x = f32::from(*c) / 512.0;
            }
            Embedding::normalize(v)
        }
        fn quantize(&self, e: &Embedding) -> Codes {
            let mut c = [0i16; DIM];
            for (q, x) in c.iter_mut().zip(e.as_array()) {
                *q = (x * 512.0).round() as i16;
            }
            c
        }
    }
}
