//! Logging: one subscriber for the process, text or JSON, with a level that the admin
//! endpoint can change at run time. Access log lines are events with target `access`.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use crate::config::LogFormat;

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
    // A second init (tests starting several apps) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            )
            .try_init(),
        LogFormat::Text => registry.with(fmt::layer().with_ansi(false)).try_init(),
    };
    LogControl { handle }
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
