//! The C API driven from C, on the host:
//!
//! - `c_checks`: the portable checks of `tests/c/` (the firmware's sync
//!   cycle and every bad input) built with the system C compiler against
//!   the static library as C programs link it (`--profile ffi`), run
//!   natively, under AddressSanitizer + UBSan, and under valgrind, each
//!   with zero errors;
//! - `host_example_syncs_with_the_real_server`: `examples/host/ots_sync.c`
//!   (libcurl) against `constellation serve` on loopback with the
//!   device enrolled by `constellation device add`: 5 syncs in two runs
//!   (the second restores the snapshot file the first wrote), the first run
//!   built with AddressSanitizer, the second run under valgrind; then the
//!   server's state, read back through the admin listener (bearer token),
//!   must equal the
//!   client's acknowledged codes and revisions.
//!
//! Without a C compiler, libcurl's headers, AddressSanitizer or valgrind a
//! test prints one loud line and skips; with `OTS_REQUIRE_C=1` (set by
//! `.ci/run`) a missing tool fails it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Libraries a Rust static library with std needs on Linux
/// (`rustc --print native-static-libs`).
const NATIVE_LIBS: &[&str] = &["-lgcc_s", "-lutil", "-lrt", "-lpthread", "-lm", "-ldl"];

fn required() -> bool {
    std::env::var("OTS_REQUIRE_C").is_ok_and(|v| v == "1")
}

/// Skips with one loud line, or fails under `OTS_REQUIRE_C=1`.
fn skip(test: &str, why: &str) {
    if required() {
        panic!("OTS_REQUIRE_C=1 but {why}");
    }
    // Straight to the process's stderr: libtest does not capture it, so the
    // line shows in a plain `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "!!!!!!!! SKIPPED {test}: {why} (scripts/setup.sh installs it) !!!!!!!!"
    );
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace());
    c
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `libomega_tv_sync_ffi.a` built with `--profile ffi` (panic = "abort"),
/// once per test binary.
fn staticlib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        eprintln!("building the static library (cargo build -p omega-tv-sync-ffi --profile ffi)");
        let out = cargo()
            .args([
                "build",
                "-p",
                "omega-tv-sync-ffi",
                "--profile",
                "ffi",
                "--message-format=json",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "cargo build --profile ffi failed");
        let mut lib = None;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["reason"] == "compiler-artifact" && v["target"]["name"] == "omega_tv_sync_ffi" {
                for f in v["filenames"].as_array().into_iter().flatten() {
                    if let Some(f) = f.as_str().filter(|f| f.ends_with(".a")) {
                        lib = Some(PathBuf::from(f));
                    }
                }
            }
        }
        lib.expect("cargo reported no libomega_tv_sync_ffi.a")
    })
}

/// Writes the fixtures of the sync cycle (`examples/fixtures.rs`) into `dir`.
fn fixtures(dir: &Path) {
    let st = cargo()
        .args([
            "run",
            "-q",
            "-p",
            "omega-tv-sync-ffi",
            "--example",
            "fixtures",
            "--",
        ])
        .arg(dir)
        .status()
        .expect("run the fixture generator");
    assert!(st.success(), "fixture generator failed");
}

/// Compiles C sources into `out`; `Err` carries the compiler's output.
fn compile(
    sources: &[PathBuf],
    includes: &[&Path],
    extra: &[&str],
    out: &Path,
) -> Result<(), String> {
    let mut c = Command::new(cc());
    c.args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(workspace().join("ffi/include"));
    for i in includes {
        c.arg("-I").arg(i);
    }
    c.args(extra)
        .args(sources)
        .arg(staticlib())
        .args(NATIVE_LIBS);
    for lib in extra.iter().filter(|a| a.starts_with("-l")) {
        c.arg(lib); // libraries again after the static library
    }
    c.arg("-o").arg(out);
    let o = c
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cc()))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// Runs a program; returns its stdout, panics with its output on failure.
fn run(what: &str, cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        o.status
    );
    eprintln!("{what}: {}", stdout.lines().last().unwrap_or(""));
    stdout + &stderr
}

fn valgrind(program: &Path) -> Command {
    let mut c = Command::new("valgrind");
    c.args([
        "--error-exitcode=99",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite,indirect",
    ])
    .arg(program);
    c
}

/// `ERROR SUMMARY: 0 errors` must be in valgrind's output.
fn assert_valgrind_clean(out: &str) {
    let line = out
        .lines()
        .find(|l| l.contains("ERROR SUMMARY:"))
        .expect("valgrind printed no ERROR SUMMARY");
    assert!(line.contains("ERROR SUMMARY: 0 errors"), "{line}");
}

