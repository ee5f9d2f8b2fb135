//! The configuration file: node settings (parsed once into [`Config`]) and, in the same file,
//! the mesh state that the file source feeds into the state store.
//!
//! Parsing never stops at the first problem: every error is collected with its field path so
//! an operator fixes a file in one round.

pub mod errors;
pub mod mesh;
pub mod reader;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;
use serde_json::Value;

pub use errors::{Errors, FieldError};
use reader::{Object, Path as FieldPath, Reader};

use crate::state::Snapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// eBPF when this kernel and these privileges allow it, else nftables (logged once, with why).
    Auto,
    /// cgroup connect/sockops/getsockopt programs at the cgroup v2 root plus sk_lookup per pod.
    Ebpf,
    Nftables,
    /// Leave redirection to someone else (tests of the proxies alone, or a CNI that redirects).
    None,
}

/// What happens to enrolled pods' traffic while ztunnel is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Capture stays (pinned eBPF state, nftables rules): pods' connections are refused rather
    /// than leaving the mesh; a restarted ztunnel adopts it.
    Closed,
    /// Capture is removed with the process: pods' traffic goes direct.
    Open,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// Ports inside each enrolled pod's network namespace (bound on all addresses, v4 and v6).
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
    /// UDP, for captured DNS (`dns.capture`).
    pub dns: u16,
    /// Addresses in the node's network namespace.
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: 15008,
            dns: 15053,
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 15020)),
            readiness: SocketAddr::from(([0, 0, 0, 0], 15021)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaFiles {
    pub root_cert: PathBuf,
    pub root_key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub idle_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}

/// Kubelet-style health probes: connections to a pod from these sources are not captured,
/// so they reach the app in plaintext even under STRICT mTLS (like Istio, whose CNI SNATs
/// kubelet probes to 169.254.7.127 and skips capture for that source).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthProbes {
    pub bypass: bool,
    pub sources: Vec<IpNet>,
}

impl HealthProbes {
    /// Istio's probe SNAT addresses: 169.254.7.127 and fd16:9254:7127:1337:ffff:ffff:ffff:ffff.
    pub fn istio_sources() -> Vec<IpNet> {
        vec![
            IpNet::from(IpAddr::V4(Ipv4Addr::new(169, 254, 7, 127))),
            IpNet::from(IpAddr::V6(Ipv6Addr::new(
                0xfd16, 0x9254, 0x7127, 0x1337, 0xffff, 0xffff, 0xffff, 0xffff,
            ))),
        ]
    }

    /// The sources capture must skip: none when bypass is off.
    pub fn bypassed(&self) -> Vec<IpNet> {
        if self.bypass {
            self.sources.clone()
        } else {
            Vec::new()
        }
    }
}

impl Default for HealthProbes {
    fn default() -> Self {
        Self {
            bypass: true,
            sources: Self::istio_sources(),
        }
    }
}

/// Node settings. These are read at start; a reload applies mesh state only (a changed setting
/// here is reported and needs a restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub node: String,
    pub trust_domain: String,
    /// Policies in this namespace without a selector apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    pub state_dir: PathBuf,
    pub ca: Option<CaFiles>,
    pub certificate_ttl: Duration,
    /// SO_MARK on every socket ztunnel opens, so capture never loops its own traffic.
    pub socket_mark: u32,
    /// SO_MARK on sockets that deliver to an app with the client's source address.
    pub delivery_mark: u32,
    /// Keep the client's source address when delivering to the app (IP_TRANSPARENT).
    pub preserve_source_ip: bool,
    pub capture: CaptureMode,
    pub capture_fail_mode: FailMode,
    /// Where eBPF capture pins its links and maps under `captureFailMode: closed`; the parent
    /// must be (or becomes, mounted by ztunnel) a bpffs. One directory per ztunnel.
    pub bpf_pin_dir: PathBuf,
    pub health_probes: HealthProbes,
    /// Capture pods' UDP to port 53 to the pod-local DNS listener, which for now forwards each
    /// query unchanged to the resolver the app asked for (the DNS proxy is a later step).
    pub dns_capture: bool,
    pub log_format: LogFormat,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub pool: Pool,
    pub listeners: Listeners,
}

/// A parsed file: the node settings and the mesh state it carries.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub state: Snapshot,
}

