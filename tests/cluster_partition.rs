//! A network partition: one node in a network namespace of its own, joined to
//! the host by a veth pair, has its link cut while a supervised worker runs there.
//! Its processes are fenced when the lease runs out, the master declares them
//! lost after the lease and a margin, and the supervisor restarts the worker on
//! the connected node — never two lives of it at once.
//!
//! Needs root (namespaces and veth pairs); skipped with a message without it.
mod util;

use std::{
    process::Command,
    time::{Duration, Instant},
};
use util::cluster::{alive, deploy_to, worker_lives, workspace_binary, Daemon};

/// A network namespace and the veth pair that joins it to the host; removed
/// when dropped.
struct Namespace {
    name: String,
    host_link: String,
    host_ip: String,
    inner_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip").args(args).status().is_ok_and(|s| s.success())
}

impl Namespace {
    fn create() -> Option<Namespace> {
        let id = std::process::id() % 60000;
        let (a, b) = (id / 250 % 250, id % 250);
        let ns = Namespace {
            name: format!("cst{id}"),
            host_link: format!("cvh{id}"),
            host_ip: format!("10.{}.{}.1", 100 + a % 100, b),
            inner_ip: format!("10.{}.{}.2", 100 + a % 100, b),
        };
        let inner_link = format!("cvn{id}");
        let ok = ip(&["netns", "add", &ns.name])
            && ip(&["link", "add", &ns.host_link, "type", "veth", "peer", "name", &inner_link])
            && ip(&["link", "set", &inner_link, "netns", &ns.name])
            && ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &ns.host_link])
            && ip(&["link", "set", &ns.host_link, "up"])
            && ip(&[
                "netns",
                "exec",
                &ns.name,
                "ip",
                "addr",
                "add",
                &format!("{}/30", ns.inner_ip),
                "dev",
                &inner_link,
            ])
            && ip(&["netns", "exec", &ns.name, "ip", "link", "set", &inner_link, "up"])
            && ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }

    fn cut(&self) {
        assert!(ip(&["link", "set", &self.host_link, "down"]), "cutting the link");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[test]
fn a_partitioned_node_is_fenced_and_its_worker_restarted_elsewhere_never_twice() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the partition test needs root to make a network namespace");
        return;
    }
    let Some(ns) = Namespace::create() else {
        eprintln!("skipped: could not make a network namespace and veth pair (is iproute2 installed?)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("constellation-test-partition-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cookie = dir.join("cookie");
    std::fs::write(&cookie, "partition test").unwrap();
    let cookie = cookie.to_str().unwrap().to_string();
    let daemon = workspace_binary("constellation");

    // The connected node, on the host's end of the link, and the node to be cut off.
    let mut command = Command::new(&daemon);
    command.args(["--cookie-file", &cookie, "--work-dir"]).arg(dir.join("host")).arg(format!("{}:0", ns.host_ip));
    let host = Daemon::start(command, "listening on ");
    let mut command = Command::new("ip");
    command.args(["netns", "exec", &ns.name]).arg(&daemon);
    command.args(["--cookie-file", &cookie, "--work-dir"]).arg(dir.join("inner")).arg(format!("{}:0", ns.inner_ip));
    let inner = Daemon::start(command, "listening on ");
    let nodes = dir.join("nodes.toml");
    std::fs::write(
        &nodes,
        format!(
            "[[nodes]]\nfabric_addr = \"{0}:0\"\nbridge_bind = \"{0}:0\"\nmem = \"1 GiB\"\ncpu = 0\n\n\
             [[nodes]]\nfabric_addr = \"{1}\"\nmem = \"8 GiB\"\ncpu = 2\n\n\
             [[nodes]]\nfabric_addr = \"{2}\"\nmem = \"2 GiB\"\ncpu = 2\n",
            ns.host_ip, host.addr, inner.addr
        ),
    )
    .unwrap();
    let mut command = Command::new(&daemon);
    command
        .args(["--cookie-file", &cookie, "--heartbeat", "0.2", "--lease", "2", "--margin", "1", "--work-dir"])
        .arg(dir.join("master"))
        .arg(format!("{}:0", ns.host_ip))
        .arg(&nodes);
    let master = Daemon::start(command, "bridge listening on ");
    let logs = || format!("master:\n{}\nhost node:\n{}\ninner node:\n{}", master.log(), host.log(), inner.log());

    let running = deploy_to(&master.addr, "cluster_scenarios", &["--cookie-file", &cookie], &["partitionable"]).start();
    let wait_lives = |count: usize, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            let found = worker_lives(&running);
            if found.len() >= count {
                return found;
            }
            assert!(Instant::now() < deadline, "{count} lives within {within:?}: {found:?}\n{}", logs());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let first = wait_lives(1, Duration::from_secs(30))[0].clone();
    assert_eq!(first.0, ns.inner_ip, "the worker starts on the only node with room for it");

    let cut_at = Instant::now();
    ns.cut();
    // Fenced by its monitor once the lease (2 s from the last acknowledged
    // heartbeat) runs out, although nothing told it anything.
    while alive(first.1) {
        assert!(cut_at.elapsed() < Duration::from_secs(6), "the worker was not fenced\n{}", logs());
        std::thread::sleep(Duration::from_millis(10));
    }
    let fenced_after = cut_at.elapsed();
    let second = wait_lives(2, Duration::from_secs(20))[1].clone();
    let restarted_after = cut_at.elapsed();
    assert_eq!(second.0, ns.host_ip, "restarted on the connected node");
    assert!(
        fenced_after <= restarted_after,
        "two lives at once: fenced after {fenced_after:?}, restarted after {restarted_after:?}"
    );
    assert!(
        restarted_after >= Duration::from_secs(2),
        "restarted after {restarted_after:?}, before lease and margin ran out\n{}",
        logs()
    );
    assert!(master.log().contains("is lost"), "{}", logs());

    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    assert_eq!(finished.code, Some(130), "{}", finished.stderr_text());
    assert_eq!(finished.exits().values().filter(|s| s["lost"] == true).count(), 1, "{:?}", finished.exits());
    drop((master, host, inner));
    let _ = std::fs::remove_dir_all(&dir);
}
