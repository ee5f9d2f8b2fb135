//! Request headers ztunnel attaches to outbound CONNECTs.
//!
//! Istio's ztunnel sends `forwarded` (RFC 7239, `for=` the original client address), a fresh W3C
//! `traceparent` per connection and a `baggage` header describing the source workload. Baggage
//! needs workload metadata this layer does not have, so the outbound proxy adds it itself.

use std::io::Write;
use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, InvalidHeaderValue, FORWARDED};

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
    value(format_args!("for=\"{client_addr}\""))
        .expect("an IP address is always a valid header value")
}

/// A new sampled W3C trace context: `00-<trace id>-<span id>-01`, ids never all-zero.
pub fn traceparent() -> HeaderValue {
    let trace_id = rand::random::<u128>().max(1);
    let span_id = rand::random::<u64>().max(1);
    value(format_args!("00-{trace_id:032x}-{span_id:016x}-01"))
        .expect("hex digits are always a valid header value")
}

/// A header value formatted on the stack and copied once into its own buffer: `format!` would
/// grow a `String` a few times and `HeaderValue` then copy it again, on every connection.
pub fn value(args: std::fmt::Arguments<'_>) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut buf = [0u8; 512];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    match cursor.write_fmt(args) {
        Ok(()) => {
            let len = usize::try_from(cursor.position()).expect("at most the buffer's length");
            HeaderValue::from_bytes(&buf[..len])
        }
        // Longer than the buffer (very long workload names): the allocating way.
        Err(_) => HeaderValue::from_str(&std::fmt::format(args)),
    }
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
