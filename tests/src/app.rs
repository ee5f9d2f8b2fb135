//! Thread-based test apps running in pod namespaces, and a byte-exact transfer checker.

use std::io::{self, Read, Write};
use std::net::{Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::topology::Pod;

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    peers: Mutex<Vec<SocketAddr>>,
    /// Open connections, shut down on drop so their threads end.
    conns: Mutex<Vec<TcpStream>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Echoes every byte back; after the client half-closes it finishes writing and half-closes
/// too. Stops (and closes every connection) on drop.
pub struct EchoServer {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `[::]:port` (dual stack) inside the pod namespace; `port` 0 picks one.
    pub fn start(pod: &Pod, port: u16) -> io::Result<EchoServer> {
        let listener = pod.listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
        Self::serve(listener)
    }

    /// Serves on an already bound listener (in whatever namespace it was created).
    pub fn serve(listener: TcpListener) -> io::Result<EchoServer> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("echo-{port}"))
                .spawn(move || {
                    accept_loop(&listener, &shared, |stream, _| {
                        let _ = echo(stream);
                    })
                })?
        };
        Ok(EchoServer {
            port,
            shared,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Peer address of every accepted connection, in order, IPv4-mapped addresses as IPv4.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .expect("peer list lock poisoned by a panicking echo thread")
            .clone()
    }

    /// Number of accepted connections.
    pub fn connections(&self) -> usize {
        self.peers().len()
    }
}

/// Accepts until stopped, running `handle` on a thread per connection (with the normalized peer).
fn accept_loop<F>(listener: &TcpListener, shared: &Arc<Shared>, handle: F)
where
    F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                shared
                    .peers
                    .lock()
                    .expect("echo lock poisoned")
                    .push(normalize(peer));
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                if let Ok(clone) = stream.try_clone() {
                    shared.conns.lock().expect("echo lock poisoned").push(clone);
                }
                let handle = handle.clone();
                let worker = std::thread::spawn(move || handle(stream, peer));
                shared
                    .workers
                    .lock()
                    .expect("echo lock poisoned")
                    .push(worker);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(_) => std::thread::sleep(ACCEPT_POLL),
        }
    }
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}

/// Turns `[::ffff:a.b.c.d]:p` (what a dual-stack listener reports for IPv4 peers) into
/// `a.b.c.d:p`.
pub fn normalize(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        stop(&self.shared, &mut self.acceptor);
    }
}

/// Stops accepting, closes every open connection and joins all threads.
fn stop(shared: &Shared, acceptor: &mut Option<JoinHandle<()>>) {
    shared.stop.store(true, Ordering::Relaxed);
    if let Some(acceptor) = acceptor.take() {
        let _ = acceptor.join();
    }
    if let Ok(conns) = shared.conns.lock() {
        for c in conns.iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
    let workers = match shared.workers.lock() {
        Ok(mut w) => std::mem::take(&mut *w),
        Err(_) => return,
    };
    for w in workers {
        let _ = w.join();
    }
}

/// What a [`SinkServer`] received on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    pub peer: SocketAddr,
    pub bytes: u64,
    /// Every byte matched [`pattern_byte`] at its offset (see [`send_pattern`]).
    pub intact: bool,
    /// The sender half-closed (read reached EOF) rather than the connection failing.
    pub complete: bool,
}

/// Reads every connection to EOF without answering, checking the bytes against the transfer
/// pattern; for one-way bulk transfers. Stops on drop.
pub struct SinkServer {
    port: u16,
    shared: Arc<Shared>,
    received: Arc<Mutex<Vec<Received>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl SinkServer {
    /// Listens on `[::]:port` (dual stack) inside the pod namespace; `port` 0 picks one.
    pub fn start(pod: &Pod, port: u16) -> io::Result<SinkServer> {
        let listener = pod.listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
        Self::serve(listener)
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: TcpListener) -> io::Result<SinkServer> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared::default());
        let received = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (shared, received) = (shared.clone(), received.clone());
            std::thread::Builder::new()
                .name(format!("sink-{port}"))
                .spawn(move || {
                    accept_loop(&listener, &shared, move |stream, peer| {
                        let r = sink(stream, peer);
                        received.lock().expect("sink lock poisoned").push(r);
                    })
                })?
        };
        Ok(SinkServer {
            port,
            shared,
            received,
            acceptor: Some(acceptor),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections that have finished (EOF or error), in completion order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("sink lock poisoned").clone()
    }

    /// Waits until `count` connections have finished, up to `timeout`.
    pub fn wait_received(&self, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let r = self.received();
            if r.len() >= count || std::time::Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(ACCEPT_POLL);
        }
    }

    /// Peer address of every accepted connection, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared
            .peers
            .lock()
            .expect("peer list lock poisoned")
            .clone()
    }
}

