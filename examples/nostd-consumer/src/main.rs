//! A minimal `#![no_std]` `#![no_main]` consumer of `omega-tv-sync`.
//!
//! Building it proves the core needs neither `std` nor a heap: this crate
//! defines its own panic handler, which would clash with `std`'s if anything
//! pulled `std` in. On `thumbv7em-none-eabihf` it is a complete bare-metal
//! image for QEMU's mps2-an386 (Cortex-M4F): it validates an embedding, and
//! with feature `zstd` it runs a compress/decompress round trip in static
//! workspaces and prints the workspace sizes the linked zstd reports, through
//! semihosting. Exit code 0 means every check passed.
//!
//! ```text
//! cargo build --release --target thumbv7em-none-eabihf --features zstd
//! qemu-system-arm -cpu cortex-m4 -machine mps2-an386 -nographic \
//!     -semihosting-config enable=on,target=native \
//!     -kernel target/thumbv7em-none-eabihf/release/omega-tv-sync-nostd-consumer
//! ```
//!
//! On a hosted target (the fallback when the Cortex-M target is missing) the
//! C runtime calls its `main`; it runs the same checks.
#![no_std]
#![no_main]

use core::fmt::Write;
use core::panic::PanicInfo;

use omega_tv_sync::{Embedding, QualityFilter, DIM};

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    sys::exit(101)
}

/// A fixed-size text buffer for messages (NUL-terminated for semihosting).
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => {{
        let mut line = $crate::Line { buf: [0; 160], len: 0 };
        let _ = writeln!(line, $($arg)*);
        $crate::sys::print(&line.buf[..=line.len]);
    }};
}

/// The checks; returns the exit code.
fn run() -> i32 {
    let mut values = [0.0f32; DIM];
    for (i, v) in values.iter_mut().enumerate() {
        *v = ((i * 7919) % 97) as f32 - 48.0;
    }
    let Ok(e) = Embedding::normalize(values) else {
        say!("FAIL: normalize");
        return 1;
    };
    let self_cos = e.dot(&e);
    if !(0.999..=1.001).contains(&self_cos) || !QualityFilter::default().accepts(0.9, 20) {
        say!("FAIL: embedding or filter");
        return 1;
    }
    say!("core: embedding ok");

    #[cfg(feature = "zstd")]
    {
        let code = zstd::run(e.as_array());
        if code != 0 {
            return code;
        }
    }
    say!("all checks passed");
    0
}

#[cfg(feature = "zstd")]
mod zstd {
    use core::fmt::Write;
    use core::ptr::addr_of_mut;

    use omega_tv_sync::wire::zstd::{
        Compressor, Decompressor, CCTX_WORKSPACE_BYTES, CCTX_WORKSPACE_WORDS, DCTX_WORKSPACE_BYTES,
        DCTX_WORKSPACE_WORDS,
    };
    use omega_tv_sync::DIM;

    static mut CCTX_WS: [u64; CCTX_WORKSPACE_WORDS] = [0; CCTX_WORKSPACE_WORDS];
    static mut DCTX_WS: [u64; DCTX_WORKSPACE_WORDS] = [0; DCTX_WORKSPACE_WORDS];
    static mut SRC: [u8; 4 * DIM * 2] = [0; 4 * DIM * 2];
    static mut PACKED: [u8; 4 * DIM * 2] = [0; 4 * DIM * 2];
    static mut OUT: [u8; 4 * DIM * 2] = [0; 4 * DIM * 2];

    pub fn run(v: &[f32; DIM]) -> i32 {
        say!(
            "zstd: CCtx needs {} B (const {}), DCtx needs {} B (const {})",
            Compressor::workspace_bytes(),
            CCTX_WORKSPACE_BYTES,
            Decompressor::workspace_bytes(),
            DCTX_WORKSPACE_BYTES
        );
        // SAFETY: `run` is called once, from the single thread of this
        // program, and no interrupt handler touches these statics, so these
        // are the only references to them.
        let (cws, dws, src, packed, out) = unsafe {
            (
                &mut *addr_of_mut!(CCTX_WS),
                &mut *addr_of_mut!(DCTX_WS),
                &mut *addr_of_mut!(SRC),
                &mut *addr_of_mut!(PACKED),
                &mut *addr_of_mut!(OUT),
            )
        };
        let (Ok(mut c), Ok(mut d)) = (Compressor::new(cws), Decompressor::new(dws)) else {
            say!("FAIL: workspace rejected");
            return 2;
        };
        // A body like a frame's: the vector twice, then a repeated record.
        for (i, x) in v.iter().chain(v.iter()).enumerate() {
            src[4 * i..4 * i + 4].copy_from_slice(&x.to_le_bytes());
        }
        let Ok(n) = c.compress(src, packed) else {
            say!("FAIL: compress");
            return 3;
        };
        match d.decompress(&packed[..n], out) {
            Ok(m) if m == src.len() && out[..] == src[..] => {}
            _ => {
                say!("FAIL: round trip");
                return 4;
            }
        }
        say!("zstd: {} B -> {} B, round trip ok", src.len(), n);
        packed[n / 2] ^= 0x55;
        if let Ok(m) = d.decompress(&packed[..n - 1], out) {
            say!("FAIL: truncated frame decoded to {} B", m);
            return 5;
        }
        0
    }

