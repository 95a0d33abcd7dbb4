//! Device authentication: enrolment, key derivation, request verification.
//!
//! Every `POST /api/v1/sync` carries `Authorization: OTS1-HMAC-SHA256
//! counter=N,sig=HEX` (the canonical message and header are specified in
//! `docs/wire-format.md`, "Authentication", and implemented once, in
//! `omega_tv_sync::transport::auth`). The server checks it before it decodes the body or
//! touches the store for writing:
//!
//! | failure | status | code |
//! |---|---|---|
//! | no `Authorization` header | 401 | `missing_auth` |
//! | header present but not in the documented form | 401 | `malformed_auth` |
//! | device never enrolled, revoked, or signature does not verify | 401 | `unauthorized` |
//! | counter not above the last accepted one (signature verified) | 401 | `replayed_counter` (with `last_counter`, signed) |
//!
//! `unauthorized` is one answer, same body, for an unknown, a revoked and a
//! wrongly signed device. The enrolment is looked up before the body is
//! read ([`precheck`]): an unknown or revoked id is refused without its body
//! being read, both at the same cost (the lookup and a signature check
//! against a dummy key derived from the master secret and the id). A client
//! that stalls its body can therefore tell an enrolled id (the server waits
//! for the body) from the others; ids are not secrets, keys are. The specific reason
//! (`unknown_device`, `revoked`, `bad_signature`, `key_replaced`) is only
//! logged (debug) and counted in `constellation_auth_failures_total{code=...}`
//! (the admin listener). Nothing is stored.
//!
//! **Keys.** The server keeps one 32-byte master secret (a file with mode
//! 0600, never in the database). A device's key is
//! `HMAC-SHA256(master, "OTS1 device key" || generation (u32 BE) || device id)`;
//! the database holds only an [`Enrolment`] per device (generation,
//! enrolment time, revoked flag, last accepted counter), so a leaked database
//! leaks no key. Enrolling again bumps the generation: a new key, the old
//! one stops working.
//!
//! **Counters.** The last accepted counter is advanced in the same
//! transaction as the sync it authenticated, and only when that sync is
//! answered `200` (applied or replayed): a request refused for another reason
//! (409, 4xx) stores nothing, its counter included. The check runs twice: in
//! a read transaction before the body is decoded (cheap refusal), and again
//! inside the write transaction, where the single writer makes it atomic (two
//! requests racing with the same counter: one wins, the other gets
//! `replayed_counter`). A retry after a lost response carries a new counter
//! and the same `seq` and body, so it is accepted and answered from the
//! idempotency record.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use omega_tv_sync::transport::auth as wire_auth;
use omega_tv_sync::DeviceKey;
use sha2::Sha256;

use crate::error::ApiError;
use crate::store::{self, Enrolment, ReadTxn, Store, StoreError, StoreResult, WriteTxn};

/// Path the sync endpoint is signed under.
pub const SYNC_PATH: &str = "/api/v1/sync";

/// The server's 32-byte master secret. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret([u8; 32]);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    /// A secret from its bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        MasterSecret(b)
    }

    /// A fresh secret from the operating system's random source.
    pub fn generate() -> io::Result<Self> {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(MasterSecret(b))
    }

    /// Reads the secret (64 hex digits) from `path`, or creates the file
    /// with a fresh secret, mode 0600, when it does not exist. Returns the
    /// secret and whether it was created. An existing file that group or
    /// others may access is refused (`PermissionDenied`).
    pub fn load_or_create(path: &Path) -> io::Result<(Self, bool)> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                crate::files::check_secret(path)?;
                Ok((Self::parse(&text)?, false))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let s = Self::generate()?;
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                match opts.open(path) {
                    Ok(mut f) => {
                        use std::io::Write;
                        writeln!(f, "{}", hex(&s.0))?;
                        f.sync_all()?;
                        Ok((s, true))
                    }
                    // Created by someone else meanwhile: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        crate::files::check_secret(path)?;
                        Ok((Self::parse(&std::fs::read_to_string(path)?)?, false))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn parse(text: &str) -> io::Result<Self> {
        let k = DeviceKey::from_hex(text.trim()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the master secret file must hold 64 hex digits",
            )
        })?;
        Ok(MasterSecret(*k.as_bytes()))
    }

    /// A key no device has, derived from the secret and `device`: the
    /// signature of a request from an unknown id is checked against it, so
    /// that refusal costs what a wrong signature costs.
    pub fn dummy_key(&self, device: &str) -> DeviceKey {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return DeviceKey::new([0; 32]);
        };
        mac.update(b"OTS1 unknown device");
        mac.update(device.as_bytes());
        DeviceKey::new(mac.finalize().into_bytes().into())
    }

    /// The key of `device` at `generation`.
    pub fn device_key(&self, device: &str, generation: u32) -> DeviceKey {
        // HMAC takes keys of any length: `new_from_slice` cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return DeviceKey::new([0; 32]);
        };
        mac.update(b"OTS1 device key");
        mac.update(&generation.to_be_bytes());
        mac.update(device.as_bytes());
        DeviceKey::new(mac.finalize().into_bytes().into())
    }
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// How requests are authenticated.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Require a valid signature on every sync (the default). `false` is a
    /// development mode: anyone who knows a device id can write its patterns.
    pub required: bool,
    /// The master secret device keys are derived from; required when
    /// `required` is set ([`Server::start`](crate::Server::start) fails
    /// without it).
    pub master: Option<MasterSecret>,
}

