//! `constellation`: the cluster daemon. `constellation ADDR` runs a node;
//! `constellation ADDR nodes.toml` runs the master and its bridge daemon.

use clap::Parser;
use constellation_fabric::{auth, config, deploy, k8s, logger, master, node};
use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

/// The constellation cluster daemon.
///
/// Run `constellation ADDR` on every machine that hosts processes (a node), and
/// `constellation ADDR nodes.toml` on one machine (the master), whose entry in
/// nodes.toml has fabric_addr = ADDR and a bridge_bind for `cargo deploy`.
///
/// Examples:
///
///   constellation --cookie-file ~/.constellation-cookie 10.0.0.2:12360
///
///   constellation --cookie-file ~/.constellation-cookie 10.0.0.1:12360 nodes.toml
///
///   # three daemons on one machine, no cookie needed on loopback:
///   constellation 127.0.0.2:12360 &
///   constellation 127.0.0.3:12360 &
///   constellation 127.0.0.1:12360 nodes.toml
///
/// Environment: CONSTELLATION_COOKIE (the cookie, if no --cookie-file),
/// CONSTELLATION_LOG (error, warn, info (default), debug, trace).
#[derive(Debug, Parser)]
#[command(
    name = "constellation",
    version,
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// The address this daemon listens on, as IP:PORT (port 0: any free port,
    /// printed on stdout as "listening on IP:PORT").
    #[arg(required = true)]
    addr: Option<String>,
    /// Run as the master of the nodes listed in this file.
    nodes_toml: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
    #[command(subcommand)]
    mode: Option<Mode>,
}

/// Where the node list comes from, instead of ADDR and nodes.toml.
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Run in a pod of a Kubernetes StatefulSet (see fabric/k8s/): pod 0 is the
    /// master and bridge, the others nodes; the node list comes from the pod's
    /// environment (POD_NAME, POD_IP, CONSTELLATION_SERVICE,
    /// CONSTELLATION_REPLICAS, CONSTELLATION_MEM, CONSTELLATION_CPU).
    ///
    /// Example: constellation k8s
    #[command(verbatim_doc_comment)]
    K8s {
        /// Use ADDR for the pod NAME (NAME-i.SERVICE) instead of resolving it.
        #[arg(long, value_name = "NAME=ADDR")]
        resolve: Vec<String>,
    },
}

/// Settings of every mode.
#[derive(Debug, clap::Args)]
struct Options {
    /// A file holding the cluster's shared secret (the same on every daemon and
    /// for cargo deploy). Required on non-loopback addresses.
    #[arg(long, value_name = "FILE", global = true)]
    cookie_file: Option<PathBuf>,
    /// Where binaries are cached and processes get scratch directories
    /// [default: a directory under the system's temporary directory].
    #[arg(long, value_name = "DIR", global = true)]
    work_dir: Option<PathBuf>,
    /// Master: seconds between a node's heartbeats.
    #[arg(long, value_name = "SECS", default_value_t = 1.0, global = true)]
    heartbeat: f64,
    /// Master: seconds an acknowledged heartbeat keeps a node's processes alive;
    /// a node's monitors kill their processes when it runs out.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, global = true)]
    lease: f64,
    /// Master: seconds after the lease before a silent node's processes are
    /// declared Lost (covers killing and reaping them).
    #[arg(long, value_name = "SECS", default_value_t = 5.0, global = true)]
    margin: f64,
    /// Master: seconds to keep retrying unreachable nodes at start.
    #[arg(long, value_name = "SECS", default_value_t = 30.0, global = true)]
    connect_timeout: f64,
    /// Master: seconds a deployed binary has to call constellation::init when it
    /// is run once to learn its resources.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, global = true)]
    probe_timeout: f64,
}