impl Config {
    /// Settings with every default, for `node`.
    pub fn defaults(node: &str) -> Self {
        Self {
            node: node.to_string(),
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            state_dir: PathBuf::from("/var/lib/ztunnel"),
            ca: None,
            certificate_ttl: Duration::from_secs(24 * 3600),
            socket_mark: 0x539,
            delivery_mark: 0x53a,
            preserve_source_ip: true,
            capture: CaptureMode::Auto,
            capture_fail_mode: FailMode::Closed,
            bpf_pin_dir: Path::new("/run/ztunnel/bpf").join(node),
            health_probes: HealthProbes::default(),
            dns_capture: false,
            log_format: LogFormat::Text,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            pool: Pool::default(),
            listeners: Listeners::default(),
        }
    }
}

/// Reads and parses `path` for `node`. Relative CA paths are taken relative to the file.
pub fn load(path: &Path, node: &str) -> Result<Loaded, Errors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Errors(vec![FieldError {
            path: path.display().to_string(),
            reason: format!("cannot read file: {e}"),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, node, base)
}

pub fn parse(text: &str, node: &str, base: &Path) -> Result<Loaded, Errors> {
    let value: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            Errors(vec![FieldError {
                path: "<file>".into(),
                reason: format!("not valid YAML: {e}"),
            }])
        })?
    };
    let mut r = Reader::new();
    let mut config = Config::defaults(node);
    let mut mesh = mesh::Raw::default();
    if let Some(mut top) = r.object(FieldPath::root(), &value) {
        settings(&mut r, &mut top, &mut config, base);
        if let Some((p, v)) = top.get("nodes") {
            node_overrides(&mut r, p, v, &mut config);
        }
        mesh = mesh::Raw::take(&mut top);
        r.finish(top);
    }
    let state = mesh::parse(&mut r, mesh, &config);
    if config.socket_mark == config.delivery_mark {
        r.error(
            &FieldPath::root().key("deliveryMark"),
            "must differ from socketMark",
        );
    }
    if r.errors.is_empty() {
        Ok(Loaded { config, state })
    } else {
        Err(Errors(r.errors))
    }
}

fn settings(r: &mut Reader, top: &mut Object<'_>, c: &mut Config, base: &Path) {
    if let Some((p, v)) = top.get("trustDomain") {
        if let Some(td) = r.non_empty(&p, v) {
            if td.contains('/') {
                r.error(&p, "a trust domain must not contain '/'");
            }
            c.trust_domain = td;
        }
    }
    if let Some((p, v)) = top.get("rootNamespace") {
        c.root_namespace = r.non_empty(&p, v).unwrap_or_default();
    }
    if let Some((p, v)) = top.get("stateDir") {
        if let Some(s) = r.non_empty(&p, v) {
            c.state_dir = base.join(s);
        }
    }
    if let Some((p, v)) = top.get("ca") {
        if let Some(mut ca) = r.object(p, v) {
            let cert = ca
                .require(r, "rootCert")
                .and_then(|(p, v)| r.non_empty(&p, v));
            let key = ca
                .require(r, "rootKey")
                .and_then(|(p, v)| r.non_empty(&p, v));
            if let (Some(cert), Some(key)) = (cert, key) {
                c.ca = Some(CaFiles {
                    root_cert: base.join(cert),
                    root_key: base.join(key),
                });
            }
            r.finish(ca);
        }
    }
    if let Some((p, v)) = top.get("certificateTtl") {
        if let Some(d) = r.duration(&p, v) {
            if d < Duration::from_secs(2) {
                r.error(&p, "must be at least 2s");
            }
            c.certificate_ttl = d;
        }
    }
    if let Some((p, v)) = top.get("socketMark") {
        c.socket_mark = r.uint(&p, v, u32::MAX as u64).unwrap_or(0) as u32;
    }
    if let Some((p, v)) = top.get("deliveryMark") {
        c.delivery_mark = r.uint(&p, v, u32::MAX as u64).unwrap_or(0) as u32;
    }
    if let Some((p, v)) = top.get("preserveSourceIp") {
        c.preserve_source_ip = r.bool(&p, v).unwrap_or(true);
    }
    if let Some((p, v)) = top.get("capture") {
        match r.string(&p, v).as_deref() {
            Some("auto") => c.capture = CaptureMode::Auto,
            Some("ebpf") => c.capture = CaptureMode::Ebpf,
            Some("nftables") => c.capture = CaptureMode::Nftables,
            Some("none") => c.capture = CaptureMode::None,
            Some(other) => r.error(
                &p,
                format!("{other:?} is not a capture backend (auto, ebpf, nftables, none)"),
            ),
            None => {}
        }
    }
    if let Some((p, v)) = top.get("captureFailMode") {
        match r.string(&p, v).as_deref() {
            Some("closed") => c.capture_fail_mode = FailMode::Closed,
            Some("open") => c.capture_fail_mode = FailMode::Open,
            Some(other) => r.error(&p, format!("{other:?} is not a fail mode (closed, open)")),
            None => {}
        }
    }
    if let Some((p, v)) = top.get("bpfPinDir") {
        if let Some(s) = r.non_empty(&p, v) {
            c.bpf_pin_dir = base.join(s);
        }
    }
    if let Some((p, v)) = top.get("healthProbes") {
        if let Some(mut o) = r.object(p, v) {
            if let Some((p, v)) = o.get("bypass") {
                c.health_probes.bypass = r.bool(&p, v).unwrap_or(true);
            }
            if let Some((p, v)) = o.get("sources") {
                c.health_probes.sources = r
                    .list(&p, v)
                    .into_iter()
                    .filter_map(|(p, v)| mesh::ip_block(r, &p, v))
                    .collect();
            }
            r.finish(o);
        }
    }
    if let Some((p, v)) = top.get("dns") {
        if let Some(mut o) = r.object(p, v) {
            if let Some((p, v)) = o.get("capture") {
                c.dns_capture = r.bool(&p, v).unwrap_or(false);
            }
            r.finish(o);
        }
    }
    if let Some((p, v)) = top.get("logFormat") {
        match r.string(&p, v).as_deref() {
            Some("text") => c.log_format = LogFormat::Text,
            Some("json") => c.log_format = LogFormat::Json,
            Some(other) => r.error(&p, format!("{other:?} is not a log format (text, json)")),
            None => {}
        }
    }
    for (name, slot) in [
        ("connectTimeout", &mut c.connect_timeout),
        ("drainTimeout", &mut c.drain_timeout),
    ] {
        if let Some((p, v)) = top.get(name) {
            if let Some(d) = r.duration(&p, v) {
                *slot = d;
            }
        }
    }
    if let Some((p, v)) = top.get("pool") {
        if let Some(mut o) = r.object(p, v) {
            for (name, slot) in [
                ("idleTimeout", &mut c.pool.idle_timeout),
                ("keepaliveInterval", &mut c.pool.keepalive_interval),
                ("keepaliveTimeout", &mut c.pool.keepalive_timeout),
            ] {
                if let Some((p, v)) = o.get(name) {
                    if let Some(d) = r.duration(&p, v) {
                        *slot = d;
                    }
                }
            }
            r.finish(o);
        }
    }
    if let Some((p, v)) = top.get("listeners") {
        listeners(r, p, v, &mut c.listeners);
    }
}

