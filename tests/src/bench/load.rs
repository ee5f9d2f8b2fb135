//! The load generator: an echo server, request/response latency at a fixed and at the maximum
//! rate, connection rate, and many idle connections. Requests are `MESSAGE` bytes echoed back.

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::runtime::NsRuntime;

/// Request and response size of the latency scenarios.
pub const MESSAGE: usize = 1024;
/// Connections of the maximum-rate latency scenario (closed loop, one request in flight each).
pub const MAX_RATE_CONNECTIONS: usize = 4;
/// Concurrent connect/echo/close loops of the connection-rate scenario.
pub const CONNECT_CONCURRENCY: usize = 16;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A 1-byte echo that takes this long is a stuck connection: fail instead of hanging.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts an echo server on `[::]:port` (dual stack) on `rt`; it runs until `rt` is dropped.
pub fn echo_server(rt: &NsRuntime, port: u16) -> anyhow::Result<()> {
    let listener = rt.run(async move {
        let socket = TcpSocket::new_v6()?;
        socket.set_reuseaddr(true)?;
        let sock = socket2::SockRef::from(&socket);
        sock.set_only_v6(false)?;
        socket.bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
        socket.listen(4096)
    });
    let listener: TcpListener = listener.with_context(|| format!("echo server on port {port}"))?;
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    });
    Ok(())
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // Small: thousands of idle connections hold one each.
    let mut buf = vec![0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn roundtrip(stream: &mut TcpStream, out: &[u8], back: &mut [u8]) -> anyhow::Result<()> {
    stream.write_all(out).await.context("sending a request")?;
    stream
        .read_exact(back)
        .await
        .context("reading a response")?;
    Ok(())
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds, and the achieved rate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub requests: u64,
    pub rate: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Latency {
    /// The percentiles by the names the sample keys use.
    pub fn percentiles(&self) -> [(&'static str, f64); 4] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
        ]
    }

    pub(crate) fn from(h: &Histogram<u64>, elapsed: Duration) -> Latency {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
        Latency {
            requests: h.len(),
            rate: h.len() as f64 / elapsed.as_secs_f64(),
            p50: us(0.50),
            p90: us(0.90),
            p99: us(0.99),
            p999: us(0.999),
        }
    }
}

/// One connection sending `rate` requests per second for `duration`. Latency counts from when
/// each request was sent: tokio's timer has millisecond granularity, so counting from when it
/// was due would add up to a millisecond of timer lateness to every sample. A request that is
/// late (the previous one took longer than the period) goes out at once, so the rate holds.
pub fn fixed_rate(
    rt: &NsRuntime,
    addr: SocketAddr,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Latency> {
    rt.run(async move {
        let mut stream = connect(addr).await?;
        let (out, mut back) = (vec![0x5au8; MESSAGE], vec![0u8; MESSAGE]);
        // Warm the path (pooled HBONE connection, TCP windows) before measuring.
        for _ in 0..100 {
            roundtrip(&mut stream, &out, &mut back).await?;
        }
        let period = Duration::from_secs(1) / rate;
        let total = u64::from(rate) * duration.as_secs();
        let mut h = histogram();
        let start = tokio::time::Instant::now();
        for i in 0..total {
            let due = start + period * u32::try_from(i).context("too many requests")?;
            tokio::time::sleep_until(due).await;
            let sent = Instant::now();
            roundtrip(&mut stream, &out, &mut back).await?;
            let ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
            h.record(ns.max(1)).context("recording a latency")?;
        }
        Ok(Latency::from(&h, start.elapsed()))
    })
}

/// `MAX_RATE_CONNECTIONS` connections each sending the next request as soon as the response
/// arrives, for `duration`.
pub fn max_rate(rt: &NsRuntime, addr: SocketAddr, duration: Duration) -> anyhow::Result<Latency> {
    rt.run(async move {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..MAX_RATE_CONNECTIONS {
            tasks.push(tokio::spawn(async move {
                let mut stream = connect(addr).await?;
                let (out, mut back) = (vec![0x5au8; MESSAGE], vec![0u8; MESSAGE]);
                let mut h = histogram();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    roundtrip(&mut stream, &out, &mut back).await?;
                    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    h.record(ns.max(1)).context("recording a latency")?;
                }
                anyhow::Ok(h)
            }));
        }
        let mut all = histogram();
        for t in tasks {
            let h = t.await.context("latency task panicked")??;
            all.add(&h).context("merging histograms")?;
        }
        Ok(Latency::from(&all, start.elapsed()))
    })
}

/// Connections per second, each: connect, 1-byte echo, close. Returns (rate, failures).
pub fn connection_rate(
    rt: &NsRuntime,
    addr: SocketAddr,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    rt.run(async move {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = Vec::new();
        for _ in 0..CONNECT_CONCURRENCY {
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let one = async {
                        let mut s = connect(addr).await?;
                        let mut b = [0u8; 1];
                        tokio::time::timeout(ECHO_TIMEOUT, roundtrip(&mut s, &[1], &mut b))
                            .await
                            .context("echo timed out")?
                    };
                    match one.await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await.context("connection task panicked")?;
            ok += o;
            failed += f;
        }
        Ok((ok as f64 / start.elapsed().as_secs_f64(), failed))
    })
}

/// Opens `n` connections to `addr` (64 at a time), each proven end to end with a 1-byte echo,
/// and returns them open and idle.
pub fn open_idle(rt: &NsRuntime, addr: SocketAddr, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    rt.run(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let sem = sem.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let mut s = connect(addr).await?;
                let mut b = [0u8; 1];
                tokio::time::timeout(ECHO_TIMEOUT, roundtrip(&mut s, &[1], &mut b))
                    .await
                    .with_context(|| format!("no echo through {addr} within {ECHO_TIMEOUT:?}"))??;
                anyhow::Ok(s)
            }));
        }
        let mut streams = Vec::with_capacity(n);
        for t in tasks {
            streams.push(t.await.context("connection task panicked")??);
        }
        Ok(streams)
    })
}