    /// zstd's C code references the C heap; these static contexts never
    /// call it. A firmware without a C heap provides these three (a hosted
    /// build takes the C library's).
    #[cfg(target_os = "none")]
    #[no_mangle]
    extern "C" fn malloc(_size: usize) -> *mut u8 {
        core::ptr::null_mut()
    }

    #[cfg(target_os = "none")]
    #[no_mangle]
    extern "C" fn calloc(_n: usize, _size: usize) -> *mut u8 {
        core::ptr::null_mut()
    }

    #[cfg(target_os = "none")]
    #[no_mangle]
    extern "C" fn free(_ptr: *mut u8) {}
}

#[cfg(all(target_arch = "arm", target_os = "none"))]
mod sys {
    //! Bare-metal start-up and ARM semihosting for QEMU.
    use core::arch::asm;
    use core::ptr;

    extern "C" {
        static mut __sbss: u32;
        static mut __ebss: u32;
        static mut __sdata: u32;
        static mut __edata: u32;
        static __sidata: u32;
        static __stack_top: u32;
    }

    /// The Cortex-M vector table: initial stack pointer, reset, and the 14
    /// other system exceptions.
    #[repr(C)]
    pub struct Vectors {
        stack_top: *const u32,
        handlers: [unsafe extern "C" fn(); 15],
    }

    // SAFETY: read only by the hardware; never written.
    unsafe impl Sync for Vectors {}

    #[link_section = ".vector_table"]
    #[no_mangle]
    #[used]
    static VECTORS: Vectors = Vectors {
        stack_top: ptr::addr_of!(__stack_top),
        handlers: [
            reset, fault, fault, fault, fault, fault, fault, fault, fault, fault, fault, fault,
            fault, fault, fault,
        ],
    };

    #[no_mangle]
    unsafe extern "C" fn reset() {
        // SAFETY: runs once before any Rust code; the symbols come from
        // link.x and delimit .bss and .data in RAM and .data's image in
        // flash, all word aligned.
        unsafe {
            let mut p = ptr::addr_of_mut!(__sbss);
            while p < ptr::addr_of_mut!(__ebss) {
                ptr::write_volatile(p, 0);
                p = p.add(1);
            }
            let mut d = ptr::addr_of_mut!(__sdata);
            let mut s = ptr::addr_of!(__sidata);
            while d < ptr::addr_of_mut!(__edata) {
                ptr::write_volatile(d, ptr::read_volatile(s));
                d = d.add(1);
                s = s.add(1);
            }
            // Enable the FPU (CP10, CP11 full access) before any float code.
            ptr::write_volatile(0xE000_ED88 as *mut u32, 0xF << 20);
            asm!("dsb", "isb", options(nostack));
        }
        exit(super::run())
    }

    unsafe extern "C" fn fault() {
        exit(102)
    }

    fn semihost(op: usize, arg: usize) -> usize {
        let r;
        // SAFETY: BKPT 0xAB is the semihosting call; QEMU reads the argument
        // block `arg` points to (valid for the duration of the call).
        unsafe {
            asm!("bkpt #0xab", inout("r0") op => r, in("r1") arg, options(nostack));
        }
        r
    }

    /// Prints a NUL-terminated string (SYS_WRITE0).
    pub fn print(s: &[u8]) {
        semihost(0x04, s.as_ptr() as usize);
    }

    /// Ends the program with `code` (SYS_EXIT_EXTENDED, ADP_Stopped_ApplicationExit).
    pub fn exit(code: i32) -> ! {
        let block = [0x20026usize, code as usize];
        semihost(0x20, block.as_ptr() as usize);
        loop {
            asm_wfi();
        }
    }

    fn asm_wfi() {
        // SAFETY: waits for an interrupt; no memory effects.
        unsafe { asm!("wfi", options(nomem, nostack)) }
    }
}

#[cfg(not(all(target_arch = "arm", target_os = "none")))]
mod sys {
    //! Hosted build: the C runtime starts the program and calls `main`.
    mod libc {
        extern "C" {
            pub fn exit(code: i32) -> !;
            pub fn write(fd: i32, buf: *const u8, len: usize) -> isize;
        }
    }

    #[no_mangle]
    extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
        super::run()
    }

    /// The host's precompiled `core` is built for unwinding and refers to
    /// this symbol; with `panic = "abort"` it is never called.
    #[no_mangle]
    extern "C" fn rust_eh_personality() {}

    pub fn print(s: &[u8]) {
        let text = s.strip_suffix(&[0]).unwrap_or(s);
        // SAFETY: `text` is valid for reads of its length.
        unsafe {
            libc::write(1, text.as_ptr(), text.len());
        }
    }

    pub fn exit(code: i32) -> ! {
        // SAFETY: ends the process (flushing stdout).
        unsafe { libc::exit(code) }
    }
}
