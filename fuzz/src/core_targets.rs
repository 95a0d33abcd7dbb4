//! The fixtures and real frames `server/tests/fuzz_replay.rs` uses
//! (`real_upload`, `download_client`, `download_base`, `DEVICE`), for that
//! test only: it includes this file by path because the server does not
//! depend on `omega-tv-sync-testkit` yet. The fuzz crate itself does not
//! compile this file (its core targets are `omega_tv_sync_testkit::targets`).
//! Delete it once the server's tests take the test support crate as a
//! dev-dependency.

#[path = "../../testkit/src/data.rs"]
mod data;
#[path = "../../testkit/src/fixtures.rs"]
mod fixtures;
#[path = "../../testkit/src/frames.rs"]
mod frames;

pub use fixtures::DEVICE;
pub use frames::{download_base, download_client, real_upload};
