//! The load: real-vector change chains, devices that sync them, and the
//! driver that runs a fleet of them against one server.

use super::*;

/// Per pattern: the absolute code of version 0 and the closed-loop deltas
/// version i -> i+1 (mod CHAIN), each pattern drifting by "+1 watched item".
pub(super) struct Chains {
    pub(super) absolute: Vec<Vec<u8>>,
    pub(super) deltas: Vec<Vec<Vec<u8>>>,
}

pub(super) fn chains(
    book: &Codebook<'_>,
    patterns: &[Row],
    items: &[Row],
    n: usize,
    offset: usize,
) -> Chains {
    let mut absolute = Vec::new();
    let mut deltas = Vec::new();
    for j in 0..n {
        let mut rows = vec![patterns[(offset + j * 37) % patterns.len()]];
        for i in 1..CHAIN {
            let item = &items[(7 * (j * CHAIN + i) + 3) % items.len()];
            rows.push(drift(&rows[i - 1], item, 10.0));
        }
        let codes: Vec<Codes> = rows
            .iter()
            .map(|r| book.quantize(&Embedding::new(*r).expect("unit row")))
            .collect();
        absolute.push(encode(book, &codes[0], None));
        deltas.push(
            (0..CHAIN)
                .map(|i| encode(book, &codes[(i + 1) % CHAIN], Some(&codes[i])))
                .collect(),
        );
    }
    Chains { absolute, deltas }
}

pub(super) fn encode(book: &Codebook<'_>, c: &Codes, base: Option<&Codes>) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_CODED_LEN];
    let n = book.encode(c, base, &mut buf).expect("encode");
    buf.truncate(n);
    buf
}

pub(super) fn caps() -> Caps {
    Caps {
        max_globals: 64,
        max_trends: 32,
        max_bytes: 64 * 1024,
    }
}

/// (pattern index, base revision, coding, code)
pub(super) type Item<'a> = (usize, u32, Coding, &'a [u8]);

pub(super) fn frame(codebook: u32, seq: u64, since: u64, items: &[Item<'_>], out: &mut Vec<u8>) {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; MAX_UPLOAD_FRAME]);
    }
    SCRATCH.with(|s| frame_in(&mut s.borrow_mut(), codebook, seq, since, items, out));
}

