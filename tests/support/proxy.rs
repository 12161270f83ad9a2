//! A loopback TCP proxy under the test's control, to break the network between the agent and
//! Redis (or the ESL server): cut every connection, hold traffic like a partition, refuse new
//! connections, or cut after N bytes to break a pipeline in the middle.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const NO_LIMIT: u64 = u64::MAX;

struct Shared {
    target: SocketAddr,
    /// Both sockets of every live connection pair.
    conns: Mutex<Vec<(TcpStream, TcpStream)>>,
    blocked: AtomicBool,
    refusing: AtomicBool,
    stopping: AtomicBool,
    /// Client-to-target bytes still allowed before the connection is cut.
    budget: AtomicU64,
    accepted: AtomicU64,
}

impl Shared {
    fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for (a, b) in conns {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    fn wait_unblocked(&self) -> bool {
        while self.blocked.load(Ordering::SeqCst) {
            if self.stopping.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        !self.stopping.load(Ordering::SeqCst)
    }
}

/// A proxy from [`addr`](TcpProxy::addr) to a target; dropped = every connection closed.
pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            conns: Mutex::new(Vec::new()),
            blocked: AtomicBool::new(false),
            refusing: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            budget: AtomicU64::new(NO_LIMIT),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, s))
            .expect("spawn proxy");
        TcpProxy { addr, shared, accept: Some(accept) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://<proxy addr>/`, for a Redis target.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Closes every current connection, both sides, at once.
    pub fn cut_all(&self) {
        self.shared.cut_all();
    }

    /// `true`: a partition. Nothing is forwarded either way, and new connections are accepted
    /// but held, until `false`.
    pub fn set_blocked(&self, blocked: bool) {
        self.shared.blocked.store(blocked, Ordering::SeqCst);
    }

    /// `true`: new connections are closed as soon as they are accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Forwards `n` more client-to-target bytes, then cuts the connection carrying the next
    /// one (one shot).
    pub fn cut_after_bytes(&self, n: u64) {
        self.shared.budget.store(n, Ordering::SeqCst);
    }

    /// Connection pairs open now.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        self.shared.cut_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.refusing.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let s = shared.clone();
        let _ = std::thread::Builder::new().name("proxy-conn".into()).spawn(move || connect_pair(client, s));
    }
}

fn connect_pair(client: TcpStream, shared: Arc<Shared>) {
    if !shared.wait_unblocked() {
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) =
        (client.try_clone(), upstream.try_clone(), client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    shared.conns.lock().unwrap_or_else(|p| p.into_inner()).push((c3, u3));
    let s = shared.clone();
    let _ = std::thread::Builder::new().name("proxy-up".into()).spawn(move || pump(client, upstream, &s, true));
    let _ = std::thread::Builder::new().name("proxy-down".into()).spawn(move || pump(u2, c2, &shared, false));
}

/// Copies `from` to `to` until either side closes; `upstream` bytes count against the budget.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, upstream: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !shared.wait_unblocked() {
            break;
        }
        let allowed = if upstream { take_budget(shared, n as u64) } else { n };
        if to.write_all(&buf[..allowed]).is_err() {
            break;
        }
        if allowed < n {
            break; // budget exhausted: cut here
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// How many of `n` bytes may pass; resets the budget once it is spent.
fn take_budget(shared: &Shared, n: u64) -> usize {
    let mut current = shared.budget.load(Ordering::SeqCst);
    loop {
        if current == NO_LIMIT {
            return n as usize;
        }
        let allowed = current.min(n);
        let next = if allowed < n { NO_LIMIT } else { current - allowed };
        match shared.budget.compare_exchange(current, next, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return allowed as usize,
            Err(actual) => current = actual,
        }
    }
}
