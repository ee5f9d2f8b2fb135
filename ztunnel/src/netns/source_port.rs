//! Source ports of ztunnel's deliveries to apps, taken in turn here instead of searched for by
//! the kernel.
//!
//! A delivery socket is bound before it connects: to the client's address with
//! `preserveSourceIp`, and under eBPF capture in any case, so that its source can be exempted
//! from inbound capture before its SYN meets sk_lookup. `bind(ip, 0)` makes the kernel search
//! for a port that no socket on that address holds, TIME_WAIT ones included, and every closed
//! delivery leaves one: at a few thousand new connections per second the search was about a
//! sixth of ztunnel's CPU. A port taken in turn from the ephemeral range binds at once with
//! SO_REUSEADDR, which (like the kernel's choice at connect) only needs the whole four-tuple to
//! be unused; connect reports a clash as `EADDRNOTAVAIL` and the caller tries a fresh socket.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

use socket2::SockRef;

/// Linux's default `ip_local_port_range`, 32768-60999: ports apps rarely listen on.
const FIRST: u32 = 32768;
const COUNT: u32 = 60999 - 32768 + 1;
/// Ports held without SO_REUSEADDR (a listener, an app's own connection) refuse the bind; after
/// this many such ports in a row the kernel searches instead.
const BIND_ATTEMPTS: usize = 8;

/// Starts at a random place, so a restarted ztunnel does not walk into the TIME_WAIT sockets its
/// predecessor left on the first ports.
static NEXT: LazyLock<AtomicU32> = LazyLock::new(|| AtomicU32::new(rand::random()));

fn next() -> u16 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
    u16::try_from(FIRST + n).expect("FIRST + COUNT - 1 is 60999")
}

/// Binds `socket` to `ip` and a source port of its own for a delivery connection.
pub fn bind(socket: SockRef<'_>, ip: IpAddr) -> io::Result<()> {
    bind_from(socket, ip, next)
}

fn bind_from(socket: SockRef<'_>, ip: IpAddr, mut port: impl FnMut() -> u16) -> io::Result<()> {
    socket.set_reuse_address(true)?;
    for _ in 0..BIND_ATTEMPTS {
        match socket.bind(&SocketAddr::new(ip, port()).into()) {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            done => return done,
        }
    }
    socket.bind(&SocketAddr::new(ip, 0).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    use socket2::{Domain, Socket, Type};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn tcp() -> Socket {
        Socket::new(Domain::IPV4, Type::STREAM, None).unwrap()
    }

    fn port(s: &Socket) -> u16 {
        s.local_addr().unwrap().as_socket().unwrap().port()
    }

    #[test]
    fn ports_are_taken_in_turn_within_the_ephemeral_range() {
        // Other tests take ports meanwhile: distinct, not necessarily consecutive.
        let ports: std::collections::HashSet<u16> = (0..1000).map(|_| next()).collect();
        assert_eq!(ports.len(), 1000);
        assert!(ports.iter().all(|p| (32768..=60999).contains(p)));
    }

    #[test]
    fn a_port_held_by_a_listener_is_skipped() {
        let listener = TcpListener::bind((LOCAL, 0)).unwrap();
        let held = listener.local_addr().unwrap().port();
        let free = {
            let probe = TcpListener::bind((LOCAL, 0)).unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut ports = [held, free].into_iter();
        let socket = tcp();
        bind_from(SockRef::from(&socket), LOCAL, || ports.next().unwrap()).unwrap();
        assert_eq!(port(&socket), free);
    }

    #[test]
    fn when_every_try_clashes_the_kernel_picks() {
        let listener = TcpListener::bind((LOCAL, 0)).unwrap();
        let held = listener.local_addr().unwrap().port();
        let socket = tcp();
        bind_from(SockRef::from(&socket), LOCAL, || held).unwrap();
        assert_ne!(port(&socket), held);
        assert_ne!(port(&socket), 0);
    }

    /// What the retry in delivery relies on: two sockets share a source port, and only the one
    /// whose four-tuple is already taken fails, at connect, with `AddrNotAvailable`.
    #[test]
    fn shared_source_port_clashes_only_on_the_same_four_tuple() {
        let one = TcpListener::bind((LOCAL, 0)).unwrap();
        let two = TcpListener::bind((LOCAL, 0)).unwrap();
        let first = tcp();
        bind(SockRef::from(&first), LOCAL).unwrap();
        let source = port(&first);
        first.connect(&one.local_addr().unwrap().into()).unwrap();
        let other_target = tcp();
        bind_from(SockRef::from(&other_target), LOCAL, || source).unwrap();
        assert_eq!(port(&other_target), source);
        other_target
            .connect(&two.local_addr().unwrap().into())
            .expect("another destination: a different four-tuple");
        let same_target = tcp();
        bind_from(SockRef::from(&same_target), LOCAL, || source).unwrap();
        let err = same_target
            .connect(&one.local_addr().unwrap().into())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrNotAvailable, "{err}");
    }
}
