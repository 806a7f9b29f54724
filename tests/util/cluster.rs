//! A loopback cluster for the tests: node daemons on 127.0.0.x addresses with
//! ephemeral ports, a master whose nodes.toml lists them, and `cargo deploy` jobs
//! run against its bridge. Every daemon is killed by its pid when the cluster is
//! dropped, and its work directory removed.

use super::{Job, DEADLINE};
use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// A built binary of the workspace (`cargo nextest run --workspace` builds them).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo nextest run --workspace`, which builds it (or cargo build --workspace)",
        path.display()
    );
    path
}

/// One node of a test cluster: its address, memory and cores.
#[derive(Clone, Copy)]
pub struct Node {
    pub ip: &'static str,
    pub mem: &'static str,
    pub cpu: f64,
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// Where it listens (for the master: its bridge daemon).
    pub addr: String,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Daemon {
    /// Runs `command`, waiting for the line of its stdout that starts with
    /// `first_line_prefix` and holds its address.
    pub fn start(mut command: Command, first_line_prefix: &str) -> Daemon {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = command.spawn().expect("starting a daemon");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut stderr = child.stderr.take().expect("piped");
        let into = log.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(first_line_prefix) {
                        break addr.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("a daemon did not start; its log:\n{}", String::from_utf8_lossy(&log.lock().unwrap()));
                }
            }
        };
        Daemon { child, addr, log }
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Its OS pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill takes plain integers; the pid is our own child's.
        unsafe { libc::kill(self.pid(), signal) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A master and its nodes on loopback addresses.
pub struct Cluster {
    pub nodes: Vec<Daemon>,
    pub master: Daemon,
    pub dir: PathBuf,
    /// Arguments every daemon and every deployment is given (such as a cookie).
    common: Vec<String>,
}

impl Cluster {
    /// Starts a node daemon per entry of `nodes` and a master (hosting no
    /// processes) on 127.0.0.1, passing it `master_args`.
    pub fn start(nodes: &[Node], master_args: &[&str]) -> Cluster {
        Cluster::start_with(nodes, master_args, None)
    }

    /// As [`Cluster::start`], with every daemon holding `cookie`.
    pub fn start_with(nodes: &[Node], master_args: &[&str], cookie: Option<&str>) -> Cluster {
        Cluster::start_full(nodes, master_args, &[], cookie)
    }

    /// As [`Cluster::start_with`], passing `node_args` to the node daemons.
    pub fn start_full(nodes: &[Node], master_args: &[&str], node_args: &[&str], cookie: Option<&str>) -> Cluster {
        static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "constellation-test-cluster-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("making the cluster's directory");
        let mut common = Vec::new();
        if let Some(cookie) = cookie {
            let file = dir.join("cookie");
            std::fs::write(&file, cookie).expect("writing the cookie file");
            common = vec!["--cookie-file".to_string(), file.display().to_string()];
        }
        let daemon = workspace_binary("constellation");
        let mut toml = String::from(
            "[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n",
        );
        let mut started = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            let mut command = Command::new(&daemon);
            command
                .args(&common)
                .args(node_args)
                .arg("--work-dir")
                .arg(dir.join(format!("node{index}")))
                .arg(format!("{}:0", node.ip));
            let started_node = Daemon::start(command, "listening on ");
            toml.push_str(&format!(
                "\n[[nodes]]\nfabric_addr = \"{}\"\nmem = \"{}\"\ncpu = {}\n",
                started_node.addr,
                node.mem,
                if node.cpu.fract() == 0.0 { format!("{}", node.cpu as u64) } else { node.cpu.to_string() }
            ));
            started.push(started_node);
        }
        let nodes_toml = dir.join("nodes.toml");
        std::fs::write(&nodes_toml, toml).expect("writing nodes.toml");
        let mut command = Command::new(&daemon);
        command
            .args(&common)
            .arg("--work-dir")
            .arg(dir.join("master"))
            .args(master_args)
            .arg("127.0.0.1:0")
            .arg(&nodes_toml);
        let master = Daemon::start(command, "bridge listening on ");
        Cluster { nodes: started, master, dir, common }
    }

    /// Three nodes of 4 GiB and 2 cores on 127.0.0.2–4.
    pub fn three_nodes(master_args: &[&str]) -> Cluster {
        let node = |ip| Node { ip, mem: "4 GiB", cpu: 2.0 };
        Cluster::start(&[node("127.0.0.2"), node("127.0.0.3"), node("127.0.0.4")], master_args)
    }

    /// `cargo deploy` of example `name` with `args`, as a job to run.
    pub fn deploy(&self, name: &str, args: &[&str]) -> Job {
        self.deploy_with(name, &self.common.iter().map(String::as_str).collect::<Vec<_>>(), args)
    }

    /// `cargo deploy OPTIONS` of example `name` with `args` (no cookie unless
    /// `options` has one).
    pub fn deploy_with(&self, name: &str, options: &[&str], args: &[&str]) -> Job {
        deploy_to(&self.master.addr, name, options, args)
    }

    /// The logs of every daemon, for failure messages.
    pub fn logs(&self) -> String {
        let mut logs = format!("master:\n{}", self.master.log());
        for (index, node) in self.nodes.iter().enumerate() {
            logs.push_str(&format!("node {index}:\n{}", node.log()));
        }
        logs
    }
}

/// `cargo deploy OPTIONS` of example `name` with `args` to the bridge at `bridge`.
pub fn deploy_to(bridge: &str, name: &str, options: &[&str], args: &[&str]) -> Job {
    let mut command = Command::new(workspace_binary("cargo-deploy"));
    command
        .arg("deploy")
        .args(options)
        .arg("--binary")
        .arg(super::example(name))
        .args(["--env", "SCENARIO_MARKER"])
        .arg(bridge)
        .arg("--")
        .args(args);
    command.env_remove("RUST_BACKTRACE");
    Job { command, format: "json".into(), stdin: None, deadline: DEADLINE }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether OS process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

/// The (ip, OS pid) of each "worker on IP os PID" line the job printed so far.
pub fn worker_lives(running: &super::Running) -> Vec<(String, i32)> {
    running
        .stdout_text()
        .lines()
        .filter_map(|line| {
            let (ip, pid) = line.strip_prefix("worker on ")?.split_once(" os ")?;
            Some((ip.to_string(), pid.trim().parse().ok()?))
        })
        .collect()
}
