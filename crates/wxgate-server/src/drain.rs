//! Graceful drain. On SIGTERM or SIGINT (or [`DrainHandle::drain`]):
//!
//! 1. **draining**: `/readyz` answers 503 `not_ready` ("draining") at once, so load balancers
//!    (Kubernetes endpoints) take the node out of rotation; the node keeps accepting and serving
//!    for `server.drain_delay_secs` while that propagates. Every response in this phase says
//!    `Connection: close`, so keep-alive clients reconnect (through the Service, to another
//!    node) instead of reusing a connection to this one. A second signal skips the rest of
//!    the delay.
//! 2. **stopping**: the token refresher stops and releases this node's leases (another node's
//!    refresher takes them at its next tick), and at the same time the listener closes; in-flight
//!    requests get `server.shutdown_timeout_secs` to finish.
//! 3. **stopped**: the leases are released once more (an in-flight request may have taken one
//!    back), and `run_until_stopped` returns, so the process exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::{web, Error};
use tokio::sync::Notify;

use crate::startup::AppState;

/// Starts the drain from outside (tests, an embedding program); the signal handler does the
/// same. Cheap to clone.
#[derive(Clone, Default)]
pub struct DrainHandle {
    draining: Arc<AtomicBool>,
    requested: Arc<Notify>,
}

impl DrainHandle {
    /// Starts the drain: `/readyz` fails from now on; the server stops accepting after the
    /// drain delay. Calling it again during the delay skips the rest of it.
    pub fn drain(&self) {
        self.mark_draining();
        self.requested.notify_one();
    }

    /// Sets the flag only (the drain was started by a signal).
    pub(crate) fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Waits until [`DrainHandle::drain`] is called (or was, since the last wait).
    pub(crate) async fn requested(&self) {
        self.requested.notified().await;
    }
}

/// SIGTERM and SIGINT, registered when the application is built so that a signal that arrives
/// before it runs is not lost (nor kills the process).
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Waits for the next signal, or forever without signal handling.
pub(crate) async fn next_signal(signals: &mut Option<Signals>) -> &'static str {
    match signals {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// While draining, every response closes its connection.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let mut resp = next.call(req).await?;
    let draining = resp
        .request()
        .app_data::<web::Data<AppState>>()
        .is_some_and(|s| s.drain.is_draining());
    if draining {
        resp.response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    Ok(resp)
}
