use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::state::{Protocol, WorkloadUid};

fn workload(ns: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        uid: WorkloadUid(format!("{ns}-uid")),
        name: "server".into(),
        namespace: ns.into(),
        service_account: "server".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ips: vec!["10.0.0.2".parse().expect("literal ip")],
        node: "node-a".into(),
        protocol: Protocol::Hbone,
        netns: None,
    }
}

fn policy(ns: &str, name: &str, scope: Scope, action: Action, rules: Vec<Rule>) -> Policy {
    Policy {
        name: name.into(),
        namespace: ns.into(),
        scope,
        action,
        rules,
    }
}

fn from(src: Source) -> Rule {
    Rule {
        from: vec![src],
        to: vec![],
    }
}

fn to(op: Operation) -> Rule {
    Rule {
        from: vec![],
        to: vec![op],
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("literal ip")
}

fn sleep_id() -> Identity {
    Identity::new("cluster.local", "default", "sleep")
}

fn conn<'a>(id: Option<&'a Identity>, src: &str, port: u16) -> Connection<'a> {
    Connection {
        src_identity: id,
        src_ip: ip(src),
        dst_port: port,
    }
}

/// Decision of a single ALLOW policy with one rule, for field-level tests.
fn allow_one(rule: Rule, c: &Connection) -> bool {
    let p = policy(
        "default",
        "p",
        Scope::Namespace("default".into()),
        Action::Allow,
        vec![rule],
    );
    evaluate([&p], &workload("default", &[]), c).is_allowed()
}

#[test]
fn no_policies_allow() {
    let id = sleep_id();
    let w = workload("default", &[]);
    assert_eq!(
        evaluate([], &w, &conn(Some(&id), "10.0.0.1", 80)),
        Decision::Allow
    );
    assert_eq!(
        evaluate([], &w, &conn(None, "10.0.0.1", 80)),
        Decision::Allow
    );
}

#[test]
fn allow_without_match_denies_with_reason() {
    let id = sleep_id();
    let p = policy(
        "default",
        "only-8080",
        Scope::Namespace("default".into()),
        Action::Allow,
        vec![to(Operation {
            ports: vec![8080],
            ..Default::default()
        })],
    );
    let w = workload("default", &[]);
    assert_eq!(
        evaluate([&p], &w, &conn(Some(&id), "10.0.0.1", 80)),
        Decision::Deny {
            policy: NO_ALLOW_MATCHED.into()
        }
    );
    assert!(evaluate([&p], &w, &conn(Some(&id), "10.0.0.1", 8080)).is_allowed());
}

#[test]
fn allow_with_no_rules_denies_everything() {
    let p = policy(
        "default",
        "deny-all",
        Scope::Namespace("default".into()),
        Action::Allow,
        vec![],
    );
    let id = sleep_id();
    assert!(!evaluate(
        [&p],
        &workload("default", &[]),
        &conn(Some(&id), "10.0.0.1", 80)
    )
    .is_allowed());
}

#[test]
fn deny_with_no_rules_denies_nothing() {
    let p = policy(
        "default",
        "empty-deny",
        Scope::Namespace("default".into()),
        Action::Deny,
        vec![],
    );
    assert!(evaluate([&p], &workload("default", &[]), &conn(None, "10.0.0.1", 80)).is_allowed());
}

#[test]
fn empty_rule_matches_everything() {
    assert!(allow_one(Rule::default(), &conn(None, "10.0.0.1", 1)));
}

#[test]
fn deny_takes_precedence_over_allow() {
    let id = sleep_id();
    let allow = policy(
        "default",
        "allow-all",
        Scope::Namespace("default".into()),
        Action::Allow,
        vec![Rule::default()],
    );
    let deny = policy(
        "istio-system",
        "deny-80",
        Scope::Mesh,
        Action::Deny,
        vec![to(Operation {
            ports: vec![80],
            ..Default::default()
        })],
    );
    let w = workload("default", &[]);
    assert_eq!(
        evaluate([&allow, &deny], &w, &conn(Some(&id), "10.0.0.1", 80)),
        Decision::Deny {
            policy: "istio-system/deny-80".into()
        }
    );
    assert!(evaluate([&allow, &deny], &w, &conn(Some(&id), "10.0.0.1", 81)).is_allowed());
}

