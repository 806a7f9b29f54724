//! `constellation`: the cluster daemon. `constellation ADDR` runs a node;
//! `constellation ADDR nodes.toml` runs the master and its bridge daemon.

use clap::Parser;
use constellation_fabric::{auth, client, config, deploy, k8s, logger, master, node, slurm};
use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
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
    /// Run BINARY on a cluster made of a Slurm allocation: start a node daemon
    /// on every allocated node (srun), the master and bridge here, deploy BINARY,
    /// print its output as cargo deploy does, exit with its exit code, and stop
    /// every daemon. A generated cookie protects the daemons.
    ///
    /// Example: salloc -N 3 constellation slurm ./target/release/examples/fibonacci -- 10
    #[command(verbatim_doc_comment)]
    Slurm {
        /// The program to run (it must call constellation::init).
        binary: PathBuf,
        /// Arguments for the program.
        #[arg(last = true)]
        args: Vec<String>,
        /// Pass this environment variable to the job's processes; repeat for several.
        #[arg(long = "env", value_name = "NAME")]
        env: Vec<String>,
        /// The address of this host that the allocated nodes reach [default: the
        /// address of SLURM_SUBMIT_HOST, else 127.0.0.1].
        #[arg(long, value_name = "IP")]
        addr: Option<std::net::IpAddr>,
    },
    /// A node daemon started by `constellation slurm` (through srun).
    #[command(hide = true)]
    SlurmNode {
        /// The master to register with.
        #[arg(long)]
        register: SocketAddr,
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
    /// Node: hold each process to its CPU share as a hard quota (cgroup CPU
    /// bandwidth), not only a weight against the node's other processes.
    #[arg(long, global = true)]
    cpu_quota: bool,
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
    if let Some(Mode::Slurm { binary, args, env, addr }) = &cli.mode {
        return match run_slurm(binary, args.clone(), env, *addr, &cli.options) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(error) => {
                eprintln!("constellation: {error}");
                ExitCode::FAILURE
            }
        };
    }
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
    if let Some(Mode::SlurmNode { register }) = cli.mode {
        let cookie = cookie.ok_or("CONSTELLATION_COOKIE is not set")?;
        let listener = slurm::register(register, &cookie)?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        logger::init(format!("node {bound}"));
        let node_options = node::NodeOptions {
            cookie: Some(cookie),
            work_dir: work_dir(&options, bound),
            exit_with_master: true,
            cpu_quota: options.cpu_quota,
        };
        return node::serve(listener, node_options).map_err(|e| e.to_string());
    }
    let addr_text = cli.addr.ok_or("give the address to listen on, as IP:PORT")?;
    let addr: SocketAddr = addr_text
        .parse()
        .map_err(|_| format!("{addr_text:?} is not an address to listen on; write IP:PORT, such as 10.0.0.2:12360"))?;
    let Some(nodes_toml) = cli.nodes_toml else {
        return run_node(addr, cookie, &options);
    };
    let nodes = config::load(&nodes_toml)?;
    config::find_master(&nodes, &addr_text)?;
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
    let node_options = node::NodeOptions {
        cookie,
        work_dir: work_dir(options, bound),
        exit_with_master: false,
        cpu_quota: options.cpu_quota,
    };
    node::serve(listener, node_options).map_err(|e| e.to_string())
}

/// Serves as the master of `nodes`, whose own entry's address is `addr_text`,
/// and as the bridge daemon at that entry's `bridge_bind`.
fn run_master(
    addr_text: &str,
    nodes: Vec<config::NodeSpec>,
    cookie: Option<Vec<u8>>,
    options: &Options,
) -> Result<(), String> {
    let (bridge, _master, serving) = start_master(addr_text, nodes, cookie, options)?;
    println!("bridge listening on {bridge}");
    serving.join().map_err(|_| "the bridge daemon's thread panicked".to_string())?
}

/// A started master: its bridge daemon's address, the master, and the thread
/// serving deployments.
type StartedMaster = (SocketAddr, std::sync::Arc<master::Master>, std::thread::JoinHandle<Result<(), String>>);

/// Starts the master and its bridge daemon (on a thread); returns the bridge
/// daemon's address.
fn start_master(
    addr_text: &str,
    mut nodes: Vec<config::NodeSpec>,
    cookie: Option<Vec<u8>>,
    options: &Options,
) -> Result<StartedMaster, String> {
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
        let node_options = node::NodeOptions {
            cookie: cookie.clone(),
            work_dir: master_work.join("node"),
            exit_with_master: false,
            cpu_quota: options.cpu_quota,
        };
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
    let deploy_options = deploy::DeployOptions {
        cookie,
        work_dir: master_work,
        probe_timeout: seconds("probe-timeout", options.probe_timeout)?,
        // A job's bridge and its monitors watch each other as the master and its
        // nodes do.
        heartbeats: constellation::cluster::Heartbeats {
            interval: timing.heartbeat,
            fence: timing.lease,
            margin: timing.margin,
        },
    };
    let serving_master = master.clone();
    let serving = std::thread::Builder::new()
        .name("bridge-daemon".into())
        .spawn(move || deploy::serve(bridge_listener, serving_master, deploy_options).map_err(|e| e.to_string()))
        .map_err(|e| e.to_string())?;
    Ok((bridge_bound, master, serving))
}

