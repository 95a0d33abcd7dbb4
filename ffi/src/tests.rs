//! Rust-side checks of the C API (the C programs in `tests/` drive it from C).

use super::*;

#[test]
fn print_sizes() {
    for s in [8u32, 64, 256] {
        std::println!("slots {s}: {} bytes", ots_client_size(s));
    }
}
