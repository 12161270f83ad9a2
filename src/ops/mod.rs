//! The operational side of a running agent, started and stopped as one: the HTTP server
//! (`/health`, `/metrics`, `/dlq`), the health monitor, the stream trimmer and the summary log line.
//! Beside them, [`tail`]: the `eslstream tail` command, which reads what the agent wrote.
//!
//! [`Ops::start`] takes an already bound listener so that a taken port fails the start before
//! anything else runs. The background threads end when the agent's [`Shutdown`] triggers;
//! [`Ops::stop`] joins them and then stops the HTTP server, which keeps answering during the
//! drain.

pub(crate) mod context;
pub(crate) mod dlq_api;
pub(crate) mod health;
pub(crate) mod routes;
pub(crate) mod summary;
pub mod tail;
pub mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::http::{HttpServer, Limits};
use crate::ops::context::AppContext;
use crate::ops::health::HealthMonitor;
use crate::ops::routes::{ingress_routes, routes};
use crate::ops::summary::Summarizer;
use crate::ops::trim::Trimmer;
use crate::shutdown::Shutdown;

/// The running HTTP server and background threads.
pub(crate) struct Ops {
    http: HttpServer,
    /// The HTTP ingress's own listener, when it has one.
    ingress: Option<HttpServer>,
    threads: Vec<JoinHandle<()>>,
}

impl Ops {
    /// Starts the monitor, the trimmer, the summary line, and the HTTP server on `listener`
    /// (with `POST /events` there, or on `ingress_listener` when it has one of its own).
    pub(crate) fn start(
        listener: std::net::TcpListener,
        ingress_listener: Option<std::net::TcpListener>,
        ctx: Arc<AppContext>,
        shutdown: Shutdown,
    ) -> std::io::Result<Ops> {
        let monitor = HealthMonitor::new(ctx.clone());
        let trimmer = Trimmer::new(ctx.config.clone());
        let summarizer = Summarizer::new(ctx.clone());
        let interval = ctx.config.metrics_print_interval;
        let (s1, s2, s3) = (shutdown.clone(), shutdown.clone(), shutdown);
        let threads = vec![
            spawn("health-monitor", move || monitor.run(s1))?,
            spawn("trimmer", move || trimmer.run(s2))?,
            spawn("summary", move || summarizer.run(interval, s3))?,
        ];
        crate::ops::dlq_api::announce_access(&ctx.config);
        let ingress_here = ctx.ingress.is_some() && ingress_listener.is_none();
        let ingress = match ingress_listener {
            Some(listener) => {
                let ingress = &ctx.config.http_ingress;
                let limits = Limits { max_connections: ingress.max_connections, ..Limits::default() };
                let tls = match &ingress.tls {
                    Some((cert, key)) => {
                        Some(crate::source::http::tls_config(cert, key).map_err(std::io::Error::other)?)
                    }
                    None => None,
                };
                Some(HttpServer::start_tls(listener, ingress_routes(), ctx.clone(), limits, tls)?)
            }
            None => None,
        };
        let http = HttpServer::start(listener, routes(ingress_here), ctx, Limits::default())?;
        Ok(Ops { http, ingress, threads })
    }

    /// Where `/health` and `/metrics` are served.
    pub(crate) fn http_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// Joins the background threads (they end on shutdown), then stops the HTTP server.
    pub(crate) fn stop(self) {
        for thread in self.threads {
            let _ = thread.join();
        }
        if let Some(ingress) = self.ingress {
            ingress.stop();
        }
        self.http.stop();
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

#[cfg(test)]
mod http_tests;
