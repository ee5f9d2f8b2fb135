use std::collections::BTreeMap;

use super::*;
use crate::state::{Protocol, Service, ServicePort, Workload, WorkloadUid};

const ISTIO_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

fn workload(name: &str, ns: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        uid: WorkloadUid(format!("{ns}/{name}")),
        name: name.into(),
        namespace: ns.into(),
        service_account: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec![],
        node: "node-a".into(),
        protocol: Protocol::Hbone,
        netns: None,
    }
}

fn service() -> Service {
    Service {
        name: "web".into(),
        namespace: "prod".into(),
        hostname: "web.prod.svc.cluster.local".into(),
        vips: vec![],
        ports: vec![ServicePort {
            service_port: 80,
            target_port: 8080,
        }],
        selector: BTreeMap::new(),
    }
}

/// A source and destination workload with their identities and a service.
struct Fixture {
    src: Workload,
    src_id: Identity,
    dst: Workload,
    dst_id: Identity,
    service: Service,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_dst_labels(&[
            ("app", "web"),
            ("service.istio.io/canonical-name", "web-canonical"),
            ("version", "v2"),
        ])
    }

    fn with_dst_labels(labels: &[(&str, &str)]) -> Fixture {
        let src = workload("sleep", "default", &[("app", "sleep")]);
        let dst = workload("web-7d9f", "prod", labels);
        Fixture {
            src_id: src.identity("cluster.local"),
            dst_id: dst.identity("cluster.local"),
            src,
            dst,
            service: service(),
        }
    }

    fn endpoints(&self, reporter: Reporter) -> Endpoints<'_> {
        Endpoints {
            reporter,
            src: Some(&self.src),
            src_identity: Some(&self.src_id),
            dst: Some(&self.dst),
            dst_identity: Some(&self.dst_id),
            service: Some(&self.service),
            mtls: true,
        }
    }
}

/// The sample line of `metric` whose labels contain every `needle`, parsed to its value.
fn sample(text: &str, metric: &str, needles: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) || l.starts_with(&format!("{metric} ")))
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .expect("sample has a value")
                .parse()
                .expect("sample value is a number")
        })
}

#[test]
fn exposition_has_istio_names_and_label_keys() {
    let m = Metrics::new();
    let f = Fixture::new();
    drop(m.connection(f.endpoints(Reporter::Destination)));
    m.connection_failed(f.endpoints(Reporter::Source), ResponseFlags::Connect);
    let text = m.encode();
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_connections_failed_total",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no sample of {name} in:\n{text}"));
        let keys: Vec<&str> = line
            .split_once('{')
            .and_then(|(_, rest)| rest.rsplit_once('}'))
            .expect("labelled sample")
            .0
            .split("\",")
            .map(|kv| kv.split_once('=').expect("key=value").0)
            .collect();
        assert_eq!(keys, ISTIO_LABELS, "{name}");
        assert!(!text.contains(&format!("{name}_total")), "doubled suffix");
    }
    assert!(text.contains("# TYPE istio_tcp_connections_opened counter"));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn labels_follow_istio_derivation() {
    let f = Fixture::new();
    let text = {
        let m = Metrics::new();
        drop(m.connection(f.endpoints(Reporter::Destination)));
        m.encode()
    };
    for pair in [
        "reporter=\"destination\"",
        "source_workload=\"sleep\"",
        "source_canonical_service=\"sleep\"",
        "source_canonical_revision=\"latest\"",
        "source_workload_namespace=\"default\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "source_app=\"sleep\"",
        "source_version=\"latest\"",
        "source_cluster=\"Kubernetes\"",
        "destination_service=\"web.prod.svc.cluster.local\"",
        "destination_service_namespace=\"prod\"",
        "destination_service_name=\"web\"",
        "destination_workload=\"web-7d9f\"",
        "destination_canonical_service=\"web-canonical\"",
        "destination_canonical_revision=\"v2\"",
        "destination_workload_namespace=\"prod\"",
        "destination_principal=\"spiffe://cluster.local/ns/prod/sa/web-7d9f\"",
        "destination_app=\"web-canonical\"",
        "destination_version=\"v2\"",
        "destination_cluster=\"Kubernetes\"",
        "request_protocol=\"tcp\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(text.contains(pair), "missing {pair} in:\n{text}");
    }
}

