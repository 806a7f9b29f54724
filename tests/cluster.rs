//! The same binaries on a loopback cluster: a master and three node daemons on
//! 127.0.0.1–4, jobs deployed with `cargo deploy`, compared with local runs.
mod util;

use std::{collections::BTreeMap, time::Duration};
use util::{
    cluster::{alive, worker_lives, Cluster},
    Job,
};

/// `line` with loopback addresses (`127.x.y.z:port`, which differ between runs
/// and nodes) blanked.
fn blank_addresses(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("127.") {
        out.push_str(&rest[..at]);
        let end =
            rest[at..].find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).map_or(rest.len(), |e| at + e);
        out.push_str("<addr>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The job's stdout lines, with process tags and addresses (which differ between
/// runs) blanked, counted.
fn lines(finished: &util::Finished) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in finished.all_stdout().lines() {
        let line = blank_addresses(line);
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                let bare = w.trim_matches(|c: char| !c.is_ascii_alphanumeric());
                if bare.len() == 7 && bare.bytes().all(|b| b.is_ascii_hexdigit()) {
                    w.replace(bare, "<pid>")
                } else {
                    w.to_string()
                }
            })
            .collect();
        *counts.entry(words.join(" ")).or_insert(0) += 1;
    }
    counts
}

#[test]
fn examples_print_on_a_cluster_what_they_print_locally() {
    let cluster = Cluster::three_nodes(&[]);
    for (example, args) in [
        ("hello", &[][..]),
        ("fibonacci", &["8"][..]),
        ("pythagorean", &[][..]),
        ("fork_join", &[][..]),
        ("pipeline", &[][..]),
        ("all_to_all", &[][..]),
    ] {
        let local = Job::new(example, args).run();
        let deployed = cluster.deploy(example, args).run();
        assert_eq!(deployed.code, Some(0), "{example} on the cluster: {}\n{}", deployed.stderr_text(), cluster.logs());
        assert_eq!(lines(&deployed), lines(&local), "{example}: the cluster's output differs from the local run's");
        assert_eq!(deployed.spawns().len(), local.spawns().len(), "{example}: a different process tree");
        deployed.assert_nothing_left();
    }
}

#[test]
fn signals_and_the_registry_work_across_nodes_as_locally() {
    let cluster = Cluster::three_nodes(&[]);
    for (program, scenario) in [
        ("scenarios", "monitor"),
        ("scenarios", "link_cascade"),
        ("scenarios", "registry"),
        ("scenarios", "mailboxes"),
        ("supervision", "one_for_all"),
    ] {
        let local = Job::new(program, &[scenario]).run();
        let deployed = cluster.deploy(program, &[scenario]).run();
        assert_eq!(deployed.code, local.code, "{scenario}: {}\n{}", deployed.stderr_text(), cluster.logs());
        // Each run's stderr holds the bridge's account of every process's end:
        // on a mismatch it tells which run went wrong, and how.
        assert_eq!(
            lines(&deployed),
            lines(&local),
            "{scenario}: the cluster's output differs from the local run's\n-- local stderr:\n{}\n-- cluster stderr:\n{}",
            local.stderr_text(),
            deployed.stderr_text()
        );
        let statuses = |job: &util::Finished| {
            let mut statuses: Vec<String> = job.exits().values().map(|s| s.to_string()).collect();
            statuses.sort();
            statuses
        };
        let blank = |statuses: Vec<String>| -> Vec<String> {
            statuses.into_iter().map(|s| if s.contains("killed_by") { "killed_by".into() } else { s }).collect()
        };
        assert_eq!(blank(statuses(&deployed)), blank(statuses(&local)), "{scenario}: different exit statuses");
        deployed.assert_nothing_left();
    }
}

#[test]
fn memory_limits_hold_on_nodes() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    cluster.deploy("scenarios", &["memory_limit"]).run().assert_memory_limited();
}

#[test]
fn a_node_with_cpu_quotas_holds_a_process_to_its_share() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 2.0 };
    let cluster = Cluster::start_full(&[node], &[], &["--cpu-quota"], None);
    let finished = cluster.deploy("cluster_scenarios", &["spin"]).run();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
    let line = finished.line("cpu ms:");
    let cpu_ms: u64 = line.trim_start_matches("cpu ms: ").parse().unwrap();
    // A fifth of a core for 1.5 s is 300 ms; unlimited, it would take ~1,500.
    assert!(cpu_ms <= 700, "the child used {cpu_ms} ms of CPU in 1.5 s with a 0.2-core quota");
}

