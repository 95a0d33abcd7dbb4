//! This process's own figures from `/proc/self`.

/// A `/proc/self/status` field in KiB (`"VmRSS:"`, `"VmHWM:"`, ...); 0 when
/// it cannot be read.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
