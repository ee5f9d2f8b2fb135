//! Logging: one subscriber for the process, text or JSON, with a level that the admin
//! endpoint can change at run time. Access log lines are events with target `access`. Lines
//! are written to stdout by a thread of their own (`output`).

mod output;

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

use output::Output;

/// The process's log output, started by the first `init`.
static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Changes the active log filter (`info`, `debug`, `access=info,warn`, ...).
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid log level {level:?}: {reason}")]
    Level { level: String, reason: String },
    #[error("logging is not initialised")]
    Gone,
}

/// `RUST_LOG` wins over the default `info` so operators can start verbose.
pub fn init(format: LogFormat) -> LogControl {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let Some(output) = output() else {
        // No thread for the output: log from the workers, as slowly as stdout takes it.
        let _ = match format {
            LogFormat::Json => registry.with(json()).try_init(),
            LogFormat::Text => registry.with(text()).try_init(),
        };
        return LogControl { handle };
    };
    // A second init (tests starting several apps) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Json => registry.with(json().with_writer(output)).try_init(),
        LogFormat::Text => registry.with(text().with_writer(output)).try_init(),
    };
    LogControl { handle }
}

fn json<S>() -> fmt::Layer<S, fmt::format::JsonFields, fmt::format::Format<fmt::format::Json>> {
    fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
}

fn text<S>() -> fmt::Layer<S> {
    fmt::layer().with_ansi(false)
}

/// The output thread, started on first use; None if the thread cannot be started.
fn output() -> Option<Output> {
    if let Some(output) = OUTPUT.get() {
        return Some(output.clone());
    }
    match Output::spawn(std::io::stdout(), output::LIMIT) {
        Ok(output) => Some(OUTPUT.get_or_init(|| output).clone()),
        Err(e) => {
            eprintln!("cannot start the log output thread ({e}); logging from the workers");
            None
        }
    }
}

/// Writes out the lines still buffered (for at most a second). Call before the process exits.
pub fn flush() {
    if let Some(output) = OUTPUT.get() {
        output.flush();
    }
}

impl LogControl {
    pub fn set(&self, level: &str) -> Result<(), Error> {
        let filter = EnvFilter::try_new(level).map_err(|e| Error::Level {
            level: level.to_string(),
            reason: e.to_string(),
        })?;
        self.handle.reload(filter).map_err(|_| Error::Gone)
    }

    pub fn current(&self) -> String {
        self.handle
            .with_current(|f| f.to_string())
            .unwrap_or_default()
    }
}