fn listeners(r: &mut Reader, p: FieldPath, v: &Value, l: &mut Listeners) {
    let Some(mut o) = r.object(p, v) else { return };
    for (name, slot) in [
        ("outbound", &mut l.outbound),
        ("inboundPlaintext", &mut l.inbound_plaintext),
        ("hbone", &mut l.hbone),
        ("dns", &mut l.dns),
    ] {
        if let Some((p, v)) = o.get(name) {
            if let Some(port) = r.port(&p, v) {
                *slot = port;
            }
        }
    }
    for (name, slot) in [
        ("admin", &mut l.admin),
        ("metrics", &mut l.metrics),
        ("readiness", &mut l.readiness),
    ] {
        if let Some((p, v)) = o.get(name) {
            if let Some(addr) = r.parsed::<SocketAddr>(&p, v, "ip:port address") {
                *slot = addr;
            }
        }
    }
    r.finish(o);
    let pod_ports = [l.outbound, l.inbound_plaintext, l.hbone];
    if pod_ports[0] == pod_ports[1] || pod_ports[0] == pod_ports[2] || pod_ports[1] == pod_ports[2]
    {
        r.error(
            &FieldPath::root().key("listeners"),
            "outbound, inboundPlaintext and hbone ports must all differ",
        );
    }
}

/// `nodes.<name>.listeners` overrides the listeners of that node only, so several ztunnels
/// can share one file (and one network namespace in tests).
fn node_overrides(r: &mut Reader, p: FieldPath, v: &Value, c: &mut Config) {
    let Some(obj) = r.object(p.clone(), v) else {
        return;
    };
    for (name, nv) in obj.entries() {
        let Some(mut n) = r.object(p.key(name), nv) else {
            continue;
        };
        if let Some((lp, lv)) = n.get("listeners") {
            if name == &c.node {
                listeners(r, lp, lv, &mut c.listeners);
            } else {
                // Other nodes' overrides are validated too: one bad line anywhere rejects the file.
                listeners(r, lp, lv, &mut Listeners::default());
            }
        }
        r.finish(n);
    }
}

#[cfg(test)]
mod tests;
