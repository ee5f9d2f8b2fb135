use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hbone;
use crate::identity;
use crate::inbound::{Local, Tracker};
use crate::metrics::Metrics;
use crate::outbound::PoolKey;
use crate::state::Store;

/// Everything a proxied connection needs, shared by all pods of the node.
pub struct Context {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub identities: Arc<identity::Manager>,
    pub pool: hbone::Pool<PoolKey>,
    pub hbone: hbone::Settings,
    pub metrics: Arc<Metrics>,
    /// Live inbound connections, re-checked against policy on every state change.
    pub tracker: Tracker,
    /// This node's pods' inbound HBONE servers, for tunnels between two of them.
    pub local: Local,
    /// Fired at SIGTERM: listeners stop accepting, HBONE servers send GOAWAY.
    pub draining: CancellationToken,
    /// Fired when the drain deadline passes: every remaining connection is closed.
    pub stopped: CancellationToken,
    /// Every connection task, so a drain can wait for them.
    pub tasks: TaskTracker,
}