#[test]
fn exit_codes_and_panics_propagate() {
    let cluster = Cluster::three_nodes(&[]);
    let finished = cluster.deploy("cluster_scenarios", &["exit", "7"]).run();
    assert_eq!(finished.code, Some(7), "{}", finished.stderr_text());
    assert!(finished.all_stdout().contains("child ran"), "exits: {:?}\n{}", finished.exits(), cluster.logs());
    // A closure larger than any frame a daemon takes from a stranger.
    let finished = cluster.deploy("cluster_scenarios", &["big_closure", "16"]).run();
    assert_eq!(finished.line("the child got"), "the child got 16777216 bytes", "{}", cluster.logs());
    let finished = cluster.deploy("cluster_scenarios", &["no such scenario"]).run();
    assert_eq!(finished.code, Some(101), "{}", finished.stderr_text());
    let exit = &finished.exits()[&finished.top()];
    assert!(exit["panic"].as_str().unwrap().contains("no scenario"), "{exit}");
    finished.assert_nothing_left();
}

#[test]
fn placement_respects_memory_and_spreads_load() {
    let cluster = Cluster::start(
        &[
            util::cluster::Node { ip: "127.0.0.2", mem: "1 GiB", cpu: 2.0 },
            util::cluster::Node { ip: "127.0.0.3", mem: "6 GiB", cpu: 2.0 },
            util::cluster::Node { ip: "127.0.0.4", mem: "1 GiB", cpu: 2.0 },
        ],
        &[],
    );
    // Only 127.0.0.3 has room for 4 GiB.
    let finished = cluster.deploy("cluster_scenarios", &["where", "4096"]).run();
    assert_eq!(finished.code, Some(0), "{}\n{}", finished.stderr_text(), cluster.logs());
    assert_eq!(finished.line("child on"), "child on 127.0.0.3");
    // Nothing has room for 16 GiB: spawn fails with NoCapacity rather than waiting.
    let finished = cluster.deploy("cluster_scenarios", &["where", "16384"]).run();
    assert_eq!(finished.code, Some(101));
    let exit = &finished.exits()[&finished.top()];
    assert!(exit["panic"].as_str().unwrap().contains("NoCapacity"), "{exit}");
    // Room for 4 GiB only on the 6 GiB node.
    let finished = cluster.deploy("cluster_scenarios", &["capacity", "4096"]).run();
    assert_eq!(finished.line("capacity:"), "capacity: 1", "{}", finished.stderr_text());
    let finished = cluster.deploy("cluster_scenarios", &["capacity", "1024"]).run();
    let top_node_share = finished.line("capacity:");
    assert_eq!(top_node_share, "capacity: 7", "1 + 6 + 1 GiB, less 100 MiB on one node");
    // Twelve small children land on every node.
    let finished = cluster.deploy("cluster_scenarios", &["spread", "12"]).run();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
    assert_eq!(finished.line("ips:"), "ips: 127.0.0.2,127.0.0.3,127.0.0.4");
    finished.assert_nothing_left();
}

#[test]
fn a_binary_crosses_to_each_node_once() {
    let cluster = Cluster::three_nodes(&[]);
    for _ in 0..2 {
        let finished = cluster.deploy("cluster_scenarios", &["spread", "12"]).run();
        assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
        assert_eq!(finished.line("ips:"), "ips: 127.0.0.2,127.0.0.3,127.0.0.4");
    }
    for node in &cluster.nodes {
        assert_eq!(node.log().matches("stored binary").count(), 1, "{}", node.log());
    }
    assert_eq!(cluster.master.log().matches("sent binary").count(), 3, "{}", cluster.master.log());
}

#[test]
fn ctrl_c_or_a_vanished_cargo_deploy_stops_the_job_and_leaves_nothing() {
    let cluster = Cluster::three_nodes(&[]);
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    running.wait_for_stdout("worker on", Duration::from_secs(30));
    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    assert_eq!(finished.code, Some(130), "{}", finished.stderr_text());
    finished.assert_nothing_left();
    // A cargo deploy that vanishes takes its job with it.
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    running.wait_for_stdout("worker on", Duration::from_secs(30));
    running.signal(libc::SIGKILL, false);
    let finished = running.finish();
    assert_eq!(finished.signal, Some(libc::SIGKILL));
    finished.assert_nothing_left();
}

