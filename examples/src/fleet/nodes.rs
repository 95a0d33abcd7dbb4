//! Several Constellation nodes behind one transport: `--server
//! URL1,URL2,...`. Each device's requests rotate across the nodes in turn
//! (its consecutive syncs, its retries and its stale twin's requests all
//! go to the node after the one its previous request went to), so the
//! nodes' shared database, not one node's memory, must keep every device
//! exactly-once. Requests without a device (feed pages, the read-back)
//! rotate over one shared counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use omega_tv_sync::{Request, Response, Transport};
use omega_tv_sync_http::{HttpError, HttpTransport};

/// The turn of each device, and of requests without one.
#[derive(Debug, Default)]
struct Turns {
    devices: Mutex<HashMap<String, usize>>,
    other: AtomicUsize,
}

/// A transport over one or more nodes (clones share the nodes' connection
/// pools and the turns).
#[derive(Clone, Debug)]
pub struct Nodes {
    nodes: Arc<Vec<HttpTransport>>,
    turns: Arc<Turns>,
}

impl Nodes {
    /// Nodes from `urls`, separated by commas (`http://h:1,http://h:2`).
    pub fn new(urls: &str) -> Result<Self, HttpError> {
        let nodes = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(HttpTransport::new)
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(HttpError::InvalidRequest("no server URL".into()));
        }
        Ok(Nodes {
            nodes: Arc::new(nodes),
            turns: Arc::default(),
        })
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: there is at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node the next request of `device` (or without one) goes to;
    /// moves its turn on.
    pub fn next_node(&self, device: Option<&str>) -> usize {
        let n = self.nodes.len();
        if n == 1 {
            return 0;
        }
        let turn = match device {
            Some(d) => {
                let mut m = self.turns.devices.lock().unwrap_or_else(|e| e.into_inner());
                let t = m.entry(d.to_string()).or_insert(0);
                let cur = *t;
                *t += 1;
                // Each device starts on a different node, so the first
                // syncs of a fleet spread too.
                cur + d.bytes().map(usize::from).sum::<usize>()
            }
            None => self.turns.other.fetch_add(1, Ordering::Relaxed),
        };
        turn % n
    }
}

impl Transport for Nodes {
    type Error = HttpError;

    async fn send(&mut self, req: Request<'_>, buf: &mut [u8]) -> Result<Response, HttpError> {
        let device = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-device-id"))
            .map(|(_, v)| *v);
        let i = self.next_node(device);
        let mut t = self.nodes[i].clone();
        t.send(req, buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_moves_to_the_next_node_on_every_request() {
        let n = Nodes::new("http://127.0.0.1:1, http://127.0.0.1:2,http://127.0.0.1:3").unwrap();
        assert_eq!(n.len(), 3);
        for d in ["tv-000001", "tv-000002"] {
            let seq: Vec<usize> = (0..6).map(|_| n.next_node(Some(d))).collect();
            for w in seq.windows(2) {
                assert_eq!(w[1], (w[0] + 1) % 3, "{d}: {seq:?}");
            }
        }
        let other: Vec<usize> = (0..3).map(|_| n.next_node(None)).collect();
        assert_eq!(other, vec![0, 1, 2]);
        let one = Nodes::new("http://127.0.0.1:1").unwrap();
        assert_eq!(one.next_node(Some("tv")), 0);
        assert!(Nodes::new(" , ").is_err());
    }
}
