//! Where an outbound connection goes, decided from the original destination alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::state::{Protocol, Service, Snapshot, Workload};

#[derive(Debug, Clone)]
pub enum Route {
    /// Through an HBONE tunnel to the node of `workload`; the tunnel's CONNECT asks for `target`.
    Hbone {
        workload: Arc<Workload>,
        target: SocketAddr,
        service: Option<Arc<Service>>,
    },
    /// Plain TCP: a workload outside the mesh, or an address the mesh does not know.
    Passthrough {
        target: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    // Waypoints slot in here: a service (or workload) bound to a waypoint resolves to a
    // `Waypoint { .. }` route that tunnels to the waypoint instead of the endpoint.
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("service {0} has no port {1}")]
    NoPort(String, u16),
    #[error("service {0} has no endpoint with an address")]
    NoEndpoint(String),
}

/// Resolves `dst`. `pick(n)` chooses one of `n` endpoints of a service (the caller decides the
/// balancing, round robin in the proxy, fixed in tests).
pub fn resolve(
    snap: &Snapshot,
    dst: SocketAddr,
    pick: impl FnOnce(usize) -> usize,
) -> Result<Route, Error> {
    if let Some(service) = snap.service_by_vip(dst.ip()) {
        let port = service
            .target_port(dst.port())
            .ok_or_else(|| Error::NoPort(service.hostname.clone(), dst.port()))?;
        let candidates: Vec<(&Arc<Workload>, IpAddr)> = snap
            .endpoints(service)
            .iter()
            .filter_map(|w| address_like(w, dst.ip()).map(|ip| (w, ip)))
            .collect();
        if candidates.is_empty() {
            return Err(Error::NoEndpoint(service.hostname.clone()));
        }
        let (workload, ip) = candidates[pick(candidates.len()) % candidates.len()];
        return Ok(to_workload(
            workload.clone(),
            SocketAddr::new(ip, port),
            Some(service.clone()),
        ));
    }
    Ok(match snap.workload_by_ip(dst.ip()) {
        Some(w) => to_workload(w.clone(), dst, None),
        None => Route::Passthrough {
            target: dst,
            workload: None,
            service: None,
        },
    })
}

fn to_workload(
    workload: Arc<Workload>,
    target: SocketAddr,
    service: Option<Arc<Service>>,
) -> Route {
    match workload.protocol {
        Protocol::Hbone => Route::Hbone {
            workload,
            target,
            service,
        },
        Protocol::Tcp => Route::Passthrough {
            target,
            workload: Some(workload),
            service,
        },
    }
}

/// The endpoint's address of the same family as the VIP the client dialled.
fn address_like(w: &Workload, like: IpAddr) -> Option<IpAddr> {
    w.ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Service, ServicePort, WorkloadUid};

    fn w(uid: &str, ip: &str, app: &str, protocol: Protocol) -> Workload {
        Workload {
            uid: WorkloadUid(uid.into()),
            name: uid.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
            node: "n".into(),
            protocol,
            netns: None,
        }
    }

    fn snap() -> Snapshot {
        Snapshot::new(
            vec![
                w("e1", "10.0.0.1", "echo", Protocol::Hbone),
                w("e2", "10.0.0.2", "echo", Protocol::Hbone),
                w("db", "10.0.0.3", "db", Protocol::Tcp),
            ],
            vec![Service {
                name: "echo".into(),
                namespace: "ns".into(),
                hostname: "echo.ns".into(),
                vips: vec!["10.96.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                ports: vec![ServicePort {
                    service_port: 80,
                    target_port: 8080,
                }],
                selector: [("app".to_string(), "echo".to_string())].into(),
            }],
            vec![],
            vec![],
        )
    }

    #[test]
    fn vip_maps_port_and_picks_endpoint() {
        let s = snap();
        let dst = "10.96.0.1:80".parse().unwrap();
        for (i, want) in [
            (0, "10.0.0.1:8080"),
            (1, "10.0.0.2:8080"),
            (2, "10.0.0.1:8080"),
        ] {
            match resolve(&s, dst, |n| {
                assert_eq!(n, 2);
                i
            })
            .unwrap()
            {
                Route::Hbone {
                    target, service, ..
                } => {
                    assert_eq!(target, want.parse().unwrap());
                    assert!(service.is_some());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_port_and_family_without_endpoints_fail() {
        let s = snap();
        assert_eq!(
            resolve(&s, "10.96.0.1:81".parse().unwrap(), |_| 0).unwrap_err(),
            Error::NoPort("echo.ns".into(), 81)
        );
        assert_eq!(
            resolve(&s, "[fd00::1]:80".parse().unwrap(), |_| 0).unwrap_err(),
            Error::NoEndpoint("echo.ns".into())
        );
    }

    #[test]
    fn workloads_and_unknown_addresses() {
        let s = snap();
        assert!(matches!(
            resolve(&s, "10.0.0.2:9000".parse().unwrap(), |_| 0).unwrap(),
            Route::Hbone { target, .. } if target.port() == 9000
        ));
        assert!(matches!(
            resolve(&s, "10.0.0.3:5432".parse().unwrap(), |_| 0).unwrap(),
            Route::Passthrough {
                workload: Some(_),
                ..
            }
        ));
        assert!(matches!(
            resolve(&s, "192.0.2.1:443".parse().unwrap(), |_| 0).unwrap(),
            Route::Passthrough { workload: None, .. }
        ));
    }
}
