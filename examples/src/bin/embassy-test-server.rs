//! A small, bounded std HTTP/1.1 server for exercising the embassy transport
//! end to end (`scripts/netns-sync.sh` runs it inside a private network
//! namespace until the Constellation server takes its place).
//!
//! ```text
//! embassy-test-server ADDR:PORT [MAX_CONNECTIONS] [MAX_SECONDS]
//! ```
//!
//! It serves one connection at a time, one request per connection, and exits
//! after `MAX_CONNECTIONS` (default 64) connections or `MAX_SECONDS`
//! (default 60) seconds, whichever comes first. Routes:
//!
//! | route | response |
//! |---|---|
//! | `POST /echo` | 200, the request body, `Content-Length` |
//! | `GET /chunked` | 200, [`omega_tv_sync_examples::pattern_bytes`]`(CHUNKED_LEN)` in 700-byte chunks |
//! | `GET /big` | 200, `BIG_LEN` bytes with `Content-Length` |
//! | `GET /big-chunked` | 200, `BIG_LEN` bytes, chunked |
//! | `GET /busy` | 503, `Retry-After: 7`, empty body |
//! | anything else | 404 |

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use omega_tv_sync_examples::{pattern_bytes, BIG_LEN, CHUNKED_LEN};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args.get(1) else {
        eprintln!("usage: embassy-test-server ADDR:PORT [MAX_CONNECTIONS] [MAX_SECONDS]");
        std::process::exit(2);
    };
    let max_conns: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);
    let max_secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60);

    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("embassy-test-server: cannot bind {addr}: {e}");
        std::process::exit(1);
    });
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    eprintln!("embassy-test-server: listening on {addr} ({max_conns} connections, {max_secs} s)");
    let deadline = Instant::now() + Duration::from_secs(max_secs);
    let mut served = 0;
    while served < max_conns && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                served += 1;
                if let Err(e) = serve(stream) {
                    eprintln!("embassy-test-server: connection {served}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                eprintln!("embassy-test-server: accept: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!("embassy-test-server: served {served} connections, exiting");
}

fn serve(stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    let mut content_length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; content_length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut out = stream;
    match (method.as_str(), path.as_str()) {
        ("POST", "/echo") => fixed(&mut out, "200 OK", &body),
        ("GET", "/chunked") => chunked(&mut out, &pattern_bytes(CHUNKED_LEN), 700),
        ("GET", "/big") => fixed(&mut out, "200 OK", &pattern_bytes(BIG_LEN)),
        ("GET", "/big-chunked") => chunked(&mut out, &pattern_bytes(BIG_LEN), 1000),
        ("GET", "/busy") => write!(
            out,
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        _ => fixed(&mut out, "404 Not Found", b""),
    }?;
    out.flush()
}

fn fixed(out: &mut TcpStream, status: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    out.write_all(body)
}

fn chunked(out: &mut TcpStream, body: &[u8], chunk: usize) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    for c in body.chunks(chunk) {
        write!(out, "{:x}\r\n", c.len())?;
        out.write_all(c)?;
        out.write_all(b"\r\n")?;
    }
    out.write_all(b"0\r\n\r\n")
}
