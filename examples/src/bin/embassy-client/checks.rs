//! Counting and printing checks, and the stderr logger.

/// Counts of passed and failed checks; each is printed as it is made.
#[derive(Default)]
pub struct Checks {
    /// Checks passed.
    pub passed: usize,
    /// Checks failed.
    pub failed: usize,
}

impl Checks {
    /// Records and prints one check.
    pub fn check(&mut self, what: &str, ok: bool) {
        if ok {
            self.passed += 1;
            println!("ok   {what}");
        } else {
            self.failed += 1;
            println!("FAIL {what}");
        }
    }
}

/// Minimal stderr logger for `RUST_LOG=debug`-style output without a
/// dependency: level from `EMBASSY_CLIENT_LOG` (error, warn, info, debug,
/// trace), default warn.
pub fn env_logger_lite() {
    struct L;
    impl log::Log for L {
        fn enabled(&self, m: &log::Metadata) -> bool {
            // embedded-tls warns on every connection that the read buffer is
            // below 16,640 B; the transport asks the server for records
            // that fit it (max_fragment_length), so that warning is noise.
            m.level() <= log::max_level() && m.target() != "embedded_tls::record_reader"
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: L = L;
    let level = match std::env::var("EMBASSY_CLIENT_LOG").as_deref() {
        Ok("error") => log::LevelFilter::Error,
        Ok("info") => log::LevelFilter::Info,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        _ => log::LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