#[test]
fn first_matching_deny_is_reported() {
    let deny = |name: &str| {
        policy(
            "default",
            name,
            Scope::Namespace("default".into()),
            Action::Deny,
            vec![Rule::default()],
        )
    };
    let (a, b) = (deny("a"), deny("b"));
    let d = evaluate(
        [&b, &a],
        &workload("default", &[]),
        &conn(None, "10.0.0.1", 1),
    );
    assert_eq!(
        d,
        Decision::Deny {
            policy: "default/b".into()
        }
    );
}

#[test]
fn scope_selection() {
    let deny_all = |scope: Scope| policy("x", "d", scope, Action::Deny, vec![Rule::default()]);
    let w = workload("default", &[("app", "web"), ("version", "v1")]);
    let c = conn(None, "10.0.0.1", 80);
    let selected = |p: &Policy| !evaluate([p], &w, &c).is_allowed();

    assert!(selected(&deny_all(Scope::Mesh)));
    assert!(selected(&deny_all(Scope::Namespace("default".into()))));
    assert!(!selected(&deny_all(Scope::Namespace("other".into()))));
    let sel = |ns: &str, labels: &[(&str, &str)]| Scope::Selector {
        namespace: ns.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    };
    assert!(selected(&deny_all(sel("default", &[("app", "web")]))));
    assert!(selected(&deny_all(sel(
        "default",
        &[("app", "web"), ("version", "v1")]
    ))));
    assert!(selected(&deny_all(sel("default", &[]))));
    assert!(!selected(&deny_all(sel("default", &[("app", "db")]))));
    assert!(!selected(&deny_all(sel(
        "default",
        &[("app", "web"), ("version", "v2")]
    ))));
    assert!(!selected(&deny_all(sel("default", &[("tier", "web")]))));
    assert!(!selected(&deny_all(sel("other", &[("app", "web")]))));
}

#[test]
fn allow_in_other_namespace_does_not_restrict() {
    let p = policy(
        "other",
        "nothing",
        Scope::Namespace("other".into()),
        Action::Allow,
        vec![],
    );
    assert!(evaluate([&p], &workload("default", &[]), &conn(None, "10.0.0.1", 80)).is_allowed());
}

#[test]
fn principals() {
    let id = sleep_id();
    let c = conn(Some(&id), "10.0.0.1", 80);
    let rule = |p: &[&str]| {
        from(Source {
            principals: strings(p),
            ..Default::default()
        })
    };
    assert!(allow_one(rule(&["cluster.local/ns/default/sa/sleep"]), &c));
    assert!(allow_one(
        rule(&["spiffe://cluster.local/ns/default/sa/sleep"]),
        &c
    ));
    assert!(allow_one(
        rule(&["other", "cluster.local/ns/default/sa/sleep"]),
        &c
    ));
    assert!(!allow_one(rule(&["cluster.local/ns/default/sa/other"]), &c));
    assert!(allow_one(rule(&["*"]), &c));
    assert!(allow_one(rule(&["cluster.local/ns/default/*"]), &c));
    assert!(allow_one(rule(&["spiffe://cluster.local/*"]), &c));
    assert!(allow_one(rule(&["*/sa/sleep"]), &c));
    assert!(!allow_one(rule(&["*/sa/curl"]), &c));
    assert!(!allow_one(rule(&["cluster.local/ns/prod/*"]), &c));
}

