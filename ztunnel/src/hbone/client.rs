use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::debug;

use super::{Error, Settings, Stream};

/// Sending half of one HBONE connection. Cheap to clone; every clone multiplexes onto the same
/// connection, whose h2 driver runs in a background task until the peer goes away, a keepalive
/// PING goes unanswered or [`Client::close`] is called.
pub struct Client {
    send: h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
    /// This handle holds one of the connection's stream slots (taken by the pool when it picked
    /// the connection), which its first `connect` uses; given back if it is never used.
    reserved: AtomicBool,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Client {
            send: self.send.clone(),
            shared: self.shared.clone(),
            reserved: AtomicBool::new(false),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.reserved.swap(false, Ordering::AcqRel) {
            self.shared.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Shared {
    closed: AtomicBool,
    active: AtomicUsize,
    /// Most streams it has carried at once: h2 keeps its stream tables at their high-water
    /// size for the connection's life, so the pool does not keep a grown one idle.
    peak: AtomicUsize,
    /// Last time the connection had a stream opened or closed; the pool's idle clock.
    last_used: Mutex<Instant>,
    close: Notify,
}

impl Shared {
    fn touch(&self) {
        *self
            .last_used
            .lock()
            .expect("last_used lock is never held across a panic") = Instant::now();
    }
}

/// Counts a stream as active on its connection for as long as the tunnel lives.
pub(crate) struct StreamGuard(Arc<Shared>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

impl Client {
    /// Performs the HTTP/2 handshake over an established transport and spawns the connection
    /// driver (with keepalive) on the current tokio runtime.
    pub async fn handshake<IO>(io: IO, settings: &Settings) -> Result<Client, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .max_send_buffer_size(settings.send_buffer_size)
            // Until the peer's SETTINGS arrive, assume it allows what we allow (peers are
            // ztunnels): h2's default of unlimited would let the pool hand a brand-new
            // connection to any number of concurrent callers.
            .initial_max_send_streams(settings.max_concurrent_streams as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let shared = Arc::new(Shared {
            closed: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        let ping_pong = conn.ping_pong();
        let driver_shared = shared.clone();
        let (interval, timeout) = (settings.keepalive_interval, settings.keepalive_timeout);
        tokio::spawn(async move {
            let result = tokio::select! {
                r = &mut conn => r.map_err(Error::from),
                r = keepalive(ping_pong, interval, timeout) => r,
                _ = driver_shared.close.notified() => Ok(()),
            };
            driver_shared.closed.store(true, Ordering::Release);
            match result {
                Ok(()) => debug!("hbone client connection closed"),
                Err(e) => debug!(error = %e, "hbone client connection failed"),
            }
            // Dropping `conn` here closes the transport, failing any streams still open.
            drop(conn);
            crate::memory::tunnel_connection_closed();
        });
        Ok(Client {
            send,
            shared,
            reserved: AtomicBool::new(false),
        })
    }

    /// Opens a tunnel to `authority` (the final destination `ip:port`). Any status other than
    /// 200 is returned as [`Error::Status`].
    pub async fn connect(
        &self,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<Stream, Error> {
        self.connect_with(authority, headers, Bytes::new()).await
    }

    /// [`Client::connect`], sending `early` (bytes the client already sent, if any) right
    /// behind the request instead of after the 200: they leave in the same write as the
    /// CONNECT and reach the destination one round trip sooner. A CONNECT proxy treats every
    /// DATA frame after the request's HEADERS as the tunnel's bytes (RFC 9113, section 8.5)
    /// and holds them, under flow control, until its upstream is connected. If the status is
    /// not 200 they are lost with the tunnel.
    pub async fn connect_with(
        &self,
        authority: SocketAddr,
        headers: HeaderMap,
        early: Bytes,
    ) -> Result<Stream, Error> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string())
            .body(())
            .expect("a socket address is a valid authority-form URI");
        *request.headers_mut() = headers;

        // Counted before the request goes out so concurrent callers see the slot as taken
        // (unless the pool already took it for this handle).
        if !self.reserved.swap(false, Ordering::AcqRel) {
            let now = self.shared.active.fetch_add(1, Ordering::AcqRel) + 1;
            self.shared.peak.fetch_max(now, Ordering::AcqRel);
        }
        let guard = StreamGuard(self.shared.clone());
        self.shared.touch();

        let mut send = self.send.clone().ready().await?;
        let (response, mut send_stream) = send.send_request(request, false)?;
        if !early.is_empty() {
            // Queued beside the HEADERS before this task yields, so the connection task
            // writes both at once; h2 takes the stream's window for it as it sends.
            send_stream.send_data(early, false)?;
        }
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(Error::Status(response.status().as_u16()));
        }
        Ok(Stream::new(send_stream, response.into_body(), Some(guard)))
    }

    /// True while the connection is alive and below the peer's concurrent stream limit.
    pub fn is_ready(&self) -> bool {
        !self.is_closed() && self.active_streams() < self.send.current_max_send_streams()
    }

    /// A handle that holds one stream slot of this connection, if one is free. Checking
    /// [`Client::is_ready`] and opening later would let concurrent callers all pass the check
    /// and overshoot the peer's limit; the extra streams would then wait in h2 until another
    /// stream closes, forever when the others are long-lived idle tunnels.
    pub(crate) fn try_reserve(&self) -> Option<Client> {
        if self.is_closed() {
            return None;
        }
        let max = self.send.current_max_send_streams();
        let before = self
            .shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.shared.peak.fetch_max(before + 1, Ordering::AcqRel);
        let handle = self.clone();
        handle.reserved.store(true, Ordering::Release);
        Some(handle)
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub fn active_streams(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// The most streams the connection has carried at once.
    pub fn peak_streams(&self) -> usize {
        self.shared.peak.load(Ordering::Acquire)
    }

    /// How long the connection has had no stream opened or closed.
    pub fn idle_for(&self) -> Duration {
        if self.active_streams() > 0 {
            return Duration::ZERO;
        }
        self.shared
            .last_used
            .lock()
            .expect("last_used lock is never held across a panic")
            .elapsed()
    }

    /// Closes the connection (abruptly, for all clones); streams still open fail.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close.notify_one();
    }

    pub(crate) fn touch(&self) {
        self.shared.touch();
    }

    /// Whether two handles share one connection.
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// Resolves with an error once a PING goes unanswered for `timeout`; never resolves otherwise.
async fn keepalive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) -> Result<(), Error> {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => continue,
            Ok(Err(e)) => return Err(e.into()),
            Err(_elapsed) => return Err(Error::Timeout),
        }
    }
}
