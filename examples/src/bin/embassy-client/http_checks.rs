//! The HTTP checks against `embassy-test-server`: echoed bodies, chunked
//! and oversize responses, `Retry-After`.

use omega_tv_sync::{Method, Request, Transport};
use omega_tv_sync_embassy::Error;
use omega_tv_sync_examples::{pattern_bytes, BIG_LEN, CHUNKED_LEN};

use crate::checks::Checks;

/// A `GET` of `path` with the test device's id.
pub fn get(path: &str) -> Request<'_> {
    Request {
        headers: &[("X-Device-ID", "embassy-client-1")],
        ..omega_tv_sync_testkit::get(path)
    }
}

/// `rounds` rounds of echoed POST bodies and chunked responses, then the
/// oversize, 503 and recovery checks, against `embassy-test-server`.
pub async fn run_http_checks<T: Transport<Error = Error>>(
    t: &mut T,
    buf: &mut [u8],
    rounds: usize,
    checks: &mut Checks,
) {
    let chunked_expected = pattern_bytes(CHUNKED_LEN);
    for round in 0..rounds {
        // Binary POST bodies of several sizes, each echoed back exactly.
        for len in [0usize, 1, 1460, 3000 + round] {
            let body: Vec<u8> = pattern_bytes(len).iter().map(|b| b ^ round as u8).collect();
            let req = Request {
                method: Method::Post,
                path: "/echo",
                headers: &[("X-Device-ID", "embassy-client-1")],
                body: &body,
            };
            let r = t.send(req, buf).await;
            let ok =
                matches!(r, Ok(resp) if resp.status == 200 && buf[..resp.body_len] == body[..]);
            checks.check(&format!("round {round}: POST /echo {len} B"), ok);
        }
        let r = t.send(get("/chunked"), buf).await;
        let ok = matches!(r, Ok(resp) if resp.status == 200 && buf[..resp.body_len] == chunked_expected[..]);
        checks.check(
            &format!("round {round}: chunked {CHUNKED_LEN} B decoded"),
            ok,
        );
    }
    let limit = buf.len();
    let r = t.send(get("/big"), buf).await;
    checks.check(
        &format!("{BIG_LEN} B Content-Length body -> ResponseTooLarge"),
        r == Err(Error::ResponseTooLarge { limit }),
    );
    let r = t.send(get("/big-chunked"), buf).await;
    checks.check(
        &format!("{BIG_LEN} B chunked body -> ResponseTooLarge"),
        r == Err(Error::ResponseTooLarge { limit }),
    );
    let r = t.send(get("/busy"), buf).await;
    checks.check(
        "503 with Retry-After: 7",
        matches!(r, Ok(resp) if resp.status == 503 && resp.retry_after_s == Some(7) && resp.body_len == 0),
    );
    // After the errors the transport still works.
    let r = t.send(get("/chunked"), buf).await;
    checks.check(
        "chunked again after errors",
        matches!(r, Ok(resp) if buf[..resp.body_len] == chunked_expected[..]),
    );
}
