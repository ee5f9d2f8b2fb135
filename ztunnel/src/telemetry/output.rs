//! Where log lines go: standard output, written by a thread of its own. A worker that logs
//! (every proxied connection writes an access line when it ends) appends the formatted line to
//! a shared buffer and goes on; the output thread writes what has gathered in one `write`.
//! So a worker never waits for a slow terminal, a full container-runtime pipe or disk, and
//! under load many lines cost one syscall instead of one each.
//!
//! The price: lines reach the output up to `GATHER` later, and the ones still buffered are
//! lost if the process is killed (`flush` runs on every orderly exit). When the output falls
//! `limit` bytes behind, new lines are dropped and counted, and a warning with the count
//! follows once it catches up: a stalled log reader must not grow ztunnel's memory without
//! bound or stall the data path.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the output thread lets lines gather after the first one of a batch. Each batch
/// wakes the thread twice (the first line's notify, then the end of this sleep), so under
/// connection churn a short gather costs a context switch on a worker's CPU every time: at 1
/// ms that was about 1,400 switches a second. 10 ms keeps a batch of 20,000 lines a second
/// (about 60 KB) under `KEEP_CAPACITY`, and a log line 10 ms late is still prompt.
const GATHER: Duration = Duration::from_millis(10);
/// Bytes waiting to be written above which new lines are dropped.
pub const LIMIT: usize = 4 << 20;
/// A batch buffer grown past this by a burst is not kept for the next one.
const KEEP_CAPACITY: usize = 64 << 10;
/// How long `flush` waits for the output before giving up (a blocked stdout must not hold up
/// the exit).
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// The subscriber's writer; cheap to clone, every clone appends to the same buffer.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The output thread waits here for the first line of a batch or a flush.
    wake: Condvar,
    /// `flush` waits here for the output thread to have written.
    written: Condvar,
    limit: usize,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// Lines dropped since the last batch because `pending` was full.
    dropped: u64,
    /// Bytes ever appended, and ever handed to the sink: `flush` waits for the second to
    /// reach what the first was when it was called.
    appended: u64,
    written: u64,
    /// The output thread is waiting on `wake` (appending only signals then: a notify is a
    /// syscall).
    idle: bool,
    flush: bool,
    /// Callers of `flush` waiting on `written` (the output thread signals only then).
    flushing: usize,
}

impl Output {
    /// Starts the output thread writing to `sink`.
    pub fn spawn(sink: impl Write + Send + 'static, limit: usize) -> std::io::Result<Output> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            limit,
        });
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("ztunnel-log".into())
            .spawn(move || thread_shared.run(sink))?;
        Ok(Output { shared })
    }

    /// Appends one formatted line (or drops it if the output is too far behind).
    fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.pending.len() + line.len() > self.shared.limit {
            state.dropped += 1;
            return;
        }
        state.pending.extend_from_slice(line);
        state.appended += line.len() as u64;
        if std::mem::take(&mut state.idle) {
            drop(state);
            self.shared.wake.notify_one();
        }
    }

    /// Waits until everything appended so far has been written, or `FLUSH_WAIT` passed.
    pub fn flush(&self) {
        let mut state = self.shared.lock();
        let target = state.appended;
        state.flush = true;
        state.flushing += 1;
        self.shared.wake.notify_one();
        let (mut state, _timeout) = self
            .shared
            .written
            .wait_timeout_while(state, FLUSH_WAIT, |s| s.written < target)
            .expect("the log state lock is never held across a panic");
        state.flushing -= 1;
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the log state lock is never held across a panic")
    }

    fn run(&self, mut sink: impl Write) {
        let mut batch = Vec::new();
        loop {
            let mut state = self.lock();
            while state.pending.is_empty() && !state.flush {
                state.idle = true;
                state = self
                    .wake
                    .wait(state)
                    .expect("the log state lock is never held across a panic");
            }
            state.idle = false;
            if !std::mem::take(&mut state.flush) {
                // Let the rest of a burst join this line: one write for all of them.
                drop(state);
                std::thread::sleep(GATHER);
                state = self.lock();
            }
            std::mem::swap(&mut state.pending, &mut batch);
            let dropped = std::mem::take(&mut state.dropped);
            let upto = state.appended;
            drop(state);

            // A failed write (stdout closed, disk full) loses these lines; there is nowhere
            // better to report it.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch = Vec::new();
            }
            if dropped > 0 {
                // Goes through the subscriber like any line, into the next batch.
                tracing::warn!(dropped, "log output fell behind: lines dropped");
            }

            let mut state = self.lock();
            state.written = upto;
            let flushing = state.flushing > 0;
            drop(state);
            if flushing {
                self.written.notify_all();
            }
        }
    }
}

/// One line being written by the formatter (it writes each event whole, once).
pub struct Line<'a>(&'a Output);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

#[cfg(test)]
mod tests;
