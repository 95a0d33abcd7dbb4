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
    /// [`reconstruct`](Self::reconstruct) of every `codes[i]` into
    /// `out[i]` (as many as the shorter holds): the same results, perhaps
    /// in less time than one by one.
    fn reconstruct_many(&self, codes: &[Codes], out: &mut [Result<Embedding>]) {
        for (c, o) in codes.iter().zip(out.iter_mut()) {
            *o = self.reconstruct(c);
        }
    }
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
        wide::reconstruct(self, codes)
    }
    fn reconstruct_many(&self, codes: &[Codes], out: &mut [Result<Embedding>]) {
        wide::reconstruct_many(self, codes, out)
    }
    fn quantize(&self, e: &Embedding) -> Codes {
        Codebook::quantize(self, e)
    }
}

/// [`Codebook::reconstruct`] compiled for the widest vector unit the CPU
/// has (AVX-512, AVX2, else the build's baseline), chosen at run time.
///
/// Aggregation reconstructs every changed pattern it takes in, the
/// server's main floating-point work (docs/benchmarks.md, "Load"); with a
/// [`FloatBasis`] attached that is `DIM` rows of `DIM` `f32` added into an
/// accumulator, which the baseline x86-64 build does four lanes at a time.
/// The same function, inlined into a caller compiled with a wider unit,
/// adds 8 or 16 lanes at a time. The sums are the same, bit for bit: each
/// accumulator lane still adds the same products in the same order, and
/// Rust never fuses a multiply and an add on its own (docs/codec.md,
/// "Float basis"; the test is `bench/tests/wide.rs`, whose package the dev
/// profile optimises enough to vectorise).
pub mod wide {
    use super::*;

    /// A vector unit [`reconstruct`] can run on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Unit {
        /// AVX-512 (foundation), with the AVX2, FMA and F16C it implies.
        Avx512,
        /// AVX2 (with the AVX it implies).
        Avx2,
        /// The build's own code generation.
        Baseline,
    }

    impl Unit {
        /// Every unit, widest first.
        pub const ALL: [Unit; 3] = [Unit::Avx512, Unit::Avx2, Unit::Baseline];

        /// Its name in tables: `avx512`, `avx2`, `baseline`.
        pub fn name(self) -> &'static str {
            match self {
                Unit::Avx512 => "avx512",
                Unit::Avx2 => "avx2",
                Unit::Baseline => "baseline",
            }
        }

        /// Whether this CPU (and its OS) can run it. Each unit is asked for
        /// with every feature `#[target_feature]` turns on with it, so that
        /// nothing the compiler may emit there is missing.
        pub fn available(self) -> bool {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                match self {
                    Unit::Avx512 => has!("avx512f") && has!("avx2") && has!("fma") && has!("f16c"),
                    Unit::Avx2 => has!("avx2"),
                    Unit::Baseline => true,
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                self == Unit::Baseline
            }
        }
    }

    /// The widest unit this CPU can run.
    pub fn unit() -> Unit {
        Unit::ALL
            .into_iter()
            .find(|u| u.available())
            .unwrap_or(Unit::Baseline)
    }

    /// The embedding `codes` stand for in `book`, on the widest unit found.
    pub fn reconstruct(book: &Codebook<'_>, codes: &Codes) -> Result<Embedding> {
        on(unit(), book, codes).unwrap_or_else(|| book.reconstruct(codes))
    }

    /// The embedding `codes` stand for in `book`, on `unit`; `None` when
    /// this CPU cannot run it. `#[inline]`, so that a caller's crate
    /// compiles its own copy (the tests', optimised to vectorise).
    #[inline]
    pub fn on(unit: Unit, book: &Codebook<'_>, codes: &Codes) -> Option<Result<Embedding>> {
        if !unit.available() {
            return None;
        }
        Some(match unit {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` found AVX-512F, AVX2, FMA and F16C, every
            // feature `avx512f` enables.
            Unit::Avx512 => unsafe { avx512(book, codes) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available` found AVX2 (which implies the AVX it enables).
            Unit::Avx2 => unsafe { avx2(book, codes) },
            _ => book.reconstruct(codes),
        })
    }

    /// [`reconstruct`] of every `codes[i]` into `out[i]`, through
    /// [`Codebook::reconstruct_many`] (the basis read once per eight
    /// patterns) on the widest unit found.
    pub fn reconstruct_many(book: &Codebook<'_>, codes: &[Codes], out: &mut [Result<Embedding>]) {
        if !on_many(unit(), book, codes, out) {
            book.reconstruct_many(codes, out);
        }
    }

    /// [`reconstruct_many`] on `unit`; `false` (nothing written) when this
    /// CPU cannot run it.
    #[inline]
    pub fn on_many(
        unit: Unit,
        book: &Codebook<'_>,
        codes: &[Codes],
        out: &mut [Result<Embedding>],
    ) -> bool {
        if !unit.available() {
            return false;
        }
        match unit {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `on`.
            Unit::Avx512 => unsafe { avx512_many(book, codes, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `on`.
            Unit::Avx2 => unsafe { avx2_many(book, codes, out) },
            _ => book.reconstruct_many(codes, out),
        }
        true
    }

    // One function per unit and entry point: `#[target_feature]` reaches
    // only code inlined into the function it is on, and a closure passed to
    // one generic wrapper was compiled apart, for the baseline (no vector
    // code in the binary).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    fn avx2_many(book: &Codebook<'_>, codes: &[Codes], out: &mut [Result<Embedding>]) {
        book.reconstruct_many(codes, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn avx512_many(book: &Codebook<'_>, codes: &[Codes], out: &mut [Result<Embedding>]) {
        book.reconstruct_many(codes, out)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    fn avx2(book: &Codebook<'_>, codes: &Codes) -> Result<Embedding> {
        book.reconstruct(codes)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn avx512(book: &Codebook<'_>, codes: &Codes) -> Result<Embedding> {
        book.reconstruct(codes)
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
