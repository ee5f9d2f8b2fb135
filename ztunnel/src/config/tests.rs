use std::path::Path;
use std::time::Duration;

use super::*;
use crate::authz::{Action, Scope};
use crate::state::{MtlsMode, Protocol};

fn parse_str(text: &str) -> Result<Loaded, Errors> {
    parse(text, "node-a", Path::new("/etc/zt"))
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/ztunnel.yaml");
    let loaded = load(&path, "node-b").expect("the example must be valid");
    let c = &loaded.config;
    assert_eq!(c.listeners.admin.port(), 15100, "node override applies");
    assert_eq!(c.listeners.hbone, 15008);
    assert_eq!(c.certificate_ttl, Duration::from_secs(86400));
    assert_eq!(c.socket_mark, 0x539);
    let s = &loaded.state;
    assert_eq!(s.workloads.len(), 4);
    assert_eq!(s.local_workloads("node-b").count(), 3);
    let svc = s.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    assert_eq!(svc.target_port(80), Some(8080));
    assert_eq!(s.endpoints(svc).len(), 2);
    assert_eq!(s.policies[1].scope, Scope::Mesh);
    assert_eq!(s.policies[1].action, Action::Deny);
    assert!(matches!(s.policies[0].scope, Scope::Selector { .. }));
    assert_eq!(s.policies[0].rules[0].to[0].ports, vec![8080]);
    assert_eq!(s.peer_authentications[0].mode, MtlsMode::Strict);
    let legacy = s.workload_by_ip("10.201.2.20".parse().unwrap()).unwrap();
    assert_eq!(legacy.protocol, Protocol::Tcp);
    assert_eq!(legacy.service_account, "default");
}

#[test]
fn empty_file_gives_defaults() {
    let loaded = parse_str("").unwrap();
    assert_eq!(loaded.config, Config::defaults("node-a"));
    assert!(loaded.state.workloads.is_empty());
}

#[test]
fn every_error_is_reported_with_its_path() {
    let text = r#"
trustDomain: ""
certificateTtl: forever
listeners:
  outbound: 70000
  admin: nowhere
bogus: 1
workloads:
  - uid: a
    name: a
    namespace: ns
    ips: [10.0.0.1, not-an-ip]
    node: n
    protocol: UDP
  - name: missing-uid
    namespace: ns
    ips: [10.0.0.1]
    node: n
services:
  - name: s
    namespace: ns
    vips: [10.96.0.1]
    ports: {80: 0}
authorizationPolicies:
  - name: p
    namespace: ns
    action: AUDIT
    rules:
      - from:
          - source:
              ipBlocks: [10.0.0.0/33]
        to:
          - operation:
              ports: [http]
"#;
    let err = parse_str(text).expect_err("file is invalid");
    for path in [
        "trustDomain",
        "certificateTtl",
        "listeners.outbound",
        "listeners.admin",
        "bogus",
        "workloads[0].ips[1]",
        "workloads[0].protocol",
        "workloads[1].uid",
        "services[0].ports.80",
        "services[0].selector",
        "authorizationPolicies[0].action",
        "authorizationPolicies[0].rules[0].from[0].source.ipBlocks[0]",
        "authorizationPolicies[0].rules[0].to[0].operation.ports[0]",
    ] {
        assert!(err.contains(path), "missing error for {path}: {err}");
    }
    let text = err.to_string();
    assert!(text.contains("unknown field"), "{text}");
}

#[test]
fn duplicate_addresses_and_uids_are_rejected() {
    let text = r#"
workloads:
  - {uid: a, name: a, namespace: ns, ips: [10.0.0.1], node: n}
  - {uid: a, name: b, namespace: ns, ips: [10.0.0.1], node: n}
"#;
    let err = parse_str(text).unwrap_err();
    assert!(err.contains("workloads[1].uid"), "{err}");
    assert!(err.contains("workloads[1].ips"), "{err}");
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    let err = parse_str("workloads: [ {uid: a").unwrap_err();
    assert_eq!(err.0[0].path, "<file>");
}

#[test]
fn policy_scopes() {
    let text = r#"
authorizationPolicies:
  - {name: mesh, namespace: istio-system, action: DENY}
  - {name: ns, namespace: default}
  - {name: sel, namespace: default, selector: {app: x}, rules: [{}]}
"#;
    let s = parse_str(text).unwrap().state;
    assert_eq!(s.policies[0].scope, Scope::Mesh);
    assert_eq!(s.policies[1].scope, Scope::Namespace("default".into()));
    assert_eq!(s.policies[1].action, Action::Allow);
    assert!(s.policies[1].rules.is_empty());
    assert_eq!(s.policies[2].rules.len(), 1);
}

#[test]
fn hex_marks_and_relative_ca_paths() {
    let text =
        "socketMark: \"0x100\"\ndeliveryMark: 513\nca: {rootCert: root.pem, rootKey: key.pem}\n";
    let c = parse_str(text).unwrap().config;
    assert_eq!(c.socket_mark, 0x100);
    assert_eq!(c.delivery_mark, 513);
    assert_eq!(c.ca.unwrap().root_cert, Path::new("/etc/zt/root.pem"));
}

#[test]
fn capture_backends() {
    assert_eq!(parse_str("").unwrap().config.capture, CaptureMode::Auto);
    for (text, mode) in [
        ("auto", CaptureMode::Auto),
        ("ebpf", CaptureMode::Ebpf),
        ("nftables", CaptureMode::Nftables),
        ("none", CaptureMode::None),
    ] {
        let loaded = parse_str(&format!("capture: {text}\n")).unwrap();
        assert_eq!(loaded.config.capture, mode);
    }
    let err = parse_str("capture: iptables\n").unwrap_err().to_string();
    assert!(
        err.contains("capture") && err.contains("auto, ebpf, nftables, none"),
        "{err}"
    );
}

#[test]
fn health_probes_default_to_istio_sources_and_can_be_turned_off() {
    let defaults = parse("", "n", Path::new(".")).expect("empty file");
    assert!(defaults.config.health_probes.bypass);
    assert_eq!(
        defaults.config.health_probes.bypassed(),
        crate::config::HealthProbes::istio_sources()
    );
    let text = "healthProbes: {bypass: false, sources: [10.0.0.1, 10.1.0.0/16]}\n";
    let off = parse(text, "n", Path::new(".")).expect("valid");
    assert_eq!(off.config.health_probes.sources.len(), 2);
    assert!(off.config.health_probes.bypassed().is_empty());
    let bad = parse("healthProbes: {sources: [nope]}\n", "n", Path::new("."));
    let errors = bad.expect_err("invalid source").to_string();
    assert!(errors.contains("healthProbes.sources"), "{errors}");
}
