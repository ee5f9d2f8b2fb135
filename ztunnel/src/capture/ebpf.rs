//! Capture with eBPF (the default backend): cgroup programs attached once at the cgroup v2 root
//! redirect enrolled pods' outgoing connections to their outbound listener, and one `sk_lookup`
//! link per pod namespace hands incoming connections to its inbound plaintext listener. The
//! programs are in `ebpf/capture.bpf.c`; see its header comment for how they fit together.
//!
//! Every ztunnel process loads its own programs and maps and acts only on the namespaces it
//! enrolled (keyed by network-namespace cookie), so several ztunnels on one machine coexist:
//! each one's programs see a plain miss for the others' pods. The links are tied to the process:
//! when it exits, capture disappears and pods' traffic goes direct (fails open).
//!
//! Inbound delivery with the client's own address (`preserveSourceIp`) works as with nftables
//! minus conntrack: `net.ipv4.tcp_fwmark_accept=1` in the pod makes the app's accepted socket
//! inherit the delivery mark of ztunnel's SYN, and the shared fwmark rule ([`super::routing`])
//! routes its replies back to ztunnel's transparent socket.

mod abi;
mod cgroup;
pub mod pin;
mod state;

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, CgroupSockopt, ProgramError, SkLookup, SockOps,
};
use futures::future::BoxFuture;
use futures::FutureExt;

use self::abi::{counter, dns_index, DnsKey, Endpoint, NetData, Settings};
use self::pin::Pins;
use self::state::State;
use super::{routing, Backend, Error, Exemption, Marks, Pod, Ports};
use crate::metrics::EbpfSample;

pub use cgroup::OWN_MOUNT as OWN_CGROUP_MOUNT;

/// The object built from `ebpf/capture.bpf.c` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture.bpf.o"));

/// `SO_NETNS_COOKIE` (Linux 5.14): the cookie `bpf_get_netns_cookie` returns for a namespace.
const SO_NETNS_COOKIE: libc::c_int = 71;

const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "zt_connect4",
    "zt_connect6",
    "zt_getpeername4",
    "zt_getpeername6",
    "zt_sendmsg4",
    "zt_recvmsg4",
    "zt_sendmsg6",
    "zt_recvmsg6",
];
const SK_LOOKUP: &str = "zt_sk_lookup";
/// The programs whose links are pinned (fail-closed): with ztunnel gone they keep pods'
/// connections pointed at its closed listeners. The others only serve a running ztunnel.
const PINNED_PROGRAMS: [&str; 2] = ["zt_connect4", "zt_connect6"];
const MAPS: [&str; 10] = [
    "dns_orig",
    "settings",
    "enrolled",
    "cookie_orig",
    "tuple_orig",
    "inbound_listeners",
    "captured_addrs",
    "delivery_bypass",
    "probe_sources",
    "counters",
];

/// Why eBPF capture cannot run here; with `capture: auto` ztunnel then uses nftables.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no cgroup v2 hierarchy to attach to (and mounting one failed): {0}")]
    Cgroup(#[source] io::Error),
    #[error("cannot open the cgroup v2 root {path}: {source}")]
    CgroupOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the eBPF maps (needs root or CAP_BPF + CAP_NET_ADMIN): {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the embedded eBPF object has no {0} (ebpf/capture.bpf.c and the loader disagree)")]
    Missing(&'static str),
    #[error(
        "cannot load or attach eBPF program {program} (kernel too old, or not permitted): {source}"
    )]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin capture state (is a bpffs mountable there?): {0}")]
    Pin(#[source] io::Error),
    #[error("eBPF map {map} is unusable: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// How the backend is set up beyond ports and marks.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Health-probe source networks whose connections to pods are not captured.
    pub probe_sources: Vec<ipnet::IpNet>,
    /// Fail-closed: pin links and maps here (on a bpffs, mounted if needed) so they outlive
    /// the process and a restarted ztunnel adopts them. `None`: fail open.
    pub pin_dir: Option<PathBuf>,
    /// Capture UDP to port 53 (IPv4 and IPv6 resolvers) to this pod-local port.
    pub dns_port: Option<u16>,
}

pub struct Ebpf {
    marks: Marks,
    /// DNS capture is on: enrolled namespaces get the local route of [`abi::DNS6_PREFIX`].
    dns: bool,
    cgroup: PathBuf,
    state: Mutex<State>,
    bypass: Arc<Mutex<BpfHashMap<MapData, Endpoint, u32>>>,
    counters: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for Ebpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ebpf")
            .field("cgroup", &self.cgroup)
            .finish_non_exhaustive()
    }
}

