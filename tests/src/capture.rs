//! Packet capture with an AF_PACKET socket opened inside a namespace (no tcpdump needed).

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns;

/// How often the capture thread looks at the stop flag (receive timeout).
const POLL: Duration = Duration::from_millis(20);
/// Large enough for a GSO/GRO super-frame on a veth (up to 64 KiB plus headers).
const FRAME_BUF: usize = 128 * 1024;

/// Captures every frame (both directions) seen on one interface until [`PacketCapture::stop`].
pub struct PacketCapture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

fn ifindex(iface: &str) -> io::Result<i32> {
    let name = CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("no interface {iface:?}: {e}"),
        ));
    }
    i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))
}

fn open_socket(iface: &str) -> io::Result<OwnedFd> {
    let index = ifindex(iface)?;
    let protocol = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the returned descriptor is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = index;
    // SAFETY: `addr` is a valid sockaddr_ll and the length passed matches its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: `timeout` is a valid timeval and the length passed matches its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast::<libc::c_void>(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn capture_loop(fd: &OwnedFd, index: i32, stop: &AtomicBool, frames: &Mutex<Vec<Vec<u8>>>) {
    let mut buf = vec![0u8; FRAME_BUF];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `buf` and `from` are valid writable buffers of the lengths passed.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast::<libc::c_void>(),
                buf.len(),
                0,
                (&raw mut from).cast::<libc::sockaddr>(),
                &mut from_len,
            )
        };
        if n < 0 {
            // Timeouts (EAGAIN) just re-check the stop flag; other errors end the capture.
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                _ => return,
            }
        }
        // Frames from other interfaces can slip in between socket() and bind().
        if from.sll_ifindex != index {
            continue;
        }
        let frame = buf[..n as usize].to_vec();
        frames.lock().expect("capture lock poisoned").push(frame);
    }
}

impl PacketCapture {
    /// Starts capturing on `iface` of the namespace at `netns_path`. Frames include their
    /// Ethernet header.
    pub fn start(netns_path: &Path, iface: &str) -> io::Result<PacketCapture> {
        let (fd, index) = netns::try_in_netns(netns_path, || -> io::Result<_> {
            Ok((open_socket(iface)?, ifindex(iface)?))
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, frames) = (stop.clone(), frames.clone());
            std::thread::Builder::new()
                .name(format!("capture-{iface}"))
                .spawn(move || capture_loop(&fd, index, &stop, &frames))?
        };
        Ok(PacketCapture {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    /// Frames captured so far, without stopping.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().expect("capture lock poisoned").clone()
    }

    /// Stops capturing and returns every captured frame.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.halt();
        std::mem::take(&mut *self.frames.lock().expect("capture lock poisoned"))
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PacketCapture {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Whether any frame contains `needle` anywhere (headers included).
pub fn contains(frames: &[Vec<u8>], needle: &[u8]) -> bool {
    !needle.is_empty()
        && frames
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
}

/// A TCP segment decoded from an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// Decodes an Ethernet frame carrying IPv4 or IPv6 (without extension headers) and TCP.
pub fn tcp_segment(frame: &[u8]) -> Option<TcpSegment> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (src, dst, transport) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != 6 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            // GSO frames can carry a zero total length; trust the frame then.
            let end = if total == 0 {
                ip.len()
            } else {
                total.min(ip.len())
            };
            (IpAddr::from(src), IpAddr::from(dst), ip.get(ihl..end)?)
        }
        0x86dd => {
            if *ip.get(6)? != 6 {
                return None;
            }
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let end = if len == 0 {
                ip.len()
            } else {
                (40 + len).min(ip.len())
            };
            (IpAddr::from(src), IpAddr::from(dst), ip.get(40..end)?)
        }
        _ => return None,
    };
    let data_offset = usize::from(transport.get(12)? >> 4) * 4;
    Some(TcpSegment {
        src,
        dst,
        src_port: u16::from_be_bytes([*transport.first()?, *transport.get(1)?]),
        dst_port: u16::from_be_bytes([*transport.get(2)?, *transport.get(3)?]),
        flags: *transport.get(13)?,
        payload: transport.get(data_offset..)?.to_vec(),
    })
}

/// Every TCP segment among `frames`.
pub fn tcp_segments(frames: &[Vec<u8>]) -> Vec<TcpSegment> {
    frames.iter().filter_map(|f| tcp_segment(f)).collect()
}

/// Number of TCP frames whose destination port is `port`.
pub fn count_tcp_to_port(frames: &[Vec<u8>], port: u16) -> usize {
    tcp_segments(frames)
        .iter()
        .filter(|s| s.dst_port == port)
        .count()
}

/// Number of TCP frames to or from `port`.
pub fn count_tcp_port(frames: &[Vec<u8>], port: u16) -> usize {
    tcp_segments(frames)
        .iter()
        .filter(|s| s.dst_port == port || s.src_port == port)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ipv4_tcp() {
        let mut frame = vec![0u8; 14];
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0, 10, 201, 1, 10, 10, 201, 2, 10,
        ];
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&15008u16.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        tcp.extend_from_slice(b"hi");
        let total = (ip.len() + tcp.len()) as u16;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        frame.extend(ip);
        frame.extend(tcp);
        frame.extend([0u8; 4]); // Ethernet padding must not count as payload.
        let seg = tcp_segment(&frame).expect("a TCP frame");
        assert_eq!(seg.src, IpAddr::from([10, 201, 1, 10]));
        assert_eq!(seg.dst_port, 15008);
        assert_eq!(seg.payload, b"hi");
        assert_eq!(count_tcp_to_port(&[frame.clone()], 15008), 1);
        assert_eq!(count_tcp_to_port(&[frame.clone()], 80), 0);
        assert!(contains(&[frame], b"hi"));
    }
}
