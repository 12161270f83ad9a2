//! The admin HTTP server on `HEALTH_BIND:HEALTH_PORT`: binds the listener, accepts under the
//! [`limits`](crate::http::limits), and serves each connection with hyper (HTTP/1.1,
//! keep-alive) from a thread of its own. Every request carries its client's address as a
//! [`Peer`] extension.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::http::access::Peer;
use crate::http::handler::BoxError;
use crate::http::limits::{is_same_host, Connections, Limits, Refused, Slot};
use crate::http::router::Router;
use crate::telemetry::logging::RateLimit;
use crate::telemetry::metrics::metrics;

/// Request line and headers must fit in this.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Connections the kernel completes and queues before the server accepts them: a burst of
/// connections must not fill the queue and delay a probe's handshake by a SYN retransmit.
const BACKLOG: i32 = 1024;

/// `reason` of `eslstream_http_connections_closed_total`: no complete request head within the
/// header timeout.
const TIMED_OUT: &str = "timeout";
/// `reason` of `eslstream_http_connections_closed_total`: the oldest idle one, to make room.
const EVICTED: &str = "evicted";

static ACCEPT_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));
static REFUSED_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));
static EVICTED_WARN: RateLimit = RateLimit::new(Duration::from_secs(10));

/// Binds the listener, naming the variables in the error.
pub fn bind(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let context = |e: io::Error| {
        io::Error::new(e.kind(), format!("cannot listen on {host}:{port} (HEALTH_BIND, HEALTH_PORT): {e}"))
    };
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(context)?.collect();
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "the address resolves to nothing");
    for addr in addrs {
        match listen(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(context(last))
}

fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The running server: its thread, its address, and the way to stop it.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Serves `router` on `listener` from a thread of its own, under `limits`.
    pub(crate) fn start<S: Send + Sync + 'static>(
        listener: std::net::TcpListener,
        router: Router<S>,
        ctx: Arc<S>,
        limits: Limits,
    ) -> io::Result<HttpServer> {
        HttpServer::start_tls(listener, router, ctx, limits, None)
    }

    /// The same, over TLS when `tls` is given (the handshake must finish within the header
    /// timeout, like a request head).
    pub(crate) fn start_tls<S: Send + Sync + 'static>(
        listener: std::net::TcpListener,
        router: Router<S>,
        ctx: Arc<S>,
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        // Shown at 0 from the start, so that alerts and rate() see them before the first one.
        for refused in Refused::ALL {
            metrics().http.rejected.with_label_values(&[refused.label()]);
        }
        for reason in [TIMED_OUT, EVICTED] {
            metrics().http.closed.with_label_values(&[reason]);
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new().name("http".into()).spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, Arc::new(router), ctx, limits, tls, stopped).await,
                    Err(e) => warn!(error = %e, "HTTP server cannot use its socket"),
                }
            })
        })?;
        info!(
            %addr,
            max_connections = limits.max_connections,
            max_per_peer = limits.max_per_peer,
            header_timeout = ?limits.header_timeout,
            "HTTP server listening (/health, /metrics, /dlq)"
        );
        Ok(HttpServer { addr, stop: Some(stop), thread: Some(thread) })
    }

    /// The bound address (the real port when `HEALTH_PORT=0`).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drops open connections, and joins the thread.
    pub(crate) fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Forgets a connection in the table when its task ends, however it ends.
struct Registered {
    table: Arc<Mutex<Connections>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if self.table.lock().remove(self.id) {
            metrics().http.connections.dec();
        }
    }
}

async fn serve<S: Send + Sync + 'static>(
    listener: tokio::net::TcpListener,
    router: Arc<Router<S>>,
    ctx: Arc<S>,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: oneshot::Receiver<()>,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let table = Arc::new(Mutex::new(Connections::new(limits)));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                if let Some(suppressed) = ACCEPT_WARN.check() {
                    warn!(error = %e, suppressed, "HTTP accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let same_host = stream.local_addr().is_ok_and(|local| is_same_host(peer.ip(), local.ip()));
        let (admitted, open) = {
            let mut table = table.lock();
            (table.admit(peer.ip(), same_host), table.len())
        };
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => {
                metrics().http.rejected.with_label_values(&[refused.label()]).inc();
                if let Some(suppressed) = REFUSED_WARN.check() {
                    warn!(
                        peer = %peer.ip(),
                        reason = refused.label(),
                        open,
                        max_per_peer = limits.max_per_peer,
                        max_connections = limits.max_connections,
                        suppressed,
                        "HTTP connection closed at once: {}",
                        refused.describe()
                    );
                }
                drop(stream);
                continue;
            }
        };
        metrics().http.connections.inc();
        if let Some((evicted_peer, slot)) = admitted.evicted {
            slot.close();
            metrics().http.connections.dec();
            metrics().http.closed.with_label_values(&[EVICTED]).inc();
            if let Some(suppressed) = EVICTED_WARN.check() {
                warn!(
                    evicted = %evicted_peer,
                    newcomer = %peer.ip(),
                    open,
                    suppressed,
                    "HTTP connection limit reached; closed the oldest idle connection to make room"
                );
            }
        }
        let registered = Registered { table: table.clone(), id: admitted.id };
        let (router, ctx, slot) = (router.clone(), ctx.clone(), admitted.slot);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, peer, router, ctx, slot, limits.header_timeout).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, peer, router, ctx, slot, limits.header_timeout).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        metrics().http.closed.with_label_values(&[TIMED_OUT]).inc();
                        debug!(%peer, "TLS handshake not done in time");
                    }
                },
            }
            drop(registered);
        });
    }
    debug!("HTTP server stopped");
}

async fn serve_connection<T, S>(
    stream: T,
    peer: SocketAddr,
    router: Arc<Router<S>>,
    ctx: Arc<S>,
    slot: Arc<Slot>,
    header_timeout: Duration,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Send + Sync + 'static,
{
    let handlers = slot.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let busy = handlers.enter();
        let (router, ctx) = (router.clone(), ctx.clone());
        async move {
            let mut req = req.map(|body| body.map_err(BoxError::from).boxed());
            req.extensions_mut().insert(Peer(peer));
            let reply = router.handle(ctx, req).await;
            drop(busy);
            Ok::<_, Infallible>(reply)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = connection => match result {
            Ok(()) => {}
            Err(e) if e.is_timeout() => {
                metrics().http.closed.with_label_values(&[TIMED_OUT]).inc();
                debug!(%peer, ?header_timeout, "HTTP connection closed: no complete request head in time");
            }
            Err(e) => debug!(%peer, error = %e, "HTTP connection ended with an error"),
        },
        // Evicted to make room: dropping the connection closes the socket.
        () = slot.closed() => debug!(%peer, "HTTP connection evicted"),
    }
}
