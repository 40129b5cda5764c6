//! The request stack for one client connection, outermost layer first.

use std::sync::Arc;

use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

use super::guard::{ConnInfo, Guard, Shared};
use super::upstream::Upstream;

pub fn stack(
    shared: Arc<Shared>,
    conn: ConnInfo,
    upstream: Upstream,
) -> TowerToHyperService<Guard<Upstream>> {
    let service = ServiceBuilder::new()
        // The guard: normalize, route, identify the client, charge payload budgets, rewrite
        // headers. Every request's outcome is recorded here, whichever phase ended it.
        .layer_fn(|inner| Guard::new(shared.clone(), conn.clone(), inner))
        // The upstream: this worker's pool of keep-alive connections; bodies stream both ways.
        .service(upstream);
    TowerToHyperService::new(service)
}
