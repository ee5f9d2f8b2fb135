//! Rust mirrors of the types in `ebpf/capture.h`, field for field (change both together).

use std::net::{IpAddr, SocketAddr};

const FAMILY_V4: u32 = 4;
const FAMILY_V6: u32 = 6;

/// `struct zt_settings`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    pub socket_mark: u32,
    pub delivery_mark: u32,
    pub outbound_port: u16,
    pub hbone_port: u16,
    pub dns_port: u16,
    pub pad: u16,
}

/// `struct zt_dns_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsKey {
    pub netns: u64,
    pub index: u32,
    pub pad: u32,
}

// SAFETY: plain old data with explicit padding; any bit pattern is valid.
unsafe impl aya::Pod for DnsKey {}

/// `struct zt_addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Addr {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u16,
}

// SAFETY: plain old data without padding; any bit pattern is valid.
unsafe impl aya::Pod for Addr {}

impl Addr {
    /// The socket address recorded.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let ip = match u32::from(self.family) {
            FAMILY_V4 => IpAddr::from(self.addr[0].to_ne_bytes()),
            FAMILY_V6 => {
                let mut octets = [0u8; 16];
                for (chunk, word) in octets.chunks_exact_mut(4).zip(self.addr) {
                    chunk.copy_from_slice(&word.to_ne_bytes());
                }
                IpAddr::from(octets)
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, u16::from_be(self.port)))
    }
}

/// `ZT_DNS6_PREFIX`: IPv6 DNS is redirected to `fd7a:7475:6e6e:656c::i` (the index in the last
/// word), made local in each enrolled namespace by a `local` route on lo.
pub const DNS6_PREFIX: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd7a, 0x7475, 0x6e6e, 0x656c, 0, 0, 0, 0);
pub const DNS6_PREFIX_LEN: u8 = 96;

/// The `dns_orig` index a redirected DNS datagram's destination carries: `127.i.i.i`,
/// `::ffff:127.i.i.i` or `DNS6_PREFIX::i`.
pub fn dns_index(local: IpAddr) -> Option<u32> {
    let ip = match local {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(local, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [first, a, b, c] = v4.octets();
            (first == 127).then(|| u32::from_be_bytes([0, a, b, c]))
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let prefix = DNS6_PREFIX.octets();
            (o[..12] == prefix[..12]).then(|| u32::from_be_bytes([o[12], o[13], o[14], o[15]]))
        }
    }
}

// SAFETY: plain old data with explicit padding, no pointers; any bit pattern is valid.
unsafe impl aya::Pod for Settings {}

/// `struct zt_endpoint`: an address with a host-order port (0 for "any port").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u32; 4],
    pub port: u32,
    pub family: u32,
}

// SAFETY: plain old data without padding; any bit pattern is valid.
unsafe impl aya::Pod for Endpoint {}

impl Endpoint {
    /// IPv4 addresses (also v4-mapped IPv6 ones, as the kernel sees those as IPv4) use the
    /// first word only, as the programs do.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        // Network order in memory: the octets as they are, read as native-endian words.
        let (addr, family) = match ip {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([word(0), word(4), word(8), word(12)], FAMILY_V6)
            }
        };
        Endpoint {
            addr,
            port: u32::from(port),
            family,
        }
    }

    pub fn of(addr: SocketAddr) -> Self {
        Self::new(addr.ip(), addr.port())
    }
}

/// `struct zt_net` without its leading `prefixlen` (aya's `lpm_trie::Key` adds that).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetData {
    pub family: u32,
    pub addr: [u32; 4],
}

// SAFETY: plain old data without padding; any bit pattern is valid.
unsafe impl aya::Pod for NetData {}

impl NetData {
    /// The trie key for `net`: the family word always matches, then the network's bits.
    pub fn key(net: &ipnet::IpNet) -> aya::maps::lpm_trie::Key<NetData> {
        let e = Endpoint::new(net.network(), 0);
        let data = NetData {
            family: e.family,
            addr: e.addr,
        };
        aya::maps::lpm_trie::Key::new(32 + u32::from(net.prefix_len()), data)
    }
}