fn asan_env(c: &mut Command) -> &mut Command {
    c.env(
        "ASAN_OPTIONS",
        "detect_leaks=1:abort_on_error=0:exitcode=98",
    )
    .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
}

#[test]
fn c_checks() {
    if !have(&cc(), "--version") {
        return skip("c_checks", &format!("no C compiler ({})", cc()));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = dir.path().join("fixtures");
    fixtures(&fx);
    let src = workspace().join("ffi/tests/c");
    let sources: Vec<PathBuf> = [
        "checks_main.c",
        "checks_common.c",
        "sync_cycle.c",
        "bad_input.c",
    ]
    .iter()
    .map(|f| src.join(f))
    .chain([fx.join("fixtures.c")])
    .collect();
    let includes = [src.as_path(), fx.as_path()];

    let plain = dir.path().join("checks");
    compile(&sources, &includes, &[], &plain).expect("compile the C checks");
    let out = run("C checks (native)", &mut Command::new(&plain));
    assert!(out.contains(" 0 failed"), "{out}");

    let asan = dir.path().join("checks-asan");
    let flags = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
    ];
    match compile(&sources, &includes, &flags, &asan) {
        Ok(()) => {
            let out = run(
                "C checks (AddressSanitizer + UBSan)",
                asan_env(&mut Command::new(&asan)),
            );
            assert!(!out.contains("ERROR: AddressSanitizer"), "{out}");
            assert!(!out.contains("runtime error"), "{out}");
        }
        Err(e) => skip("c_checks under AddressSanitizer", &format!("no ASan: {e}")),
    }

    if have("valgrind", "--version") {
        let out = run("C checks (valgrind)", &mut valgrind(&plain));
        assert_valgrind_clean(&out);
        assert!(out.contains(" 0 failed"), "{out}");
    } else {
        skip("c_checks under valgrind", "valgrind is missing");
    }
}

// ---- the host example against the real server ----

