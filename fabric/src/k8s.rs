//! `constellation k8s`: the node list of a Kubernetes StatefulSet, derived from
//! the environment its pods are given (see `fabric/k8s/`), so no nodes.toml is
//! written by hand. Pod 0 is the master (and hosts processes too) with the bridge
//! daemon; every other pod is a node.
//!
//! The pod's environment: `POD_NAME` (`NAME-ORDINAL`, from `metadata.name`),
//! `POD_IP` (from `status.podIP`), `CONSTELLATION_SERVICE` (the headless
//! Service), `CONSTELLATION_REPLICAS`, `CONSTELLATION_MEM` (bytes, from
//! `limits.memory`) and `CONSTELLATION_CPU` (millicores, from `limits.cpu` with
//! divisor `1m`); optional `CONSTELLATION_PORT` (12360) and
//! `CONSTELLATION_BRIDGE_PORT` (12361).

use crate::config::NodeSpec;
use constellation::{Cpu, Mem};
use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    time::{Duration, Instant},
};

/// What this pod runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Pod 0: the master of `nodes`, whose own entry is `addr`.
    Master {
        /// The master's own address (and its node's).
        addr: SocketAddr,
        /// Every pod, pod 0 first.
        nodes: Vec<NodeSpec>,
    },
    /// Any other pod: a node.
    Node {
        /// Where it listens.
        addr: SocketAddr,
    },
}

/// The variables the discovery mode reads, each with what sets it.
pub const VARIABLES: [(&str, &str); 6] = [
    ("POD_NAME", "fieldRef metadata.name"),
    ("POD_IP", "fieldRef status.podIP"),
    ("CONSTELLATION_SERVICE", "the headless Service's name"),
    ("CONSTELLATION_REPLICAS", "the StatefulSet's replicas"),
    ("CONSTELLATION_MEM", "resourceFieldRef limits.memory"),
    ("CONSTELLATION_CPU", "resourceFieldRef limits.cpu, divisor 1m"),
];

/// Works out this pod's role from its environment (`var`), resolving the pods'
/// stable names (`NAME-i.SERVICE`) through `resolve` overrides, else DNS,
/// retrying for `timeout` while they do not resolve yet.
pub fn discover(
    var: impl Fn(&str) -> Option<String>,
    resolve: &[(String, String)],
    timeout: Duration,
) -> Result<Role, String> {
    let need = |name: &str| {
        var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            let source = VARIABLES.iter().find(|(n, _)| *n == name).map_or("", |(_, s)| *s);
            format!("{name} is not set: the StatefulSet must set it ({source}); see fabric/k8s/")
        })
    };
    let number = |name: &str| -> Result<u64, String> {
        let value = need(name)?;
        value.trim().parse().map_err(|_| format!("{name}={value:?} is not a whole number"))
    };
    let pod = need("POD_NAME")?;
    let (set, ordinal) = pod
        .rsplit_once('-')
        .and_then(|(set, ordinal)| Some((set.to_string(), ordinal.parse::<u64>().ok()?)))
        .ok_or_else(|| format!("POD_NAME={pod:?} is not a StatefulSet pod's name (NAME-ORDINAL)"))?;
    let service = need("CONSTELLATION_SERVICE")?;
    let replicas = number("CONSTELLATION_REPLICAS")?;
    if ordinal >= replicas {
        return Err(format!("pod {pod} has ordinal {ordinal}, but CONSTELLATION_REPLICAS is {replicas}"));
    }
    let port =
        var("CONSTELLATION_PORT").map_or(Ok(12360), |p| p.parse().map_err(|_| format!("CONSTELLATION_PORT={p:?}")))?;
    let bridge_port = var("CONSTELLATION_BRIDGE_PORT")
        .map_or(Ok(12361), |p| p.parse().map_err(|_| format!("CONSTELLATION_BRIDGE_PORT={p:?}")))?;
    let mem = Mem::from_bytes(number("CONSTELLATION_MEM")?);
    let cpu = Cpu::from_cores(number("CONSTELLATION_CPU")? as f64 / 1000.0);
    let name_of = |i: u64| format!("{set}-{i}.{service}");
    let own_name = name_of(ordinal);
    let own_ip: IpAddr = match resolve.iter().find(|(name, _)| *name == own_name) {
        Some((_, ip)) => ip.parse().map_err(|_| format!("--resolve {own_name}={ip}: not an IP address"))?,
        None => match var("POD_IP") {
            Some(ip) => ip.parse().map_err(|_| format!("POD_IP={ip:?} is not an IP address"))?,
            None => lookup(&own_name, port, timeout)?.ip(),
        },
    };
    let addr = SocketAddr::new(own_ip, port);
    if ordinal != 0 {
        return Ok(Role::Node { addr });
    }
    let mut nodes = Vec::new();
    for i in 0..replicas {
        let name = name_of(i);
        let fabric_addr = if i == 0 {
            addr
        } else {
            match resolve.iter().find(|(n, _)| *n == name) {
                Some((_, ip)) => {
                    SocketAddr::new(ip.parse().map_err(|_| format!("--resolve {name}={ip}: not an IP address"))?, port)
                }
                None => lookup(&name, port, timeout)?,
            }
        };
        nodes.push(NodeSpec {
            fabric_addr,
            fabric_addr_text: fabric_addr.to_string(),
            bridge_bind: (i == 0).then_some(SocketAddr::new(own_ip, bridge_port)),
            mem,
            cpu,
        });
    }
    Ok(Role::Master { addr, nodes })
}

