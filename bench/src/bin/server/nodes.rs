//! Nodes as processes of their own (`constellation serve`), so that their
//! CPU, and PostgreSQL's, can be read from `/proc` per sync.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::*;

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on
/// Linux on every architecture this runs on).
const TICKS: f64 = 100.0;

/// utime + stime of `pid`, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / TICKS
}

fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The PostgreSQL processes behind `ports`: each postmaster started with
/// `-p PORT` and its children (backends, WAL writer, checkpointer ...).
fn pg_pids(ports: &[u16]) -> Vec<u32> {
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

fn port_of(url: &str) -> Option<u16> {
    let host = url.split('@').nth(1)?.split('/').next()?;
    host.rsplit(':').next()?.parse().ok()
}

struct Node(Child, String);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, dbs: &[String], a: &Args) -> Node {
    let mut cmd = Command::new(bin);
    cmd.arg("serve");
    for d in dbs {
        cmd.args(["--db", d]);
    }
    let mut child = cmd
        .args(["--master-secret", "/dev/null"])
        .args(["--listen", "127.0.0.1:0", "--insecure-no-auth"])
        .args(["--admin-listen", "off", "--min-sync-interval", "0"])
        .args(["--log-level", "error"])
        .args(["--aggregate-interval-ms", &a.aggregate_ms.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn constellation serve");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    let addr = line
        .strip_prefix("listening on ")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("constellation serve did not start: {line:?}"));
    Node(child, format!("http://{addr}"))
}

/// The process runs: 1 node and 2 nodes on the first database, 2 nodes on
/// two databases.
pub(super) async fn run(a: &Args, bin: &Path, ch: &Arc<Vec<Chains>>, codebook: u32) {
    let mut runs: Vec<(&str, usize, Vec<String>)> = vec![
        ("1 node, 1 database", 1, vec![a.postgres[0].clone()]),
        ("2 nodes, 1 database", 2, vec![a.postgres[0].clone()]),
    ];
    if a.postgres.len() >= 2 {
        runs.push(("2 nodes, 2 databases", 2, a.postgres[..2].to_vec()));
    }
    let ports: Vec<u16> = a.postgres.iter().filter_map(|u| port_of(u)).collect();
    println!();
    println!(
        "nodes as processes ({} clients split over the nodes, {} s each; CPU from /proc, utime + stime):",
        a.clients, a.seconds
    );
    println!();
    println!("| deployment | syncs/s | errors | node CPU ms/sync | PostgreSQL CPU ms/sync | node + PostgreSQL CPU s per s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (k, (name, n, dbs)) in runs.into_iter().enumerate() {
        let nodes: Vec<Node> = (0..n).map(|_| serve(bin, &dbs, a)).collect();
        let urls: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
        let mut args = Args {
            postgres: Vec::new(),
            serve_bin: None,
            ..*a
        };
        args.id_base = 1_000_000 * (k + 1);
        let pids: Vec<u32> = nodes.iter().map(|n| n.0.id()).collect();
        let pg_before: Vec<(u32, f64)> =
            pg_pids(&ports).into_iter().map(|p| (p, cpu_s(p))).collect();
        let node0: f64 = pids.iter().map(|&p| cpu_s(p)).sum();
        let r = drive(&urls.join(","), &args, ch, codebook, 0).await;
        let node1: f64 = pids.iter().map(|&p| cpu_s(p)).sum();
        // The nodes connect on first use: a backend started during the run
        // counts from 0. Backends that ended during the run are not counted.
        let pg_after: Vec<(u32, f64)> =
            pg_pids(&ports).into_iter().map(|p| (p, cpu_s(p))).collect();
        let pg0: f64 = pg_after
            .iter()
            .map(|(p, _)| {
                pg_before
                    .iter()
                    .find(|(q, _)| q == p)
                    .map_or(0.0, |(_, c)| *c)
            })
            .sum();
        let pg1: f64 = pg_after.iter().map(|(_, c)| c).sum();
        let syncs = r.syncs.max(1) as f64;
        // The drive includes each client's initial upload before the clock
        // starts; CPU covers both, so it is charged to the timed syncs plus
        // those uploads.
        let charged = syncs + a.clients as f64;
        println!(
            "| {name} | {:.0} | {} | {:.3} | {:.3} | {:.2} |",
            syncs / r.elapsed.max(1e-9),
            r.errors,
            (node1 - node0) * 1000.0 / charged,
            (pg1 - pg0) * 1000.0 / charged,
            (node1 - node0 + pg1 - pg0) / r.elapsed.max(1e-9),
        );
        drop(nodes);
    }
}
