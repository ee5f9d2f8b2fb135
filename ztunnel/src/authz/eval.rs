//! Evaluation of L4 authorization policies against one connection, with Istio's semantics:
//! a matching DENY wins, then ALLOW policies (if any select the workload) must match, else allow.

use std::fmt;
use std::net::IpAddr;

use crate::authz::policy::{Action, Operation, Policy, Rule, Scope, Source};
use crate::identity::Identity;
use crate::state::Workload;

/// Reason given when ALLOW policies select the workload but none of them matches.
pub const NO_ALLOW_MATCHED: &str = "no ALLOW policy matched";

/// What the authorizer knows about an inbound connection.
#[derive(Clone, Copy, Debug)]
pub struct Connection<'a> {
    /// The peer's verified identity; `None` for plaintext connections.
    pub src_identity: Option<&'a Identity>,
    pub src_ip: IpAddr,
    /// The workload's target port (after service port translation).
    pub dst_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        /// `namespace/name` of the deciding DENY policy, or [`NO_ALLOW_MATCHED`].
        policy: String,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }

    fn denied_by(policy: &Policy) -> Self {
        Decision::Deny {
            policy: format!("{}/{}", policy.namespace, policy.name),
        }
    }

    fn no_allow_matched() -> Self {
        Decision::Deny {
            policy: NO_ALLOW_MATCHED.to_string(),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::Deny { policy } => write!(f, "deny ({policy})"),
        }
    }
}

/// Evaluates `policies` (in order; the first matching DENY is the one reported) for a connection
/// to `workload`. Scans every policy: use [`crate::authz::Index`] on the data path.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p Policy>,
    workload: &Workload,
    conn: &Connection,
) -> Decision {
    let mut allow_selected = false;
    let mut allow_matched = false;
    for policy in policies {
        if !policy.selects(workload) {
            continue;
        }
        match policy.action {
            Action::Deny => {
                if policy.matches(conn) {
                    return Decision::denied_by(policy);
                }
            }
            Action::Allow => {
                allow_selected = true;
                // Once one ALLOW matched, further ALLOWs cannot change the outcome; only DENYs can.
                if !allow_matched && policy.matches(conn) {
                    allow_matched = true;
                }
            }
        }
    }
    if allow_selected && !allow_matched {
        Decision::no_allow_matched()
    } else {
        Decision::Allow
    }
}

impl Policy {
    /// True when the policy's scope covers `workload`.
    pub fn selects(&self, workload: &Workload) -> bool {
        match &self.scope {
            Scope::Mesh => true,
            Scope::Namespace(ns) => workload.namespace == *ns,
            Scope::Selector { namespace, labels } => {
                workload.namespace == *namespace && workload.matches(labels)
            }
        }
    }

    /// True when any rule matches; a policy without rules matches nothing.
    pub fn matches(&self, conn: &Connection) -> bool {
        self.rules.iter().any(|r| r.matches(conn))
    }
}

impl Rule {
    pub fn matches(&self, conn: &Connection) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(conn)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(conn)))
    }
}

impl Source {
    /// Every non-empty field must hold. A plaintext peer has no principal and no namespace, so
    /// positive principal/namespace lists never match it and negative ones never exclude it.
    pub fn matches(&self, conn: &Connection) -> bool {
        let id = conn.src_identity;
        let principal = id.map(Principal::of);
        let principal = principal.as_ref();
        let namespace = id.map(|i| i.namespace.as_str());

        (self.principals.is_empty()
            || principal.is_some_and(|p| any_principal(&self.principals, p)))
            && !principal.is_some_and(|p| any_principal(&self.not_principals, p))
            && (self.namespaces.is_empty()
                || namespace.is_some_and(|n| any_pattern(&self.namespaces, n)))
            && !namespace.is_some_and(|n| any_pattern(&self.not_namespaces, n))
            && (self.ip_blocks.is_empty()
                || self.ip_blocks.iter().any(|b| b.contains(&conn.src_ip)))
            && !self.not_ip_blocks.iter().any(|b| b.contains(&conn.src_ip))
    }
}

impl Operation {
    pub fn matches(&self, conn: &Connection) -> bool {
        (self.ports.is_empty() || self.ports.contains(&conn.dst_port))
            && !self.not_ports.contains(&conn.dst_port)
    }
}

/// Istio writes principals without the scheme (`cluster.local/ns/default/sa/sleep`). Matched
/// piecewise, so evaluating a policy never formats (allocates) the principal.
struct Principal<'a>([&'a str; 5]);

impl<'a> Principal<'a> {
    fn of(id: &'a Identity) -> Self {
        Principal([
            &id.trust_domain,
            "/ns/",
            &id.namespace,
            "/sa/",
            &id.service_account,
        ])
    }

    fn len(&self) -> usize {
        self.0.iter().map(|p| p.len()).sum()
    }

    fn starts_with(&self, mut prefix: &str) -> bool {
        for part in self.0 {
            if prefix.len() <= part.len() {
                return part.as_bytes().starts_with(prefix.as_bytes());
            }
            match prefix.strip_prefix(part) {
                Some(rest) => prefix = rest,
                None => return false,
            }
        }
        prefix.is_empty()
    }

    fn ends_with(&self, mut suffix: &str) -> bool {
        for part in self.0.iter().rev() {
            if suffix.len() <= part.len() {
                return part.as_bytes().ends_with(suffix.as_bytes());
            }
            match suffix.strip_suffix(part) {
                Some(rest) => suffix = rest,
                None => return false,
            }
        }
        suffix.is_empty()
    }

    /// [`pattern_matches`] against the principal's text.
    fn matches(&self, pattern: &str) -> bool {
        if pattern == "*" {
            self.len() > 0
        } else if let Some(suffix) = pattern.strip_prefix('*') {
            self.ends_with(suffix)
        } else if let Some(prefix) = pattern.strip_suffix('*') {
            self.starts_with(prefix)
        } else {
            self.len() == pattern.len() && self.starts_with(pattern)
        }
    }
}

fn any_principal(patterns: &[String], principal: &Principal) -> bool {
    patterns.iter().any(|p| {
        // Accept the full SPIFFE form too, since users copy identities from certificates.
        let p = p.strip_prefix("spiffe://").unwrap_or(p);
        principal.matches(p)
    })
}

fn any_pattern(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| pattern_matches(p, value))
}

/// Istio string matching: `*` (any non-empty value), `prefix*`, `*suffix`, or exact.
pub(crate) fn pattern_matches(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

#[cfg(test)]
mod tests;
