//! CPU time from `/proc`, the bench's only clock for cost: of a process,
//! of this one and its children, of the PostgreSQL backends of given ports
//! (polled while they come and go), and of the whole machine.

use omega_tv_sync_bench::procfs::{cpu_of, cpu_s_of, stat, stat_fields, TICKS};

/// utime + stime of `pid`, in seconds.
pub(super) fn cpu_s(pid: u32) -> f64 {
    cpu_s_of(&pid.to_string())
}

/// Name of the threads of the runtime the measured servers run on (the
/// clients run on the bench's main runtime), so that [`split_cpu_s`] can
/// tell the two apart.
pub(super) const SERVER_THREADS: &str = "srv-rt";

/// CPU seconds of this process's live threads, split into the servers'
/// (the [`SERVER_THREADS`] runtime's workers and blocking pool, and the
/// store's writer threads, `constellation-…`), the clients' (every other
/// thread) and the attackers' ([`ATTACK_THREADS`]), and the redb writer
/// threads' alone ([`WRITER_THREADS`], part of the servers'): `(server,
/// clients, attackers, writer)`. Threads that ended are not counted: the
/// server runtime keeps its blocking threads alive for the whole run.
pub(super) fn split_cpu_s() -> (f64, f64, f64, f64) {
    let (mut server, mut attackers, mut rest, mut writer) = (0.0, 0.0, 0.0, 0.0);
    for (comm, c) in thread_cpu_s() {
        if is_server_thread(&comm) {
            server += c;
            if comm.starts_with(WRITER_THREADS) {
                writer += c;
            }
        } else if comm.starts_with(ATTACK_THREADS) {
            attackers += c;
        } else {
            rest += c;
        }
    }
    (server, rest, attackers, writer)
}

/// A thread of the servers: the [`SERVER_THREADS`] runtime's, or the
/// store's (`constellation-…`).
fn is_server_thread(comm: &str) -> bool {
    comm.starts_with(SERVER_THREADS) || comm.starts_with("constellation")
}

/// Voluntary context switches of the servers' live threads (the same
/// threads as [`split_cpu_s`]'s server share) and of the writer thread
/// among them: each is a thread that went to sleep waiting (for work, a
/// wake-up, the disk), from `voluntary_ctxt_switches` of
/// `/proc/self/task/*/status`.
pub(super) fn server_switches() -> (u64, u64) {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    let (mut server, mut writer) = (0, 0);
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let comm = field("Name:").unwrap_or("");
        if !is_server_thread(comm) {
            continue;
        }
        let n = field("voluntary_ctxt_switches:")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        server += n;
        if comm.starts_with(WRITER_THREADS) {
            writer += n;
        }
    }
    (server, writer)
}

/// Name prefix of the redb store's writer thread (`constellation-writer`,
/// cut to 15 bytes by the kernel): the one thread every write goes through.
pub(super) const WRITER_THREADS: &str = "constellation-w";

/// Name of the threads of the attackers' runtime (`--attack`), counted
/// apart by [`split_cpu_s`].
pub(super) const ATTACK_THREADS: &str = "atk-rt";

/// Each live thread of this process: its name and CPU seconds.
fn thread_cpu_s() -> impl Iterator<Item = (String, f64)> {
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    tasks.flatten().filter_map(|t| {
        let (comm, f) = stat(&format!("self/task/{}", t.file_name().to_str()?))?;
        Some((comm, cpu_of(&f)))
    })
}

/// utime + stime of this process, in seconds.
pub(super) fn self_cpu_s() -> f64 {
    omega_tv_sync_bench::procfs::cpu_s()
}

/// cutime + cstime of this process (its children that were waited for),
/// in seconds.
pub(super) fn children_cpu_s() -> f64 {
    let f = stat_fields("self");
    (f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)) / TICKS
}

fn ppid(pid: u32) -> Option<u32> {
    // After the command: state(0) ppid(1).
    let (_, f) = stat(&pid.to_string())?;
    f.get(1).map(|&p| p as u32)
}

/// The PostgreSQL processes behind `ports`: each postmaster started with
/// `-p PORT` and its children (backends, WAL writer, checkpointer ...).
pub(super) fn pg_pids(ports: &[u16]) -> Vec<u32> {
    let all: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let masters: Vec<u32> = all
        .iter()
        .copied()
        .filter(|pid| {
            let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmd
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.ends_with("postgres"))
                && args
                    .windows(2)
                    .any(|w| w[0] == "-p" && ports.iter().any(|p| w[1] == p.to_string()))
        })
        .collect();
    all.into_iter()
        .filter(|pid| masters.contains(pid) || ppid(*pid).is_some_and(|p| masters.contains(&p)))
        .collect()
}

/// CPU of the PostgreSQL processes behind some ports, between two reads.
pub(super) struct PgCpu {
    ports: Vec<u16>,
    before: Vec<(u32, f64)>,
    /// The last CPU read of every process seen since the start.
    last: std::collections::HashMap<u32, f64>,
}

impl PgCpu {
    /// Reads the CPU of every current process of the clusters on `ports`.
    pub(super) fn start(ports: &[u16]) -> Self {
        let before: Vec<(u32, f64)> = pg_pids(ports).into_iter().map(|p| (p, cpu_s(p))).collect();
        PgCpu {
            ports: ports.to_vec(),
            last: before.iter().copied().collect(),
            before,
        }
    }

    /// Reads the CPU of every current process again, so that a backend
    /// that ends before [`PgCpu::elapsed`] still counts up to this read.
    pub(super) fn poll(&mut self) {
        for p in pg_pids(&self.ports) {
            let c = cpu_s(p);
            if c > 0.0 {
                self.last.insert(p, c);
            }
        }
    }

    /// CPU seconds since [`PgCpu::start`]. A backend started since counts
    /// from 0; one that ended since counts up to the last
    /// [`PgCpu::poll`].
    pub(super) fn elapsed(mut self) -> f64 {
        self.poll();
        self.last
            .iter()
            .map(|(p, c)| {
                let was = self
                    .before
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or(0.0, |(_, c)| *c);
                c - was
            })
            .sum()
    }
}

/// Busy CPU seconds of the whole machine (every process, this bench's and
/// any other's) from the first line of `/proc/stat`: user + nice + system +
/// irq + softirq + steal.
pub(super) fn machine_busy_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    [0usize, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>()
        / TICKS
}

/// Runs `fut`, polling `cpu` every 250 ms meanwhile.
pub(super) async fn polling<T>(cpu: &mut PgCpu, fut: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(fut);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => cpu.poll(),
        }
    }
}
