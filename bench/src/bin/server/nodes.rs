//! Nodes as processes of their own (`constellation serve`), so that their
//! CPU, and PostgreSQL's, can be read from `/proc` per sync.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::cpu::{self, PgCpu};
use super::pg::{self, Wal};
use super::*;

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

/// One measured deployment.
struct Row {
    name: String,
    syncs_s: f64,
    errors: u64,
    node_ms: f64,
    pg_ms: f64,
    wal_b: f64,
    cores: f64,
    clients_cores: f64,
    machine_cores: f64,
    globals: usize,
}

/// The process runs: 1, 2 and 3 nodes on the first database, 2 nodes on
/// two databases; then `pgbench` on the first database's cluster (the
/// built-in simple-update transaction `-N` and a sync-shaped one) with the same
/// client count, as the physical anchor.
pub(super) async fn run(a: &Args, bin: &Path, ch: &Arc<Vec<Chains>>, codebook: u32) {
    let mut runs: Vec<(&str, usize, Vec<String>)> = vec![
        ("1 node, 1 database", 1, vec![a.postgres[0].clone()]),
        ("2 nodes, 1 database", 2, vec![a.postgres[0].clone()]),
        ("3 nodes, 1 database", 3, vec![a.postgres[0].clone()]),
    ];
    if a.postgres.len() >= 2 {
        runs.push(("2 nodes, 2 databases", 2, a.postgres[..2].to_vec()));
    }
    let ports: Vec<u16> = a
        .postgres
        .iter()
        .filter_map(|u| pg::PgUrl::parse(u).map(|p| p.port))
        .collect();
    println!();
    println!(
        "nodes as processes ({} clients split over the nodes, {} s each; CPU from /proc, utime + stime; machine busy from /proc/stat, every process on the machine):",
        a.clients, a.seconds
    );
    let mut rows = Vec::new();
    for (k, (name, n, dbs)) in runs.into_iter().enumerate() {
        eprintln!("[nodes] {name}: starting {n} node(s)");
        let nodes: Vec<Node> = (0..n).map(|_| serve(bin, &dbs, a)).collect();
        let urls: Vec<String> = nodes.iter().map(|n| n.1.clone()).collect();
        let mut args = Args {
            postgres: Vec::new(),
            serve_bin: None,
            ..a.clone()
        };
        args.id_base = 1_000_000 * (k + 1);
        let pids: Vec<u32> = nodes.iter().map(|n| n.0.id()).collect();
        let wal = Wal::start(&pg::one_per_cluster(&dbs)).await;
        let mut pg_cpu = PgCpu::start(&ports);
        let node0: f64 = pids.iter().map(|&p| cpu::cpu_s(p)).sum();
        let (self0, machine0) = (cpu::self_cpu_s(), cpu::machine_busy_s());
        let wall0 = Instant::now();
        let r = cpu::polling(&mut pg_cpu, drive(&urls.join(","), &args, ch, codebook, 0)).await;
        // The CPU covers the initial uploads too: the cores are over the
        // whole drive's wall time.
        let wall = wall0.elapsed().as_secs_f64().max(1e-9);
        let node1: f64 = pids.iter().map(|&p| cpu::cpu_s(p)).sum();
        let (self1, machine1) = (cpu::self_cpu_s(), cpu::machine_busy_s());
        // The nodes connect on first use: a backend started during the run
        // counts from 0. Backends that ended during the run are not counted.
        let pg = pg_cpu.elapsed();
        let wal_bytes = wal.bytes().await;
        let globals = feed(&urls[0]).await.globals;
        // The drive includes each client's initial upload before the clock
        // starts; CPU and WAL cover both, so they are charged to the timed
        // syncs plus those uploads.
        let charged = r.syncs.max(1) as f64 + a.clients as f64;
        let row = Row {
            name: name.to_string(),
            syncs_s: r.syncs as f64 / r.elapsed.max(1e-9),
            errors: r.errors,
            node_ms: (node1 - node0) * 1000.0 / charged,
            pg_ms: pg * 1000.0 / charged,
            wal_b: wal_bytes as f64 / charged,
            cores: (node1 - node0 + pg) / wall,
            clients_cores: (self1 - self0) / wall,
            machine_cores: (machine1 - machine0) / wall,
            globals,
        };
        eprintln!(
            "[nodes] {name}: {:.0} syncs/s, {} errors",
            row.syncs_s, row.errors
        );
        rows.push(row);
        drop(nodes);
    }

    // The physical anchor: pgbench on the first cluster, same clients.
    let anchors = match pg::pg_bin() {
        Some(pgb) => {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut v = Vec::new();
            for (label, w) in [
                ("pgbench simple-update (-N, -s 1)", pg::Workload::TpcB),
                ("pgbench sync-shaped (-f)", pg::Workload::SyncShaped),
            ] {
                eprintln!("[pgbench] {label}: {} clients, {} s", a.clients, a.seconds);
                let secs = a.seconds.round().max(1.0) as u64;
                match pg::pgbench(&pgb, &a.postgres[0], w, a.clients, secs, dir.path()).await {
                    Ok(r) => v.push((label, r)),
                    Err(e) => eprintln!("[pgbench] {label}: {e}"),
                }
            }
            v
        }
        None => {
            eprintln!("[pgbench] not found (/usr/lib/postgresql/*/bin or $OTS_PG_BIN): no anchor");
            Vec::new()
        }
    };
    let tps = |i: usize| anchors.get(i).map(|(_, r)| r.tps);
    let ratio = |s: f64, t: Option<f64>| t.map_or("-".to_string(), |t| format!("{:.2}", s / t));
    println!();
    println!("| deployment | syncs/s | errors | node CPU ms/sync | PostgreSQL CPU ms/sync | WAL B/sync | node + PostgreSQL cores | clients (bench) cores | machine busy cores | globals live | syncs/s : pgbench -N TPS | syncs/s : sync-shaped TPS |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {} | {:.3} | {:.3} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            r.name,
            r.syncs_s,
            r.errors,
            r.node_ms,
            r.pg_ms,
            r.wal_b,
            r.cores,
            r.clients_cores,
            r.machine_cores,
            r.globals,
            ratio(r.syncs_s, tps(0)),
            ratio(r.syncs_s, tps(1)),
        );
    }
    if !anchors.is_empty() {
        println!();
        println!(
            "pgbench on the first database's cluster ({} clients, {} s, same run):",
            a.clients, a.seconds
        );
        println!();
        println!("| anchor | TPS | transactions | PostgreSQL CPU ms/txn | pgbench CPU ms/txn | WAL B/txn |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (label, r) in &anchors {
            let n = r.transactions.max(1) as f64;
            println!(
                "| {label} | {:.0} | {} | {:.3} | {:.3} | {:.0} |",
                r.tps,
                r.transactions,
                r.pg_cpu * 1000.0 / n,
                r.client_cpu * 1000.0 / n,
                r.wal as f64 / n
            );
        }
    }
}