/// Indices of the per-CPU `counters` array (`enum zt_counter`).
pub mod counter {
    pub const REDIRECT_OUTBOUND: u32 = 0;
    pub const REDIRECT_INBOUND: u32 = 1;
    pub const MISS_SOCKOPS: u32 = 2;
    pub const MISS_GETSOCKOPT: u32 = 3;
    pub const ERROR_CONNECT: u32 = 4;
    pub const ERROR_SOCKOPS: u32 = 5;
    pub const ERROR_SK_LOOKUP: u32 = 6;
    pub const ORIGINAL_DST_ANSWERED: u32 = 7;
    pub const PEERNAME_REWRITTEN: u32 = 8;
    pub const DELIVERY_BYPASSED: u32 = 9;
    pub const PROBE_BYPASSED: u32 = 10;
    pub const REFUSED_NO_LISTENER: u32 = 11;
    pub const REDIRECT_DNS: u32 = 12;
    #[cfg(test)]
    pub const COUNT: u32 = 13;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(std::mem::size_of::<Settings>(), 16);
        assert_eq!(std::mem::size_of::<Endpoint>(), 24);
        let header = include_str!("../../../../ebpf/capture.h");
        let body = &header[header.find("enum zt_counter").expect("enum in header")..];
        let names: Vec<&str> = body
            .lines()
            .skip(1)
            .map(str::trim)
            .take_while(|l| !l.starts_with('}'))
            .filter_map(|l| l.split([',', ' ', '=']).next())
            .collect();
        assert_eq!(names.len() as u32 - 1, counter::COUNT, "{names:?}");
        assert_eq!(
            names[counter::DELIVERY_BYPASSED as usize],
            "ZT_DELIVERY_BYPASSED"
        );
        assert_eq!(
            names[counter::ERROR_SK_LOOKUP as usize],
            "ZT_ERROR_SK_LOOKUP"
        );
    }

    #[test]
    fn v4_mapped_addresses_are_keyed_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().expect("literal");
        let v4: SocketAddr = "10.1.2.3:80".parse().expect("literal");
        assert_eq!(Endpoint::of(mapped), Endpoint::of(v4));
        assert_eq!(Endpoint::of(v4).addr[0].to_ne_bytes(), [10, 1, 2, 3]);
        assert_eq!(Endpoint::of(v4).family, 4);
        let v6: SocketAddr = "[fd00::1]:80".parse().expect("literal");
        assert_eq!(Endpoint::of(v6).family, 6);
    }

    #[test]
    fn recorded_addresses_and_dns_indices_round_trip() {
        let v6: SocketAddr = "[fd00:201:1::1]:53".parse().expect("literal");
        let e = Endpoint::of(v6);
        let a = Addr {
            addr: e.addr,
            port: 53u16.to_be(),
            family: 6,
        };
        assert_eq!(a.socket_addr(), Some(v6));
        let v4 = Addr {
            addr: Endpoint::of("10.0.0.1:53".parse().expect("literal")).addr,
            port: 53u16.to_be(),
            family: 4,
        };
        assert_eq!(
            v4.socket_addr(),
            Some("10.0.0.1:53".parse().expect("literal"))
        );
        let index = |s: &str| dns_index(s.parse().expect("literal"));
        assert_eq!(index("127.1.2.3"), Some(0x01_02_03));
        assert_eq!(index("::ffff:127.1.2.3"), Some(0x01_02_03));
        assert_eq!(index("fd7a:7475:6e6e:656c::1:203"), Some(0x01_02_03));
        assert_eq!(index("fd00:201:1::1"), None);
        assert_eq!(index("10.1.2.3"), None);
        let header = include_str!("../../../../ebpf/capture.h");
        assert!(header.contains("ZT_DNS6_PREFIX0 0xfd7a7475"));
        assert!(header.contains("ZT_DNS6_PREFIX1 0x6e6e656c"));
    }
}
