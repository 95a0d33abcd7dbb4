//! How each firmware of this package ends under QEMU: a semihosting exit
//! with status 0 or 1, and the panic handler (prints the panic, exits 1).

use cortex_m_semihosting::{debug, hprintln};

/// Exits QEMU with status 0 when `ok`, 1 otherwise.
#[inline(always)]
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("PANIC {}", info);
    exit(false)
}
