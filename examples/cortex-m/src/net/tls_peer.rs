//! TEST ONLY: the smallest TLS 1.3 server that completes a handshake with
//! `EmbassyTlsTransport`, so that the device runs the whole handshake on
//! the target (ECDH, key schedule, Finished, record protection) and then a
//! real sync inside the session.
//!
//! `psk_dhe_ke` with `TLS_AES_128_GCM_SHA256` (RFC 8446), with one shortcut
//! that makes it test-only: the peer's "ephemeral" key is the private
//! scalar 1, so its key share is the P-256 generator G and the shared
//! secret is simply the x-coordinate of the device's key share. The device
//! cannot tell: it still does its full scalar multiplication. The peer
//! needs no elliptic-curve code of its own; the rest (HKDF, HMAC-SHA256,
//! AES-128-GCM) uses the crates embedded-tls itself links. The peer checks
//! the device's Finished, does not check the PSK binder (the handshake
//! secret already depends on the PSK, so a wrong key fails at the
//! Finished messages), and echoes `max_fragment_length` in
//! EncryptedExtensions as RFC 6066 asks.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce, Tag};
use embassy_net::tcp::TcpSocket;
use embedded_io_async::{Read, Write};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::peer::{body_ok, complete, parse_client_hello, Hello};
use crate::runs::Run;

type Err = &'static str;

/// The P-256 generator in SEC1 uncompressed form: the public key of the
/// private scalar 1.
const G: [u8; 65] = [
    0x04, 0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40,
    0xf2, 0x77, 0x03, 0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2,
    0x96, 0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e,
    0x16, 0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51,
    0xf5,
];

const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const ALERT: u8 = 21;
const CHANGE_CIPHER_SPEC: u8 = 20;

/// What the TLS connection showed.
pub struct Outcome {
    /// The ClientHello.
    pub hello: Result<Hello, Err>,
    /// The device's Finished carried the right MAC.
    pub client_finished: bool,
    /// The HTTP request inside the session was the recorded one and the
    /// response went out.
    pub http: Result<(), Err>,
}

/// Runs the handshake and one HTTP exchange inside it. `record` and `out`
/// hold one incoming and one outgoing record; `request` the decrypted
/// request.
pub async fn serve(
    s: &mut TcpSocket<'_>,
    record: &mut [u8],
    out: &mut [u8],
    request: &mut [u8],
    run: &Run,
) -> Outcome {
    let mut o = Outcome {
        hello: Err("no ClientHello"),
        client_finished: false,
        http: Err("no request"),
    };
    if let Err(e) = session(s, record, out, request, run, &mut o).await {
        if o.hello.is_ok() && o.client_finished {
            o.http = Err(e);
        } else if o.hello.is_ok() {
            o.hello = Err(e);
        } else {
            o.hello = o.hello.and(Err(e));
        }
    }
    o
}

