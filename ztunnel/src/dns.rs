//! The pod-local DNS listener (`dns.capture`): the capture backend sends an enrolled pod's UDP
//! to port 53 here, one socket per family (IPv4 and IPv6 resolvers). There is no DNS proxy
//! yet: each query is forwarded unchanged to the resolver the app asked for, from a marked
//! socket in the pod's namespace (so it is not captured again), and the answer is relayed back
//! so the app sees it come from that resolver.
//!
//! The original resolver comes from the datagram's original destination: nftables steers it
//! with TPROXY, so `IP(V6)_RECVORIGDSTADDR` reports the resolver, and the answer is sent from
//! the resolver's address (transparent socket); eBPF sends to `127.i.i.i` (IPv6:
//! `fd7a:7475:6e6e:656c::i`, local in the pod through an any-IP route) and keeps the resolver
//! under that index, which the backend decodes ([`crate::capture::Backend::dns_original`]);
//! the reply is then sent from that same address (`IP(V6)_PKTINFO`) and `recvmsg4/6` shows the
//! app the resolver.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::netns::Netns;
use crate::pod::Pod;
use crate::proxy::Context;

/// How long a forwarded query waits for the resolver's answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger than any UDP DNS message (EDNS0 allows up to 64 KiB).
const MAX_DATAGRAM: usize = 65_535;

/// The pod's DNS sockets: `0.0.0.0:port` and `[::]:port` (IPv6-only; absent when the pod's
/// namespace has IPv6 disabled).
pub struct Listener {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
}

/// Binds the DNS listener inside `netns`, reporting original destinations.
pub async fn bind(netns: &Netns, port: u16, mark: u32) -> io::Result<Listener> {
    let (v4, v6) = netns
        .run(move || -> io::Result<_> {
            let v4 = bind_here(Domain::IPV4, port, mark)?;
            let v6 = match bind_here(Domain::IPV6, port, mark) {
                Ok(s) => Some(s),
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
                Err(e) => return Err(e),
            };
            Ok((v4, v6))
        })
        .await??;
    Ok(Listener {
        v4: UdpSocket::from_std(v4)?,
        v6: v6.map(UdpSocket::from_std).transpose()?,
    })
}

/// Runs on the namespace's thread.
fn bind_here(domain: Domain, port: u16, mark: u32) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_mark(mark)?;
    socket.set_reuse_address(true)?;
    // nftables steers queries here with TPROXY (destination: the resolver), and the answers
    // go out from the resolver's address (or eBPF's prefix address: local only by route).
    let address = if domain == Domain::IPV6 {
        socket.set_only_v6(true)?;
        socket.set_ip_transparent_v6(true)?;
        setsockopt(&socket, sockopt::Ipv6OrigDstAddr, &true).map_err(io::Error::from)?;
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    } else {
        socket.set_ip_transparent_v4(true)?;
        setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true).map_err(io::Error::from)?;
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    };
    socket.bind(&address.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One received query: who sent it, and where it was going.
struct Query {
    data: Vec<u8>,
    client: SocketAddr,
    /// Original destination as the kernel reports it (the resolver, or eBPF's encoded address).
    local: Option<SocketAddr>,
}

fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::new(v6.ip(), v6.port(), 0, v6.scope_id())))
}

fn receive(fd: RawFd) -> io::Result<Query> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in6);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let len = msg.bytes;
    let client = msg
        .address
        .as_ref()
        .and_then(socket_addr)
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut local = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(sa) => {
                let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
                local = Some(SocketAddr::from((ip, u16::from_be(sa.sin_port))));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(sa) => {
                let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
                local = Some(SocketAddr::from((ip, u16::from_be(sa.sin6_port))));
            }
            _ => {}
        }
    }
    buf.truncate(len);
    Ok(Query {
        data: buf,
        client,
        local,
    })
}

/// Serves the pod's DNS listener until the pod stops.
pub async fn serve(ctx: Arc<Context>, pod: Arc<Pod>, listener: Listener) {
    let v4 = serve_socket(ctx.clone(), pod.clone(), listener.v4);
    match listener.v6 {
        Some(v6) => {
            tokio::join!(v4, serve_socket(ctx, pod, v6));
        }
        None => v4.await,
    }
}

