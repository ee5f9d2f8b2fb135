//! Network namespaces of enrolled pods.
//!
//! ztunnel stays in the node's namespace but creates its listeners and outgoing sockets inside
//! each pod's namespace (Istio ambient "in-pod" mode), so traffic keeps the pod's addresses. A
//! socket belongs to the namespace that was current when it was created, so every namespace gets
//! one dedicated OS thread that enters it once with `setns` and then runs closures on request.
//! Tokio workers never change namespace: a worker that did would silently move every later
//! socket of unrelated tasks into the pod.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use spare::Stock;

pub mod source_port;
mod spare;

/// Listen backlog: Rust's default of 128 drops SYNs when many pod connections arrive at once.
const BACKLOG: i32 = 4096;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Identity of a namespace file: equal inodes mean the same namespace whatever the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Inode {
    pub dev: u64,
    pub ino: u64,
}

/// A network namespace with its dedicated thread. The thread ends when the `Netns` is dropped.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    inode: Inode,
    jobs: mpsc::Sender<Job>,
    /// Sockets made ahead on the namespace thread, per family (see [`spare`]).
    spare_v4: Arc<Stock>,
    spare_v6: Arc<Stock>,
    /// Where delivery sockets take their source ports (see [`source_port`]).
    source_ports: source_port::Range,
}

impl Netns {
    /// Opens the namespace file (e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`) and
    /// starts the thread that enters it.
    pub fn open(path: &Path) -> io::Result<Arc<Netns>> {
        let file = File::open(path).map_err(|e| annotate(e, "opening netns", path))?;
        let meta = file.metadata()?;
        let inode = Inode {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<source_port::Range>>(1);
        std::thread::Builder::new()
            .name(format!("netns-{}", inode.ino))
            .spawn(move || {
                let entered = nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
                    .map(|()| source_port::Range::of_current_netns())
                    .map_err(io::Error::from);
                let ok = entered.is_ok();
                // The opener is blocked on this answer, so the send cannot fail.
                let _ = ready_tx.send(entered);
                drop(file);
                if !ok {
                    return;
                }
                while let Ok(job) = queue.recv() {
                    // A panicking closure drops its result sender, which its caller sees as an
                    // error; the thread itself must survive to serve the other callers.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })?;
        let source_ports = ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread exited before entering the namespace"))?
            .map_err(|e| annotate(e, "entering netns", path))?;
        Ok(Arc::new(Netns {
            path: path.to_owned(),
            inode,
            jobs,
            spare_v4: Arc::new(Stock::new(Domain::IPV4)),
            spare_v6: Arc::new(Stock::new(Domain::IPV6)),
            source_ports,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inode(&self) -> Inode {
        self.inode
    }

    /// The namespace's `ip_local_port_range`, read when it was opened.
    pub fn source_ports(&self) -> source_port::Range {
        self.source_ports
    }

    /// Runs `f` on the namespace's thread. Child processes spawned by `f` inherit the namespace.
    pub async fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.await.map_err(|_| panicked())
    }

    /// Like [`Netns::run`] for synchronous callers. Must not be called from the namespace's own
    /// thread (it would wait for itself).
    pub fn run_blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(Box::new(move || {
            let _ = tx.send(f());
        }))?;
        rx.recv().map_err(|_| panicked())
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs.send(job).map_err(|_| {
            io::Error::other(format!("netns thread for {} is gone", self.path.display()))
        })
    }

    /// A listener bound inside the namespace. Binding `[::]` also accepts IPv4 (as v4-mapped
    /// addresses), so one listener serves both families. Accepted sockets have TCP_NODELAY.
    pub async fn listen(
        &self,
        addr: SocketAddr,
        mark: Option<u32>,
    ) -> io::Result<tokio::net::TcpListener> {
        let std_listener = self
            .run(move || -> io::Result<std::net::TcpListener> {
                let socket =
                    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
                socket.set_reuse_address(true)?;
                if addr.is_ipv6() && addr.ip().is_unspecified() {
                    socket.set_only_v6(false)?;
                }
                if let Some(mark) = mark {
                    socket.set_mark(mark)?;
                }
                // Linux copies TCP_NODELAY to every accepted socket: the proxies forward what
                // they read at once, and need no setsockopt per connection for it.
                socket.set_tcp_nodelay(true)?;
                socket.bind(&SockAddr::from(addr))?;
                socket.listen(BACKLOG)?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            })
            .await??;
        // Registered with the caller's runtime, not on the netns thread (which has none).
        tokio::net::TcpListener::from_std(std_listener)
    }

    /// An unconnected TCP socket of `domain_of`'s family, created inside the namespace with
    /// `SO_MARK`. With `transparent_source` the socket is bound to that (possibly foreign)
    /// address, so the peer sees the original client rather than ztunnel. Usually one the
    /// namespace thread made ahead (see [`spare`]), so the caller does not wait for that thread.
    pub async fn socket(
        &self,
        domain_of: SocketAddr,
        mark: u32,
        transparent_source: Option<IpAddr>,
    ) -> io::Result<tokio::net::TcpSocket> {
        if let Some(source) = transparent_source {
            if source.is_ipv4() != domain_of.is_ipv4() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("transparent source {source} and destination {domain_of} have different address families"),
                ));
            }
        }
        let stock = match domain_of {
            SocketAddr::V4(_) => &self.spare_v4,
            SocketAddr::V6(_) => &self.spare_v6,
        };
        let (spare, wants_refill) = stock.take();
        if wants_refill {
            let refill = stock.clone();
            if self.submit(Box::new(move || refill.refill())).is_err() {
                stock.refill_abandoned();
            }
        }
        let socket = match spare {
            Some(socket) => socket,
            None => {
                let stock = stock.clone();
                self.run(move || stock.create()).await??
            }
        };
        // The socket already belongs to the pod's namespace: options and bind act there
        // whichever thread sets them.
        socket.set_mark(mark)?;
        if let Some(source) = transparent_source {
            match source {
                IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
            }
            source_port::bind(socket2::SockRef::from(&socket), source, self.source_ports)?;
        }
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    }
}

fn panicked() -> io::Error {
    io::Error::other("closure run in netns panicked")
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
