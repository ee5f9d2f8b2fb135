use std::time::Duration;

/// HTTP/2 tuning shared by HBONE clients and servers. Defaults favour bulk throughput: a
/// stream may have 4 MiB in flight before the receiver must read, so one tunnel can fill a
/// high bandwidth-delay link, while the connection window bounds the total per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Initial per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
    pub stream_window: u32,
    /// Receive window for the whole connection.
    pub connection_window: u32,
    /// Largest DATA frame we accept (SETTINGS_MAX_FRAME_SIZE).
    pub max_frame_size: u32,
    /// Header lists above this are refused (431 / REFUSED_STREAM) by h2 before we see them.
    pub max_header_list_size: u32,
    /// Streams a peer may open concurrently on one server connection; our clients use what
    /// the peer advertises. An HBONE connection costs its two ends about 80 KB of TLS, HTTP/2
    /// and HPACK state, so more streams per connection means less memory per proxied
    /// connection (in the bench about 5.8 KB each at 100 streams, 4.4 KB at 1,000), at the
    /// price of one TLS session carrying up to this many tunnels between two workloads.
    pub max_concurrent_streams: u32,
    /// Data h2 may queue per stream before a writer has to wait for it to hit the wire.
    pub send_buffer_size: usize,
    /// Client connections send a PING this often...
    pub keepalive_interval: Duration,
    /// ...and are closed when the PONG takes longer than this.
    pub keepalive_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 1024 * 1024,
            max_header_list_size: 16 * 1024,
            max_concurrent_streams: 1000,
            send_buffer_size: 1024 * 1024,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
        }
    }
}