pub(super) fn frame_in(
    scratch: &mut [u8],
    codebook: u32,
    seq: u64,
    since: u64,
    items: &[Item<'_>],
    out: &mut Vec<u8>,
) {
    let names: Vec<String> = items.iter().map(|(j, ..)| format!("p{j}")).collect();
    let mut w = FrameWriter::new(scratch, Kind::Upload, codebook).expect("buffer");
    w.push(&Record::UploadHead(UploadHead {
        seq,
        since,
        caps: caps(),
    }))
    .expect("head");
    for ((_, base_rev, coding, code), name) in items.iter().zip(&names) {
        w.push(&Record::Pattern(PatternUpdate {
            id: PatternId::new(name).expect("id"),
            base_rev: *base_rev,
            success_rate: 0.8,
            sample_count: 20,
            category: Category::new("drama").expect("category"),
            coding: *coding,
            code,
        }))
        .expect("record");
    }
    let f = w.finish().expect("finish");
    out.clear();
    out.extend_from_slice(f);
}

/// One simulated device: its id, sequence, revisions and chain positions.
pub(super) struct Device {
    pub(super) id: String,
    pub(super) seq: u64,
    pub(super) since: u64,
    pub(super) revs: Vec<u32>,
    pub(super) pos: Vec<usize>,
    pub(super) step: usize,
}

impl Device {
    pub(super) fn new(i: usize, patterns: usize) -> Self {
        Device {
            id: format!("bench-{i}"),
            seq: 0,
            since: 0,
            revs: vec![0; patterns],
            pos: vec![0; patterns],
            step: 0,
        }
    }

    pub(super) fn initial(&mut self, codebook: u32, ch: &Chains, out: &mut Vec<u8>) {
        self.seq += 1;
        let items: Vec<Item<'_>> = ch
            .absolute
            .iter()
            .enumerate()
            .map(|(j, c)| (j, 0, Coding::Absolute, c.as_slice()))
            .collect();
        frame(codebook, self.seq, self.since, &items, out);
    }

    pub(super) fn next(
        &mut self,
        codebook: u32,
        ch: &Chains,
        changed: usize,
        out: &mut Vec<u8>,
    ) -> Vec<usize> {
        self.seq += 1;
        let n = self.revs.len();
        let js: Vec<usize> = (0..changed)
            .map(|t| (self.step * changed + t) % n)
            .collect();
        self.step += 1;
        let items: Vec<Item<'_>> = js
            .iter()
            .map(|&j| {
                (
                    j,
                    self.revs[j],
                    Coding::Delta,
                    ch.deltas[j][self.pos[j]].as_slice(),
                )
            })
            .collect();
        frame(codebook, self.seq, self.since, &items, out);
        js
    }

    /// Takes the response's global version as the new cursor.
    pub(super) fn cursor(&mut self, resp: &[u8]) {
        let head = omega_tv_sync::wire::FrameReader::parse(resp)
            .ok()
            .and_then(|f| f.records().next())
            .and_then(|r| r.ok());
        if let Some(Record::DownloadHead(h)) = head {
            self.since = h.global_version;
        }
    }

    pub(super) fn acked(&mut self, js: &[usize]) {
        for &j in js {
            self.revs[j] += 1;
            self.pos[j] = (self.pos[j] + 1) % CHAIN;
        }
    }

    pub(super) fn acked_all(&mut self) {
        for r in self.revs.iter_mut() {
            *r += 1;
        }
    }
}

pub(super) async fn post(
    t: &mut HttpTransport,
    dev: &Device,
    body: &[u8],
    buf: &mut [u8],
) -> (u16, usize) {
    let since = dev.since.to_string();
    let headers = [
        ("X-Device-ID", dev.id.as_str()),
        ("X-Sync-Version", since.as_str()),
    ];
    match t
        .send(
            Request {
                method: Method::Post,
                path: "/api/v1/sync",
                headers: &headers,
                body,
            },
            buf,
        )
        .await
    {
        Ok(r) => (r.status, r.body_len),
        Err(e) => {
            eprintln!("{}: {e}", dev.id);
            (0, 0)
        }
    }
}

#[derive(Default)]
pub(super) struct RunResult {
    pub(super) syncs: u64,
    pub(super) errors: u64,
    pub(super) up: u64,
    pub(super) down: u64,
    pub(super) lat_us: Vec<u32>,
    pub(super) elapsed: f64,
    /// CPU seconds of the server threads, the clients', the attackers'
    /// (`--attack`) and the redb writer thread's (part of the server's) from
    /// the clients' start gate to the end of the run
    /// ([`super::cpu::split_cpu_s`]).
    pub(super) cpu: (f64, f64, f64, f64),
    /// Voluntary context switches of the server threads, and of the writer
    /// thread among them, over the same span
    /// ([`super::cpu::server_switches`]).
    pub(super) switches: (u64, u64),
}

/// Drives `url` with `clients` devices for `seconds` after their initial
/// upload. `url` may list several nodes separated by commas: client `c`
/// talks to node `c % n`. Device ids start at `id_base + a.id_base` (a
/// second run on the same server or database uses fresh devices).
pub(super) async fn drive(
    url: &str,
    a: &Args,
    ch: &Arc<Vec<Chains>>,
    codebook: u32,
    id_base: usize,
) -> RunResult {
    let urls: Vec<String> = url.split(',').map(str::to_string).collect();
    let mut tasks = Vec::new();
    let deadline_after = Duration::from_secs_f64(a.seconds);
    let start_gate = Arc::new(tokio::sync::Barrier::new(a.clients));
    let cpu0 = Arc::new(std::sync::Mutex::new(((0.0, 0.0, 0.0, 0.0), (0u64, 0u64))));
    for c in 0..a.clients {
        let url = urls[c % urls.len()].clone();
        let ch = ch.clone();
        let gate = start_gate.clone();
        let cpu0 = cpu0.clone();
        let id_base = id_base + a.id_base;
        let (patterns, changed) = (a.patterns, a.changed);
        tasks.push(tokio::spawn(async move {
            let ch = &ch[c % ch.len()];
            let mut t = HttpTransport::new(&url).expect("url");
            let mut dev = Device::new(id_base + c, patterns);
            let mut body = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            dev.initial(codebook, ch, &mut body);
            let (s, _) = post(&mut t, &dev, &body, &mut buf).await;
            if s == 200 {
                dev.acked_all();
            }
            if gate.wait().await.is_leader() {
                if let Ok(mut c) = cpu0.lock() {
                    *c = (super::cpu::split_cpu_s(), super::cpu::server_switches());
                }
            }
            // Everyone starts at the current global version: a steady-state sync.
            let v = t
                .send(
                    Request {
                        method: Method::Get,
                        path: "/api/v1/sync/version",
                        headers: &[],
                        body: &[],
                    },
                    &mut buf,
                )
                .await
                .map(|r| r.body_len)
                .unwrap_or(0);
            dev.since = std::str::from_utf8(&buf[..v])
                .ok()
                .and_then(|s| s.split(':').nth(1))
                .and_then(|s| s.trim_end_matches('}').trim().parse().ok())
                .unwrap_or(0);
            let mut r = RunResult::default();
            let started = Instant::now();
            while started.elapsed() < deadline_after {
                let js = dev.next(codebook, ch, changed, &mut body);
                let t0 = Instant::now();
                let (s, n) = post(&mut t, &dev, &body, &mut buf).await;
                r.lat_us.push(t0.elapsed().as_micros() as u32);
                if s == 200 {
                    dev.acked(&js);
                    dev.cursor(&buf[..n]);
                    r.syncs += 1;
                    r.up += body.len() as u64;
                    r.down += n as u64;
                } else {
                    r.errors += 1;
                    dev.seq -= 1;
                    if r.errors > 1000 {
                        break;
                    }
                }
            }
            r.elapsed = started.elapsed().as_secs_f64();
            r
        }));
    }
    let mut total = RunResult::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.syncs += r.syncs;
            total.errors += r.errors;
            total.up += r.up;
            total.down += r.down;
            total.lat_us.extend(r.lat_us);
            total.elapsed = total.elapsed.max(r.elapsed);
        }
    }
    let (s1, r1, a1, w1) = super::cpu::split_cpu_s();
    let switches = super::cpu::server_switches();
    let ((s0, r0, a0, w0), switches0) = cpu0.lock().map(|c| *c).unwrap_or_default();
    total.cpu = (s1 - s0, r1 - r0, a1 - a0, w1 - w0);
    total.switches = (
        switches.0.saturating_sub(switches0.0),
        switches.1.saturating_sub(switches0.1),
    );
    total.lat_us.sort_unstable();
    total
}

/// What the global feed since 0 holds.
#[derive(Default)]
pub(super) struct Feed {
    /// Global patterns published and live.
    pub(super) globals: usize,
    /// Trends.
    pub(super) trends: usize,
    /// Bytes of the page.
    pub(super) bytes: usize,
}

/// Reads `GET /api/v1/global?since=0&limit=1000` of the server at `url`.
pub(super) async fn feed(url: &str) -> Feed {
    let Ok(mut t) = HttpTransport::new(url) else {
        return Feed::default();
    };
    let mut buf = vec![0u8; 1 << 20];
    let Ok(r) = t
        .send(
            Request {
                method: Method::Get,
                path: "/api/v1/global?since=0&limit=1000",
                headers: &[],
                body: &[],
            },
            &mut buf,
        )
        .await
    else {
        return Feed::default();
    };
    let mut f = Feed {
        bytes: r.body_len,
        ..Feed::default()
    };
    if let Ok(frame) = omega_tv_sync::wire::FrameReader::parse(&buf[..r.body_len]) {
        for rec in frame.records() {
            match rec {
                Ok(Record::GlobalUpsert(_)) => f.globals += 1,
                Ok(Record::Trend(_)) => f.trends += 1,
                _ => {}
            }
        }
    }
    f
}
