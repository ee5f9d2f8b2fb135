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
    /// The socket address recorded (IPv4 only: DNS capture is IPv4 for now).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        if u32::from(self.family) != FAMILY_V4 {
            return None;
        }
        let ip = std::net::Ipv4Addr::from(self.addr[0].to_ne_bytes());
        Some(SocketAddr::from((ip, u16::from_be(self.port))))
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
}
