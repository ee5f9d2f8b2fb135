use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::authz::eval::evaluate;
use crate::authz::policy::{Operation, Rule, Source};
use crate::identity::Identity;
use crate::state::{Protocol, WorkloadUid};

const NAMESPACES: &[&str] = &["default", "prod", "kube-system", "istio-system"];
const KEYS: &[&str] = &["app", "version", "tier"];
const VALUES: &[&str] = &["a", "b", "c"];
const PORTS: &[u16] = &[80, 443, 8080, 9090];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn labels(rng: &mut StdRng, max: usize) -> BTreeMap<String, String> {
    (0..rng.random_range(0..=max))
        .map(|_| (pick(rng, KEYS).to_string(), pick(rng, VALUES).to_string()))
        .collect()
}

fn random_source(rng: &mut StdRng) -> Source {
    let mut s = Source::default();
    let patterns = [
        "*",
        "cluster.local/ns/prod/*",
        "*/sa/a",
        "spiffe://cluster.local/ns/default/sa/b",
    ];
    if rng.random_bool(0.3) {
        s.principals = vec![pick(rng, &patterns).to_string()];
    }
    if rng.random_bool(0.2) {
        s.not_principals = vec![pick(rng, &patterns).to_string()];
    }
    if rng.random_bool(0.3) {
        s.namespaces = vec![pick(rng, NAMESPACES).to_string()];
    }
    if rng.random_bool(0.2) {
        s.not_namespaces = vec![pick(rng, &["kube-*", "*", "prod"]).to_string()];
    }
    let blocks = ["10.0.0.0/8", "10.1.0.0/16", "fd00::/8", "192.168.0.0/16"];
    if rng.random_bool(0.3) {
        s.ip_blocks = vec![pick(rng, &blocks).parse().expect("literal cidr")];
    }
    if rng.random_bool(0.2) {
        s.not_ip_blocks = vec![pick(rng, &blocks).parse().expect("literal cidr")];
    }
    s
}

fn random_policy(rng: &mut StdRng, i: usize) -> Policy {
    let ns = pick(rng, NAMESPACES).to_string();
    let scope = match rng.random_range(0..10) {
        0 => Scope::Mesh,
        1..=3 => Scope::Namespace(ns.clone()),
        _ => Scope::Selector {
            namespace: ns.clone(),
            labels: labels(rng, 2),
        },
    };
    let rules = (0..rng.random_range(0..3))
        .map(|_| Rule {
            from: (0..rng.random_range(0..3))
                .map(|_| random_source(rng))
                .collect(),
            to: (0..rng.random_range(0..2))
                .map(|_| Operation {
                    ports: if rng.random_bool(0.6) {
                        vec![*pick(rng, PORTS)]
                    } else {
                        vec![]
                    },
                    not_ports: if rng.random_bool(0.3) {
                        vec![*pick(rng, PORTS)]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        })
        .collect();
    Policy {
        name: format!("p{i}"),
        namespace: ns,
        scope,
        action: if rng.random_bool(0.3) {
            Action::Deny
        } else {
            Action::Allow
        },
        rules,
    }
}

fn random_workload(rng: &mut StdRng) -> Workload {
    Workload {
        uid: WorkloadUid("uid".into()),
        name: "w".into(),
        namespace: pick(rng, NAMESPACES).to_string(),
        service_account: "w".into(),
        labels: labels(rng, 3),
        ips: vec![],
        node: "node".into(),
        protocol: Protocol::Hbone,
        netns: None,
    }
}

fn random_peer(rng: &mut StdRng) -> (Option<Identity>, IpAddr) {
    let id = rng
        .random_bool(0.8)
        .then(|| Identity::new("cluster.local", *pick(rng, NAMESPACES), *pick(rng, VALUES)));
    let ip = *pick(
        rng,
        &[
            "10.1.2.3",
            "10.2.0.1",
            "192.168.1.1",
            "fd00::1",
            "2001:db8::1",
        ],
    );
    (id, ip.parse().expect("literal ip"))
}

#[test]
fn agrees_with_linear_evaluation() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut outcomes = [0usize; 3];
    for round in 0..200 {
        let n = rng.random_range(0..12);
        let policies: Vec<Arc<Policy>> = (0..n)
            .map(|i| Arc::new(random_policy(&mut rng, i)))
            .collect();
        let index = Index::new(&policies);
        assert_eq!(index.len(), n);
        for _ in 0..20 {
            let w = random_workload(&mut rng);
            let (id, src_ip) = random_peer(&mut rng);
            let conn = Connection {
                src_identity: id.as_ref(),
                src_ip,
                dst_port: *pick(&mut rng, PORTS),
            };
            let linear = evaluate(policies.iter().map(|p| p.as_ref()), &w, &conn);
            let indexed = index.evaluate(&w, &conn);
            assert_eq!(
                linear, indexed,
                "round {round}: {w:?} {conn:?} {policies:#?}"
            );
            outcomes[match &linear {
                Decision::Allow => 0,
                Decision::Deny { policy } if policy == crate::authz::eval::NO_ALLOW_MATCHED => 1,
                Decision::Deny { .. } => 2,
            }] += 1;
        }
    }
    // The generator must exercise every outcome, or agreement proves little.
    assert!(outcomes.iter().all(|&n| n > 100), "outcomes {outcomes:?}");
}

#[test]
fn ten_thousand_policies_evaluate_in_microseconds() {
    // Realistic shape: many namespaces, each with a few selector policies on `app`.
    let policies: Vec<Arc<Policy>> = (0..10_000)
        .map(|i| {
            Arc::new(Policy {
                name: format!("p{i}"),
                namespace: format!("ns{}", i % 1000),
                scope: Scope::Selector {
                    namespace: format!("ns{}", i % 1000),
                    labels: [("app".to_string(), format!("app{}", i % 7))].into(),
                },
                action: if i % 3 == 0 {
                    Action::Deny
                } else {
                    Action::Allow
                },
                rules: vec![Rule {
                    from: vec![Source {
                        principals: vec![format!("cluster.local/ns/ns{i}/sa/client")],
                        ..Default::default()
                    }],
                    to: vec![],
                }],
            })
        })
        .collect();
    let index = Index::new(&policies);
    let w = Workload {
        uid: WorkloadUid("uid".into()),
        name: "w".into(),
        namespace: "ns42".into(),
        service_account: "w".into(),
        labels: [("app".to_string(), "app0".to_string())].into(),
        ips: vec![],
        node: "node".into(),
        protocol: Protocol::Hbone,
        netns: None,
    };
    let id = Identity::new("cluster.local", "ns42", "client");
    let conn = Connection {
        src_identity: Some(&id),
        src_ip: "10.0.0.1".parse().expect("literal ip"),
        dst_port: 80,
    };
    let linear = evaluate(policies.iter().map(|p| p.as_ref()), &w, &conn);
    assert_eq!(index.evaluate(&w, &conn), linear);
    assert_eq!(
        linear,
        Decision::Deny {
            policy: "ns42/p42".into()
        }
    );

    let rounds = 10_000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(index.evaluate(std::hint::black_box(&w), &conn));
    }
    let per_call = start.elapsed() / rounds;
    // Generous bound for a shared, unoptimised test build; the linear scan takes milliseconds.
    assert!(
        per_call < Duration::from_micros(50),
        "{per_call:?} per evaluation"
    );
}
