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

/// The fields of `/proc/PID/stat` after the command name (`pid` a number,
/// `"self"` or `"self/task/TID"`); empty when it cannot be read.
pub fn stat_fields(pid: &str) -> Vec<f64> {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Vec::new();
    };
    let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else {
        return Vec::new();
    };
    rest.split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect()
}

/// utime + stime of `/proc/PID/stat` in seconds (at `USER_HZ`, 100 on
/// Linux on every architecture this runs on); 0 when it cannot be read.
pub fn cpu_s_of(pid: &str) -> f64 {
    let f = stat_fields(pid);
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// This process's CPU time, [`cpu_s_of`]`("self")`.
pub fn cpu_s() -> f64 {
    cpu_s_of("self")
}
