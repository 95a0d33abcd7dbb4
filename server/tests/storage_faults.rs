//! Storage faults against the real `constellation serve` binary on
//! loopback: a commit fails (the file size limit of the process, or a full
//! tmpfs), syncs and health answer 503 with `Retry-After` and no storage
//! error text, the fault is lifted while the server runs, the server
//! reopens the database by itself, and every acknowledged sync is on disk.
//! Every loop is bounded in count; no timing is asserted.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use constellation::Server;

/// Text of storage errors that must never reach a client.
const LEAKS: [&str; 8] = [
    "too large",
    "i/o",
    "io error",
    "previous",
    "os error",
    "redb",
    "no space",
    "storage:",
];

fn assert_no_leak(what: &str, body: &[u8]) {
    let text = String::from_utf8_lossy(body).to_lowercase();
    for leak in LEAKS {
        assert!(!text.contains(leak), "{what} leaks {leak:?}: {text}");
    }
}

/// `constellation serve` on `db` without authentication, with the file size
/// limit `fsize` (soft; the hard limit stays unlimited so it can be raised
/// from outside) and SIGXFSZ ignored, so a write past it fails with "File
/// too large" instead of killing the process.
fn serve(db: &Path, fsize: Option<u64>) -> (Child, SocketAddr) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_constellation"));
    cmd.args(["serve", "--db"])
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--insecure-no-auth"])
        .args(["--admin-listen", "off", "--min-sync-interval", "0"])
        // One device fills the disk: no per-device quota.
        .args(["--max-patterns-per-device", "0"])
        .args(["--log-level", "error"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if let Some(n) = fsize {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn constellation");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("server printed its address").unwrap();
        if let Some(a) = l.strip_prefix("listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    // Keep reading its output (the log) so that it never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, addr)
}

/// A sync of 64 new patterns (ids `s{seq}-{i}`).
fn filler(seq: u64) -> (Vec<u8>, Vec<String>) {
    let v = patterns();
    let ids: Vec<String> = (0..64).map(|i| format!("s{seq}-{i}")).collect();
    let ups: Vec<Up> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let id: &'static str = Box::leak(id.clone().into_boxed_str());
            Up::abs(id, quantize(&v[(seq as usize * 64 + i) % v.len()]))
        })
        .collect();
    (upload(seq, 0, &ups), ids)
}

/// How a fault is made and lifted.
trait Fault {
    /// Lifts the fault on the running server `pid`.
    fn lift(&mut self, pid: u32);
}

/// The process's file size limit, raised with `prlimit(2)`.
struct SizeLimit;

impl Fault for SizeLimit {
    fn lift(&mut self, pid: u32) {
        let lim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain syscall on a pid we spawned; `lim` outlives it.
        let r = unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_FSIZE,
                &lim,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    }
}

/// A small tmpfs filled by a ballast file, deleted to lift the fault;
/// unmounted on drop.
struct FullTmpfs {
    mount: PathBuf,
    ballast: PathBuf,
}

impl FullTmpfs {
    /// Mounts a `size_mib` tmpfs on `dir` with `ballast_mib` taken;
    /// `None` when mounting is not possible (not root, no privilege).
    fn mount(dir: &Path, size_mib: u64, ballast_mib: u64) -> Option<Self> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let ballast = dir.join("ballast");
        std::fs::write(&ballast, vec![1u8; (ballast_mib << 20) as usize]).unwrap();
        Some(FullTmpfs {
            mount: dir.to_path_buf(),
            ballast,
        })
    }
}

impl Fault for FullTmpfs {
    fn lift(&mut self, _pid: u32) {
        std::fs::remove_file(&self.ballast).unwrap();
    }
}

