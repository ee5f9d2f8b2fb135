//! Data-path errors in the shape Pingora uses: what went wrong, whose fault it was, and whether
//! trying again could help. Every failed connection is counted and logged with these.

use std::fmt;

use crate::metrics::ResponseFlags;

/// What failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The accepted socket has no original destination (not redirected, or state already gone).
    OriginalDst,
    /// TCP connect to the upstream (peer ztunnel or app) failed or timed out.
    Connect,
    /// TLS handshake failed (bad or missing certificate, wrong identity, not TLS at all).
    Tls,
    /// The HBONE (HTTP/2 CONNECT) exchange failed or was refused by the peer.
    Hbone,
    /// Authorization policy denied the connection, at connect time or after a policy change.
    Denied,
    /// Plaintext arrived for a workload that requires mutual TLS.
    StrictMtls,
    /// The CONNECT target is not an address of this pod.
    Authority,
    /// No certificate could be had for a local identity.
    Identity,
    /// Reading or writing an established connection failed.
    Io,
}

/// Whose fault it was: decides log level and tells operators where to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The side that opened the connection (app or peer ztunnel) misbehaved.
    Downstream,
    /// The side we connected to failed.
    Upstream,
    /// Policy decided, nothing is broken.
    Policy,
    /// A bug or resource problem here.
    Internal,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub fault: Fault,
    pub retryable: bool,
    pub reason: String,
}

impl Error {
    pub fn new(kind: Kind, fault: Fault, reason: impl fmt::Display) -> Self {
        let retryable = matches!(kind, Kind::Connect);
        Self {
            kind,
            fault,
            retryable,
            reason: reason.to_string(),
        }
    }

    pub fn denied(reason: impl fmt::Display) -> Self {
        Self::new(Kind::Denied, Fault::Policy, reason)
    }

    /// Istio's response flag for a connection that failed this way.
    pub fn response_flags(&self) -> ResponseFlags {
        match self.kind {
            Kind::Denied | Kind::StrictMtls => ResponseFlags::Deny,
            Kind::Connect | Kind::Tls | Kind::Hbone | Kind::Identity => ResponseFlags::Connect,
            Kind::OriginalDst | Kind::Authority | Kind::Io => ResponseFlags::None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({:?} fault): {}",
            self.kind, self.fault, self.reason
        )
    }
}

impl std::error::Error for Error {}
