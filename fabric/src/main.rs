//! `constellation`: the cluster daemon. `constellation ADDR` runs a node;
//! `constellation ADDR nodes.toml` runs the master and its bridge daemon.

use clap::Parser;
use constellation_fabric::{auth, config, deploy, logger, master, node};
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
#[command(name = "constellation", version, verbatim_doc_comment)]
struct Cli {
    /// The address this daemon listens on, as IP:PORT (port 0: any free port,
    /// printed on stdout as "listening on IP:PORT").
    addr: String,
    /// Run as the master of the nodes listed in this file.
    nodes_toml: Option<PathBuf>,
    /// A file holding the cluster's shared secret (the same on every daemon and
    /// for cargo deploy). Required on non-loopback addresses.
    #[arg(long, value_name = "FILE")]
    cookie_file: Option<PathBuf>,
    /// Where binaries are cached and processes get scratch directories
    /// [default: a directory under the system's temporary directory].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Master: seconds between a node's heartbeats.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    heartbeat: f64,
    /// Master: seconds an acknowledged heartbeat keeps a node's processes alive;
    /// a node's monitors kill their processes when it runs out.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    lease: f64,
    /// Master: seconds after the lease before a silent node's processes are
    /// declared Lost (covers killing and reaping them).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    margin: f64,
    /// Master: seconds to keep retrying unreachable nodes at start.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    connect_timeout: f64,
    /// Master: seconds a deployed binary has to call constellation::init when it
    /// is run once to learn its resources.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
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
    let cookie = auth::load_cookie(cli.cookie_file.as_deref()).map_err(|e| e.to_string())?;
    let addr: SocketAddr = cli
        .addr
        .parse()
        .map_err(|_| format!("{:?} is not an address to listen on; write IP:PORT, such as 10.0.0.2:12360", cli.addr))?;
    auth::check_exposure(addr.ip(), &cookie)?;
    let work_dir = |addr: SocketAddr| {
        cli.work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("constellation-{}-{}", addr.ip(), addr.port())))
    };
    let Some(nodes_toml) = cli.nodes_toml else {
        let listener = bind(addr, "node")?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        logger::init(format!("node {bound}"));
        println!("listening on {bound}");
        let options = node::NodeOptions { cookie, work_dir: work_dir(bound) };
        return node::serve(listener, options).map_err(|e| e.to_string());
    };
    let mut nodes = config::load(&nodes_toml)?;
    let own = config::find_master(&nodes, &cli.addr)?.clone();
    let bridge_bind = own.bridge_bind.expect("find_master checks bridge_bind");
    auth::check_exposure(bridge_bind.ip(), &cookie)?;
    for node in &nodes {
        if node.fabric_addr.port() == 0 && node.fabric_addr_text != own.fabric_addr_text {
            return Err(format!(
                "{}: the node at {} has port 0; only the master's own entry may (the master must know where to connect)",
                nodes_toml.display(),
                node.fabric_addr
            ));
        }
    }
    let timing = master::Timing {
        heartbeat: seconds("heartbeat", cli.heartbeat)?,
        lease: seconds("lease", cli.lease)?,
        margin: seconds("margin", cli.margin)?,
        connect: seconds("connect-timeout", cli.connect_timeout)?,
    };
    // The master hosts processes itself if its entry has cores: as a node, in
    // this process, connected to like any other.
    let own_listener = bind(addr, "master's node")?;
    let own_bound = own_listener.local_addr().map_err(|e| e.to_string())?;
    logger::init(format!("master {own_bound}"));
    let master_work = work_dir(own_bound);
    for node in &mut nodes {
        if node.fabric_addr_text == own.fabric_addr_text {
            node.fabric_addr = own_bound;
        }
    }
    if own.cpu.cores() > 0.0 {
        let options = node::NodeOptions { cookie: cookie.clone(), work_dir: master_work.join("node") };
        std::thread::Builder::new()
            .name("own-node".into())
            .spawn(move || node::serve(own_listener, options))
            .map_err(|e| e.to_string())?;
    } else {
        nodes.retain(|n| n.fabric_addr_text != own.fabric_addr_text);
    }
    let bridge_listener = bind(bridge_bind, "bridge daemon")?;
    let bridge_bound = bridge_listener.local_addr().map_err(|e| e.to_string())?;
    let master = master::Master::start(nodes, cookie.clone(), timing)?;
    log::info!("bridge daemon listening on {bridge_bound}");
    println!("bridge listening on {bridge_bound}");
    let options = deploy::DeployOptions {
        cookie,
        work_dir: master_work,
        probe_timeout: seconds("probe-timeout", cli.probe_timeout)?,
    };
    deploy::serve(bridge_listener, master, options).map_err(|e| e.to_string())
}
