//! A real `ztunnel` process running inside a node namespace.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::http::{self, Response};
use crate::topology::Node;

/// Readiness port (`GET /healthz/ready`).
pub const READY_PORT: u16 = 15021;
/// Prometheus port (`GET /metrics`).
pub const METRICS_PORT: u16 = 15020;
/// Admin port.
pub const ADMIN_PORT: u16 = 15000;

/// How long Drop waits after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running ztunnel; killed on drop (SIGTERM, then SIGKILL after a grace period).
pub struct Ztunnel {
    child: Child,
    netns_path: PathBuf,
    netns: String,
    /// Holds the log file; removed on drop.
    dir: tempfile::TempDir,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

/// The ztunnel binary: `$ZTUNNEL_BIN`, else `ztunnel` in the target profile directory of the
/// running test executable (`target/<profile>/deps/<test>` → `target/<profile>/ztunnel`).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ZTUNNEL_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "ZTUNNEL_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let profile_dir = exe
        .ancestors()
        .find(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .context("test executable has no parent directory")?;
    let bin = profile_dir.join("ztunnel");
    anyhow::ensure!(
        bin.is_file(),
        "ztunnel binary not found at {}: run `cargo build -p ztunnel --bins` (same profile as the \
         tests) or set ZTUNNEL_BIN",
        bin.display()
    );
    Ok(bin)
}

impl Ztunnel {
    /// Starts `ztunnel run --config <config> --node <node_name>` inside `node`'s namespace.
    pub fn start(
        node: &Node,
        config: &Path,
        node_name: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Ztunnel> {
        let bin = binary()?;
        let args = [
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--node".as_ref(),
            node_name.as_ref(),
        ];
        Self::spawn(node, &bin, &args, extra_env)
    }

    /// Runs an arbitrary program the way [`Ztunnel::start`] runs ztunnel (namespace, log
    /// capture, lifecycle); for helper daemons and for testing the harness itself.
    pub fn spawn(
        node: &Node,
        bin: &Path,
        args: &[&std::ffi::OsStr],
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Ztunnel> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ztunnel-{}-", node.netns))
            .tempdir()
            .context("cannot create a temp dir for the daemon log")?;
        let log_path = dir.path().join("ztunnel.log");
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        // `ip netns exec` execs the program, so the child pid is the daemon's own pid.
        let child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(bin)
            .args(args)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .context("cannot duplicate the log file handle")?,
            )
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} in netns {}", bin.display(), node.netns))?;
        Ok(Ztunnel {
            child,
            netns_path: node.netns_path.clone(),
            netns: node.netns.clone(),
            dir,
            log_path,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace the daemon runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the daemon wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    /// Exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Polls `GET /healthz/ready` (127.0.0.1:15021 in the node namespace) until it returns 200.
    /// Fails early, with the log, if the daemon exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                anyhow::bail!(
                    "ztunnel exited with {status} before becoming ready; log:\n{}",
                    self.log()
                );
            }
            let last = match self.get(READY_PORT, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "ztunnel not ready after {timeout:?} (last readiness answer: {last}); log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn get(&self, port: u16, path: &str) -> io::Result<Response> {
        self.request("GET", port, path)
    }

    fn request(&self, method: &str, port: u16, path: &str) -> io::Result<Response> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        http::request(&self.netns_path, addr, method, path, HTTP_TIMEOUT)
    }

    /// The Prometheus exposition from 127.0.0.1:15020/metrics. Panics (with the log) if it
    /// cannot be fetched: every caller would have to fail the test anyway.
    pub fn metrics(&self) -> String {
        match self.get(METRICS_PORT, "/metrics") {
            Ok(r) if r.status == 200 => r.body,
            Ok(r) => panic!(
                "GET /metrics returned {}: {}\nlog:\n{}",
                r.status,
                r.body,
                self.log()
            ),
            Err(e) => panic!("GET /metrics failed: {e}\nlog:\n{}", self.log()),
        }
    }

    /// `GET` on the admin port; returns status and body.
    pub fn admin_get(&self, path: &str) -> io::Result<(u16, String)> {
        self.request("GET", ADMIN_PORT, path)
            .map(|r| (r.status, r.body))
    }

    /// `POST` (empty body) on the admin port; returns status and body.
    pub fn admin_post(&self, path: &str) -> io::Result<(u16, String)> {
        self.request("POST", ADMIN_PORT, path)
            .map(|r| (r.status, r.body))
    }

    /// Sends SIGTERM (graceful drain).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.pid()).context("pid out of range")?;
        kill(Pid::from_raw(pid), signal).with_context(|| format!("cannot send {signal} to ztunnel"))
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.sigterm();
            if self.wait_exit(TERM_GRACE).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "---- ztunnel log ({}) ----\n{}---- end of log ----",
                self.netns,
                self.log()
            );
        }
        if std::env::var_os("KEEP_ZTUNNEL_LOGS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!("ztunnel log kept at {}", self.log_path.display());
        }
    }
}