#[test]
fn missing_values_are_unknown() {
    let id = Identity::new("cluster.local", "default", "sleep");
    let e = Endpoints {
        reporter: Reporter::Source,
        src: None,
        src_identity: Some(&id),
        dst: None,
        dst_identity: None,
        service: None,
        mtls: false,
    };
    let l = e.labels();
    assert_eq!(l.source_workload, "unknown");
    assert_eq!(l.source_canonical_service, "unknown");
    assert_eq!(
        l.source_workload_namespace, "default",
        "taken from the identity"
    );
    assert_eq!(
        l.source_principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(l.source_cluster, "unknown");
    assert_eq!(l.destination_service, "unknown");
    assert_eq!(l.destination_service_name, "unknown");
    assert_eq!(l.destination_workload_namespace, "unknown");
    assert_eq!(l.destination_principal, "unknown");
    assert_eq!(l.connection_security_policy, SecurityPolicy::Unknown);
    let m = Metrics::new();
    drop(m.connection(e));
    let text = m.encode();
    assert!(text.contains("connection_security_policy=\"unknown\""));
    assert!(text.contains("reporter=\"source\""));
}

#[test]
fn canonical_label_precedence() {
    let w = |l: &[(&str, &str)]| workload("pod-1", "ns", l);
    assert_eq!(labels::canonical_service(&w(&[])), "pod-1");
    assert_eq!(labels::canonical_service(&w(&[("app", "a")])), "a");
    assert_eq!(
        labels::canonical_service(&w(&[("app", "a"), ("app.kubernetes.io/name", "k")])),
        "k"
    );
    assert_eq!(
        labels::canonical_service(&w(&[
            ("app", "a"),
            ("app.kubernetes.io/name", "k"),
            ("service.istio.io/canonical-name", "c"),
        ])),
        "c"
    );
    assert_eq!(labels::canonical_revision(&w(&[])), "latest");
    assert_eq!(labels::canonical_revision(&w(&[("version", "v1")])), "v1");
    assert_eq!(
        labels::canonical_revision(&w(&[("version", "v1"), ("app.kubernetes.io/version", "k")])),
        "k"
    );
    assert_eq!(
        labels::canonical_revision(&w(&[
            ("version", "v1"),
            ("service.istio.io/canonical-revision", "c"),
        ])),
        "c"
    );
}

#[test]
fn counts_and_bytes_after_guards() {
    let m = Metrics::new();
    let f = Fixture::new();
    let guards: Vec<ConnectionGuard> = (0..5)
        .map(|_| m.connection(f.endpoints(Reporter::Destination)))
        .collect();
    for (i, g) in guards.iter().enumerate() {
        g.add_received(100);
        g.add_sent(10 * (i as u64 + 1));
    }
    let text = m.encode();
    let r = &["reporter=\"destination\""];
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", r),
        Some(5.0)
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", r),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "istio_tcp_received_bytes_total", r),
        Some(500.0)
    );
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", r), Some(150.0));

    drop(guards);
    // A second reporter is a separate series.
    let other = m.connection(f.endpoints(Reporter::Source));
    other.add_sent(7);
    let text = m.encode();
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", r),
        Some(5.0)
    );
    let s = &["reporter=\"source\""];
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", s),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "istio_tcp_connections_closed_total", s),
        Some(0.0)
    );
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", s), Some(7.0));
    assert_eq!(sample(&text, "istio_tcp_sent_bytes_total", r), Some(150.0));
}

