use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    Allow,
    Deny,
}

/// Which workloads a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Defined in the root namespace without a selector: every workload in the mesh.
    Mesh,
    /// Every workload of one namespace.
    Namespace(String),
    /// Workloads of one namespace whose labels match.
    Selector {
        namespace: String,
        labels: BTreeMap<String, String>,
    },
}

/// One `from` entry. Fields are ANDed; a field left empty matches anything.
/// Principals and namespaces accept Istio's `*`, `prefix*` and `*suffix` forms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub principals: Vec<String>,
    pub not_principals: Vec<String>,
    pub namespaces: Vec<String>,
    pub not_namespaces: Vec<String>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
}

/// One `to` entry (destination ports are the workload's target ports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

/// A rule matches when any `from` entry matches (or `from` is empty) and any `to` entry
/// matches (or `to` is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
}

/// A policy matches a connection when any of its rules does; a policy with no rules matches
/// nothing (so an ALLOW policy with no rules denies every connection to the workloads it selects).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    pub rules: Vec<Rule>,
}