/// Builds (or finds up to date) this workspace's `constellation` binary.
fn constellation_bin() -> PathBuf {
    let st = cargo()
        .args([
            "build",
            "-q",
            "-p",
            "constellation",
            "--bin",
            "constellation",
        ])
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build -p constellation failed");
    // target/<profile>/deps/<test> -> target/<profile>/constellation
    let exe = std::env::current_exe().expect("test path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("constellation");
    assert!(bin.exists(), "{} is missing", bin.display());
    bin
}

/// `constellation serve`, killed and reaped when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The admin bearer token [`serve`] starts the server with.
const ADMIN_TOKEN: &str = "c-programs-admin-token-0123";

/// Starts `constellation serve` on a free loopback port (its admin listener
/// on another, with [`ADMIN_TOKEN`] in a mode-0600 file next to `db`; no
/// minimum sync interval: the example syncs back to back) and returns it
/// with its address and its admin address.
fn serve(bin: &Path, db: &Path) -> (Served, String, String) {
    let token = db.with_extension("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).expect("write the admin token");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the admin token");
    }
    let mut child = Command::new(bin)
        .args(["serve", "--db"])
        .arg(db)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--admin-token-file")
        .arg(&token)
        .args(["--min-sync-interval", "0", "--log-level", "error"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn constellation");
    let out = child.stdout.take().expect("stdout");
    let served = Served(child);
    let mut r = BufReader::new(out);
    let mut admin = String::new();
    let _ = r.read_line(&mut admin);
    let admin = admin
        .trim()
        .strip_prefix("admin listening on ")
        .unwrap_or_else(|| panic!("constellation did not start: {admin:?}"))
        .to_string();
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("constellation did not start: {line:?}"))
        .to_string();
    (served, addr, admin)
}

/// `GET path` over HTTP/1.1 on loopback with the admin bearer token; the body.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[test]
fn host_example_syncs_with_the_real_server() {
    const TEST: &str = "host_example_syncs_with_the_real_server";
    if !have(&cc(), "--version") {
        return skip(TEST, &format!("no C compiler ({})", cc()));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = vec![workspace().join("ffi/examples/host/ots_sync.c")];
    let asan = dir.path().join("ots_sync-asan");
    let flags = [
        "-fsanitize=address,undefined",
        "-fno-sanitize-recover=all",
        "-fno-omit-frame-pointer",
        "-lcurl",
    ];
    if let Err(e) = compile(&src, &[], &["-lcurl"], &dir.path().join("ots_sync")) {
        return skip(
            TEST,
            &format!("the host example does not build (libcurl4-openssl-dev?): {e}"),
        );
    }
    let plain = dir.path().join("ots_sync");
    let with_asan = compile(&src, &[], &flags, &asan).is_ok();
    if !with_asan {
        skip(TEST, "no AddressSanitizer: the first run goes without it");
    }
    let with_valgrind = have("valgrind", "--version");
    if !with_valgrind {
        skip(TEST, "valgrind is missing: the second run goes without it");
    }

    let bin = constellation_bin();
    let db = dir.path().join("c.redb");
    let device = "tv-c-host";
    let out = Command::new(&bin)
        .args(["device", "add", "--db"])
        .arg(&db)
        .arg(device)
        .stderr(Stdio::null())
        .output()
        .expect("constellation device add");
    assert!(out.status.success(), "constellation device add failed");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let key = line
        .trim()
        .strip_prefix(&format!("{device} "))
        .expect("ID KEY")
        .to_string();

    let (_server, addr, admin) = serve(&bin, &db);
    let url = format!("http://{addr}");
    let state = dir.path().join("state.bin");
    let dump = dir.path().join("acked.txt");
    let data = workspace().join("data/minilm/patterns_public.f32");
    let args = |rounds: &str| -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = [
            "--server", &url, "--device", device, "--key", &key, "--rounds", rounds,
        ]
        .iter()
        .map(Into::into)
        .collect();
        a.extend(["--state".into(), state.clone().into_os_string()]);
        a.extend(["--data".into(), data.clone().into_os_string()]);
        a.extend(["--dump".into(), dump.clone().into_os_string()]);
        a
    };

    // Run 1: syncs 1-3 (AddressSanitizer), then the state file holds the snapshot.
    let first = if with_asan { &asan } else { &plain };
    let out1 = run(
        "ots_sync syncs 1-3",
        asan_env(Command::new(first).args(args("0:3"))),
    );
    assert_eq!(out1.matches(" 6 acked").count(), 3, "{out1}");
    assert!(!out1.contains("restored"), "{out1}");
    assert!(state.exists(), "no state file");
    assert!(!dir.path().join("state.bin.tmp").exists(), "temp file left");

    // Run 2: restores from the file, syncs 4-5 (valgrind).
    let mut cmd = if with_valgrind {
        valgrind(&plain)
    } else {
        Command::new(&plain)
    };
    let out2 = run("ots_sync syncs 4-5", cmd.args(args("3:2")));
    if with_valgrind {
        assert_valgrind_clean(&out2);
    }
    assert!(out2.contains("next seq 4"), "{out2}");
    assert_eq!(out2.matches(" 6 acked").count(), 2, "{out2}");

    // The client's acknowledged state against the server's.
    let acked = std::fs::read_to_string(&dump).expect("dump");
    let json = http_get(&admin, &format!("/api/v1/devices/{device}/patterns"));
    let v: serde_json::Value = serde_json::from_str(&json).expect("admin JSON");
    assert_eq!(v["last_seq"], 5, "{json}");
    let patterns = v["patterns"].as_array().expect("patterns");
    assert_eq!(patterns.len(), 6, "{json}");
    let mut compared = 0;
    for line in acked.lines() {
        let mut f = line.split(' ');
        match f.next() {
            Some("pattern") => {
                let id = f.next().expect("id");
                let rev: u64 = f.next().expect("rev").parse().expect("rev");
                let codes: Vec<i64> = f.map(|c| c.parse().expect("code")).collect();
                let p = patterns
                    .iter()
                    .find(|p| p["id"] == id)
                    .unwrap_or_else(|| panic!("server lacks {id}"));
                assert_eq!(p["revision"], rev, "{id}");
                assert_eq!(rev, 5, "{id}: one revision per sync");
                let server: Vec<i64> = p["codes"]
                    .as_array()
                    .expect("codes")
                    .iter()
                    .map(|c| c.as_i64().expect("int"))
                    .collect();
                assert_eq!(server.len(), 384);
                assert_eq!(
                    server, codes,
                    "{id}: server codes differ from the client's acked codes"
                );
                compared += 1;
            }
            Some("seq") => assert_eq!(f.next(), Some("6")),
            _ => {}
        }
    }
    assert_eq!(compared, 6);
    eprintln!(
        "host example: 5 syncs in two runs, 6 patterns at revision 5, codes equal to the server's (last_seq 5)"
    );
}
