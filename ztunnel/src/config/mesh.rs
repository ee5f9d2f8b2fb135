//! The mesh-state part of the file: workloads, services, authorization and peer-authentication
//! policies, turned into the typed state of [`crate::state`].

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::reader::{Object, Path, Reader};
use super::Config;
use crate::authz::{Action, Operation, Policy, Rule, Scope, Source};
use crate::state::{
    MtlsMode, PeerAuthentication, Protocol, Service, ServicePort, Snapshot, Workload, WorkloadUid,
};

#[derive(Default)]
pub struct Raw<'v> {
    workloads: Option<(Path, &'v Value)>,
    services: Option<(Path, &'v Value)>,
    policies: Option<(Path, &'v Value)>,
    peer_authentications: Option<(Path, &'v Value)>,
}

impl<'v> Raw<'v> {
    pub fn take(top: &mut Object<'v>) -> Self {
        Self {
            workloads: top.get("workloads"),
            services: top.get("services"),
            policies: top.get("authorizationPolicies"),
            peer_authentications: top.get("peerAuthentications"),
        }
    }
}

pub fn parse(r: &mut Reader, raw: Raw<'_>, c: &Config) -> Snapshot {
    let mut workloads = Vec::new();
    if let Some((p, v)) = raw.workloads {
        let mut uids = HashSet::new();
        let mut ips = HashSet::new();
        for (ip, item) in r.list(&p, v) {
            if let Some(w) = workload(r, ip.clone(), item) {
                if !uids.insert(w.uid.clone()) {
                    r.error(
                        &ip.key("uid"),
                        format!("duplicate workload uid {:?}", w.uid.0),
                    );
                }
                for addr in &w.ips {
                    if !ips.insert(*addr) {
                        r.error(
                            &ip.key("ips"),
                            format!("address {addr} is used by another workload"),
                        );
                    }
                }
                workloads.push(w);
            }
        }
    }
    let mut services = Vec::new();
    if let Some((p, v)) = raw.services {
        for (ip, item) in r.list(&p, v) {
            if let Some(s) = service(r, ip, item) {
                services.push(s);
            }
        }
    }
    let mut policies = Vec::new();
    if let Some((p, v)) = raw.policies {
        for (ip, item) in r.list(&p, v) {
            if let Some(pol) = policy(r, ip, item, &c.root_namespace) {
                policies.push(pol);
            }
        }
    }
    let mut peer_authns = Vec::new();
    if let Some((p, v)) = raw.peer_authentications {
        for (ip, item) in r.list(&p, v) {
            if let Some(pa) = peer_authentication(r, ip, item) {
                peer_authns.push(pa);
            }
        }
    }
    Snapshot::new(workloads, services, policies, peer_authns)
}

fn workload(r: &mut Reader, p: Path, v: &Value) -> Option<Workload> {
    let mut o = r.object(p, v)?;
    let uid = o.require(r, "uid").and_then(|(p, v)| r.non_empty(&p, v));
    let name = o.require(r, "name").and_then(|(p, v)| r.non_empty(&p, v));
    let namespace = o
        .require(r, "namespace")
        .and_then(|(p, v)| r.non_empty(&p, v));
    let service_account = match o.get("serviceAccount") {
        Some((p, v)) => r.non_empty(&p, v),
        None => Some("default".to_string()),
    };
    let labels = o
        .get("labels")
        .map(|(p, v)| r.labels(p, v))
        .unwrap_or_default();
    let mut ips = Vec::new();
    if let Some((p, v)) = o.require(r, "ips") {
        for (ip, item) in r.list(&p, v) {
            if let Some(addr) = r.parsed::<IpAddr>(&ip, item, "IP address") {
                ips.push(addr);
            }
        }
        if ips.is_empty() && matches!(v, Value::Array(a) if a.is_empty()) {
            r.error(&p, "a workload needs at least one IP address");
        }
    }
    let node = o.require(r, "node").and_then(|(p, v)| r.non_empty(&p, v));
    let protocol = match o.get("protocol") {
        None => Some(Protocol::Hbone),
        Some((p, v)) => match r.string(&p, v).as_deref() {
            Some("HBONE") => Some(Protocol::Hbone),
            Some("TCP") => Some(Protocol::Tcp),
            Some(other) => {
                r.error(&p, format!("{other:?} is not a protocol (HBONE, TCP)"));
                None
            }
            None => None,
        },
    };
    let netns = o
        .get("netns")
        .and_then(|(p, v)| r.non_empty(&p, v))
        .map(std::path::PathBuf::from);
    if protocol == Some(Protocol::Tcp) && netns.is_some() {
        r.error(
            &o.path().key("netns"),
            "only HBONE (enrolled) workloads are captured; remove netns or set protocol: HBONE",
        );
    }
    r.finish(o);
    Some(Workload {
        uid: WorkloadUid(uid?),
        name: name?,
        namespace: namespace?,
        service_account: service_account?,
        labels,
        ips,
        node: node?,
        protocol: protocol?,
        netns,
    })
}

fn service(r: &mut Reader, p: Path, v: &Value) -> Option<Service> {
    let mut o = r.object(p, v)?;
    let name = o.require(r, "name").and_then(|(p, v)| r.non_empty(&p, v));
    let namespace = o
        .require(r, "namespace")
        .and_then(|(p, v)| r.non_empty(&p, v));
    let hostname = match o.get("hostname") {
        Some((p, v)) => r.non_empty(&p, v),
        None => None,
    };
    let mut vips = Vec::new();
    if let Some((p, v)) = o.require(r, "vips") {
        for (ip, item) in r.list(&p, v) {
            if let Some(addr) = r.parsed::<IpAddr>(&ip, item, "IP address") {
                vips.push(addr);
            }
        }
    }
    let mut ports = Vec::new();
    if let Some((p, v)) = o.require(r, "ports") {
        if let Some(po) = r.object(p.clone(), v) {
            for (k, tv) in po.entries() {
                let kp = p.key(k);
                let sp = r.port(&kp, &Value::String(k.clone()));
                let tp = r.port(&kp, tv);
                if let (Some(service_port), Some(target_port)) = (sp, tp) {
                    ports.push(ServicePort {
                        service_port,
                        target_port,
                    });
                }
            }
        }
    }
    let selector = o
        .get("selector")
        .map(|(p, v)| r.labels(p, v))
        .unwrap_or_default();
    if selector.is_empty() {
        r.error(
            &o.path().key("selector"),
            "a service needs a non-empty label selector",
        );
    }
    r.finish(o);
    let name = name?;
    let namespace = namespace?;
    let hostname = hostname.unwrap_or_else(|| format!("{name}.{namespace}.svc.cluster.local"));
    Some(Service {
        name,
        namespace,
        hostname,
        vips,
        ports,
        selector,
    })
}

fn policy(r: &mut Reader, p: Path, v: &Value, root_ns: &str) -> Option<Policy> {
    let mut o = r.object(p, v)?;
    let name = o.require(r, "name").and_then(|(p, v)| r.non_empty(&p, v));
    let namespace = o
        .require(r, "namespace")
        .and_then(|(p, v)| r.non_empty(&p, v));
    let selector = o.get("selector").map(|(p, v)| r.labels(p, v));
    let action = match o.get("action") {
        None => Some(Action::Allow),
        Some((p, v)) => match r.string(&p, v).as_deref() {
            Some("ALLOW") => Some(Action::Allow),
            Some("DENY") => Some(Action::Deny),
            Some(other) => {
                r.error(&p, format!("{other:?} is not an L4 action (ALLOW, DENY)"));
                None
            }
            None => None,
        },
    };
    let mut rules = Vec::new();
    if let Some((p, v)) = o.get("rules") {
        for (rp, item) in r.list(&p, v) {
            if let Some(rule) = rule(r, rp, item) {
                rules.push(rule);
            }
        }
    }
    r.finish(o);
    let namespace = namespace?;
    let scope = match selector {
        Some(labels) if !labels.is_empty() => Scope::Selector {
            namespace: namespace.clone(),
            labels,
        },
        _ if namespace == root_ns => Scope::Mesh,
        _ => Scope::Namespace(namespace.clone()),
    };
    Some(Policy {
        name: name?,
        namespace,
        scope,
        action: action?,
        rules,
    })
}

fn rule(r: &mut Reader, p: Path, v: &Value) -> Option<Rule> {
    let mut o = r.object(p, v)?;
    let mut rule = Rule::default();
    if let Some((p, v)) = o.get("from") {
        for (sp, item) in r.list(&p, v) {
            let Some(mut so) = r.object(sp.clone(), item) else {
                continue;
            };
            // Istio nests the fields under `source:`; accept both that and the flat form.
            let nested = so.get("source");
            let src = match nested {
                Some((np, nv)) => {
                    r.finish(so);
                    let Some(mut inner) = r.object(np, nv) else {
                        continue;
                    };
                    let s = source(r, &mut inner);
                    r.finish(inner);
                    s
                }
                None => {
                    let s = source(r, &mut so);
                    r.finish(so);
                    s
                }
            };
            rule.from.push(src);
        }
    }
    if let Some((p, v)) = o.get("to") {
        for (tp, item) in r.list(&p, v) {
            let Some(mut to) = r.object(tp, item) else {
                continue;
            };
            let op = match to.get("operation") {
                Some((np, nv)) => {
                    r.finish(to);
                    let Some(mut inner) = r.object(np, nv) else {
                        continue;
                    };
                    let op = operation(r, &mut inner);
                    r.finish(inner);
                    op
                }
                None => {
                    let op = operation(r, &mut to);
                    r.finish(to);
                    op
                }
            };
            rule.to.push(op);
        }
    }
    r.finish(o);
    Some(rule)
}

fn source(r: &mut Reader, o: &mut Object<'_>) -> Source {
    let mut s = Source::default();
    for (name, slot) in [
        ("principals", &mut s.principals),
        ("notPrincipals", &mut s.not_principals),
        ("namespaces", &mut s.namespaces),
        ("notNamespaces", &mut s.not_namespaces),
    ] {
        if let Some((p, v)) = o.get(name) {
            *slot = r.strings(&p, v);
        }
    }
    for (name, slot) in [
        ("ipBlocks", &mut s.ip_blocks),
        ("notIpBlocks", &mut s.not_ip_blocks),
    ] {
        if let Some((p, v)) = o.get(name) {
            for (ip, item) in r.list(&p, v) {
                if let Some(net) = ip_block(r, &ip, item) {
                    slot.push(net);
                }
            }
        }
    }
    s
}

pub(crate) fn ip_block(r: &mut Reader, p: &Path, v: &Value) -> Option<IpNet> {
    let s = r.string(p, v)?;
    if let Ok(net) = s.parse::<IpNet>() {
        return Some(net);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) => Some(IpNet::from(ip)),
        Err(_) => {
            r.error(p, format!("{s:?} is not an IP address or CIDR block"));
            None
        }
    }
}

fn operation(r: &mut Reader, o: &mut Object<'_>) -> Operation {
    let mut op = Operation::default();
    for (name, slot) in [("ports", &mut op.ports), ("notPorts", &mut op.not_ports)] {
        if let Some((p, v)) = o.get(name) {
            for (pp, item) in r.list(&p, v) {
                if let Some(port) = r.port(&pp, item) {
                    slot.push(port);
                }
            }
        }
    }
    op
}

fn peer_authentication(r: &mut Reader, p: Path, v: &Value) -> Option<PeerAuthentication> {
    let mut o = r.object(p, v)?;
    let name = o.require(r, "name").and_then(|(p, v)| r.non_empty(&p, v));
    let namespace = o
        .require(r, "namespace")
        .and_then(|(p, v)| r.non_empty(&p, v));
    let selector: Option<BTreeMap<String, String>> = o.get("selector").map(|(p, v)| r.labels(p, v));
    let mode = match o.require(r, "mode") {
        None => None,
        Some((p, v)) => match r.string(&p, v).as_deref() {
            Some("STRICT") => Some(MtlsMode::Strict),
            Some("PERMISSIVE") => Some(MtlsMode::Permissive),
            Some(other) => {
                r.error(
                    &p,
                    format!("{other:?} is not an mTLS mode (STRICT, PERMISSIVE)"),
                );
                None
            }
            None => None,
        },
    };
    r.finish(o);
    Some(PeerAuthentication {
        name: name?,
        namespace: namespace?,
        selector: selector.filter(|s| !s.is_empty()),
        mode: mode?,
    })
}