async fn session(
    s: &mut TcpSocket<'_>,
    record: &mut [u8],
    out: &mut [u8],
    request: &mut [u8],
    run: &Run,
    o: &mut Outcome,
) -> Result<(), Err> {
    // ClientHello.
    let end = read_record(s, record, HANDSHAKE).await?;
    let (hello, keys) = parse_client_hello(&record[..end]).ok_or("not a ClientHello")?;
    o.hello = Ok(hello);
    let mut transcript = Sha256::new();
    transcript.update(&record[5..end]);

    // ServerHello: TLS 1.3, the key share G, the first PSK identity.
    let sid = keys
        .session_id
        .get(..keys.session_id_len)
        .ok_or("session id")?;
    let mut sh = [0u8; 200];
    let mut w = Writer::new(&mut sh);
    w.put(&[HANDSHAKE, 3, 3, 0, 0])?; // record header, length below
    w.put(&[2, 0, 0, 0])?; // server_hello, length below
    w.put(&[3, 3])?;
    w.put(&[0x5a; 32])?; // random
    w.put(&[sid.len() as u8])?;
    w.put(sid)?;
    w.put(&[0x13, 0x01, 0])?; // TLS_AES_128_GCM_SHA256, no compression
    w.put(&[0, 6 + 73 + 6])?; // extensions
    w.put(&[0, 43, 0, 2, 3, 4])?; // supported_versions: TLS 1.3
    w.put(&[0, 51, 0, 69, 0, 0x17, 0, 65])?; // key_share: secp256r1
    w.put(&G)?;
    w.put(&[0, 41, 0, 2, 0, 0])?; // pre_shared_key: identity 0
    let n = w.len;
    sh[3..5].copy_from_slice(&((n - 5) as u16).to_be_bytes());
    sh[6..9].copy_from_slice(&((n - 9) as u32).to_be_bytes()[1..]);
    write(s, &sh[..n]).await?;
    transcript.update(&sh[5..n]);

    // Key schedule (RFC 8446 7.1); the (EC)DHE secret is G's x times 1.
    let psk = omega_tv_sync::DeviceKey::new(crate::scenario::DEVICE_KEY).tls_psk();
    let empty: [u8; 32] = Sha256::digest([]).into();
    let early = extract(&[0; 32], &psk);
    let hs = extract(&derive(&early, b"derived", &empty)?, &keys.share_x);
    let th = hash(&transcript);
    let c_hs = derive(&hs, b"c hs traffic", &th)?;
    let s_hs = derive(&hs, b"s hs traffic", &th)?;

    // EncryptedExtensions (max_fragment_length echoed) and Finished.
    let mut flight = [0u8; 11 + 36];
    let ee: [u8; 11] = match keys.max_fragment {
        Some(m) => [8, 0, 0, 7, 0, 5, 0, 1, 0, 1, m],
        None => [8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0],
    };
    let ee = if keys.max_fragment.is_some() {
        &ee[..]
    } else {
        &ee[..6]
    };
    flight[..ee.len()].copy_from_slice(ee);
    transcript.update(ee);
    let vd = finished(&s_hs, &hash(&transcript))?;
    let fin = ee.len();
    flight[fin..fin + 4].copy_from_slice(&[20, 0, 0, 32]);
    flight[fin + 4..fin + 36].copy_from_slice(&vd);
    transcript.update(&flight[fin..fin + 36]);
    let mut server_hs = Traffic::new(&s_hs)?;
    let n = server_hs.seal(HANDSHAKE, &flight[..fin + 36], out)?;
    write(s, &out[..n]).await?;
    let th_sf = hash(&transcript);
    let master = extract(&derive(&hs, b"derived", &empty)?, &[0; 32]);
    let mut client_ap = Traffic::new(&derive(&master, b"c ap traffic", &th_sf)?)?;
    let mut server_ap = Traffic::new(&derive(&master, b"s ap traffic", &th_sf)?)?;

    // The device's Finished (after an optional ChangeCipherSpec).
    let mut client_hs = Traffic::new(&c_hs)?;
    let end = loop {
        let end = read_record(s, record, 0).await?;
        if record[0] != CHANGE_CIPHER_SPEC {
            break end;
        }
    };
    let (kind, msg) = client_hs.open(&mut record[..end])?;
    let want = finished(&c_hs, &th_sf)?;
    o.client_finished =
        kind == HANDSHAKE && msg.len() == 36 && msg[..4] == [20, 0, 0, 32] && msg[4..] == want;
    if !o.client_finished {
        return Err("client Finished is wrong");
    }

    // The HTTP request, decrypted record by record.
    let mut n = 0;
    let total = loop {
        if let Some(total) = complete(&request[..n], run)? {
            if n >= total {
                break total;
            }
        }
        let end = read_record(s, record, APPLICATION_DATA).await?;
        let (kind, data) = client_ap.open(&mut record[..end])?;
        if kind != APPLICATION_DATA {
            return Err("alert or handshake message instead of the request");
        }
        let dst = request
            .get_mut(n..n + data.len())
            .ok_or("request too large")?;
        dst.copy_from_slice(data);
        n += data.len();
    };
    body_ok(&request[..n], total, run)?;

    // The response in records of at most 1 KiB, then close_notify.
    let mut head = [0u8; 224];
    let mut w = Writer::new(&mut head);
    w.put(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nX-OTS-Signature: ")?;
    w.put(run.sig)?;
    w.put(b"\r\nContent-Length: ")?;
    let mut digits = [0u8; omega_tv_sync::ascii::U64_DIGITS];
    w.put(omega_tv_sync::ascii::fmt_u64(run.response.len() as u64, &mut digits).as_bytes())?;
    w.put(b"\r\nConnection: close\r\n\r\n")?;
    let head_len = w.len;
    for part in [&head[..head_len], run.response] {
        for chunk in part.chunks(1024) {
            let n = server_ap.seal(APPLICATION_DATA, chunk, out)?;
            write(s, &out[..n]).await?;
        }
    }
    let n = server_ap.seal(ALERT, &[1, 0], out)?; // warning, close_notify
    write(s, &out[..n]).await?;
    s.flush().await.map_err(|_| "flush failed")?;
    o.http = Ok(());
    Ok(())
}

/// Reads one record into `buf`; `kind` 0 takes any content type.
async fn read_record(s: &mut TcpSocket<'_>, buf: &mut [u8], kind: u8) -> Result<usize, Err> {
    let head = buf.get_mut(..5).ok_or("record buffer")?;
    s.read_exact(head)
        .await
        .map_err(|_| "connection ended mid-record")?;
    if kind != 0 && head[0] != kind {
        return Err(match head[0] {
            ALERT => "the device sent an alert",
            _ => "unexpected record type",
        });
    }
    let end = 5 + usize::from(u16::from_be_bytes([head[3], head[4]]));
    let body = buf
        .get_mut(5..end)
        .ok_or("record larger than the peer's buffer")?;
    s.read_exact(body)
        .await
        .map_err(|_| "connection ended mid-record")?;
    Ok(end)
}

async fn write(s: &mut TcpSocket<'_>, bytes: &[u8]) -> Result<(), Err> {
    s.write_all(bytes).await.map_err(|_| "write failed")
}

/// Appends to a fixed buffer.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, len: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), Err> {
        let dst = self
            .buf
            .get_mut(self.len..self.len + bytes.len())
            .ok_or("message buffer")?;
        dst.copy_from_slice(bytes);
        self.len += bytes.len();
        Ok(())
    }
}