fn take<T>(bpf: &mut aya::Ebpf, map: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = bpf.take_map(map).ok_or(LoadError::Missing(map))?;
    T::try_from(m).map_err(|source| LoadError::Map { map, source })
}

fn program_error(program: &'static str) -> impl Fn(ProgramError) -> LoadError {
    move |source| LoadError::Program { program, source }
}

impl Ebpf {
    /// Loads the programs and attaches the cgroup ones at the cgroup v2 root (mounting one at
    /// [`OWN_CGROUP_MOUNT`] if this process sees none). Nothing is captured until a pod enrolls.
    pub fn load(ports: Ports, marks: Marks, options: &Options) -> Result<Ebpf, LoadError> {
        let cgroup = cgroup::root().map_err(LoadError::Cgroup)?;
        let cg = File::open(&cgroup).map_err(|source| LoadError::CgroupOpen {
            path: cgroup.clone(),
            source,
        })?;
        let pins = match &options.pin_dir {
            Some(dir) => Some(Pins::open(dir).map_err(LoadError::Pin)?),
            None => None,
        };
        let mut loader = aya::EbpfLoader::new();
        if let Some(pins) = &pins {
            // Existing pins are opened (re-adoption), missing ones created and pinned.
            for name in MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut bpf = loader.load(OBJECT).map_err(LoadError::Object)?;
        let mut settings: Array<MapData, Settings> = take(&mut bpf, "settings")?;
        settings
            .set(
                0,
                Settings {
                    socket_mark: marks.bypass,
                    delivery_mark: marks.delivery,
                    outbound_port: ports.outbound,
                    hbone_port: ports.hbone,
                    dns_port: options.dns_port.unwrap_or(0),
                    pad: 0,
                },
                0,
            )
            .map_err(|source| LoadError::Map {
                map: "settings",
                source,
            })?;
        let mut probes: LpmTrie<MapData, NetData, u32> = take(&mut bpf, "probe_sources")?;
        // A pinned trie may hold an earlier configuration's sources.
        let old: Vec<_> = probes.keys().filter_map(Result::ok).collect();
        for key in old {
            let _ = probes.remove(&key);
        }
        for net in &options.probe_sources {
            probes
                .insert(&NetData::key(net), 1, 0)
                .map_err(|source| LoadError::Map {
                    map: "probe_sources",
                    source,
                })?;
        }
        let enrolled = take(&mut bpf, "enrolled")?;
        let listeners = take(&mut bpf, "inbound_listeners")?;
        let captured = take(&mut bpf, "captured_addrs")?;
        let dns = take(&mut bpf, "dns_orig")?;
        let bypass = take(&mut bpf, "delivery_bypass")?;
        let counters = take(&mut bpf, "counters")?;

        // Links made through bpf_link_create are always multi-attach; asking for
        // AllowMultiple there is rejected (EINVAL), so Single it is.
        let mut links = Vec::new();
        for name in SOCK_ADDR_PROGRAMS {
            let p: &mut CgroupSockAddr = bpf
                .program_mut(name)
                .ok_or(LoadError::Missing(name))?
                .try_into()
                .map_err(program_error(name))?;
            p.load().map_err(program_error(name))?;
            let pins = pins.as_ref().filter(|_| PINNED_PROGRAMS.contains(&name));
            if let Some(adopted) = pins.and_then(|pins| pins.adopt(name)) {
                // The previous ztunnel's program stays attached: no gap in capture.
                tracing::info!(program = name, "adopted pinned capture link");
                links.push(adopted);
                continue;
            }
            let id = p
                .attach(&cg, CgroupAttachMode::Single)
                .map_err(program_error(name))?;
            if let Some(pins) = pins {
                let link = p.take_link(id).map_err(program_error(name))?;
                let fd = FdLink::try_from(link).map_err(|e| LoadError::Pin(io::Error::other(e)))?;
                links.push(pins.pin(name, fd).map_err(LoadError::Pin)?);
            }
        }
        let name = "zt_sockops";
        let p: &mut SockOps = bpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(program_error(name))?;
        p.load().map_err(program_error(name))?;
        p.attach(&cg, CgroupAttachMode::Single)
            .map_err(program_error(name))?;
        let name = "zt_getsockopt";
        let p: &mut CgroupSockopt = bpf
            .program_mut(name)
            .ok_or(LoadError::Missing(name))?
            .try_into()
            .map_err(program_error(name))?;
        p.load().map_err(program_error(name))?;
        p.attach(&cg, CgroupAttachMode::Single)
            .map_err(program_error(name))?;
        let p: &mut SkLookup = bpf
            .program_mut(SK_LOOKUP)
            .ok_or(LoadError::Missing(SK_LOOKUP))?
            .try_into()
            .map_err(program_error(SK_LOOKUP))?;
        p.load().map_err(program_error(SK_LOOKUP))?;

        Ok(Ebpf {
            marks,
            dns: options.dns_port.is_some(),
            cgroup,
            state: Mutex::new(State {
                bpf,
                enrolled,
                listeners,
                captured,
                dns,
                pods: HashMap::new(),
                pins,
                _links: links,
            }),
            bypass: Arc::new(Mutex::new(bypass)),
            counters,
        })
    }

    /// The cgroup v2 directory the programs are attached to.
    pub fn cgroup(&self) -> &std::path::Path {
        &self.cgroup
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps as consistent as the kernel made them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Network-namespace cookies of the enrolled pods, by pod name (for tests and debugging).
    pub fn enrolled(&self) -> Vec<(String, u64)> {
        self.state()
            .pods
            .iter()
            .map(|(name, e)| (name.clone(), e.cookie))
            .collect()
    }

    /// The programs' counters, summed over CPUs.
    pub fn sample(&self) -> EbpfSample {
        let read = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        EbpfSample {
            redirects: vec![
                ("outbound", read(counter::REDIRECT_OUTBOUND)),
                ("inbound", read(counter::REDIRECT_INBOUND)),
                ("dns", read(counter::REDIRECT_DNS)),
            ],
            misses: vec![
                ("sockops", read(counter::MISS_SOCKOPS)),
                ("getsockopt", read(counter::MISS_GETSOCKOPT)),
            ],
            errors: vec![
                ("connect", read(counter::ERROR_CONNECT)),
                ("sockops", read(counter::ERROR_SOCKOPS)),
                ("sk_lookup", read(counter::ERROR_SK_LOOKUP)),
            ],
            original_dst_answered: read(counter::ORIGINAL_DST_ANSWERED),
            peername_rewritten: read(counter::PEERNAME_REWRITTEN),
            delivery_bypassed: read(counter::DELIVERY_BYPASSED),
            probe_bypassed: read(counter::PROBE_BYPASSED),
            refused_no_listener: read(counter::REFUSED_NO_LISTENER),
            // Counted in the kernel map itself, so a leaked entry would show.
            enrolled_namespaces: i64::try_from(self.state().enrolled.keys().count())
                .unwrap_or(i64::MAX),
        }
    }
}

/// The cookie of the namespace the calling thread is in.
fn netns_cookie() -> io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the fd is a valid socket for the call's duration; cookie and len point to live
    // locals of the sizes passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Adds (`replace`) or removes (`del`) the any-IP route that makes [`abi::DNS6_PREFIX`] local
/// in the calling thread's namespace, so IPv6 DNS redirected there reaches the DNS listener.
fn dns6_route(pod: &str, action: &str) -> Result<(), Error> {
    let prefix = format!("{}/{}", abi::DNS6_PREFIX, abi::DNS6_PREFIX_LEN);
    routing::run(
        pod,
        "ip",
        &["-6", "route", action, "local", &prefix, "dev", "lo"],
        None,
    )
}

impl Backend for Ebpf {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn enroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let name = pod.name.clone();
            let fail = |action: &'static str, reason: String| Error::Ebpf {
                pod: name.clone(),
                action,
                reason,
            };
            let listener = pod.inbound_listener.clone().ok_or_else(|| {
                fail(
                    "find the inbound listener",
                    "the pod was enrolled without one".into(),
                )
            })?;
            let delivery = self.marks.delivery;
            let dns = self.dns;
            let run_name = name.clone();
            let cookie = pod
                .netns
                .run(move || -> Result<u64, Error> {
                    routing::install(&run_name, delivery)?;
                    // The app's accepted socket takes the mark of ztunnel's delivery SYN, so
                    // its replies follow the fwmark rule back to ztunnel (no conntrack here).
                    routing::set_sysctl(&run_name, "net/ipv4/tcp_fwmark_accept", "1")?;
                    if dns {
                        dns6_route(&run_name, "replace")?;
                    }
                    netns_cookie().map_err(|e| Error::Ebpf {
                        pod: run_name.clone(),
                        action: "read the namespace cookie (SO_NETNS_COOKIE, Linux 5.14+)",
                        reason: e.to_string(),
                    })
                })
                .await
                .map_err(|source| Error::Netns {
                    pod: name.clone(),
                    source,
                })??;
            let netns = File::open(pod.netns.path()).map_err(|source| Error::Netns {
                pod: name.clone(),
                source,
            })?;
            let mut state = self.state();
            // Enrolling again replaces the previous enrollment.
            state.forget(&name);
            state.enroll(pod, cookie, &netns, &*listener)
        }
        .boxed()
    }

    fn unenroll<'a>(&'a self, pod: &'a Pod) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            self.state().forget(&pod.name);
            let delivery = self.marks.delivery;
            let dns = self.dns;
            let run_name = pod.name.clone();
            pod.netns
                .run(move || {
                    routing::remove(&run_name, delivery);
                    if dns {
                        // Fails only when the route is already gone.
                        let _ = dns6_route(&run_name, "del");
                    }
                })
                .await
                .map_err(|source| Error::Netns {
                    pod: pod.name.clone(),
                    source,
                })
        }
        .boxed()
    }

    fn release_stale(&self) {
        self.state().release_stale();
    }

    fn dns_original(&self, pod: &str, local: SocketAddr) -> Option<SocketAddr> {
        let index = dns_index(local.ip())?;
        let state = self.state();
        let key = DnsKey {
            netns: state.pods.get(pod)?.cookie,
            index,
            pad: 0,
        };
        state.dns.get(&key, 0).ok()?.socket_addr()
    }

    fn exempt_delivery(&self, source: SocketAddr) -> Result<Option<Exemption>, Error> {
        let key = Endpoint::of(source);
        self.bypass
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, 1, 0)
            .map_err(|e| Error::Ebpf {
                pod: source.to_string(),
                action: "exempt ztunnel's delivery connection",
                reason: e.to_string(),
            })?;
        let bypass = self.bypass.clone();
        Ok(Some(Exemption::new(move || {
            let _ = bypass
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        })))
    }
}

#[cfg(test)]
mod tests;
