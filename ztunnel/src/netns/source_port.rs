//! Source ports of ztunnel's deliveries to apps, taken in turn here instead of searched for by
//! the kernel.
//!
//! A delivery socket is bound before it connects: to the client's address with
//! `preserveSourceIp`, and under eBPF capture in any case, so that its source can be exempted
//! from inbound capture before its SYN meets sk_lookup. `bind(ip, 0)` makes the kernel search
//! for a port that no socket on that address holds, TIME_WAIT ones included, and every closed
//! delivery leaves one: at a few thousand new connections per second the search was about a
//! sixth of ztunnel's CPU. A port taken in turn from the pod's ephemeral range binds at once
//! with SO_REUSEADDR, which (like the kernel's choice at connect) only needs the whole
//! four-tuple to be unused; connect reports a clash as `EADDRNOTAVAIL` and the caller tries a
//! fresh socket. Unlike the kernel's search this does not skip `ip_local_reserved_ports`; a
//! reserved port is only held while one delivery lives, and only on that source address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

use socket2::SockRef;

/// Ports held without SO_REUSEADDR (a listener, an app's own connection) refuse the bind; after
/// this many such ports in a row the kernel searches instead.
const BIND_ATTEMPTS: usize = 8;

/// Starts at a random place, so a restarted ztunnel does not walk into the TIME_WAIT sockets its
/// predecessor left on the first ports.
static NEXT: LazyLock<AtomicU32> = LazyLock::new(|| AtomicU32::new(rand::random()));

/// A namespace's `ip_local_port_range`: where the kernel would have picked, so where we pick
/// too (a pod may narrow it, e.g. to keep ports free for listeners it starts later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    first: u16,
    last: u16,
}

impl Range {
    /// Linux's default, for a namespace whose setting cannot be read.
    pub const DEFAULT: Range = Range {
        first: 32768,
        last: 60999,
    };

    /// The range of the calling thread's network namespace (`/proc/sys/net` follows the
    /// thread's namespace), or the default if it cannot be read.
    pub fn of_current_netns() -> Range {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| Range::parse(&s))
            .unwrap_or(Range::DEFAULT)
    }

    fn parse(text: &str) -> Option<Range> {
        let mut ports = text.split_whitespace().map(str::parse::<u16>);
        let (first, last) = (ports.next()?.ok()?, ports.next()?.ok()?);
        (first > 0 && first <= last && ports.next().is_none()).then_some(Range { first, last })
    }

    #[cfg(test)]
    fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    fn next(&self) -> u16 {
        let count = u32::from(self.last - self.first) + 1;
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % count;
        self.first + u16::try_from(offset).expect("offset < count <= 65535")
    }
}

/// Binds `socket` to `ip` and a source port of its own in `range` for a delivery connection.
pub fn bind(socket: SockRef<'_>, ip: IpAddr, range: Range) -> io::Result<()> {
    bind_from(socket, ip, || range.next())
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
    fn ports_are_taken_in_turn_within_the_range() {
        // Other tests take ports meanwhile: distinct, not necessarily consecutive.
        let ports: std::collections::HashSet<u16> =
            (0..1000).map(|_| Range::DEFAULT.next()).collect();
        assert_eq!(ports.len(), 1000);
        assert!(ports.iter().all(|p| Range::DEFAULT.contains(*p)));
        let narrow = Range::parse("40000 40009").unwrap();
        assert!((0..100).map(|_| narrow.next()).all(|p| narrow.contains(p)));
        let single = Range::parse("50000\t50000\n").unwrap();
        assert_eq!(single.next(), 50000);
    }

    #[test]
    fn range_is_parsed_as_proc_writes_it_and_nonsense_is_refused() {
        assert_eq!(Range::parse("32768\t60999\n"), Some(Range::DEFAULT));
        for bad in [
            "",
            "1024",
            "60999 32768",
            "0 100",
            "a b",
            "1 2 3",
            "1 70000",
        ] {
            assert_eq!(Range::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Range::of_current_netns(), {
            let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
            Range::parse(&text).unwrap()
        });
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
        bind(SockRef::from(&first), LOCAL, Range::DEFAULT).unwrap();
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