#[test]
fn not_principals() {
    let id = sleep_id();
    let c = conn(Some(&id), "10.0.0.1", 80);
    let rule = |p: &[&str]| {
        from(Source {
            not_principals: strings(p),
            ..Default::default()
        })
    };
    assert!(!allow_one(rule(&["cluster.local/ns/default/sa/sleep"]), &c));
    assert!(!allow_one(
        rule(&["spiffe://cluster.local/ns/default/sa/sleep"]),
        &c
    ));
    assert!(!allow_one(rule(&["*"]), &c));
    assert!(allow_one(rule(&["cluster.local/ns/default/sa/other"]), &c));
    assert!(allow_one(rule(&["*/sa/curl"]), &c));
}

#[test]
fn namespaces_and_negation() {
    let id = sleep_id();
    let c = conn(Some(&id), "10.0.0.1", 80);
    let ns = |p: &[&str]| {
        from(Source {
            namespaces: strings(p),
            ..Default::default()
        })
    };
    let not_ns = |p: &[&str]| {
        from(Source {
            not_namespaces: strings(p),
            ..Default::default()
        })
    };
    assert!(allow_one(ns(&["default"]), &c));
    assert!(allow_one(ns(&["def*"]), &c));
    assert!(allow_one(ns(&["*ault"]), &c));
    assert!(allow_one(ns(&["*"]), &c));
    assert!(!allow_one(ns(&["prod"]), &c));
    assert!(!allow_one(ns(&["default-*"]), &c));
    assert!(!allow_one(not_ns(&["default"]), &c));
    assert!(!allow_one(not_ns(&["*"]), &c));
    assert!(allow_one(not_ns(&["prod", "kube-*"]), &c));
}

#[test]
fn plaintext_peer_has_no_principal_or_namespace() {
    let c = conn(None, "10.0.0.1", 80);
    let src = |s: Source| from(s);
    assert!(!allow_one(
        src(Source {
            principals: strings(&["*"]),
            ..Default::default()
        }),
        &c
    ));
    assert!(!allow_one(
        src(Source {
            namespaces: strings(&["*"]),
            ..Default::default()
        }),
        &c
    ));
    assert!(allow_one(
        src(Source {
            not_principals: strings(&["*"]),
            ..Default::default()
        }),
        &c
    ));
    assert!(allow_one(
        src(Source {
            not_namespaces: strings(&["*"]),
            ..Default::default()
        }),
        &c
    ));
    // The common "deny plaintext" idiom: DENY from notPrincipals ["*"].
    let deny_plaintext = policy(
        "default",
        "require-mtls",
        Scope::Namespace("default".into()),
        Action::Deny,
        vec![src(Source {
            not_principals: strings(&["*"]),
            ..Default::default()
        })],
    );
    let w = workload("default", &[]);
    assert!(!evaluate([&deny_plaintext], &w, &c).is_allowed());
    let id = sleep_id();
    assert!(evaluate([&deny_plaintext], &w, &conn(Some(&id), "10.0.0.1", 80)).is_allowed());
}

#[test]
fn ip_blocks_v4_and_v6() {
    let blocks = |b: &[&str]| -> Vec<ipnet::IpNet> {
        b.iter().map(|s| s.parse().expect("literal cidr")).collect()
    };
    let ipb = |b: &[&str]| {
        from(Source {
            ip_blocks: blocks(b),
            ..Default::default()
        })
    };
    let not_ipb = |b: &[&str]| {
        from(Source {
            not_ip_blocks: blocks(b),
            ..Default::default()
        })
    };
    let v4 = conn(None, "10.1.2.3", 80);
    let v6 = conn(None, "fd00::1:5", 80);
    assert!(allow_one(ipb(&["10.1.0.0/16"]), &v4));
    assert!(allow_one(ipb(&["10.1.2.3/32"]), &v4));
    assert!(!allow_one(ipb(&["10.2.0.0/16"]), &v4));
    assert!(!allow_one(ipb(&["fd00::/8"]), &v4));
    assert!(allow_one(ipb(&["fd00::/64"]), &v6));
    assert!(allow_one(ipb(&["192.168.0.0/16", "fd00::1:0/112"]), &v6));
    assert!(!allow_one(ipb(&["fd01::/64"]), &v6));
    assert!(!allow_one(ipb(&["10.0.0.0/8"]), &v6));
    assert!(!allow_one(not_ipb(&["10.0.0.0/8"]), &v4));
    assert!(allow_one(not_ipb(&["10.0.0.0/8"]), &v6));
    assert!(!allow_one(not_ipb(&["fd00::/16"]), &v6));
    assert!(allow_one(not_ipb(&["fd01::/16"]), &v6));
}

