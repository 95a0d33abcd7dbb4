//! Logging through `defmt` or `log`, or nothing: the embassy convention of
//! one `fmt.rs` per crate. Format strings must be valid for both back ends:
//! positional `{}` / `{:?}` placeholders only, no inline arguments.
#![allow(unused_macros)]

#[cfg(all(feature = "defmt", feature = "log"))]
compile_error!("features `defmt` and `log` are mutually exclusive: enable at most one");

macro_rules! log_at {
    ($level:ident, $s:literal $(, $x:expr)* $(,)?) => {{
        #[cfg(feature = "defmt")]
        ::defmt::$level!($s $(, $x)*);
        #[cfg(feature = "log")]
        ::log::$level!($s $(, $x)*);
        #[cfg(not(any(feature = "defmt", feature = "log")))]
        {
            let _ = ($( & $x ),*);
        }
    }};
}

macro_rules! debug {
    ($s:literal $(, $x:expr)* $(,)?) => { log_at!(debug, $s $(, $x)*) };
}

macro_rules! warn {
    ($s:literal $(, $x:expr)* $(,)?) => { log_at!(warn, $s $(, $x)*) };
}