/// `constellation slurm`: see [`Mode::Slurm`].
fn run_slurm(
    binary: &std::path::Path,
    args: Vec<String>,
    env: &[String],
    addr: Option<std::net::IpAddr>,
    options: &Options,
) -> Result<i32, String> {
    use std::net::ToSocketAddrs;
    let allocated = slurm::allocation(|name| std::env::var(name).ok())?;
    let vars = env
        .iter()
        .map(|name| {
            std::env::var(name).map(|v| (name.clone(), v)).map_err(|_| format!("--env {name}: {name} is not set"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cookie = match auth::load_cookie(options.cookie_file.as_deref()).map_err(|e| e.to_string())? {
        Some(cookie) => cookie,
        None => {
            (0..4).map(|_| format!("{:016x}", constellation::cluster::random_u64())).collect::<String>().into_bytes()
        }
    };
    let ip = addr.unwrap_or_else(|| {
        std::env::var("SLURM_SUBMIT_HOST")
            .ok()
            .and_then(|host| (host.as_str(), 0).to_socket_addrs().ok()?.find(|a| a.is_ipv4()))
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip())
    });
    // The job's output is what the user came for: the daemons speak up only
    // about trouble, unless asked for more.
    if std::env::var_os("CONSTELLATION_LOG").is_none() {
        std::env::set_var("CONSTELLATION_LOG", "warn");
    }
    let registrations = bind(SocketAddr::new(ip, 0), "node registrations")?;
    let register_at = registrations.local_addr().map_err(|e| e.to_string())?;
    logger::init(format!("slurm master {register_at}"));
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut srun = Command::new("srun")
        .args(["--overlap", &format!("--nodes={}", allocated.len()), "--ntasks-per-node=1", "--kill-on-bad-exit=1"])
        .arg(exe)
        .args(["slurm-node", "--register", &register_at.to_string()])
        .env("CONSTELLATION_COOKIE", String::from_utf8_lossy(&cookie).as_ref())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("running srun to start the node daemons: {e}"))?;
    // srun ends when its daemons do: when we stop them, or when Slurm ends the
    // allocation (scancel, the time limit), which then stops the job.
    let srun_pid = srun.id() as i32;
    let (srun_ended_tx, srun_ended) = std::sync::mpsc::channel::<()>();
    type OnEnd = Option<Box<dyn Fn() + Send>>;
    let on_srun_end: std::sync::Arc<parking_lot::Mutex<OnEnd>> = Default::default();
    let watcher = on_srun_end.clone();
    std::thread::spawn(move || {
        let _ = srun.wait();
        if let Some(stop_job) = watcher.lock().as_ref() {
            stop_job();
        }
        let _ = srun_ended_tx.send(());
    });
    let stop_daemons = |master: Option<&master::Master>| {
        // The node daemons exit when their master disconnects, and srun with them.
        if let Some(master) = master {
            master.disconnect();
            if srun_ended.recv_timeout(Duration::from_secs(3)).is_ok() {
                return;
            }
        }
        // SAFETY: kill takes plain integers; srun is our child, reaped only by
        // the watcher above, which is still waiting unless srun has ended.
        unsafe { libc::kill(srun_pid, libc::SIGTERM) };
        if srun_ended.recv_timeout(Duration::from_secs(3)).is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(srun_pid, libc::SIGKILL) };
            let _ = srun_ended.recv_timeout(Duration::from_secs(3));
        }
    };
    let connect = seconds("connect-timeout", options.connect_timeout)?;
    let started = slurm::await_registrations(&registrations, &cookie, &allocated, connect).and_then(|mut nodes| {
        let own = format!("{ip}:0");
        nodes.insert(
            0,
            config::NodeSpec {
                fabric_addr: SocketAddr::new(ip, 0),
                fabric_addr_text: own.clone(),
                bridge_bind: Some(SocketAddr::new(ip, 0)),
                mem: constellation::Mem::from_bytes(0),
                cpu: constellation::Cpu::from_cores(0.0),
            },
        );
        start_master(&own, nodes, Some(cookie.clone()), options)
    });
    let (bridge, master) = match started {
        Ok((bridge, master, _serving)) => (bridge, master),
        Err(error) => {
            stop_daemons(None);
            return Err(error);
        }
    };
    let json = std::env::var("CONSTELLATION_FORMAT").is_ok_and(|f| f == "json");
    let bridge_text = bridge.to_string();
    let deploy = client::Deploy { bridge: &bridge_text, cookie: &cookie, binary, args, vars, json };
    let result = deploy.start().and_then(|deployed| {
        let stop = deployed.sender();
        *on_srun_end.lock() = Some(Box::new(move || {
            log::warn!("the node daemons have ended (the allocation was cancelled or ran out); stopping the job");
            stop(&constellation_fabric::wire::ToBridge::Stop);
        }));
        deployed.stop_on(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
        deployed.forward_stdin();
        deployed.wait(client::print_output)
    });
    on_srun_end.lock().take();
    stop_daemons(Some(&master));
    result
}