impl AuthConfig {
    /// Required, with a fresh random master secret (enrol devices through
    /// [`ServerHandle::enrol`](crate::ServerHandle::enrol)); when the
    /// operating system gives no randomness the secret is missing and the
    /// server does not start.
    pub fn new() -> Self {
        AuthConfig {
            required: true,
            master: MasterSecret::generate().ok(),
        }
    }

    /// Required, with `master`.
    pub fn with_master(master: MasterSecret) -> Self {
        AuthConfig {
            required: true,
            master: Some(master),
        }
    }

    /// Authentication off (development only; logged loudly at start).
    pub fn disabled() -> Self {
        AuthConfig {
            required: false,
            master: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Authentication failures by code, and the mode, for `/metrics`.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    failures: Mutex<BTreeMap<&'static str, u64>>,
    disabled: std::sync::atomic::AtomicBool,
}

impl AuthMetrics {
    /// Counts one failure.
    pub fn failure(&self, code: &'static str) {
        if let Ok(mut m) = self.failures.lock() {
            *m.entry(code).or_insert(0) += 1;
        }
    }

    /// Failures counted for `code`.
    pub fn failures_for(&self, code: &str) -> u64 {
        self.failures
            .lock()
            .ok()
            .and_then(|m| m.get(code).copied())
            .unwrap_or(0)
    }

    pub(crate) fn set_disabled(&self, off: bool) {
        self.disabled
            .store(off, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends the auth metrics in the Prometheus text format.
    pub fn render(&self, s: &mut String) {
        let name = "constellation_auth_failures_total";
        let _ = writeln!(
            s,
            "# HELP {name} Sync requests refused by authentication, by code.\n# TYPE {name} counter"
        );
        if let Ok(m) = self.failures.lock() {
            for (code, v) in m.iter() {
                let _ = writeln!(s, "{name}{{code=\"{code}\"}} {v}");
            }
        }
        let off = self.disabled.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP constellation_auth_disabled 1 when request authentication is turned off (development only).\n# TYPE constellation_auth_disabled gauge\nconstellation_auth_disabled {}",
            u8::from(off)
        );
    }
}

fn refuse(code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError::new(401, code, detail)
}

/// The one answer for an unknown, revoked or wrongly signed device;
/// `reason` goes to logs and metrics only.
pub fn unauthorized(reason: &'static str) -> ApiError {
    let mut e = refuse("unauthorized", "the request is not authorized");
    e.reason = Some(reason);
    e
}

fn replayed(counter: u64, last: u64) -> ApiError {
    let mut e = refuse(
        "replayed_counter",
        format!("counter {counter} is not above the last accepted counter {last}"),
    );
    e.last_counter = Some(last);
    e
}

/// The parsed `Authorization` header of a request (before the body is read).
#[derive(Clone, Copy, Debug)]
pub struct Presented {
    /// The request counter.
    pub counter: u64,
    /// The signature.
    pub sig: [u8; 32],
}

/// Parses the header: `missing_auth` / `malformed_auth`.
pub fn presented(value: Option<&[u8]>) -> Result<Presented, ApiError> {
    let v = value.ok_or_else(|| {
        refuse(
            "missing_auth",
            "an Authorization: OTS1-HMAC-SHA256 header is required",
        )
    })?;
    let (counter, sig) = wire_auth::parse_header(v).map_err(|_| {
        refuse(
            "malformed_auth",
            "expected Authorization: OTS1-HMAC-SHA256 counter=<u64>,sig=<64 hex>",
        )
    })?;
    Ok(Presented { counter, sig })
}

/// The device key and request counter a response is signed with
/// (`X-OTS-Signature`, docs/wire-format.md "Signed responses"): known once
/// the request's signature verified.
#[derive(Clone, Debug)]
pub struct Signer {
    /// The device's key.
    pub key: DeviceKey,
    /// The counter of the request answered.
    pub counter: u64,
}

impl Signer {
    /// The `X-OTS-Signature` value for an answer with `status` and `body`
    /// (the body exactly as sent).
    pub fn header(&self, status: u16, body: &[u8]) -> Option<String> {
        let sig = wire_auth::sign_response(&self.key, self.counter, status, body).ok()?;
        let mut buf = [0u8; 64];
        Some(wire_auth::format_response_header(&sig, &mut buf).to_string())
    }
}

/// The enrolment check made before the body is read: an unknown or revoked
/// device gets `401 unauthorized` without the server reading its body.
/// Both cost the same (the lookup, then a signature check against the
/// dummy key of the id over an empty body hash); an enrolled device goes on
/// to have its body read and its signature verified ([`verify`]).
pub fn precheck(
    txn: &dyn ReadTxn,
    master: &MasterSecret,
    device: &str,
    p: &Presented,
) -> StoreResult<Result<(), ApiError>> {
    let reason = match txn.enrolment(device)? {
        Some(e) if !e.revoked => return Ok(Ok(())),
        Some(_) => "revoked",
        None => "unknown_device",
    };
    let key = master.dummy_key(device);
    let ok = wire_auth::verify(&key, "POST", SYNC_PATH, device, p.counter, &[0; 32], &p.sig);
    std::hint::black_box(ok);
    Ok(Err(unauthorized(reason)))
}

/// Verifies a sync request: enrolment, signature (constant time), counter
/// above the last accepted one. Reads only. Returns the counter to commit,
/// and the [`Signer`] for the answer once the signature verified (a
/// `replayed_counter` refusal is signed too: it answers a request the device
/// really sent).
pub fn verify(
    txn: &dyn ReadTxn,
    master: &MasterSecret,
    device: &str,
    p: &Presented,
    body_sha256: &[u8; 32],
    signer: &mut Option<Signer>,
) -> StoreResult<Result<Verified, ApiError>> {
    let enrolment = txn.enrolment(device)?;
    // The same work whatever the enrolment: derive a key (a dummy one for an
    // unknown id) and check the signature, then decide.
    let key = match &enrolment {
        Some(e) => master.device_key(device, e.generation),
        None => master.dummy_key(device),
    };
    let ok = wire_auth::verify(
        &key,
        "POST",
        SYNC_PATH,
        device,
        p.counter,
        body_sha256,
        &p.sig,
    );
    let Some(e) = enrolment else {
        return Ok(Err(unauthorized("unknown_device")));
    };
    if e.revoked {
        return Ok(Err(unauthorized("revoked")));
    }
    if !ok {
        return Ok(Err(unauthorized("bad_signature")));
    }
    *signer = Some(Signer {
        key,
        counter: p.counter,
    });
    if p.counter <= e.last_counter {
        return Ok(Err(replayed(p.counter, e.last_counter)));
    }
    Ok(Ok(Verified {
        counter: p.counter,
        generation: e.generation,
    }))
}

/// A request whose signature verified: its counter and the key generation
/// it was signed with, both re-checked by the writer ([`guarded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The request counter.
    pub counter: u64,
    /// The key generation the signature verified under.
    pub generation: u32,
}

/// Runs `f` (the sync) inside the write transaction, guarded by the
/// verification: refused when the device was revoked or re-enrolled (a new
/// key generation) since its signature was checked, or another request
/// advanced the counter meanwhile; the counter is advanced when `f`
/// succeeds. `verified = None`: no auth.
pub fn guarded<R>(
    txn: &mut dyn WriteTxn,
    device: &str,
    verified: Option<Verified>,
    f: impl FnOnce(&mut dyn WriteTxn) -> StoreResult<Result<R, ApiError>>,
) -> StoreResult<Result<R, ApiError>> {
    let Some(v) = verified else {
        return f(txn);
    };
    let Some(mut e) = txn.enrolment(device)? else {
        return Ok(Err(unauthorized("unknown_device")));
    };
    if e.revoked {
        return Ok(Err(unauthorized("revoked")));
    }
    if e.generation != v.generation {
        return Ok(Err(unauthorized("key_replaced")));
    }
    if v.counter <= e.last_counter {
        return Ok(Err(replayed(v.counter, e.last_counter)));
    }
    let r = f(txn)?;
    if r.is_ok() {
        e.last_counter = v.counter;
        txn.put_enrolment(device, &e)?;
    }
    Ok(r)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Enrols `device` (or re-enrols it with the next key generation, which
/// replaces its key and restarts its counter) and returns its key. The key
/// is not stored anywhere: hand it to the device now. [`enrol_many`] of one.
pub async fn enrol(
    store: &dyn Store,
    master: &MasterSecret,
    device: &str,
) -> StoreResult<DeviceKey> {
    let keys = enrol_many(store, master, &[device.to_string()]).await?;
    keys.into_iter()
        .next()
        .ok_or_else(|| StoreError::Backend("enrolment returned no key".into()))
}

/// [`enrol`] for many devices in one transaction; keys in the order of `devices`.
pub async fn enrol_many(
    store: &dyn Store,
    master: &MasterSecret,
    devices: &[String],
) -> StoreResult<Vec<DeviceKey>> {
    let ids = devices.to_vec();
    let gens = store::write(store, move |txn| {
        let mut gens = Vec::with_capacity(ids.len());
        for id in &ids {
            let generation = match txn.enrolment(id)? {
                Some(e) => e.generation.wrapping_add(1),
                None => 1,
            };
            txn.put_enrolment(
                id,
                &Enrolment {
                    generation,
                    enrolled_at: now_s(),
                    revoked: false,
                    last_counter: 0,
                },
            )?;
            gens.push(generation);
        }
        Ok(gens)
    })
    .await?;
    Ok(devices
        .iter()
        .zip(gens)
        .map(|(d, g)| master.device_key(d, g))
        .collect())
}

/// Revokes `device`: its requests get `401 unauthorized` until it is
/// enrolled again (with a new key). `Ok(false)` when it was not enrolled.
pub async fn revoke(store: &dyn Store, device: &str) -> StoreResult<bool> {
    let id = device.to_string();
    store::write(store, move |txn| match txn.enrolment(&id)? {
        Some(mut e) => {
            e.revoked = true;
            txn.put_enrolment(&id, &e)?;
            Ok(true)
        }
        None => Ok(false),
    })
    .await
}

/// A device's enrolment, if any.
pub fn enrolment(store: &dyn Store, device: &str) -> StoreResult<Option<Enrolment>> {
    store::read(store, |t| t.enrolment(device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_master_device_and_generation() {
        let m = MasterSecret::from_bytes([1; 32]);
        let k = m.device_key("tv-1", 1);
        assert_eq!(k, m.device_key("tv-1", 1));
        assert_ne!(k, m.device_key("tv-2", 1));
        assert_ne!(k, m.device_key("tv-1", 2));
        assert_ne!(k, MasterSecret::from_bytes([2; 32]).device_key("tv-1", 1));
        assert_eq!(format!("{m:?}"), "MasterSecret(..)");
    }

    #[test]
    fn master_secret_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master");
        let (a, created) = MasterSecret::load_or_create(&p).unwrap();
        assert!(created);
        let (b, created) = MasterSecret::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a, b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&p, "not hex").unwrap();
        assert!(MasterSecret::load_or_create(&p).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&p, format!("{}\n", hex(&[7; 32]))).unwrap();
            assert!(MasterSecret::load_or_create(&p).is_ok());
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
            let e = MasterSecret::load_or_create(&p).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
    }
}
