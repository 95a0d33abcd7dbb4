//! The command line (flag and value pairs).

use embassy_net::{Ipv4Address, Ipv4Cidr};
use omega_tv_sync::DeviceId;

use crate::sync::SYNC_DEVICE;

/// The command line.
pub struct Args {
    /// The TAP device.
    pub tap: String,
    /// This host's address and prefix length.
    pub addr: Ipv4Cidr,
    /// The server's address and port.
    pub server: (Ipv4Address, u16),
    /// Rounds of HTTP checks.
    pub rounds: usize,
    /// Sync mode: this many syncs.
    pub syncs: Option<usize>,
    /// The device key (`constellation device add` printed it): requests are
    /// signed with it.
    pub key: Option<omega_tv_sync::DeviceKey>,
    /// The sync mode's device id.
    pub device: String,
    /// Sync over TLS (PSK) to this port.
    pub tls_port: Option<u16>,
    /// The server's admin listener (same address, this port) and its
    /// bearer token: where the sync mode reads the device's state back.
    pub admin: Option<(u16, String)>,
}

/// Parses `std::env::args()`.
pub fn parse_args() -> Result<Args, String> {
    let mut tap = None;
    let mut addr = None;
    let mut server = None;
    let mut rounds = 3usize;
    let mut syncs = None;
    let mut key = None;
    let mut device = SYNC_DEVICE.to_string();
    let mut tls_port = None;
    let mut admin_port = None;
    let mut admin_token = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tap" => tap = Some(value),
            "--addr" => {
                let (ip, len) = value.split_once('/').ok_or("--addr wants IP/LEN")?;
                let ip: std::net::Ipv4Addr = ip.parse().map_err(|e| format!("--addr: {e}"))?;
                let len: u8 = len.parse().map_err(|e| format!("--addr: {e}"))?;
                addr = Some(Ipv4Cidr::new(ip, len));
            }
            "--server" => {
                let sa: std::net::SocketAddrV4 =
                    value.parse().map_err(|e| format!("--server: {e}"))?;
                server = Some((*sa.ip(), sa.port()));
            }
            "--rounds" => {
                rounds = value.parse().map_err(|e| format!("--rounds: {e}"))?;
                if !(1..=100).contains(&rounds) {
                    return Err("--rounds must be in 1..=100".into());
                }
            }
            "--syncs" => {
                let n: usize = value.parse().map_err(|e| format!("--syncs: {e}"))?;
                if !(1..=50).contains(&n) {
                    return Err("--syncs must be in 1..=50".into());
                }
                syncs = Some(n);
            }
            "--key" => {
                key = Some(
                    omega_tv_sync::DeviceKey::from_hex(&value)
                        .map_err(|_| "--key wants 64 hex digits")?,
                );
            }
            "--device" => {
                DeviceId::new(&value).map_err(|e| format!("--device: {e:?}"))?;
                device = value;
            }
            "--tls-port" => {
                tls_port = Some(value.parse().map_err(|e| format!("--tls-port: {e}"))?);
            }
            "--admin-port" => {
                admin_port = Some(value.parse().map_err(|e| format!("--admin-port: {e}"))?);
            }
            "--admin-token" => admin_token = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        tap: tap.ok_or("--tap is required")?,
        addr: addr.ok_or("--addr is required")?,
        server: server.ok_or("--server is required")?,
        rounds,
        syncs,
        key,
        device,
        tls_port,
        admin: match (admin_port, admin_token) {
            (Some(p), Some(t)) => Some((p, t)),
            (None, None) => None,
            _ => return Err("--admin-port and --admin-token go together".into()),
        },
    })
}
