//! Socket options the proxies need beyond what tokio exposes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use socket2::SockRef;

/// Sets `SO_MARK`, which the capture rules use to tell ztunnel's own traffic from the pod's.
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(socket).set_mark(mark)
}

/// Disables Nagle: the proxies forward whatever they read at once, so batching only adds latency.
pub fn set_nodelay(socket: &impl AsFd) -> io::Result<()> {
    SockRef::from(socket).set_tcp_nodelay(true)
}

/// The destination the client meant before the capture rules redirected the connection to us,
/// from conntrack (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`).
///
/// The family is that of the connection, not of the socket: an IPv4 client accepted on a
/// dual-stack `[::]` listener has an IPv4 conntrack entry, so it is asked for with `SOL_IP`.
pub fn original_dst(stream: &tokio::net::TcpStream) -> io::Result<SocketAddr> {
    let local = canonical(stream.local_addr()?);
    original_dst_of_family(stream, local.is_ipv4())
}

/// [`original_dst`] for a caller that already knows the connection's family (from the peer
/// address `accept` returned: IPv4 clients show up as v4-mapped on a dual-stack listener), which
/// spares a `getsockname` per connection.
pub fn original_dst_of_family(
    stream: &tokio::net::TcpStream,
    ipv4: bool,
) -> io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let raw = if ipv4 {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    let addr = raw.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination from conntrack is not an inet address",
        )
    })?;
    Ok(canonical(addr))
}

/// Turns v4-mapped IPv6 addresses (`::ffff:a.b.c.d`) into plain IPv4 ones, so addresses compare
/// equal to those in the workload state whichever listener accepted them.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_unmaps_v4_mapped_addresses_only() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().expect("literal");
        assert_eq!(
            canonical(mapped),
            "10.1.2.3:80".parse::<SocketAddr>().expect("literal")
        );
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("literal");
        assert_eq!(canonical(v6), v6);
        let v4: SocketAddr = "10.0.0.1:1".parse().expect("literal");
        assert_eq!(canonical(v4), v4);
    }

    #[tokio::test]
    async fn mark_and_nodelay_are_applied() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect loopback");
        set_mark(&stream, 0x539).expect("SO_MARK needs CAP_NET_ADMIN; run tests as root");
        assert_eq!(SockRef::from(&stream).mark().expect("read mark"), 0x539);
        set_nodelay(&stream).expect("nodelay");
        assert!(stream.nodelay().expect("read nodelay"));
    }
}
