//! The sync mode over TLS 1.3 PSK (`--tls-port`), and the TLS transport's
//! caller memory.

use embassy_time::Duration;
use omega_tv_sync::Transport;
use omega_tv_sync_embassy::tls::{RECOMMENDED_READ_BUFFER, RECOMMENDED_WRITE_BUFFER};
use omega_tv_sync_embassy::{
    Buffers, Config, EmbassyTlsTransport, Error, Psk, TlsBuffers, RECOMMENDED_HEADER_BUFFER,
    RECOMMENDED_TCP_BUFFER,
};

use crate::args::Args;
use crate::checks::Checks;
use crate::http_checks::get;
use crate::sync::run_sync;

/// The sync mode over TLS: a handshake with a wrong key must fail, then
/// `n` syncs and the read-back, as [`run_sync`](crate::sync::run_sync), through
/// [`EmbassyTlsTransport`].
pub async fn run_tls_sync(
    stack: embassy_net::Stack<'static>,
    args: &Args,
    port: u16,
    key: omega_tv_sync::DeviceKey,
    n: usize,
    checks: &mut Checks,
) -> Option<i32> {
    let host = format!("{}:{port}", args.server.0);
    let mut cfg = Config::new((args.server.0, port).into(), &host);
    cfg.timeout = Duration::from_secs(5);
    let mut memory = TlsMemory::default();
    let identity = args.device.as_bytes();

    // A wrong key: the terminator refuses the handshake.
    let wrong = omega_tv_sync::DeviceKey::new([0x5a; 32]).tls_psk();
    match memory.transport(stack, cfg, identity, &wrong) {
        Ok(mut t) => {
            let mut buf = [0u8; 256];
            let r = t.send(get("/api/v1/health"), &mut buf).await;
            checks.check(
                &format!("TLS with a wrong PSK -> Error::Tls ({r:?})"),
                r == Err(Error::Tls),
            );
        }
        Err(e) => checks.check(&format!("TLS transport: {e:?}"), false),
    }

    let psk = key.tls_psk();
    let mut transport = match memory.transport(stack, cfg, identity, &psk) {
        Ok(t) => t,
        Err(e) => {
            checks.check(&format!("TLS transport: {e:?}"), false);
            return None;
        }
    };
    checks.check(
        &format!(
            "TLS asks for {:?} records ({} B read buffer)",
            transport.max_fragment_length(),
            RECOMMENDED_READ_BUFFER
        ),
        transport.max_fragment_length().is_some(),
    );
    let Some((admin_port, token)) = &args.admin else {
        checks.check("--admin-port and --admin-token given", false);
        return None;
    };
    let admin = crate::sync::Admin {
        stack,
        ip: args.server.0,
        port: *admin_port,
        token,
    };
    run_sync(&mut transport, &admin, &args.device, n, Some(key), checks).await
}

/// The TLS transport's caller memory (on firmware these are statics).
struct TlsMemory {
    tcp_rx: [u8; RECOMMENDED_TCP_BUFFER],
    tcp_tx: [u8; RECOMMENDED_TCP_BUFFER],
    header: [u8; RECOMMENDED_HEADER_BUFFER],
    record_read: [u8; RECOMMENDED_READ_BUFFER],
    record_write: [u8; RECOMMENDED_WRITE_BUFFER],
}

impl Default for TlsMemory {
    fn default() -> Self {
        TlsMemory {
            tcp_rx: [0; RECOMMENDED_TCP_BUFFER],
            tcp_tx: [0; RECOMMENDED_TCP_BUFFER],
            header: [0; RECOMMENDED_HEADER_BUFFER],
            record_read: [0; RECOMMENDED_READ_BUFFER],
            record_write: [0; RECOMMENDED_WRITE_BUFFER],
        }
    }
}

impl TlsMemory {
    /// A TLS transport on this memory with the PSK `key` for `identity`.
    fn transport<'b>(
        &'b mut self,
        stack: embassy_net::Stack<'static>,
        cfg: Config<'b>,
        identity: &'b [u8],
        key: &'b [u8],
    ) -> Result<EmbassyTlsTransport<'static, 'b, rand_core::OsRng>, Error> {
        EmbassyTlsTransport::new(
            stack,
            cfg,
            Buffers {
                tcp_rx: &mut self.tcp_rx,
                tcp_tx: &mut self.tcp_tx,
                header: &mut self.header,
            },
            TlsBuffers {
                record_read: &mut self.record_read,
                record_write: &mut self.record_write,
            },
            Psk { identity, key },
            rand_core::OsRng,
        )
    }
}