/// Timings short enough for tests: a node is declared lost 3 s after its last
/// acknowledged heartbeat.
const FAST_LEASES: [&str; 6] = ["--heartbeat", "0.2", "--lease", "2", "--margin", "1"];

/// The OS pids of `pid`'s parent, its parent's parent, and so on.
fn ancestors(mut pid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    while let Some(parent) = util::parent_of(pid) {
        if parent <= 1 {
            break;
        }
        found.push(parent);
        pid = parent;
    }
    found
}

fn wait_for_workers(running: &util::Running, count: usize, within: Duration, cluster: &Cluster) -> Vec<(String, i32)> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let found = worker_lives(running);
        if found.len() >= count {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{count} worker lives did not start within {within:?}: {found:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_at<'a>(cluster: &'a Cluster, ip: &str) -> &'a util::cluster::Daemon {
    cluster.nodes.iter().find(|n| n.addr.starts_with(&format!("{ip}:"))).expect("a node at that address")
}

#[test]
fn a_killed_node_loses_its_worker_at_once_the_supervisor_restarts_it_elsewhere_and_the_node_rejoins() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    let first = wait_for_workers(&running, 1, Duration::from_secs(30), &cluster)[0].clone();
    let node = node_at(&cluster, &first.0);
    assert!(ancestors(first.1).contains(&node.pid()), "the worker is not a descendant of its node's daemon");
    let killed_at = std::time::Instant::now();
    node.signal(libc::SIGKILL);
    // Its monitor dies with its node daemon, and the worker with its monitor.
    while alive(first.1) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "the worker outlived its node: {:?}\n{}",
            std::fs::read_to_string(format!("/proc/{}/status", first.1)),
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = wait_for_workers(&running, 2, Duration::from_secs(20), &cluster)[1].clone();
    let restarted_after = killed_at.elapsed();
    assert_ne!(second.0, first.0, "restarted on the lost node");
    assert!(
        restarted_after >= Duration::from_secs(2),
        "restarted after {restarted_after:?}, before the lease ran out\n{}",
        cluster.logs()
    );
    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    let lost = finished.exits().values().filter(|status| status["lost"] == true).count();
    assert_eq!(lost, 1, "one process is reported lost: {:?}", finished.exits());
    finished.assert_nothing_left();

    // The node comes back (a daemon again at its address): it rejoins, and
    // processes are placed on it again.
    let index = cluster.nodes.iter().position(|n| n.addr.starts_with(&format!("{}:", first.0))).unwrap();
    let addr = cluster.nodes[index].addr.clone();
    let mut command = std::process::Command::new(util::cluster::workspace_binary("constellation"));
    command.arg("--work-dir").arg(cluster.dir.join(format!("node{index}"))).arg(&addr);
    let _restarted = util::cluster::Daemon::start(command, "listening on ");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.master.log().matches(&format!("node {addr} joined")).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "the node did not rejoin\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    let finished = cluster.deploy("cluster_scenarios", &["spread", "12"]).run();
    assert_eq!(finished.line("ips:"), "ips: 127.0.0.2,127.0.0.3,127.0.0.4", "{}", cluster.logs());
}

