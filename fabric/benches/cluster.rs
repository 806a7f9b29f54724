//! `cargo bench -p constellation-fabric --bench cluster`: the time from `spawn` to
//! the first u64 received from the child, on a loopback cluster (a master and two
//! node daemons on 127.0.0.2–3, found through `CARGO_BIN_EXE_constellation`) and
//! locally, in the same run; median of `SPAWNS` sequential spawns each.
//!
//! The bench binary is its own workload: run with `BENCH_ROLE=measure` it calls
//! `init` and measures; otherwise it starts the cluster and runs itself both ways.
use constellation::*;
use constellation_fabric::client::Deploy;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const SPAWNS: usize = 200;

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("measure") {
        return measure();
    }
    let cluster = LoopbackCluster::start();
    let me = std::env::current_exe().expect("the bench's own path");
    // Warm both paths (page cache, the binary's copy on each node) before measuring.
    let _ = local(&me);
    let _ = deployed(&me, &cluster.bridge);
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(deployed(&me, &cluster.bridge));
        baseline.push(local(&me));
    }
    ours.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    let (ours, baseline) = (ours[1], baseline[1]);
    println!("scenario        cluster       local         ratio");
    println!("cluster_spawn   {:>8.3} ms   {:>8.3} ms   {:>5.2}", ours / 1e6, baseline / 1e6, ours / baseline);
    println!("RESULT cluster_spawn ours={ours:.0} baseline={baseline:.0} unit=ns ratio={:.3}", ours / baseline);
}

/// In a job: spawns `SPAWNS` children one after another, each sending one u64,
/// and prints the median time from `spawn` to that value.
fn measure() {
    init(Resources::default());
    let mut times = Vec::with_capacity(SPAWNS);
    for _ in 0..SPAWNS {
        let started = Instant::now();
        let child = spawn(
            Resources { mem: 20 * Mem::MIB, ..Resources::default() },
            FnOnce!(|parent: Pid| Sender::<u64>::new(parent).send(7).block()),
        )
        .block()
        .expect("spawning");
        let value = Receiver::<u64>::new(child).recv().block().expect("receiving");
        times.push(started.elapsed());
        assert_eq!(value, 7);
    }
    times.sort();
    println!("median_ns={}", times[SPAWNS / 2].as_nanos());
}

fn parse_median(stdout: &str) -> f64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("median_ns="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no median in the job's output:\n{stdout}"))
}

fn local(me: &std::path::Path) -> f64 {
    let output = Command::new(me)
        .env("BENCH_ROLE", "measure")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("running the local job");
    assert!(output.status.success(), "the local job failed");
    parse_median(&String::from_utf8_lossy(&output.stdout))
}

fn deployed(me: &std::path::Path, bridge: &str) -> f64 {
    let deploy = Deploy {
        bridge,
        cookie: b"",
        binary: me,
        args: Vec::new(),
        vars: vec![("BENCH_ROLE".into(), "measure".into())],
        json: false,
    };
    let mut stdout = Vec::new();
    let code = deploy
        .start()
        .and_then(|d| {
            d.wait(|fd, data| {
                if fd == 1 {
                    stdout.extend_from_slice(data)
                }
            })
        })
        .expect("deploying");
    assert_eq!(code, 0, "the deployed job failed");
    parse_median(&String::from_utf8_lossy(&stdout))
}

/// A master and two nodes on loopback, killed when dropped.
struct LoopbackCluster {
    daemons: Vec<Child>,
    bridge: String,
    dir: std::path::PathBuf,
}

impl LoopbackCluster {
    fn start() -> LoopbackCluster {
        let daemon = env!("CARGO_BIN_EXE_constellation");
        let dir = std::env::temp_dir().join(format!("constellation-bench-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("making the bench's directory");
        let mut daemons = Vec::new();
        let start = |args: Vec<String>, prefix: &str, stderr: Stdio, daemons: &mut Vec<Child>| {
            let mut child = Command::new(daemon)
                .args(args)
                // The master's "joined" lines are at the info level.
                .env("CONSTELLATION_LOG", "info")
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("starting a daemon");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("reading its address");
            daemons.push(child);
            line.trim().strip_prefix(prefix).unwrap_or_else(|| panic!("a daemon said {line:?}")).to_string()
        };
        let mut toml = String::from(
            "[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n",
        );
        for (index, ip) in ["127.0.0.2", "127.0.0.3"].into_iter().enumerate() {
            let work = dir.join(format!("node{index}")).display().to_string();
            let addr =
                start(vec!["--work-dir".into(), work, format!("{ip}:0")], "listening on ", Stdio::null(), &mut daemons);
            toml.push_str(&format!("[[nodes]]\nfabric_addr = \"{addr}\"\nmem = \"8 GiB\"\ncpu = 2\n"));
        }
        let nodes = dir.join("nodes.toml");
        std::fs::write(&nodes, toml).expect("writing nodes.toml");
        let work = dir.join("master").display().to_string();
        let args = vec!["--work-dir".into(), work, "127.0.0.1:0".into(), nodes.display().to_string()];
        let bridge = start(args, "bridge listening on ", Stdio::piped(), &mut daemons);
        // Measure once both nodes have joined: a spawn before finds no room.
        let master_log = daemons.last_mut().and_then(|master| master.stderr.take()).expect("piped");
        let (joined, all_joined) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut count = 0;
            // Read to the end, so the master never blocks on a full pipe.
            for line in BufReader::new(master_log).lines().map_while(Result::ok) {
                if line.contains(" joined (") {
                    count += 1;
                    if count == 2 {
                        let _ = joined.send(());
                    }
                }
            }
        });
        if all_joined.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("the nodes did not join the master within 30 s");
        }
        LoopbackCluster { daemons, bridge, dir }
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for daemon in &mut self.daemons {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