async fn serve_socket(ctx: Arc<Context>, pod: Arc<Pod>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    loop {
        let query = tokio::select! {
            _ = pod.cancel.cancelled() => return,
            q = socket.async_io(Interest::READABLE, || receive(socket.as_raw_fd())) => q,
        };
        match query {
            Ok(q) => {
                tokio::spawn(answer(ctx.clone(), pod.clone(), socket.clone(), q));
            }
            Err(e) => tracing::warn!(pod = %pod.uid, error = %e, "DNS listener receive failed"),
        }
    }
}

async fn answer(ctx: Arc<Context>, pod: Arc<Pod>, socket: Arc<UdpSocket>, q: Query) {
    let Some(local) = q.local else {
        tracing::warn!(pod = %pod.uid, "DNS query without an original destination; dropped");
        return;
    };
    // eBPF encodes the resolver in a loopback (or prefix) address; nftables reports it as is.
    let decoded = pod
        .capture
        .as_ref()
        .and_then(|b| b.dns_original(&pod.uid.0, local));
    let resolver = decoded.unwrap_or(local);
    if decoded.is_none() && (resolver.ip().is_loopback() || is_encoded(resolver.ip())) {
        tracing::warn!(pod = %pod.uid, %local, "DNS query with no known resolver; dropped");
        return;
    }
    let reply = match forward(&ctx, &pod, resolver, &q.data).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(pod = %pod.uid, %resolver, error = %e, "DNS forward failed");
            return;
        }
    };
    let sent = if decoded.is_some() {
        // eBPF: the app's socket may be connected to the encoded address, a local one; the
        // answer leaves the listener from there (recvmsg4/6 shows the app the resolver).
        let source = local.ip();
        socket
            .async_io(Interest::WRITABLE, || {
                send_reply(socket.as_raw_fd(), &reply, q.client, source)
            })
            .await
    } else {
        // nftables TPROXY: the answer must come from the resolver's own (foreign) address.
        let mark = ctx.config.socket_mark;
        let client = q.client;
        pod.netns
            .run(move || reply_from(local, client, &reply, mark))
            .await
            .and_then(|r| r)
    };
    if let Err(e) = sent {
        tracing::debug!(pod = %pod.uid, client = %q.client, error = %e, "DNS reply failed");
    }
}

/// An eBPF-encoded address whose record is gone: never a real resolver.
fn is_encoded(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.octets()[..8] == [0xfd, 0x7a, 0x74, 0x75, 0x6e, 0x6e, 0x65, 0x6c],
        IpAddr::V4(_) => false,
    }
}

/// Sends `reply` to `client` from `source`, which need not be a local address.
fn reply_from(source: SocketAddr, client: SocketAddr, reply: &[u8], mark: u32) -> io::Result<()> {
    let socket = Socket::new(
        Domain::for_address(source),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_mark(mark)?;
    if source.is_ipv6() {
        socket.set_ip_transparent_v6(true)?;
    } else {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&source.into())?;
    socket.send_to(reply, &client.into())?;
    Ok(())
}

fn send_reply(fd: RawFd, reply: &[u8], to: SocketAddr, source: IpAddr) -> io::Result<()> {
    let iov = [IoSlice::new(reply)];
    match (to, source) {
        (SocketAddr::V4(to), IpAddr::V4(source)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(source).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
            let to = SockaddrStorage::from(to);
            sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&to)).map_err(io::Error::from)?;
        }
        (SocketAddr::V6(to), IpAddr::V6(source)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: source.octets(),
                },
                ipi6_ifindex: 0,
            };
            let cmsgs = [ControlMessage::Ipv6PacketInfo(&info)];
            let to = SockaddrStorage::from(to);
            sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&to)).map_err(io::Error::from)?;
        }
        _ => {
            return Err(io::Error::other(
                "DNS client and listener of different families",
            ))
        }
    }
    Ok(())
}

/// Sends `query` to `resolver` from the pod's namespace (marked: not captured) and returns
/// the first answer from it.
async fn forward(
    ctx: &Context,
    pod: &Pod,
    resolver: SocketAddr,
    query: &[u8],
) -> io::Result<Vec<u8>> {
    let mark = ctx.config.socket_mark;
    let std_socket = pod
        .netns
        .run(move || -> io::Result<std::net::UdpSocket> {
            let socket = Socket::new(
                Domain::for_address(resolver),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            socket.set_mark(mark)?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .await??;
    let upstream = UdpSocket::from_std(std_socket)?;
    upstream.connect(resolver).await?;
    upstream.send(query).await?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, upstream.recv(&mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "resolver did not answer"))??;
    buf.truncate(n);
    Ok(buf)
}