#[test]
fn failed_connections_carry_response_flags() {
    let m = Metrics::new();
    let f = Fixture::new();
    m.connection_failed(f.endpoints(Reporter::Destination), ResponseFlags::Deny);
    m.connection_failed(f.endpoints(Reporter::Destination), ResponseFlags::Deny);
    m.connection_failed(f.endpoints(Reporter::Source), ResponseFlags::Connect);
    let text = m.encode();
    let failed = "istio_tcp_connections_failed_total";
    assert_eq!(
        sample(
            &text,
            failed,
            &["reporter=\"destination\"", "response_flags=\"DENY\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            failed,
            &["reporter=\"source\"", "response_flags=\"CONNECT\""]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, failed, &["response_flags=\"-\""]), None);
    assert_eq!(
        sample(&text, "istio_tcp_connections_opened_total", &[]),
        None
    );
}

#[test]
fn gauges_and_ztunnel_counters() {
    let m = Metrics::new();
    let a = Identity::new("cluster.local", "default", "a");
    let b = Identity::new("cluster.local", "prod", "b");
    m.set_certificates(2);
    m.set_certificate_expiry(&a, 1_900_000_000);
    m.set_certificate_expiry(&b, 1_800_000_000);
    m.set_certificate_expiry(&b, 1_800_003_600);
    m.inc_certificate_renewals();
    m.inc_certificate_renewals();
    m.set_hbone_pool_connections(3);
    m.set_hbone_pool_streams(9);
    m.hbone_pool_streams().inc();
    m.inc_inbound_rejected(RejectReason::StrictMtls);
    m.inc_inbound_rejected(RejectReason::Policy);
    m.inc_inbound_rejected(RejectReason::Policy);

    let text = m.encode();
    assert_eq!(sample(&text, "ztunnel_certificates", &[]), Some(2.0));
    let expiry = "ztunnel_certificate_expiry_seconds";
    assert_eq!(
        sample(
            &text,
            expiry,
            &["identity=\"spiffe://cluster.local/ns/default/sa/a\""]
        ),
        Some(1_900_000_000.0)
    );
    assert_eq!(
        sample(
            &text,
            expiry,
            &["identity=\"spiffe://cluster.local/ns/prod/sa/b\""]
        ),
        Some(1_800_003_600.0)
    );
    assert_eq!(
        sample(&text, "ztunnel_certificate_renewals_total", &[]),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "ztunnel_hbone_pool_connections", &[]),
        Some(3.0)
    );
    assert_eq!(sample(&text, "ztunnel_hbone_pool_streams", &[]), Some(10.0));
    let rejected = "ztunnel_inbound_rejected_total";
    assert_eq!(sample(&text, rejected, &["reason=\"policy\""]), Some(2.0));
    assert_eq!(
        sample(&text, rejected, &["reason=\"strict_mtls\""]),
        Some(1.0)
    );
    assert_eq!(sample(&text, rejected, &["reason=\"tls\""]), None);
    assert_eq!(
        sample(
            &text,
            "ztunnel_build_info",
            &[&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    m.remove_certificate_expiry(&a);
    let text = m.encode();
    assert_eq!(sample(&text, expiry, &["sa/a\""]), None);
    assert!(sample(&text, expiry, &["sa/b\""]).is_some());
}

#[test]
fn reject_reasons_spelling() {
    let all = [
        (RejectReason::Tls, "tls"),
        (RejectReason::Method, "method"),
        (RejectReason::Authority, "authority"),
        (RejectReason::Headers, "headers"),
        (RejectReason::PlaintextOnHbone, "plaintext_on_hbone"),
        (RejectReason::StrictMtls, "strict_mtls"),
        (RejectReason::Policy, "policy"),
    ];
    let m = Metrics::new();
    for (r, s) in all {
        assert_eq!(r.as_str(), s);
        m.inc_inbound_rejected(r);
    }
    let text = m.encode();
    for (_, s) in all {
        assert!(text.contains(&format!(
            "ztunnel_inbound_rejected_total{{reason=\"{s}\"}} 1"
        )));
    }
}

/// Every shape of endpoints: a second connection finds the series the first one filed (one
/// series, not two), and the labels are recognised as theirs and no other shape's.
#[test]
fn endpoints_find_the_series_their_labels_are_filed_under() {
    let f = Fixture::new();
    let stranger = Identity::new("cluster.local", "elsewhere", "someone");
    let mut shapes = vec![];
    for reporter in [Reporter::Source, Reporter::Destination] {
        for mtls in [true, false] {
            let full = Endpoints {
                mtls,
                ..f.endpoints(reporter)
            };
            shapes.extend([
                full,
                Endpoints {
                    service: None,
                    ..full
                },
                Endpoints { src: None, ..full },
                Endpoints {
                    src: None,
                    src_identity: None,
                    ..full
                },
                Endpoints {
                    src_identity: Some(&stranger),
                    ..full
                },
                Endpoints {
                    dst: None,
                    dst_identity: None,
                    service: None,
                    ..full
                },
            ]);
        }
    }
    for e in &shapes {
        let m = Metrics::new();
        drop(m.connection(*e));
        drop(m.connection(*e));
        let series = m.connections.read().expect("not poisoned").len();
        assert_eq!(series, 1, "{e:?}");
        let labels = e.labels();
        assert!(labels.describes(e), "{e:?}");
        for other in &shapes {
            if other.labels() != labels {
                assert!(!labels.describes(other), "{labels:?} claims {other:?}");
            }
        }
    }
}

/// Labels left out of the lookup hash (here the canonical revision) still separate series.
#[test]
fn series_differing_only_in_unhashed_labels_stay_apart() {
    let v1 = Fixture::with_dst_labels(&[("app", "web"), ("version", "v1")]);
    let v2 = Fixture::with_dst_labels(&[("app", "web"), ("version", "v2")]);
    let hasher = std::hash::RandomState::new();
    let (e1, e2) = (
        v1.endpoints(Reporter::Source),
        v2.endpoints(Reporter::Source),
    );
    assert_eq!(e1.key_hash(&hasher), e2.key_hash(&hasher));
    let m = Metrics::new();
    drop(m.connection(e1));
    drop(m.connection(e2));
    drop(m.connection(e2));
    let text = m.encode();
    let opened = "istio_tcp_connections_opened_total";
    assert_eq!(
        sample(&text, opened, &["destination_version=\"v1\""]),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, opened, &["destination_version=\"v2\""]),
        Some(2.0)
    );
}

/// A peer that proved another identity than its workload's is its own series.
#[test]
fn a_proven_identity_other_than_the_workloads_is_its_own_series() {
    let f = Fixture::new();
    let spoofer = Identity::new("cluster.local", "default", "not-sleep");
    let m = Metrics::new();
    drop(m.connection(f.endpoints(Reporter::Destination)));
    drop(m.connection(Endpoints {
        src_identity: Some(&spoofer),
        ..f.endpoints(Reporter::Destination)
    }));
    let text = m.encode();
    let opened = "istio_tcp_connections_opened_total";
    for sa in ["sleep", "not-sleep"] {
        let principal = format!("source_principal=\"spiffe://cluster.local/ns/default/sa/{sa}\"");
        assert_eq!(sample(&text, opened, &[&principal]), Some(1.0), "{sa}");
    }
}