fn main() -> ExitCode {
    if let Ok(fds) = std::env::var(deploy::BRIDGE_VAR) {
        std::env::remove_var(deploy::BRIDGE_VAR);
        constellation_fabric::bridge::run(&fds);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("constellation: {error}");
            ExitCode::FAILURE
        }
    }
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("--{name} {value} is not a number of seconds"))
}

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            format!("cannot listen on {addr} for the {what}: the port is in use (is another constellation running?)")
        } else {
            format!("cannot listen on {addr} for the {what}: {error}")
        }
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let options = cli.options;
    let cookie = auth::load_cookie(options.cookie_file.as_deref()).map_err(|e| e.to_string())?;
    if let Some(Mode::K8s { resolve }) = cli.mode {
        let resolve = resolve
            .iter()
            .map(|r| r.split_once('=').map(|(n, a)| (n.to_string(), a.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or("--resolve takes NAME=ADDR")?;
        let connect = seconds("connect-timeout", options.connect_timeout)?;
        return match k8s::discover(|name| std::env::var(name).ok(), &resolve, connect)? {
            k8s::Role::Node { addr } => run_node(addr, cookie, &options),
            k8s::Role::Master { addr, nodes } => run_master(&addr.to_string(), nodes, cookie, &options),
        };
    }
    let addr_text = cli.addr.ok_or("give the address to listen on, as IP:PORT")?;
    let addr: SocketAddr = addr_text
        .parse()
        .map_err(|_| format!("{addr_text:?} is not an address to listen on; write IP:PORT, such as 10.0.0.2:12360"))?;
    let Some(nodes_toml) = cli.nodes_toml else {
        return run_node(addr, cookie, &options);
    };
    let nodes = config::load(&nodes_toml)?;
    for node in &nodes {
        if node.fabric_addr.port() == 0 && node.fabric_addr_text != addr_text {
            return Err(format!(
                "{}: the node at {} has port 0; only the master's own entry may (the master must know where to connect)",
                nodes_toml.display(),
                node.fabric_addr
            ));
        }
    }
    run_master(&addr_text, nodes, cookie, &options)
}

fn work_dir(options: &Options, addr: SocketAddr) -> PathBuf {
    options
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("constellation-{}-{}", addr.ip(), addr.port())))
}

/// Serves as a node at `addr`.
fn run_node(addr: SocketAddr, cookie: Option<Vec<u8>>, options: &Options) -> Result<(), String> {
    auth::check_exposure(addr.ip(), &cookie)?;
    let listener = bind(addr, "node")?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    logger::init(format!("node {bound}"));
    println!("listening on {bound}");
    let node_options = node::NodeOptions { cookie, work_dir: work_dir(options, bound) };
    node::serve(listener, node_options).map_err(|e| e.to_string())
}

/// Serves as the master of `nodes`, whose own entry's address is `addr_text`,
/// and as the bridge daemon at that entry's `bridge_bind`.
fn run_master(
    addr_text: &str,
    mut nodes: Vec<config::NodeSpec>,
    cookie: Option<Vec<u8>>,
    options: &Options,
) -> Result<(), String> {
    let own = config::find_master(&nodes, addr_text)?.clone();
    let addr = own.fabric_addr;
    let bridge_bind = own.bridge_bind.expect("find_master checks bridge_bind");
    auth::check_exposure(addr.ip(), &cookie)?;
    auth::check_exposure(bridge_bind.ip(), &cookie)?;
    let timing = master::Timing {
        heartbeat: seconds("heartbeat", options.heartbeat)?,
        lease: seconds("lease", options.lease)?,
        margin: seconds("margin", options.margin)?,
        connect: seconds("connect-timeout", options.connect_timeout)?,
    };
    // The master hosts processes itself if its entry has cores: as a node, in
    // this process, connected to like any other.
    let own_listener = bind(addr, "master's node")?;
    let own_bound = own_listener.local_addr().map_err(|e| e.to_string())?;
    logger::init(format!("master {own_bound}"));
    let master_work = work_dir(options, own_bound);
    for node in &mut nodes {
        if node.fabric_addr_text == own.fabric_addr_text {
            node.fabric_addr = own_bound;
        }
    }
    if own.cpu.cores() > 0.0 {
        let node_options = node::NodeOptions { cookie: cookie.clone(), work_dir: master_work.join("node") };
        std::thread::Builder::new()
            .name("own-node".into())
            .spawn(move || node::serve(own_listener, node_options))
            .map_err(|e| e.to_string())?;
    } else {
        nodes.retain(|n| n.fabric_addr_text != own.fabric_addr_text);
    }
    let bridge_listener = bind(bridge_bind, "bridge daemon")?;
    let bridge_bound = bridge_listener.local_addr().map_err(|e| e.to_string())?;
    let master = master::Master::start(nodes, cookie.clone(), timing)?;
    log::info!("bridge daemon listening on {bridge_bound}");
    println!("bridge listening on {bridge_bound}");
    let deploy_options = deploy::DeployOptions {
        cookie,
        work_dir: master_work,
        probe_timeout: seconds("probe-timeout", options.probe_timeout)?,
    };
    deploy::serve(bridge_listener, master, deploy_options).map_err(|e| e.to_string())
}