fn hash(t: &Sha256) -> [u8; 32] {
    t.clone().finalize().into()
}

fn extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    Hkdf::<Sha256>::extract(Some(salt), ikm).0.into()
}

/// HKDF-Expand-Label (RFC 8446 7.1).
fn expand_label(
    secret: &[u8; 32],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), Err> {
    let mut info = [0u8; 2 + 1 + 6 + 16 + 1 + 32];
    let mut w = Writer::new(&mut info);
    w.put(&(out.len() as u16).to_be_bytes())?;
    w.put(&[6 + label.len() as u8])?;
    w.put(b"tls13 ")?;
    w.put(label)?;
    w.put(&[context.len() as u8])?;
    w.put(context)?;
    let n = w.len;
    Hkdf::<Sha256>::from_prk(secret)
        .map_err(|_| "prk")?
        .expand(&info[..n], out)
        .map_err(|_| "expand")
}

/// Derive-Secret (RFC 8446 7.1), given the transcript hash.
fn derive(secret: &[u8; 32], label: &[u8], th: &[u8; 32]) -> Result<[u8; 32], Err> {
    let mut out = [0u8; 32];
    expand_label(secret, label, th, &mut out)?;
    Ok(out)
}

/// The Finished MAC of the side whose handshake secret is `secret`.
fn finished(secret: &[u8; 32], th: &[u8; 32]) -> Result<[u8; 32], Err> {
    let mut key = [0u8; 32];
    expand_label(secret, b"finished", &[], &mut key)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).map_err(|_| "hmac")?;
    mac.update(th);
    Ok(mac.finalize().into_bytes().into())
}

/// One direction's record protection (RFC 8446 5.2, 5.3).
struct Traffic {
    aead: Aes128Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Traffic {
    fn new(secret: &[u8; 32]) -> Result<Self, Err> {
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        expand_label(secret, b"key", &[], &mut key)?;
        expand_label(secret, b"iv", &[], &mut iv)?;
        let aead = Aes128Gcm::new_from_slice(&key).map_err(|_| "aes key")?;
        Ok(Traffic { aead, iv, seq: 0 })
    }

    fn nonce(&mut self) -> [u8; 12] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        self.seq += 1;
        n
    }

    /// Encrypts `plain` of content type `kind` into one record in `out`.
    fn seal(&mut self, kind: u8, plain: &[u8], out: &mut [u8]) -> Result<usize, Err> {
        let len = plain.len() + 1 + 16;
        let end = 5 + len;
        let rec = out
            .get_mut(..end)
            .ok_or("record larger than the peer's buffer")?;
        rec[..5].copy_from_slice(&[APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8]);
        rec[5..5 + plain.len()].copy_from_slice(plain);
        rec[5 + plain.len()] = kind;
        let nonce = self.nonce();
        let (header, body) = rec.split_at_mut(5);
        let (text, tag) = body.split_at_mut(plain.len() + 1);
        let t = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), header, text)
            .map_err(|_| "seal")?;
        tag.copy_from_slice(&t);
        Ok(end)
    }

    /// Decrypts one record in place: its inner content type and content.
    fn open<'r>(&mut self, rec: &'r mut [u8]) -> Result<(u8, &'r [u8]), Err> {
        if rec.len() < 5 + 17 || rec[0] != APPLICATION_DATA {
            return Err("not a protected record");
        }
        let nonce = self.nonce();
        let (header, body) = rec.split_at_mut(5);
        let (text, tag) = body.split_at_mut(body.len() - 16);
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                header,
                text,
                Tag::from_slice(tag),
            )
            .map_err(|_| "record authentication failed")?;
        let end = text.iter().rposition(|&b| b != 0).ok_or("empty record")?;
        Ok((text[end], &text[..end]))
    }
}