#[test]
fn ports_and_not_ports() {
    let c = conn(None, "10.0.0.1", 8080);
    let op = |ports: &[u16], not_ports: &[u16]| {
        to(Operation {
            ports: ports.to_vec(),
            not_ports: not_ports.to_vec(),
        })
    };
    assert!(allow_one(op(&[8080], &[]), &c));
    assert!(allow_one(op(&[80, 8080], &[]), &c));
    assert!(!allow_one(op(&[80], &[]), &c));
    assert!(!allow_one(op(&[], &[8080]), &c));
    assert!(allow_one(op(&[], &[80]), &c));
    assert!(!allow_one(op(&[8080], &[8080]), &c));
}

#[test]
fn source_fields_are_anded_entries_ored() {
    let id = sleep_id();
    let c = conn(Some(&id), "10.0.0.1", 80);
    let both = Source {
        namespaces: strings(&["default"]),
        ip_blocks: vec!["10.0.0.0/24".parse().expect("literal cidr")],
        ..Default::default()
    };
    assert!(allow_one(from(both.clone()), &c));
    let wrong_ip = Source {
        ip_blocks: vec!["10.9.0.0/24".parse().expect("literal cidr")],
        ..both.clone()
    };
    assert!(!allow_one(from(wrong_ip.clone()), &c));
    let either = Rule {
        from: vec![wrong_ip, both],
        to: vec![],
    };
    assert!(allow_one(either, &c));
    // from AND to.
    let from_and_to = Rule {
        from: vec![Source {
            namespaces: strings(&["default"]),
            ..Default::default()
        }],
        to: vec![Operation {
            ports: vec![81],
            ..Default::default()
        }],
    };
    assert!(!allow_one(from_and_to, &c));
}

#[test]
fn pattern_forms() {
    assert!(pattern_matches("*", "x"));
    assert!(!pattern_matches("*", ""));
    assert!(pattern_matches("ab*", "abc"));
    assert!(pattern_matches("ab*", "ab"));
    assert!(!pattern_matches("ab*", "a"));
    assert!(pattern_matches("*bc", "abc"));
    assert!(!pattern_matches("*bc", "abd"));
    assert!(pattern_matches("abc", "abc"));
    assert!(!pattern_matches("abc", "abcd"));
}

#[test]
fn piecewise_principal_matches_like_its_text() {
    let id = Identity::new("cluster.local", "default", "sleep");
    let text = "cluster.local/ns/default/sa/sleep";
    let principal = Principal::of(&id);
    assert_eq!(principal.len(), text.len());
    let mut patterns = vec![
        "*".to_string(),
        text.to_string(),
        format!("{text}x"),
        "cluster.local/ns/default/sa/slee".to_string(),
        "other/ns/default/sa/sleep".to_string(),
        "**".to_string(),
        String::new(),
    ];
    for i in 0..=text.len() {
        patterns.push(format!("{}*", &text[..i]));
        patterns.push(format!("*{}", &text[i..]));
        patterns.push(format!("x{}*", &text[..i]));
        patterns.push(format!("*{}x", &text[i..]));
    }
    for p in &patterns {
        assert_eq!(
            principal.matches(p),
            pattern_matches(p, text),
            "pattern {p:?}"
        );
    }
}