#[test]
fn a_nodes_zygote_forks_the_jobs_processes_and_a_killed_zygote_takes_them_with_it() {
    let cluster = Cluster::three_nodes(&[]);
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    let first = wait_for_workers(&running, 1, Duration::from_secs(30), &cluster)[0].clone();
    let node = node_at(&cluster, &first.0);
    // worker <- its monitor <- the job's zygote <- the node daemon.
    let line = ancestors(first.1);
    assert_eq!(line.get(2), Some(&node.pid()), "the worker's monitor was not forked by a child of its node: {line:?}");
    let zygote = line[1];
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    assert_eq!(exe(zygote), exe(first.1), "the zygote runs the job's binary");
    let index = cluster.nodes.iter().position(|n| n.pid() == node.pid()).expect("the worker's node is one of them");
    let jobs = cluster.dir.join(format!("node{index}")).join("jobs");
    assert_eq!(std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0), 1, "the job has a scratch directory");

    // Its processes die with it, are reported killed, and the supervisor
    // restarts the worker: from a new zygote.
    // SAFETY: kill takes plain integers; the zygote is alive (its child is).
    assert_eq!(unsafe { libc::kill(zygote, libc::SIGKILL) }, 0);
    let killed_at = std::time::Instant::now();
    // The kill reaches the worker through two parent-death signals.
    while alive(first.1) {
        assert!(killed_at.elapsed() < Duration::from_secs(5), "the worker outlived its zygote");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = wait_for_workers(&running, 2, Duration::from_secs(20), &cluster)[1].clone();
    let line = ancestors(second.1);
    assert!(!line.contains(&zygote), "the new worker came from the killed zygote: {line:?}");
    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    let exits = finished.exits();
    let killed: Vec<&String> =
        exits.keys().filter(|pid| finished.stdout_of(pid).contains(&format!("os {}", first.1))).collect();
    assert_eq!(killed.len(), 1, "{exits:?}");
    assert_eq!(exits[killed[0]]["signal"], libc::SIGKILL, "{exits:?}");
    finished.assert_nothing_left();
    // The job's end took its zygotes and its scratch directories.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for node in 0..cluster.nodes.len() {
        let jobs = cluster.dir.join(format!("node{node}")).join("jobs");
        while std::fs::read_dir(&jobs).map(|d| d.count()).unwrap_or(0) > 0 {
            assert!(std::time::Instant::now() < deadline, "a scratch directory is left in {}", jobs.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_spawn_sees_the_environment_of_its_spawn_whether_the_nodes_zygote_forks_it_or_not() {
    // One node: every process of the job lands there. The zygote has the
    // environment of the job's first process; the spawn made with a variable
    // set is exec'd, the ones after it are forked again.
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    let finished = cluster.deploy("scenarios", &["inherit_changes", "/tmp"]).run();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
    for (line, seen) in [("first:", "unset"), ("changed:", "yes"), ("moved:", "unset"), ("back:", "unset")] {
        let found = finished.line(line);
        assert!(found.starts_with(&format!("{line} {seen} in ")), "{found}\n{}", cluster.logs());
    }
    finished.assert_nothing_left();
}

#[test]
fn a_stopped_node_has_its_processes_fenced_by_their_monitors() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    let first = wait_for_workers(&running, 1, Duration::from_secs(30), &cluster)[0].clone();
    let node = node_at(&cluster, &first.0);
    node.signal(libc::SIGSTOP);
    let stopped_at = std::time::Instant::now();
    // The lease (2 s from the last acknowledged heartbeat) runs out; nothing
    // renews it, so the worker's monitor kills it.
    while alive(first.1) {
        assert!(stopped_at.elapsed() < Duration::from_secs(5), "the worker was not fenced");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = wait_for_workers(&running, 2, Duration::from_secs(20), &cluster)[1].clone();
    assert_ne!(second.0, first.0, "restarted on the stopped node");
    node.signal(libc::SIGCONT);
    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    finished.assert_nothing_left();
}

#[test]
fn stdin_reaches_the_deployed_top_process() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    let finished = cluster.deploy("scenarios", &["stdin_echo"]).stdin(b"one\ntwo\n").run();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
    assert_eq!(finished.all_stdout(), "ONE\nTWO\nend of input\n");
    // Without input, the top process sees its end at once.
    let finished = cluster.deploy("scenarios", &["stdin_echo"]).run();
    assert_eq!(finished.all_stdout(), "end of input\n");
}

/// Asserts that the 12-input fan-out ended well, every input computed on the
/// first two nodes (the third was lost), and left nothing behind.
fn assert_all_right_without_the_last_node(finished: &util::Finished, cluster: &Cluster) {
    assert_eq!(finished.code, Some(0), "{}\n{}", finished.stderr_text(), cluster.logs());
    let wrong: Vec<String> =
        finished.all_stdout().lines().filter(|l| l.starts_with("wrong:")).map(String::from).collect();
    assert_eq!(finished.line("results:"), "results: 12 of 12 right", "{wrong:?}\n{}", cluster.logs());
    assert_eq!(finished.line("ips:"), "ips: 127.0.0.2,127.0.0.3");
    finished.assert_nothing_left();
}

#[test]
fn a_fanout_retries_the_inputs_whose_node_was_lost_while_they_started() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    // The last node takes the spawns placed on it and never starts them.
    let node = node_at(&cluster, "127.0.0.4");
    node.signal(libc::SIGSTOP);
    let running = cluster.deploy("cluster_scenarios", &["fanout", "12", "0"]).start();
    running.wait_for_stdout("fanout started", Duration::from_secs(30));
    // A stopped daemon gives no sign that a spawn reached it: give the first
    // round-robin placements a moment to be sent there (they are the fan-out's
    // first), then kill it before its lease runs out, so the master loses it at
    // once, while they start (the next test leaves it stopped).
    std::thread::sleep(Duration::from_millis(300));
    node.signal(libc::SIGKILL);
    let finished = running.finish();
    assert_all_right_without_the_last_node(&finished, &cluster);
}

#[test]
fn a_fanout_ends_when_a_node_that_takes_its_spawns_stays_stopped() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    // The last node takes the spawns placed on it (and the job's binary, as far
    // as its socket buffers go) and never answers: its lease runs out.
    let node = node_at(&cluster, "127.0.0.4");
    node.signal(libc::SIGSTOP);
    let finished = cluster.deploy("cluster_scenarios", &["fanout", "12", "0"]).run();
    node.signal(libc::SIGKILL);
    assert_all_right_without_the_last_node(&finished, &cluster);
}

