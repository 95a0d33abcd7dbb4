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

/// The command name of `/proc/PID/stat` and the fields after it (`pid` a
/// number, `"self"` or `"self/task/TID"`); `None` when it cannot be read.
pub fn stat(pid: &str) -> Option<(String, Vec<f64>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let fields = stat
        .get(close + 1..)?
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(0.0))
        .collect();
    Some((stat.get(open + 1..close)?.to_string(), fields))
}

/// The fields of `/proc/PID/stat` after the command name ([`stat`]);
/// empty when it cannot be read.
pub fn stat_fields(pid: &str) -> Vec<f64> {
    stat(pid).map(|(_, f)| f).unwrap_or_default()
}

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on
/// Linux on every architecture this runs on).
pub const TICKS: f64 = 100.0;

/// utime + stime in seconds, from the fields of [`stat_fields`].
pub fn cpu_of(fields: &[f64]) -> f64 {
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / TICKS
}

/// utime + stime of `/proc/PID/stat` in seconds; 0 when it cannot be read.
pub fn cpu_s_of(pid: &str) -> f64 {
    cpu_of(&stat_fields(pid))
}

/// This process's CPU time, [`cpu_s_of`]`("self")`.
pub fn cpu_s() -> f64 {
    cpu_s_of("self")
}
