//! Builds the daemon from a configuration file and runs it until SIGTERM, SIGINT or
//! `/quitquitquit`, then drains.

mod reload;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::capture::{self, Backend};
use crate::config::{self, CaptureMode, Config, FailMode};
use crate::hbone;
use crate::identity::{Ca, Manager};
use crate::inbound::Tracker;
use crate::metrics::Metrics;
use crate::pod::Registry;
use crate::proxy::Context;
use crate::state::Store;
use crate::telemetry;

pub async fn run(config_path: &Path, node: &str) -> anyhow::Result<()> {
    let loaded = config::load(config_path, node).map_err(|e| anyhow::anyhow!("{e}"))?;
    let log = telemetry::init(loaded.config.log_format);
    let config = Arc::new(loaded.config);
    tracing::info!(node, config = %config_path.display(), "starting ztunnel");

    let ca = match &config.ca {
        Some(files) => Ca::load_or_create(
            Some(&files.root_cert),
            Some(&files.root_key),
            &config.state_dir,
        ),
        None => Ca::load_or_create(None, None, &config.state_dir),
    }
    .context("loading the CA")?;
    let identities = Manager::new(Arc::new(ca), config.certificate_ttl);
    let store = Arc::new(Store::new(loaded.state));
    let metrics = Arc::new(Metrics::new());
    let settings = hbone::Settings {
        keepalive_interval: config.pool.keepalive_interval,
        keepalive_timeout: config.pool.keepalive_timeout,
        ..hbone::Settings::default()
    };
    let ctx = Arc::new(Context {
        pool: hbone::Pool::new(settings.clone(), config.pool.idle_timeout),
        hbone: settings,
        config: config.clone(),
        store: store.clone(),
        identities,
        metrics,
        tracker: Tracker::default(),
        local: Default::default(),
        draining: CancellationToken::new(),
        stopped: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });

    let backend = capture_backend(&config, &ctx)?;
    let registry = Arc::new(Registry::new(ctx.clone(), backend));
    let admin = Arc::new(Admin {
        ctx: ctx.clone(),
        log,
        ready: Default::default(),
        quit: CancellationToken::new(),
        renewals_seen: Default::default(),
    });
    // The node-local endpoints outlive the drain so probes and scrapes see it happen.
    let endpoints_stop = CancellationToken::new();
    let bind = |addr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))
    };
    let l = &config.listeners;
    tokio::spawn(
        admin
            .clone()
            .serve_admin(bind(l.admin).await?, endpoints_stop.clone()),
    );
    tokio::spawn(
        admin
            .clone()
            .serve_metrics(bind(l.metrics).await?, endpoints_stop.clone()),
    );
    tokio::spawn(
        admin
            .clone()
            .serve_readiness(bind(l.readiness).await?, endpoints_stop.clone()),
    );

    let initial = registry.reconcile(&store.load()).await;
    if initial.is_empty() {
        // Only once every pod is back: a pod that failed to re-enroll keeps its pinned capture.
        registry.release_stale();
        admin.ready.store(true, Ordering::Release);
        let pods = registry.running().await;
        tracing::info!(pods, "ready");
    }
    // Start-up (config, certificates, capture set-up) leaves freed memory in the arenas.
    crate::memory::trim();
    tokio::spawn(reload::watch(
        PathBuf::from(config_path),
        config.clone(),
        store.clone(),
        ctx.stopped.clone(),
    ));
    tokio::spawn(react(ctx.clone(), registry.clone(), admin.clone()));
    tokio::spawn(crate::memory::trim_after_closes(endpoints_stop.clone()));

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = admin.quit.cancelled() => tracing::info!("quitquitquit: draining"),
    }
    drain(&ctx, &admin, &registry).await;
    endpoints_stop.cancel();
    Ok(())
}

/// The ports and marks every capture backend needs, from the node settings.
fn capture_settings(config: &Config) -> (capture::Ports, capture::Marks) {
    let ports = capture::Ports {
        outbound: config.listeners.outbound,
        inbound_plaintext: config.listeners.inbound_plaintext,
        hbone: config.listeners.hbone,
    };
    let marks = capture::Marks {
        bypass: config.socket_mark,
        delivery: config.delivery_mark,
    };
    (ports, marks)
}

