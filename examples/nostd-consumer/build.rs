//! Link settings: the Cortex-M4 build gets `link.x` (QEMU mps2-an386 memory
//! map); a host build links the C library, whose start-up calls `main`.
use std::env;

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=link.x");
    if target.starts_with("thumb") {
        println!("cargo:rustc-link-arg=-T{dir}/link.x");
    } else if target.contains("linux") {
        // The C runtime calls our `main`; puts, exit, and memcpy & co. for
        // the core and zstd's C code come from the C library.
        println!("cargo:rustc-link-lib=c");
    }
}
