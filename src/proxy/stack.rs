//! The service each client connection is served by.
//!
//! One tower service, [`Guard`], adapted to hyper: it runs the request's phases (protection
//! included: upstream slots and brownout are phases of `Guard`, not layers) and forwards on this
//! worker's upstream pool. A cross-cutting layer would wrap it here, with a line saying why it
//! sits where it does.

use std::sync::Arc;

use hyper_util::service::TowerToHyperService;

use super::conns::ConnState;
use super::guard::{ConnInfo, Guard};
use super::state::Shared;
use super::upstream::Upstream;

pub fn stack(
    shared: Arc<Shared>,
    conn: ConnInfo,
    activity: Arc<ConnState>,
    upstream: Upstream,
) -> TowerToHyperService<Guard> {
    TowerToHyperService::new(Guard::new(shared, conn, activity, upstream))
}
