//! With feature `zstd`: sizes the zstd decompression workspace to match how
//! zstd-sys compiles the C library.
//!
//! zstd's `ZSTD_DECODER_INTERNAL_BUFFER` (default 64 KiB) is a buffer inside
//! `ZSTD_DCtx`. zstd-sys compiles the C code with the `cc` crate, which takes
//! extra flags from `CFLAGS`, `TARGET_CFLAGS`/`HOST_CFLAGS`,
//! `CFLAGS_<target_with_underscores>` and `CFLAGS_<target>`, in that order
//! (a later `-D` wins). This script reads the same variables and writes the
//! value to `$OUT_DIR/zstd_build.rs`. The library still checks the real size
//! at run time, so a mismatch is an error, never undefined behaviour.

use std::env;
use std::fs;
use std::path::PathBuf;

const DEFINE: &str = "ZSTD_DECODER_INTERNAL_BUFFER";
const DEFAULT: u64 = 1 << 16;
/// zstd clamps the buffer to this; also the fallback for unparsable values.
const MAX: u64 = 128 << 10;

fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.trim_end_matches(['u', 'U', 'l', 'L']).parse().ok()
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_ZSTD").is_none() {
        return;
    }
    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    let kind = if target == host { "HOST" } else { "TARGET" };
    let target_u = target.replace(['-', '.'], "_");
    let vars = [
        "CFLAGS".to_string(),
        format!("{kind}_CFLAGS"),
        format!("CFLAGS_{target_u}"),
        format!("CFLAGS_{target}"),
    ];

    let mut value = DEFAULT;
    for var in &vars {
        println!("cargo:rerun-if-env-changed={var}");
        let Ok(flags) = env::var(var) else { continue };
        let mut tokens = flags.split_ascii_whitespace();
        while let Some(token) = tokens.next() {
            let define = match token {
                "-D" => tokens.next().unwrap_or(""),
                t => t.strip_prefix("-D").unwrap_or(""),
            };
            let (name, val) = define.split_once('=').unwrap_or((define, "1"));
            if name == DEFINE {
                value = parse_number(val).unwrap_or_else(|| {
                    println!(
                        "cargo:warning=cannot parse {DEFINE}={val} in {var}; \
                         sizing the zstd decompression workspace for {MAX} bytes"
                    );
                    MAX
                });
            }
        }
    }

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let code = format!(
        "/// zstd's `{DEFINE}` as zstd-sys compiles it (bytes).\n\
         const {DEFINE}: usize = {value};\n"
    );
    fs::write(out.join("zstd_build.rs"), code).expect("write OUT_DIR/zstd_build.rs");
}