/// The configured capture backend. `auto` prefers eBPF and falls back to nftables with one log
/// line saying why; an explicit `ebpf` that cannot load stops ztunnel.
fn capture_backend(config: &Config, ctx: &Context) -> anyhow::Result<Option<Arc<dyn Backend>>> {
    let (ports, marks) = capture_settings(config);
    let ebpf = |ebpf: capture::Ebpf| -> Arc<dyn Backend> {
        let ebpf = Arc::new(ebpf);
        tracing::info!(cgroup = %ebpf.cgroup().display(), "capturing with eBPF");
        let source = ebpf.clone();
        ctx.metrics
            .set_ebpf_source(Box::new(move || source.sample()));
        ebpf
    };
    let probe_sources = config.health_probes.bypassed();
    let options = capture::ebpf::Options {
        probe_sources: probe_sources.clone(),
        pin_dir: (config.capture_fail_mode == FailMode::Closed).then(|| config.bpf_pin_dir.clone()),
        dns_port: config.dns_capture.then_some(config.listeners.dns),
    };
    let dns_port = options.dns_port;
    let nftables = || -> Arc<dyn Backend> {
        Arc::new(
            capture::Nftables::new(ports, marks)
                .with_probe_sources(probe_sources.clone())
                .with_dns(dns_port),
        )
    };
    Ok(match config.capture {
        CaptureMode::Auto => match capture::Ebpf::load(ports, marks, &options) {
            Ok(loaded) => Some(ebpf(loaded)),
            Err(e) => {
                tracing::warn!(reason = %e, "eBPF capture unavailable; capturing with nftables");
                Some(nftables())
            }
        },
        CaptureMode::Ebpf => Some(ebpf(
            capture::Ebpf::load(ports, marks, &options)
                .context("loading eBPF capture (capture: ebpf)")?,
        )),
        CaptureMode::Nftables => Some(nftables()),
        CaptureMode::None => None,
    })
}

/// Applies every new snapshot: pods to start or stop, connections policy no longer allows.
async fn react(ctx: Arc<Context>, registry: Arc<Registry>, admin: Arc<Admin>) {
    let mut changes = ctx.store.subscribe();
    let mut retry = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ctx.stopped.cancelled() => return,
            _ = ctx.draining.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
            // Pods that failed to start (namespace not there yet, say) are retried.
            _ = retry.tick() => if admin.ready.load(Ordering::Acquire) { continue },
        }
        let snap = ctx.store.load();
        let failed = registry.reconcile(&snap).await;
        if failed.is_empty() && !admin.ready.swap(true, Ordering::AcqRel) {
            registry.release_stale();
            let pods = registry.running().await;
            tracing::info!(pods, "ready");
        }
        let closed = ctx.tracker.recheck(&snap, &ctx.config.root_namespace);
        if closed > 0 {
            tracing::info!(closed, "closed connections denied by the new policy");
        }
    }
}

/// Stop accepting, let connections finish until the deadline, then close what is left and
/// remove capture so pods are not redirected to a ztunnel that is gone.
async fn drain(ctx: &Context, admin: &Admin, registry: &Registry) {
    admin.ready.store(false, Ordering::Release);
    ctx.draining.cancel();
    ctx.tasks.close();
    let deadline = ctx.config.drain_timeout;
    if tokio::time::timeout(deadline, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = ctx.tasks.len(),
            "drain deadline passed; closing remaining connections"
        );
    }
    ctx.stopped.cancel();
    // Fail-closed keeps capture (and pins) for the next ztunnel: pods' connections are refused
    // until it is back. Only unenrolling a pod, or `uninstall-capture`, removes it.
    registry
        .stop_all(ctx.config.capture_fail_mode == FailMode::Closed)
        .await;
    tracing::info!("stopped");
}

/// Removes the capture state a fail-closed ztunnel leaves behind: its pinned eBPF links and
/// maps, and the nftables rules in its pods' namespaces (`ztunnel uninstall-capture`).
pub async fn uninstall_capture(config_path: &Path, node: &str) -> anyhow::Result<()> {
    let loaded = config::load(config_path, node).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = loaded.config;
    let dir = &config.bpf_pin_dir;
    if capture::ebpf::pin::remove_all(dir).with_context(|| format!("removing {}", dir.display()))? {
        println!("removed pinned eBPF capture state {}", dir.display());
    }
    let (ports, marks) = capture_settings(&config);
    let nft = capture::Nftables::new(ports, marks);
    for w in loaded.state.local_workloads(&config.node) {
        let Some(path) = &w.netns else { continue };
        let Ok(netns) = crate::netns::Netns::open(path) else {
            continue;
        };
        let pod = capture::Pod {
            name: w.uid.0.clone(),
            netns,
            ips: w.ips.clone(),
            inbound_listener: None,
        };
        match nft.unenroll(&pod).await {
            Ok(()) => println!("removed capture rules of pod {}", w.uid.0),
            Err(e) => eprintln!("pod {}: {e}", w.uid.0),
        }
    }
    Ok(())
}

/// Parses a file and reports whether it is valid (for `ztunnel check`).
pub fn check(config_path: &Path, node: &str) -> Result<Config, config::Errors> {
    config::load(config_path, node).map(|l| l.config)
}
