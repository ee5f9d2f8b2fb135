//! Policies grouped by scope so a decision only looks at the policies that can select a workload.

use std::collections::HashMap;
use std::sync::Arc;

use crate::authz::eval::{Connection, Decision};
use crate::authz::policy::{Action, Policy, Scope};
use crate::state::Workload;

/// A policy and its position in the input, so the reported DENY policy is the same one
/// [`crate::authz::evaluate`] reports for the same input order.
#[derive(Clone, Debug)]
struct Entry {
    order: usize,
    policy: Arc<Policy>,
}

/// Policies of one namespace.
#[derive(Debug, Default)]
struct Namespace {
    /// Namespace-wide policies and selectors without labels.
    wide: Vec<Entry>,
    /// Selector policies keyed by their first label (key, then value): a workload can only be
    /// selected if it carries that exact label, so only its own labels' buckets are visited.
    by_label: HashMap<String, HashMap<String, Vec<Entry>>>,
}

/// Authorization policies indexed by scope; immutable, rebuilt when policies change.
#[derive(Debug, Default)]
pub struct Index {
    mesh: Vec<Entry>,
    namespaces: HashMap<String, Namespace>,
    len: usize,
}

impl Index {
    pub fn new(policies: &[Arc<Policy>]) -> Self {
        let mut index = Index {
            len: policies.len(),
            ..Index::default()
        };
        for (order, policy) in policies.iter().enumerate() {
            let entry = Entry {
                order,
                policy: Arc::clone(policy),
            };
            match &policy.scope {
                Scope::Mesh => index.mesh.push(entry),
                Scope::Namespace(ns) => index.namespace(ns).wide.push(entry),
                Scope::Selector { namespace, labels } => {
                    let ns = index.namespace(namespace);
                    match labels.iter().next() {
                        None => ns.wide.push(entry),
                        Some((k, v)) => ns
                            .by_label
                            .entry(k.clone())
                            .or_default()
                            .entry(v.clone())
                            .or_default()
                            .push(entry),
                    }
                }
            }
        }
        index
    }

    fn namespace(&mut self, ns: &str) -> &mut Namespace {
        self.namespaces.entry(ns.to_string()).or_default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Same decision as [`crate::authz::evaluate`] over the policies in their original order.
    pub fn evaluate(&self, workload: &Workload, conn: &Connection) -> Decision {
        let mut slices: Vec<&[Entry]> = vec![&self.mesh];
        if let Some(ns) = self.namespaces.get(&workload.namespace) {
            slices.push(&ns.wide);
            for (k, v) in &workload.labels {
                if let Some(bucket) = ns.by_label.get(k).and_then(|vals| vals.get(v)) {
                    slices.push(bucket);
                }
            }
        }

        let mut deny: Option<&Entry> = None;
        let mut allow_selected = false;
        let mut allow_matched = false;
        for entry in slices.into_iter().flatten() {
            let policy = &entry.policy;
            if !policy.selects(workload) {
                continue;
            }
            match policy.action {
                Action::Deny => {
                    // Buckets are visited in no global order, so keep the earliest match.
                    if deny.is_none_or(|d| entry.order < d.order) && policy.matches(conn) {
                        deny = Some(entry);
                    }
                }
                Action::Allow => {
                    allow_selected = true;
                    if !allow_matched && policy.matches(conn) {
                        allow_matched = true;
                    }
                }
            }
        }
        match deny {
            Some(entry) => Decision::Deny {
                policy: format!("{}/{}", entry.policy.namespace, entry.policy.name),
            },
            None if allow_selected && !allow_matched => Decision::Deny {
                policy: crate::authz::eval::NO_ALLOW_MATCHED.to_string(),
            },
            None => Decision::Allow,
        }
    }
}

#[cfg(test)]
mod tests;
