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

/// This process's CPU time (utime + stime of `/proc/self/stat`) in seconds,
/// at the kernel's 100 Hz tick; 0 when it cannot be read.
pub fn cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let fields: Vec<f64> = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .map(|rest| {
            rest.split_whitespace()
                .map(|v| v.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}
