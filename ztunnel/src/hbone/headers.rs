//! Request headers ztunnel attaches to outbound CONNECTs.
//!
//! Istio's ztunnel sends `forwarded` (RFC 7239, `for=` the original client address), a fresh W3C
//! `traceparent` per connection and a `baggage` header describing the source workload. Baggage
//! needs workload metadata this layer does not have, so the outbound proxy adds it itself.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// Headers for a CONNECT carrying a connection that originated at `client_addr`.
pub fn outbound(client_addr: SocketAddr) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert(FORWARDED, forwarded(client_addr));
    headers.insert(TRACEPARENT, traceparent());
    headers
}

/// RFC 7239 `for=` node with its port, as Istio's ztunnel sends it (`for="10.0.0.1:41000"`,
/// `for="[fd00::1]:41000"`); a node with a port must be quoted.
pub fn forwarded(client_addr: SocketAddr) -> HeaderValue {
    let value = format!("for=\"{client_addr}\"");
    HeaderValue::from_str(&value).expect("an IP address is always a valid header value")
}

/// A new sampled W3C trace context: `00-<trace id>-<span id>-01`, ids never all-zero.
pub fn traceparent() -> HeaderValue {
    let trace_id = rand::random::<u128>().max(1);
    let span_id = rand::random::<u64>().max(1);
    let value = format!("00-{trace_id:032x}-{span_id:016x}-01");
    HeaderValue::from_str(&value).expect("hex digits are always a valid header value")
}

/// The original client address from a `forwarded: for=` header, if present and parseable.
pub fn forwarded_for(headers: &HeaderMap) -> Option<std::net::IpAddr> {
    let value = headers.get(FORWARDED)?.to_str().ok()?;
    let node = value
        .split([';', ','])
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix("for=").or_else(|| kv.strip_prefix("For=")))?;
    let node = node.trim_matches('"');
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let node = node
        .strip_prefix('[')
        .and_then(|n| n.split(']').next())
        .unwrap_or(node);
    node.parse().ok()
}