fn sink(mut stream: TcpStream, peer: SocketAddr) -> Received {
    let mut buf = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let (mut bytes, mut intact) = (0u64, true);
    let complete = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                fill_pattern(bytes, &mut expected[..n]);
                intact &= buf[..n] == expected[..n];
                bytes += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    Received {
        peer,
        bytes,
        intact,
        complete,
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        stop(&self.shared, &mut self.acceptor);
    }
}

/// Writes `bytes` bytes of the transfer pattern, then half-closes.
pub fn send_pattern(stream: &mut TcpStream, bytes: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        fill_pattern(sent, &mut buf[..n]);
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    Ok(sent)
}

/// Outcome of [`transfer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub sent: u64,
    pub received: u64,
    /// Every received byte matched the pattern at its offset.
    pub intact: bool,
}

impl Transfer {
    /// Everything sent came back, unchanged.
    pub fn ok(&self) -> bool {
        self.intact && self.sent == self.received
    }
}

/// Byte `i` of the deterministic stream [`transfer`] sends. 251 is prime so the pattern never
/// lines up with buffer or segment sizes, and shifted or dropped chunks are caught.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Fills `buf` with the pattern starting at stream offset `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// Streams `bytes` bytes of the pattern to an echo peer while reading concurrently, then
/// half-closes and reads to EOF, verifying the echo byte-exact. Set a read timeout on `stream`
/// beforehand to bound a stuck peer.
pub fn transfer(stream: &TcpStream, bytes: u64) -> io::Result<Transfer> {
    let mut writer = stream.try_clone()?;
    let mut reader = stream.try_clone()?;
    std::thread::scope(|s| {
        let sending = s.spawn(move || send_pattern(&mut writer, bytes));
        let mut buf = vec![0u8; 64 * 1024];
        let mut expected = vec![0u8; 64 * 1024];
        let mut received = 0u64;
        let mut intact = true;
        let read_result = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    fill_pattern(received, &mut expected[..n]);
                    intact &= buf[..n] == expected[..n];
                    received += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let sent = sending
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
        read_result?;
        Ok(Transfer {
            sent,
            received,
            intact,
        })
    })
}

/// Writes `msg`, half-closes, and returns everything read until EOF.
pub fn roundtrip(stream: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    stream.write_all(msg)?;
    stream.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out)?;
    Ok(out)
}

/// Opens a connection from `pod` to `target` and checks one echo exchange (no half-close), so
/// the caller gets a connection that is proven to work and still open.
pub fn echo_open(
    pod: &Pod,
    target: SocketAddr,
    msg: &[u8],
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut s = pod.connect(target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    ping(&mut s, msg)?;
    Ok(s)
}

/// One echo exchange on an open connection: writes `msg`, reads back exactly as many bytes.
pub fn ping(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    if got != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_unmaps_v4_mapped() {
        let mapped: SocketAddr = "[::ffff:10.201.1.10]:4000".parse().expect("literal");
        assert_eq!(
            normalize(mapped),
            "10.201.1.10:4000".parse().expect("literal")
        );
        let v6: SocketAddr = "[fd00:201:1::10]:4000".parse().expect("literal");
        assert_eq!(normalize(v6), v6);
    }

    #[test]
    fn echo_and_transfer_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let server = EchoServer::serve(listener).expect("serve");
        let mut s = TcpStream::connect(addr).expect("connect");
        assert_eq!(roundtrip(&mut s, b"hello").expect("roundtrip"), b"hello");
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let t = transfer(&s, 3_000_000).expect("transfer");
        assert!(t.ok(), "{t:?}");
        assert_eq!(t.received, 3_000_000);
        assert_eq!(server.connections(), 2);
        assert!(server.peers().iter().all(|p| p.ip().is_loopback()));
    }

    #[test]
    fn sink_checks_one_way_transfers() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let sink = SinkServer::serve(listener).expect("serve");
        let mut s = TcpStream::connect(addr).expect("connect");
        assert_eq!(send_pattern(&mut s, 1_000_000).expect("send"), 1_000_000);
        let mut bad = TcpStream::connect(addr).expect("connect");
        bad.write_all(b"not the pattern").expect("write");
        bad.shutdown(Shutdown::Write).expect("half-close");
        let got = sink.wait_received(2, Duration::from_secs(10));
        assert_eq!(got.len(), 2, "{got:?}");
        let good = got
            .iter()
            .find(|r| r.bytes == 1_000_000)
            .expect("the pattern connection");
        assert!(good.intact && good.complete, "{good:?}");
        let corrupt = got
            .iter()
            .find(|r| r.bytes == 15)
            .expect("the garbage connection");
        assert!(!corrupt.intact);
        assert_eq!(sink.peers().len(), 2);
    }
}
