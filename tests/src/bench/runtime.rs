//! A single-threaded tokio runtime pinned to a network namespace.
//!
//! The runtime's only thread enters the namespace once, so every socket its tasks create
//! (listeners, outgoing connections) belongs to that namespace, and connecting costs no extra
//! thread per socket the way `netns::connect` does.

use std::future::Future;
use std::path::Path;
use std::thread::JoinHandle;

use anyhow::Context;
use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    /// The runtime thread's id, for its CPU time.
    tid: i32,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    pub fn start(netns: &Path, name: &str) -> anyhow::Result<NsRuntime> {
        let ns = std::fs::File::open(netns)
            .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("bench-{name}"))
            .spawn(move || {
                let rt = setns(&ns, CloneFlags::CLONE_NEWNET)
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .map_err(anyhow::Error::from)
                    });
                match rt {
                    Ok(rt) => {
                        let tid = nix::unistd::gettid().as_raw();
                        let _ = handle_tx.send(Ok((rt.handle().clone(), tid)));
                        // Driving this future also drives every task spawned on the handle.
                        rt.block_on(async {
                            let _ = stop_rx.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })
            .context("cannot spawn a runtime thread")?;
        let (handle, tid) = handle_rx
            .recv()
            .context("runtime thread died before starting")?
            .with_context(|| format!("cannot start a runtime in {}", netns.display()))?;
        Ok(NsRuntime {
            handle,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// User + system CPU time of the runtime's thread (all of its tasks) so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        super::proc::thread_cpu_seconds(self.tid)
    }

    /// Spawns `fut` on the namespace's thread without waiting.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    /// Runs `fut` on the namespace's thread and waits for its result (`Handle::block_on` would
    /// poll it on the calling thread, i.e. in the wrong namespace).
    pub fn run<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .expect("benchmark task panicked (its runtime thread reports the panic)")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
