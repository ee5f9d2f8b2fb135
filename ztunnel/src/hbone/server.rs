use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Error, Settings, Stream};

/// Why a request was answered without reaching the handler; reported so callers can count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Not a CONNECT (answered 405).
    Method,
    /// `:authority` missing or not an `ip:port` (answered 400).
    Authority,
    /// Headers we cannot tunnel, e.g. an extended CONNECT `:protocol` (answered 400). Oversized
    /// header lists never get here: h2 refuses them itself.
    Headers,
}

type RejectFn = Arc<dyn Fn(RejectReason) + Send + Sync>;

/// A CONNECT request waiting for the handler's decision. Dropping it resets the stream.
pub struct Incoming {
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    recv: RecvStream,
    respond: SendResponse<Bytes>,
}

impl Incoming {
    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<Stream, Error> {
        let send = self
            .respond
            .send_response(response(StatusCode::OK), false)?;
        Ok(Stream::new(send, self.recv, None))
    }

    /// Answers `status` and ends the stream (e.g. 401 when authorization denies it, 503 when the
    /// destination is unreachable).
    pub fn reject(mut self, status: u16) -> Result<(), Error> {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.respond.send_response(response(status), true)?;
        Ok(())
    }
}

/// Serves HBONE connections: one [`Server`] (cheap to clone) handles any number of connections,
/// each through [`Server::serve`].
pub struct Server<H> {
    settings: Settings,
    handler: Arc<H>,
    reject: RejectFn,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Server {
            settings: self.settings.clone(),
            handler: self.handler.clone(),
            reject: self.reject.clone(),
        }
    }
}

impl<H, F> Server<H>
where
    H: Fn(Incoming) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    /// `handler` runs in its own task per accepted CONNECT.
    pub fn new(settings: Settings, handler: H) -> Server<H> {
        Server {
            settings,
            handler: Arc::new(handler),
            reject: Arc::new(|_| {}),
        }
    }

    /// Called for every request answered without reaching the handler.
    pub fn on_reject(mut self, reject: impl Fn(RejectReason) + Send + Sync + 'static) -> Self {
        self.reject = Arc::new(reject);
        self
    }

    /// Drives one connection until the peer closes it. When `drain` resolves, a GOAWAY is
    /// sent and the streams already accepted may finish before this returns.
    pub async fn serve<IO>(&self, io: IO, drain: impl Future<Output = ()>) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(self.settings.stream_window)
            .initial_connection_window_size(self.settings.connection_window)
            .max_frame_size(self.settings.max_frame_size)
            .max_header_list_size(self.settings.max_header_list_size)
            .max_concurrent_streams(self.settings.max_concurrent_streams)
            .max_send_buffer_size(self.settings.send_buffer_size)
            .handshake::<_, Bytes>(io)
            .await?;
        let mut drain = pin!(drain);
        let mut draining = false;
        loop {
            let next = poll_fn(|cx| {
                if !draining && drain.as_mut().poll(cx).is_ready() {
                    draining = true;
                    conn.graceful_shutdown();
                }
                conn.poll_accept(cx)
            })
            .await;
            match next {
                Some(Ok((request, respond))) => self.dispatch(request, respond),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        poll_fn(|cx| match conn.poll_closed(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => Poll::Pending,
        })
        .await?;
        Ok(())
    }

    fn dispatch(&self, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
        let rejection = if request.method() != Method::CONNECT {
            Some((RejectReason::Method, StatusCode::METHOD_NOT_ALLOWED))
        } else if request.extensions().get::<h2::ext::Protocol>().is_some() {
            Some((RejectReason::Headers, StatusCode::BAD_REQUEST))
        } else {
            None
        };
        let authority = request
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let (reason, status) = match (rejection, authority) {
            (None, Some(authority)) => {
                let (parts, recv) = request.into_parts();
                let incoming = Incoming {
                    authority,
                    headers: parts.headers,
                    recv,
                    respond,
                };
                tokio::spawn((self.handler)(incoming));
                return;
            }
            (Some(rejection), _) => rejection,
            (None, None) => (RejectReason::Authority, StatusCode::BAD_REQUEST),
        };
        debug!(?reason, method = %request.method(), uri = %request.uri(), "hbone request rejected");
        (self.reject)(reason);
        if let Err(e) = respond.send_response(response(status), true) {
            debug!(error = %e, "hbone rejection could not be sent");
        }
    }
}

fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