#[test]
fn a_stopped_bridge_holds_up_no_nodes_heartbeats() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "64 GiB", cpu: 64.0 };
    let cluster = Cluster::start(&[node], &FAST_LEASES);
    let running = cluster.deploy("cluster_scenarios", &["sleepy_children", "500", "60000"]).start();
    running.wait_for_stdout("spawned 500", Duration::from_secs(60));
    // The job's bridge: the master's one child (the probe of the binary has ended).
    let bridges: Vec<i32> = std::fs::read_dir("/proc")
        .expect("listing /proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| util::parent_of(pid) == Some(cluster.master.pid()))
        .collect();
    let [bridge] = bridges[..] else { panic!("the master has children {bridges:?}, not one bridge") };
    // SAFETY: kill takes plain integers; the pid is the master's child.
    unsafe { libc::kill(bridge, libc::SIGSTOP) };
    // The bridge's monitors fence their processes once it has been silent for the
    // lease (2 s); the master hears of 500 ends from the node and has to tell the
    // stopped bridge, whose socket fills. The node's heartbeats must still be
    // answered all along: it is not lost at the lease plus the margin (3 s).
    std::thread::sleep(Duration::from_secs(7));
    let master_log = cluster.master.log();
    // SAFETY: as above.
    unsafe { libc::kill(bridge, libc::SIGCONT) };
    let finished = running.finish();
    assert!(!master_log.contains("is lost"), "the node was declared lost while a bridge was stopped:\n{master_log}");
    finished.assert_nothing_left();
}

#[test]
fn a_round_robin_fanout_spreads_and_survives_a_node_killed_midway() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    // Round-robin: every node gets inputs.
    let finished = cluster.deploy("cluster_scenarios", &["fanout", "12", "0"]).run();
    assert_eq!(finished.code, Some(0), "{}", finished.stderr_text());
    assert_eq!(finished.line("results:"), "results: 12 of 12 right");
    assert_eq!(finished.line("ips:"), "ips: 127.0.0.2,127.0.0.3,127.0.0.4");
    // The top process lands on the first node; kill the last while inputs run there.
    let running = cluster.deploy("cluster_scenarios", &["fanout", "18", "1500"]).start();
    running.wait_for_stdout("fanout started", Duration::from_secs(30));
    let node = node_at(&cluster, "127.0.0.4");
    // Wait (bounded) until inputs run there: processes of the job under that node's daemon.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !util::processes_with_marker(running.marker()).into_iter().any(|p| ancestors(p).contains(&node.pid())) {
        assert!(std::time::Instant::now() < deadline, "no input ran on 127.0.0.4\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    node.signal(libc::SIGKILL);
    let finished = running.finish();
    assert_eq!(finished.code, Some(0), "{}\n{}", finished.stderr_text(), cluster.logs());
    let wrong: Vec<String> =
        finished.all_stdout().lines().filter(|l| l.starts_with("wrong:")).map(String::from).collect();
    assert_eq!(
        finished.line("results:"),
        "results: 18 of 18 right",
        "every input came back despite the lost node: {wrong:?}"
    );
    assert!(finished.exits().values().any(|s| s["lost"] == true), "some inputs were lost and retried");
    finished.assert_nothing_left();
}