impl Drop for FullTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Syncs until a commit fails, checks the answers during the fault, lifts
/// it, waits (bounded) for the server to serve again, then checks on disk
/// that every acknowledged sync is there.
fn fault_and_recover(db: &Path, fsize: Option<u64>, fault: &mut dyn Fault) {
    let (mut child, addr) = serve(db, fsize);
    let dev = "tv-fill";
    let mut acked: Vec<(u64, Vec<String>)> = Vec::new();
    let mut failed = None;
    // Bounded: 64 new patterns per sync until a commit fails.
    for seq in 1..=2000u64 {
        let (body, ids) = filler(seq);
        let r = post_sync(addr, dev, "0", &body);
        if r.status == 200 {
            acked.push((seq, ids));
            continue;
        }
        failed = Some((seq, body, ids, r));
        break;
    }
    let Some((seq, body, ids, r)) = failed else {
        let _ = child.kill();
        panic!("the fault was never reached");
    };
    assert!(!acked.is_empty(), "the first sync already failed");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "storage_unavailable");
    assert!(r
        .header("retry-after")
        .is_some_and(|v| v.parse::<u32>().is_ok_and(|s| s >= 1)));
    assert_no_leak("failed sync", &r.body);

    // During the fault: the same sync again, health and the version answer
    // 503 without error text.
    let again = post_sync(addr, dev, "0", &body);
    assert_eq!(again.status, 503);
    assert!(again.header("retry-after").is_some());
    assert_no_leak("retried sync", &again.body);
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.status, 503, "health during the fault");
    assert_no_leak("health", &h.body);
    let v = raw(addr, "GET", "/api/v1/sync/version", &[], &[]);
    assert_eq!(v.status, 503, "version during the fault");
    assert_no_leak("version", &v.body);

    fault.lift(child.id());

    // The device retries the same bytes, as after any 503; bounded count.
    let mut recovered = false;
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(250));
        let r = post_sync(addr, dev, "0", &body);
        if r.status == 200 {
            // Applied now, not answered from a record of the failed
            // commit: what failed stored nothing.
            assert!(
                r.header("x-replayed").is_none(),
                "the sync answered 503 had been stored"
            );
            recovered = true;
            break;
        }
        assert_eq!(r.status, 503);
        assert_no_leak("sync while recovering", &r.body);
    }
    assert!(
        recovered,
        "the server never served again after the fault was lifted"
    );
    acked.push((seq, ids));
    for next in seq + 1..seq + 4 {
        let (body, ids) = filler(next);
        let r = post_sync(addr, dev, "0", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        acked.push((next, ids));
    }
    let h = raw(addr, "GET", "/api/v1/health", &[], &[]);
    assert_eq!(h.status, 200, "health after recovery");
    let _ = child.kill();
    let _ = child.wait();

    // On disk, read by a fresh server: every acknowledged pattern.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let srv = Server::start(config(db)).await.unwrap();
        let st = srv.device_state(dev).unwrap();
        let stored: std::collections::HashSet<&str> =
            st.patterns.iter().map(|p| p.id.as_str()).collect();
        let mut lost = 0;
        for (_, ids) in &acked {
            lost += ids
                .iter()
                .filter(|id| !stored.contains(id.as_str()))
                .count();
        }
        assert_eq!(lost, 0, "acknowledged patterns lost");
        assert_eq!(stored.len(), acked.len() * 64);
        srv.shutdown().await;
    });
}

/// "File too large": the process's file size limit stops a commit; it is
/// raised while the server runs (prlimit), and the server reopens the
/// database by itself.
#[test]
fn a_file_size_fault_answers_503_then_the_server_reopens_and_loses_nothing() {
    let (_dir, db) = temp_db();
    fault_and_recover(&db, Some(4 << 20), &mut SizeLimit);
}

/// ENOSPC: the database lives on a small tmpfs filled by a ballast file;
/// deleting it lifts the fault. Needs root (mount); skipped loudly otherwise.
#[test]
fn a_full_disk_answers_503_then_the_server_reopens_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut fs) = FullTmpfs::mount(dir.path(), 8, 5) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root (run as root to test ENOSPC)");
        return;
    };
    let db = dir.path().join("constellation.redb");
    fault_and_recover(&db, None, &mut fs);
}
