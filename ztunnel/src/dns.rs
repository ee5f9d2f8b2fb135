//! The pod-local DNS listener (`dns.capture`): the capture backend sends an enrolled pod's UDP
//! to port 53 (IPv4 resolvers) here. There is no DNS proxy yet: each query is forwarded
//! unchanged to the resolver the app asked for, from a marked socket in the pod's namespace
//! (so it is not captured again), and the answer is relayed back so the app sees it come
//! from that resolver.
//!
//! The original resolver comes from the datagram's original destination: nftables steers it
//! with TPROXY, so `IP_RECVORIGDSTADDR` reports the resolver, and the answer is sent from the
//! resolver's address (transparent socket, `IP_PKTINFO`); eBPF
//! sends to `127.i.i.i` and keeps the resolver under that index, which the backend decodes
//! ([`crate::capture::Backend::dns_original`]); the reply is then sent from that same address
//! (`IP_PKTINFO`) and `recvmsg4` shows the app the resolver.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
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

/// Binds the DNS listener (`0.0.0.0:port`) inside `netns`, reporting original destinations.
pub async fn bind(netns: &Netns, port: u16, mark: u32) -> io::Result<UdpSocket> {
    let std_socket = netns
        .run(move || -> io::Result<std::net::UdpSocket> {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_mark(mark)?;
            socket.set_reuse_address(true)?;
            // nftables steers queries here with TPROXY (destination: the resolver), and the
            // answers go out from the resolver's address.
            socket.set_ip_transparent_v4(true)?;
            setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true).map_err(io::Error::from)?;
            socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            socket.set_nonblocking(true)?;
            Ok(socket.into())
        })
        .await??;
    UdpSocket::from_std(std_socket)
}

/// One received query: who sent it, and where it was going.
struct Query {
    data: Vec<u8>,
    client: SocketAddr,
    /// Original destination as the kernel reports it (the resolver, or eBPF's `127.i.i.i`).
    local: Option<SocketAddrV4>,
}

fn receive(fd: RawFd) -> io::Result<Query> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut cmsg = nix::cmsg_space!(libc::sockaddr_in);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(io::Error::from)?;
    let len = msg.bytes;
    let client = msg
        .address
        .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())))
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut local = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4OrigDstAddr(sa) = c {
            let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
            local = Some(SocketAddrV4::new(ip, u16::from_be(sa.sin_port)));
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
pub async fn serve(ctx: Arc<Context>, pod: Arc<Pod>, socket: UdpSocket) {
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
    // eBPF encodes the resolver in a loopback address; nftables reports it as it is.
    let decoded = pod
        .capture
        .as_ref()
        .and_then(|b| b.dns_original(&pod.uid.0, SocketAddr::V4(local)));
    let resolver = decoded.unwrap_or(SocketAddr::V4(local));
    if resolver.ip().is_loopback() {
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
        // eBPF: the app's socket may be connected to 127.i.i.i, a local address; the answer
        // leaves the listener from there (recvmsg4 shows the app the resolver).
        let source = *local.ip();
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
            .run(move || reply_from(SocketAddr::V4(local), client, &reply, mark))
            .await
            .and_then(|r| r)
    };
    if let Err(e) = sent {
        tracing::debug!(pod = %pod.uid, client = %q.client, error = %e, "DNS reply failed");
    }
}

/// Sends `reply` to `client` from `source`, which need not be a local address.
fn reply_from(source: SocketAddr, client: SocketAddr, reply: &[u8], mark: u32) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_mark(mark)?;
    socket.set_ip_transparent_v4(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&source.into())?;
    socket.send_to(reply, &client.into())?;
    Ok(())
}

fn send_reply(fd: RawFd, reply: &[u8], to: SocketAddr, source: Ipv4Addr) -> io::Result<()> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::other("IPv6 client on the IPv4 DNS listener"));
    };
    let to = SockaddrIn::from(to);
    let iov = [IoSlice::new(reply)];
    let info = libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
    sendmsg(fd, &iov, &cmsgs, MsgFlags::empty(), Some(&to)).map_err(io::Error::from)?;
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
