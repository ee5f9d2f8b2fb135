//! Node-local endpoints: admin on 15000 (`/config_dump`, `/logging`, `/quitquitquit`),
//! Prometheus metrics on 15020 and readiness on 15021.

pub mod http;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::proxy::Context;
use crate::telemetry::LogControl;
use http::{reply, text, Reply};

/// What the endpoints read and control.
pub struct Admin {
    pub ctx: Arc<Context>,
    pub log: LogControl,
    /// True once certificates and listeners of every local pod are up.
    pub ready: AtomicBool,
    /// Fired by `/quitquitquit`: the process drains and exits as on SIGTERM.
    pub quit: CancellationToken,
    pub renewals_seen: AtomicU64,
}

impl Admin {
    pub async fn serve_admin(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        http::serve(listener, stop, move |req| {
            let me = self.clone();
            async move { me.admin(req) }
        })
        .await
    }

    pub async fn serve_metrics(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        http::serve(listener, stop, move |req| {
            let me = self.clone();
            async move {
                match req.uri().path() {
                    "/metrics" | "/stats/prometheus" => {
                        me.refresh_gauges();
                        reply(
                            StatusCode::OK,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            me.ctx.metrics.encode(),
                        )
                    }
                    _ => text(StatusCode::NOT_FOUND, "try /metrics\n"),
                }
            }
        })
        .await
    }

    pub async fn serve_readiness(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        http::serve(listener, stop, move |req| {
            let me = self.clone();
            async move {
                match req.uri().path() {
                    "/healthz/ready" if me.ready.load(Ordering::Acquire) => {
                        text(StatusCode::OK, "ready\n")
                    }
                    "/healthz/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                    _ => text(StatusCode::NOT_FOUND, "try /healthz/ready\n"),
                }
            }
        })
        .await
    }

    fn refresh_gauges(&self) {
        let m = &self.ctx.metrics;
        let certs = self.ctx.identities.certs();
        m.set_certificates(certs.len() as i64);
        m.set_certificate_expiries(
            certs
                .iter()
                .map(|c| (c.identity.as_str(), c.expires_unix as i64)),
        );
        // The manager counts renewals itself; the counter catches up at each scrape.
        let total = self.ctx.identities.renewals();
        let seen = self.renewals_seen.swap(total, Ordering::AcqRel);
        for _ in seen..total {
            m.inc_certificate_renewals();
        }
        let pool = self.ctx.pool.stats();
        m.set_hbone_pool_connections(pool.connections as i64);
        m.set_hbone_pool_streams(pool.streams as i64);
    }

    fn admin(&self, req: Request<hyper::body::Incoming>) -> Reply {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/config_dump") => self.config_dump(),
            (_, "/logging") => self.logging(&req),
            (&Method::POST, "/quitquitquit") => {
                self.quit.cancel();
                text(StatusCode::OK, "draining\n")
            }
            (_, "/quitquitquit") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(
                StatusCode::NOT_FOUND,
                "endpoints: GET /config_dump, GET|POST /logging?level=LEVEL, POST /quitquitquit\n",
            ),
        }
    }

    fn config_dump(&self) -> Reply {
        let snap = self.ctx.store.load();
        let dump = serde_json::json!({
            "config": &*self.ctx.config,
            "workloads": &snap.workloads,
            "services": &snap.services,
            "authorizationPolicies": &snap.policies,
            "peerAuthentications": &snap.peer_authentications,
            "certificates": self.ctx.identities.certs(),
            "root": self.ctx.identities.ca().root_pem(),
        });
        match serde_json::to_vec_pretty(&dump) {
            Ok(body) => reply(StatusCode::OK, "application/json", body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }

    fn logging(&self, req: &Request<hyper::body::Incoming>) -> Reply {
        let level = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .map(str::to_string)
        });
        match level {
            None => text(
                StatusCode::OK,
                format!("current log level: {}\n", self.log.current()),
            ),
            Some(level) => match self.log.set(&level) {
                Ok(()) => {
                    tracing::info!(%level, "log level changed");
                    text(StatusCode::OK, format!("log level set to {level}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
        }
    }
}
