//! What the eBPF backend put into the kernel per pod, and how it is undone.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;

use aya::maps::{HashMap as BpfHashMap, MapData, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::SkLookup;

use super::abi::{Addr, DnsKey, Endpoint};
use super::pin::Pins;
use super::SK_LOOKUP;
use crate::capture::{Error, Pod};

/// What one enrolled pod put into the kernel, removed in reverse on unenroll.
pub(super) struct Enrolled {
    pub(super) cookie: u64,
    /// Dropping an unpinned link detaches it; a pinned one detaches once unpinned too.
    pub(super) link: PodLink,
    pub(super) keys: Vec<Endpoint>,
}

pub(super) enum PodLink {
    Owned(#[allow(dead_code)] FdLink),
    Pinned(#[allow(dead_code)] PinnedLink, String),
}

pub(super) struct State {
    /// Owns the programs and with them every link (cgroup and sk_lookup).
    pub(super) bpf: aya::Ebpf,
    pub(super) enrolled: BpfHashMap<MapData, u64, u32>,
    pub(super) listeners: SockHash<MapData, Endpoint>,
    pub(super) captured: BpfHashMap<MapData, Endpoint, u32>,
    pub(super) dns: BpfHashMap<MapData, DnsKey, Addr>,
    pub(super) pods: HashMap<String, Enrolled>,
    pub(super) pins: Option<Pins>,
    /// Links this process keeps attached while it runs (pinned ones outlive it).
    pub(super) _links: Vec<PinnedLink>,
}

impl State {
    /// Undoes an enrollment in reverse order: the enrolled entry (outbound stops), the
    /// sk_lookup link, the listener entries. Errors are logged: the goal is a clean state.
    pub(super) fn forget(&mut self, pod: &str) {
        let Some(e) = self.pods.remove(pod) else {
            return;
        };
        if let Err(err) = self.enrolled.remove(&e.cookie) {
            tracing::warn!(pod, error = %err, "removing the enrolled-namespace entry failed");
        }
        match e.link {
            PodLink::Owned(link) => drop(link),
            PodLink::Pinned(link, name) => {
                if let Some(pins) = &self.pins {
                    pins.remove_link(&name);
                }
                drop(link);
            }
        }
        for key in &e.keys {
            // Already gone when the listener closed first: the kernel drops closed sockets.
            let _ = self.listeners.remove(key);
            let _ = self.captured.remove(key);
        }
    }

    /// After re-adoption: what the previous ztunnel enrolled and this one did not (pods
    /// removed while it was down) is removed from the pinned maps and links.
    pub(super) fn release_stale(&mut self) {
        let cookies: Vec<u64> = self.pods.values().map(|e| e.cookie).collect();
        let keys: Vec<Endpoint> = self.pods.values().flat_map(|e| e.keys.clone()).collect();
        let stale: Vec<u64> = self
            .enrolled
            .keys()
            .filter_map(Result::ok)
            .filter(|c| !cookies.contains(c))
            .collect();
        for cookie in stale {
            let _ = self.enrolled.remove(&cookie);
        }
        let stale: Vec<Endpoint> = self
            .captured
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keys.contains(k))
            .collect();
        for key in stale {
            let _ = self.captured.remove(&key);
        }
        if let Some(pins) = &self.pins {
            for cookie in pins.pod_cookies() {
                if !cookies.contains(&cookie) {
                    pins.remove_link(&Pins::pod_link_name(cookie));
                }
            }
        }
    }

    pub(super) fn enroll(
        &mut self,
        pod: &Pod,
        cookie: u64,
        netns: &File,
        listener: &impl AsRawFd,
    ) -> Result<(), Error> {
        let fail = |action: &'static str, reason: String| Error::Ebpf {
            pod: pod.name.clone(),
            action,
            reason,
        };
        let mut keys = Vec::new();
        for ip in &pod.ips {
            let key = Endpoint::new(*ip, 0);
            if let Err(e) = self.listeners.insert(key, listener.as_raw_fd(), 0) {
                for k in &keys {
                    let _ = self.listeners.remove(k);
                }
                return Err(fail("register the inbound listener", e.to_string()));
            }
            keys.push(key);
        }
        let attached = self
            .bpf
            .program_mut(SK_LOOKUP)
            .ok_or_else(|| fail("find sk_lookup", "missing from the object".into()))
            .and_then(|p| {
                <&mut SkLookup>::try_from(p)
                    .map_err(|e| fail("use sk_lookup", e.to_string()))?
                    .attach(netns)
                    .map_err(|e| fail("attach sk_lookup to the namespace", e.to_string()))
            });
        let link = attached.and_then(|id| {
            let p: &mut SkLookup = self
                .bpf
                .program_mut(SK_LOOKUP)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| fail("find sk_lookup", "missing from the object".into()))?;
            let fd = FdLink::from(
                p.take_link(id)
                    .map_err(|e| fail("take the sk_lookup link", e.to_string()))?,
            );
            match &self.pins {
                // Replaces (detaches) the link a previous ztunnel pinned for this namespace.
                Some(pins) => {
                    let name = Pins::pod_link_name(cookie);
                    pins.pin(&name, fd)
                        .map(|l| PodLink::Pinned(l, name))
                        .map_err(|e| fail("pin the sk_lookup link", e.to_string()))
                }
                None => Ok(PodLink::Owned(fd)),
            }
        });
        let link = match link {
            Ok(link) => link,
            Err(e) => {
                for k in &keys {
                    let _ = self.listeners.remove(k);
                }
                return Err(e);
            }
        };
        for k in &keys {
            // Kept when the listener goes (ztunnel died): sk_lookup then refuses.
            if let Err(e) = self.captured.insert(*k, 1, 0) {
                self.pods
                    .insert(pod.name.clone(), Enrolled { cookie, link, keys });
                self.forget(&pod.name);
                return Err(fail("record the pod address", e.to_string()));
            }
        }
        self.pods
            .insert(pod.name.clone(), Enrolled { cookie, link, keys });
        // Last: from here on the pod's outgoing connections are redirected.
        if let Err(e) = self.enrolled.insert(cookie, 1, 0) {
            self.forget(&pod.name);
            return Err(fail("enroll the namespace", e.to_string()));
        }
        Ok(())
    }
}
