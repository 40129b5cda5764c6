//! The service each client connection is served by.
//!
//! Today it is one tower service, [`Guard`], adapted to hyper: it runs the request's phases and
//! forwards on this worker's upstream pool. Cross-cutting layers (critical-route reservations,
//! brownout) wrap it here, outermost first, each with a line saying why it sits where it does.

use std::sync::Arc;

use hyper_util::service::TowerToHyperService;

use super::guard::{ConnInfo, Guard, Shared};
use super::upstream::Upstream;

pub fn stack(
    shared: Arc<Shared>,
    conn: ConnInfo,
    upstream: Upstream,
) -> TowerToHyperService<Guard> {
    TowerToHyperService::new(Guard::new(shared, conn, upstream))
}
