//! Workload identities (SPIFFE IDs), the CA that signs them and the per-node certificate manager.

use std::fmt;
use std::str::FromStr;

pub mod ca;
pub mod manager;

pub use ca::{Ca, Issued};
pub use manager::{CertInfo, Manager, WorkloadCert};

/// A SPIFFE identity of the Kubernetes form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("identity must start with spiffe://, got {0:?}")]
    Scheme(String),
    #[error("identity must have the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, got {0:?}")]
    Shape(String),
}

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| ParseError::Scheme(s.to_string()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Identity::new(*td, *ns, *sa))
            }
            _ => Err(ParseError::Shape(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/sleep"
            .parse()
            .unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "sleep"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(
            "http://x/ns/a/sa/b".parse::<Identity>(),
            Err(ParseError::Scheme(_))
        ));
        assert!(matches!(
            "spiffe://x/ns/a".parse::<Identity>(),
            Err(ParseError::Shape(_))
        ));
        assert!(matches!(
            "spiffe://x/ns//sa/b".parse::<Identity>(),
            Err(ParseError::Shape(_))
        ));
    }
}