/// The OS pids of `parent`'s children.
fn children_of(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_string_lossy().parse().ok()?;
            (util::parent_of(pid)? == parent).then_some(pid)
        })
        .collect()
}

#[test]
fn processes_whose_bridge_falls_silent_are_fenced_by_their_monitors() {
    let cluster = Cluster::three_nodes(&FAST_LEASES);
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    let first = wait_for_workers(&running, 1, Duration::from_secs(30), &cluster)[0].clone();
    let bridges = children_of(cluster.master.pid());
    assert_eq!(bridges.len(), 1, "one bridge for the one job: {bridges:?}");
    // SAFETY: kill takes plain integers; the pid is the job's bridge, a child of our master.
    unsafe { libc::kill(bridges[0], libc::SIGSTOP) };
    let stopped_at = std::time::Instant::now();
    // Its nodes are fine and renew their leases, but the monitors hear nothing
    // from the bridge for the fence (2 s) and kill their processes.
    while alive(first.1) {
        assert!(stopped_at.elapsed() < Duration::from_secs(6), "the worker outlived its silent bridge");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(stopped_at.elapsed() >= Duration::from_secs(1), "fenced before the bridge was silent for long");
    // SAFETY: as above.
    unsafe { libc::kill(bridges[0], libc::SIGCONT) };
    let finished = running.finish();
    assert_eq!(finished.code, Some(1), "the top process was lost too: {}", finished.stderr_text());
    finished.assert_nothing_left();
}

#[test]
fn a_spawn_that_waits_for_room_the_job_itself_holds_fails_instead_of_hanging() {
    // The top process holds 100 MiB of the node's 1 GiB; its child wants 1000 MiB,
    // which fits only once the top process is gone. Every live process of the job
    // then waits in spawn: the spawn fails with NoCapacity.
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "1 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    let finished = cluster.deploy("cluster_scenarios", &["where", "1000"]).deadline(Duration::from_secs(20)).run();
    assert_eq!(finished.code, Some(101), "{}", finished.stderr_text());
    let exit = &finished.exits()[&finished.top()];
    assert!(exit["panic"].as_str().unwrap().contains("NoCapacity"), "{exit}");
    finished.assert_nothing_left();
}

#[test]
fn cargo_deploy_builds_the_example_it_is_given() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    let mut command = std::process::Command::new(util::cluster::workspace_binary("cargo-deploy"));
    command.current_dir(env!("CARGO_MANIFEST_DIR")).args(["deploy", "--example", "hello", &cluster.master.addr]);
    let output = command.output().expect("running cargo deploy");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("Hello, world! I am the top process"), "{stdout}\n{stderr}");
}

#[test]
fn cargo_deploy_shows_the_human_format_in_the_order_cargo_run_does() {
    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &[]);
    // stdout and stderr into one pipe, as on a terminal.
    let merged = |program: String| {
        let output = std::process::Command::new("sh")
            .args(["-c", &format!("{program} 2>&1")])
            .env("CONSTELLATION_FORMAT", "human")
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let hello = util::example("hello").display().to_string();
    let deploy = util::cluster::workspace_binary("cargo-deploy").display().to_string();
    for _ in 0..3 {
        let shown = merged(format!("{deploy} deploy --binary {hello} {}", cluster.master.addr));
        let lines: Vec<&str> = shown.lines().collect();
        assert!(lines.len() > 2, "{shown}");
        // The top process's header, then its lines, indented, before the next
        // header (the child's).
        assert!(lines[0].len() == 8 && lines[0].ends_with(':'), "{shown}");
        let next_header = lines[1..].iter().position(|l| !l.starts_with("   ")).map_or(lines.len(), |p| p + 1);
        assert!(
            lines[1..next_header].iter().any(|l| l.starts_with("   Hello, world! I am the top process")),
            "{shown}"
        );
        assert!(lines.contains(&"   exited: 0"), "{shown}");
    }
}
