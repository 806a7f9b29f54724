//! `constellation slurm`: a cluster inside a Slurm allocation. Run where `salloc`
//! or `sbatch` runs its command, it reads the allocation, starts one node daemon
//! per allocated node with `srun`, each of which binds an ephemeral port on its
//! node's `NodeAddr` and registers itself here; then it runs the master and the
//! bridge here, deploys the binary, prints the job's output as `cargo deploy`
//! does, exits with its exit code and stops every daemon. When Slurm ends the
//! allocation, the daemons (job steps) are killed, and with them the processes.

use crate::{
    auth::{self, Role},
    config::NodeSpec,
    wire::{read_frame, write_frame, Registration},
};
use constellation::{Cpu, Mem};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

/// One allocated node, as the allocation describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocated {
    /// Its Slurm name.
    pub name: String,
    /// Cores allocated on it.
    pub cpus: u32,
    /// Memory allocated on it, if the allocation says.
    pub mem: Option<Mem>,
}

/// Expands `SLURM_JOB_CPUS_PER_NODE` (`"2(x3),1"`) into one count per node.
pub fn expand_cpus(text: &str) -> Result<Vec<u32>, String> {
    let mut counts = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("SLURM_JOB_CPUS_PER_NODE={text:?} is not a list like \"2(x3),1\"");
        let (count, times) = match part.split_once("(x") {
            Some((count, times)) => (count, times.strip_suffix(')').ok_or_else(bad)?),
            None => (part, "1"),
        };
        let count: u32 = count.parse().map_err(|_| bad())?;
        let times: usize = times.parse().map_err(|_| bad())?;
        counts.extend(std::iter::repeat_n(count, times));
    }
    Ok(counts)
}

/// Reads the allocation from the environment (`var`), expanding the node list
/// with `scontrol show hostnames`.
pub fn allocation(var: impl Fn(&str) -> Option<String>) -> Result<Vec<Allocated>, String> {
    let need = |name: &str| {
        var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("{name} is not set: run inside a Slurm allocation (salloc -N 3 constellation slurm ..., or sbatch)")
        })
    };
    let list = need("SLURM_JOB_NODELIST")?;
    let names = scontrol(&["show", "hostnames", &list])?;
    let names: Vec<String> = names.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    let cpus = expand_cpus(&need("SLURM_JOB_CPUS_PER_NODE")?)?;
    if cpus.len() != names.len() {
        return Err(format!("{} nodes allocated but CPU counts for {}", names.len(), cpus.len()));
    }
    let mb = |name: &str| -> Result<Option<u64>, String> {
        var(name)
            .map(|v| v.trim().parse::<u64>().map_err(|_| format!("{name}={v:?} is not a number of MB")))
            .transpose()
    };
    let (per_node, per_cpu) = (mb("SLURM_MEM_PER_NODE")?, mb("SLURM_MEM_PER_CPU")?);
    Ok(names
        .into_iter()
        .zip(cpus)
        .map(|(name, cpus)| {
            let mem = per_node.or(per_cpu.map(|m| m * u64::from(cpus))).map(|m| Mem::MIB * m);
            Allocated { name, cpus, mem }
        })
        .collect())
}

fn scontrol(args: &[&str]) -> Result<String, String> {
    let output = Command::new("scontrol").args(args).output().map_err(|e| format!("running scontrol: {e}"))?;
    if !output.status.success() {
        return Err(format!("scontrol {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A field (`NodeAddr`, `RealMemory`, ...) of `scontrol show node NAME`.
pub fn node_field(name: &str, field: &str) -> Result<String, String> {
    let text = scontrol(&["show", "node", name])?;
    text.split_whitespace()
        .find_map(|word| word.strip_prefix(field)?.strip_prefix('=').map(String::from))
        .ok_or_else(|| format!("scontrol show node {name} has no {field}"))
}

/// The node list of the allocation once every node daemon has registered on
/// `listener` (within `timeout`): each at the address it bound, with the
/// allocation's resources (or the node's `RealMemory`).
pub fn await_registrations(
    listener: &TcpListener,
    cookie: &[u8],
    allocated: &[Allocated],
    timeout: Duration,
) -> Result<Vec<NodeSpec>, String> {
    let deadline = Instant::now() + timeout;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut registered: HashMap<String, SocketAddr> = HashMap::new();
    while registered.len() < allocated.len() {
        if Instant::now() >= deadline {
            let missing: Vec<&str> =
                allocated.iter().map(|a| a.name.as_str()).filter(|n| !registered.contains_key(*n)).collect();
            return Err(format!("the node daemons of {} did not register within {timeout:?}", missing.join(", ")));
        }
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(error) => return Err(format!("accepting registrations: {error}")),
        };
        let _ = stream.set_nonblocking(false);
        let registration = auth::accept(&mut stream, cookie, Role::Node)
            .map_err(|e| e.to_string())
            .and_then(|()| read_frame::<Registration>(&mut stream, 4096).map_err(|e| e.to_string()));
        match registration {
            Ok(Registration { name, addr }) if allocated.iter().any(|a| a.name == name) => {
                log::info!("node {name} registered at {addr}");
                registered.insert(name, addr);
            }
            Ok(Registration { name, .. }) => log::warn!("a node {name:?} registered, but it is not allocated"),
            Err(error) => log::warn!("refused a registration: {error}"),
        }
    }
    allocated
        .iter()
        .map(|node| {
            let addr = registered[&node.name];
            let mem = match node.mem {
                Some(mem) => mem,
                None => {
                    let real = node_field(&node.name, "RealMemory")?;
                    Mem::MIB * real.parse::<u64>().map_err(|_| format!("RealMemory={real:?} of {}", node.name))?
                }
            };
            Ok(NodeSpec {
                fabric_addr: addr,
                fabric_addr_text: addr.to_string(),
                bridge_bind: None,
                mem,
                cpu: Cpu::from_cores(f64::from(node.cpus)),
            })
        })
        .collect()
}

/// A node daemon's side: bind on this Slurm node's `NodeAddr`, then register
/// with the master at `master`. Returns the listener to serve on.
pub fn register(master: SocketAddr, cookie: &[u8]) -> Result<TcpListener, String> {
    let name = std::env::var("SLURMD_NODENAME").map_err(|_| "SLURMD_NODENAME is not set: run under srun")?;
    let node_addr = node_field(&name, "NodeAddr")?;
    let ip: IpAddr = match node_addr.parse() {
        Ok(ip) => ip,
        Err(_) => {
            use std::net::ToSocketAddrs;
            (node_addr.as_str(), 0)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .map(|a| a.ip())
                .ok_or(format!("cannot resolve the NodeAddr {node_addr} of {name}"))?
        }
    };
    let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("binding a port on {ip}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect_timeout(&master, Duration::from_secs(10))
        .map_err(|e| format!("cannot reach the master at {master}: {e}"))?;
    auth::connect(&mut stream, cookie, Role::Node).map_err(|e| format!("the master at {master}: {e}"))?;
    write_frame(&mut stream, &Registration { name, addr }).map_err(|e| e.to_string())?;
    Ok(listener)
}