/// Resolves `name`, retrying for `timeout`: a StatefulSet's pods appear in DNS as
/// they start.
fn lookup(name: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let started = Instant::now();
    loop {
        match (name, port).to_socket_addrs().map(|mut addrs| addrs.next()) {
            Ok(Some(addr)) => return Ok(addr),
            result if started.elapsed() >= timeout => {
                let why = match result {
                    Err(error) => error.to_string(),
                    _ => "no address".to_string(),
                };
                return Err(format!("cannot resolve {name} after {:.0} s: {why}", timeout.as_secs_f64()));
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pod: &str) -> impl Fn(&str) -> Option<String> + '_ {
        move |name| {
            Some(
                match name {
                    "POD_NAME" => pod,
                    "CONSTELLATION_SERVICE" => "constellation",
                    "CONSTELLATION_REPLICAS" => "3",
                    "CONSTELLATION_MEM" => "4294967296",
                    "CONSTELLATION_CPU" => "2500",
                    _ => return None,
                }
                .to_string(),
            )
        }
    }

    fn resolve() -> Vec<(String, String)> {
        (0..3).map(|i| (format!("constellation-{i}.constellation"), format!("127.0.0.{}", i + 1))).collect()
    }

    #[test]
    fn pod_zero_is_the_master_of_every_pod() {
        let Role::Master { addr, nodes } = discover(env("constellation-0"), &resolve(), Duration::ZERO).unwrap() else {
            panic!("pod 0 is the master")
        };
        assert_eq!(addr, "127.0.0.1:12360".parse().unwrap());
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[2].fabric_addr, "127.0.0.3:12360".parse().unwrap());
        assert_eq!(nodes[0].bridge_bind, Some("127.0.0.1:12361".parse().unwrap()));
        assert_eq!(nodes[1].mem, Mem::GIB * 4);
        assert_eq!(nodes[1].cpu, Cpu::from_cores(2.5));
    }

    #[test]
    fn other_pods_are_nodes_and_mistakes_are_named() {
        let role = discover(env("constellation-2"), &resolve(), Duration::ZERO).unwrap();
        assert_eq!(role, Role::Node { addr: "127.0.0.3:12360".parse().unwrap() });
        let error = discover(env("constellation-7"), &resolve(), Duration::ZERO).unwrap_err();
        assert!(error.contains("CONSTELLATION_REPLICAS is 3"), "{error}");
        let error = discover(|_| None, &[], Duration::ZERO).unwrap_err();
        assert!(error.contains("POD_NAME is not set"), "{error}");
    }
}
