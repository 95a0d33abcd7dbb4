//! Request builders.

use omega_tv_sync::{Method, Request};

/// A `GET` of `path` without headers or body. Add headers with struct
/// update syntax: `Request { headers: &[..], ..get(path) }`.
pub fn get(path: &str) -> Request<'_> {
    Request {
        method: Method::Get,
        path,
        headers: &[],
        body: &[],
    }
}
