//! `nodes.toml`: the cluster's nodes, read by the master. Every mistake is
//! reported with its line and what would be right.
//!
//! ```toml
//! [[nodes]]
//! fabric_addr = "10.0.0.1:12360"
//! bridge_bind = "10.0.0.1:12361"   # the master's entry only
//! mem = "4 GiB"
//! cpu = 0                          # hosts no processes
//!
//! [[nodes]]
//! fabric_addr = "10.0.0.2:12360"
//! mem = "16 GiB"
//! cpu = 8
//! ```

use constellation::{Cpu, Mem};
use serde::Deserialize;
use std::{fmt, net::SocketAddr, path::Path};
use toml::Spanned;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSpec {
    /// Where its daemon listens (and the address its processes listen on).
    pub fabric_addr: SocketAddr,
    /// How `fabric_addr` was written (the master finds its entry by it).
    pub fabric_addr_text: String,
    /// Where the bridge daemon listens (the master's entry).
    pub bridge_bind: Option<SocketAddr>,
    /// Memory the node hands out.
    pub mem: Mem,
    /// Cores the node hands out; zero hosts no processes.
    pub cpu: Cpu,
}

/// A `nodes.toml` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The line at fault, when one is.
    pub line: Option<usize>,
    /// What is wrong and what would be right.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    nodes: Option<Vec<Spanned<RawNode>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    fabric_addr: Spanned<String>,
    bridge_bind: Option<Spanned<String>>,
    mem: Spanned<String>,
    cpu: Spanned<toml::Value>,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> Result<Vec<NodeSpec>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses and checks the text of a `nodes.toml`.
pub fn parse(text: &str) -> Result<Vec<NodeSpec>, ConfigError> {
    let line_of = |offset: usize| Some(text[..offset.min(text.len())].matches('\n').count() + 1);
    let file: File = toml::from_str(text).map_err(|e| ConfigError {
        line: e.span().map(|span| line_of(span.start)).unwrap_or(None),
        message: e.message().trim().to_string(),
    })?;
    let nodes = file.nodes.unwrap_or_default();
    if nodes.is_empty() {
        return Err(ConfigError {
            line: None,
            message: "no nodes: add a [[nodes]] table with fabric_addr, mem and cpu for each machine".into(),
        });
    }
    let mut specs: Vec<NodeSpec> = Vec::new();
    for node in nodes {
        let at = |spanned_start: usize, message: String| ConfigError { line: line_of(spanned_start), message };
        let node = node.into_inner();
        let addr_text = node.fabric_addr.get_ref().trim().to_string();
        let fabric_addr: SocketAddr = addr_text.parse().map_err(|_| {
            at(
                node.fabric_addr.span().start,
                format!("fabric_addr {addr_text:?} is not an IP address and port, such as \"10.0.0.2:12360\""),
            )
        })?;
        if specs.iter().any(|s| s.fabric_addr == fabric_addr && fabric_addr.port() != 0) {
            return Err(at(node.fabric_addr.span().start, format!("fabric_addr {fabric_addr} is listed twice")));
        }
        let bridge_bind = match &node.bridge_bind {
            None => None,
            Some(text) => Some(text.get_ref().trim().parse().map_err(|_| {
                at(
                    text.span().start,
                    format!(
                        "bridge_bind {:?} is not an IP address and port, such as \"10.0.0.1:12361\"",
                        text.get_ref()
                    ),
                )
            })?),
        };
        let mem: Mem = node.mem.get_ref().parse().map_err(|e| {
            at(node.mem.span().start, format!("mem {:?}: {e}; write it as \"16 GiB\"", node.mem.get_ref()))
        })?;
        let cores = match node.cpu.get_ref() {
            toml::Value::Integer(n) => *n as f64,
            toml::Value::Float(x) => *x,
            other => {
                return Err(at(
                    node.cpu.span().start,
                    format!("cpu is {other}, but must be a number of cores, such as 8 or 0.5 (0: hosts no processes)"),
                ))
            }
        };
        if !cores.is_finite() || cores < 0.0 {
            return Err(at(node.cpu.span().start, format!("cpu is {cores}, but must be zero or more cores")));
        }
        specs.push(NodeSpec {
            fabric_addr,
            fabric_addr_text: addr_text,
            bridge_bind,
            mem,
            cpu: Cpu::from_cores(cores),
        });
    }
    Ok(specs)
}

/// The master's own entry: the one whose `fabric_addr` is `addr`.
pub fn find_master<'a>(nodes: &'a [NodeSpec], addr: &str) -> Result<&'a NodeSpec, String> {
    let parsed: Option<SocketAddr> = addr.parse().ok();
    let master = nodes
        .iter()
        .find(|n| n.fabric_addr_text == addr || Some(n.fabric_addr) == parsed)
        .ok_or_else(|| {
            let listed: Vec<&str> = nodes.iter().map(|n| n.fabric_addr_text.as_str()).collect();
            format!("no entry of nodes.toml has fabric_addr = \"{addr}\" (listed: {}); the master's own entry names the address it was started with", listed.join(", "))
        })?;
    if master.bridge_bind.is_none() {
        return Err(format!(
            "the master's entry ({addr}) has no bridge_bind: add bridge_bind = \"IP:PORT\", where cargo deploy connects"
        ));
    }
    Ok(master)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_cluster() {
        let nodes = parse(
            "[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n\n\
             [[nodes]]\nfabric_addr = \"127.0.0.2:9000\"\nmem = \"100 GiB\"\ncpu = 2.5\n",
        )
        .unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].mem, Mem::GIB * 100);
        assert_eq!(nodes[1].cpu, Cpu::from_cores(2.5));
        assert_eq!(find_master(&nodes, "127.0.0.1:0").unwrap().fabric_addr_text, "127.0.0.1:0");
        assert!(find_master(&nodes, "127.0.0.2:9000").unwrap_err().contains("no bridge_bind"));
    }

    #[test]
    fn says_which_line_is_wrong() {
        let error = parse("[[nodes]]\nfabric_addr = \"127.0.0.2:9000\"\nmem = \"lots\"\ncpu = 1\n").unwrap_err();
        assert_eq!(error.line, Some(3), "{error}");
        assert!(error.message.contains("16 GiB"), "{error}");
        let error = parse("[[nodes]]\nfabric_addr = \"nowhere\"\nmem = \"1 GiB\"\ncpu = 1\n").unwrap_err();
        assert_eq!(error.line, Some(2), "{error}");
        let error = parse("[[nodes]]\nfabric_addr = \"127.0.0.2:1\"\nmem = \"1 GiB\"\ncpu = \"two\"\n").unwrap_err();
        assert_eq!(error.line, Some(4), "{error}");
        let error = parse("[[nodes]]\nfabric_addr = \"127.0.0.2:1\"\nmemory = \"1 GiB\"\n").unwrap_err();
        assert_eq!(error.line, Some(3), "{error}");
        assert!(parse("").unwrap_err().message.contains("no nodes"));
    }
}
