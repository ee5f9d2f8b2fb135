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
                .spawn(move || accept_loop(&listener, &shared))?
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
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
                let worker = std::thread::spawn(move || {
                    let _ = echo(stream);
                });
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
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if let Ok(conns) = self.shared.conns.lock() {
            for c in conns.iter() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        let workers = match self.shared.workers.lock() {
            Ok(mut w) => std::mem::take(&mut *w),
            Err(_) => return,
        };
        for w in workers {
            let _ = w.join();
        }
    }
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
        let sending = s.spawn(move || -> io::Result<u64> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut sent = 0u64;
            while sent < bytes {
                let n = (bytes - sent).min(buf.len() as u64) as usize;
                fill_pattern(sent, &mut buf[..n]);
                writer.write_all(&buf[..n])?;
                sent += n as u64;
            }
            writer.shutdown(Shutdown::Write)?;
            Ok(sent)
        });
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
}
