//! What the cluster daemons and `cargo deploy` do with bad input: wrong cookies,
//! garbage, oversized frames, cut-off uploads, bad nodes.toml files, unreachable
//! peers, and binaries that never call `init`. Each is refused with a clear
//! message, and the daemons keep serving everyone else.
mod util;

use constellation_fabric::{
    auth::{self, Role},
    wire::{self, ToBridge},
};
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, Instant},
};
use util::cluster::{workspace_binary, Cluster};

const COOKIE: &str = "a test cookie";

fn wait_for_log(daemon: &util::cluster::Daemon, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon.log().contains(text) {
        assert!(Instant::now() < deadline, "the daemon never logged {text:?}; its log:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the daemon has closed the connection (reads end, without a hang).
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) => return error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn garbage_wrong_cookies_and_cut_off_uploads_are_refused_while_a_job_runs() {
    let node = |ip| util::cluster::Node { ip, mem: "4 GiB", cpu: 2.0 };
    let cluster = Cluster::start_with(&[node("127.0.0.2"), node("127.0.0.3")], &[], Some(COOKIE));
    let running = cluster.deploy("cluster_scenarios", &["supervised"]).start();
    running.wait_for_stdout("worker on", Duration::from_secs(30));

    // Random bytes to a node and to the bridge daemon.
    for addr in [&cluster.nodes[0].addr, &cluster.master.addr] {
        let mut stream = TcpStream::connect(addr).unwrap();
        let _ = stream.write_all(&[0x5a; 300]);
        assert!(closed_by_peer(&mut stream), "{addr} kept a connection that sent garbage");
    }
    wait_for_log(&cluster.nodes[0], "refused a connection");
    wait_for_log(&cluster.master, "not a constellation peer");

    // A frame longer than any the daemon accepts, after a valid handshake.
    let mut stream = TcpStream::connect(&cluster.master.addr).unwrap();
    auth::connect(&mut stream, COOKIE.as_bytes(), Role::Deploy).expect("the right cookie is accepted");
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    stream.write_all(&[1; 64]).unwrap();
    assert!(closed_by_peer(&mut stream));
    wait_for_log(&cluster.master, "at most");

    // A binary cut off mid-upload.
    let mut stream = TcpStream::connect(&cluster.master.addr).unwrap();
    auth::connect(&mut stream, COOKIE.as_bytes(), Role::Deploy).unwrap();
    let deploy = ToBridge::Deploy {
        name: "cut".into(),
        args: Vec::new(),
        vars: Vec::new(),
        json: true,
        size: 3 << 20,
        hash: "0".repeat(64),
    };
    wire::write_frame(&mut stream, &deploy).unwrap();
    wire::write_frame(&mut stream, &ToBridge::Chunk { len: 1 << 20 }).unwrap();
    stream.write_all(&vec![7u8; 1 << 20]).unwrap();
    drop(stream);
    wait_for_log(&cluster.master, "cut off after 1048576 of 3145728 bytes");

    // A wrong cookie, from cargo deploy and from a would-be master.
    let wrong = cluster.dir.join("wrong-cookie");
    std::fs::write(&wrong, "not the cookie").unwrap();
    let refused = cluster.deploy_with("hello", &["--cookie-file", wrong.to_str().unwrap()], &[]).run();
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr_text().contains("cookie"), "{}", refused.stderr_text());
    let mut stream = TcpStream::connect(&cluster.nodes[1].addr).unwrap();
    let error = auth::connect(&mut stream, b"not the cookie", Role::Master).unwrap_err();
    assert!(error.to_string().contains("cookie"), "{error}");
    wait_for_log(&cluster.nodes[1], "refused a connection");

    // Everyone else is still served: the running job, and a new deployment.
    let hello = cluster.deploy("hello", &[]).run();
    assert_eq!(hello.code, Some(0), "{}\n{}", hello.stderr_text(), cluster.logs());
    assert!(running.stdout_text().contains("worker on"));
    running.signal(libc::SIGINT, false);
    let finished = running.finish();
    assert_eq!(finished.code, Some(130), "{}", finished.stderr_text());
    assert_eq!(finished.exits().values().filter(|s| s["lost"] == true).count(), 0, "no process was lost");
    finished.assert_nothing_left();
}

/// Runs the daemon with `args` and expects it to fail at once, saying `expected`.
fn daemon_fails(args: &[&str], expected: &str) {
    let output = Command::new(workspace_binary("constellation"))
        .args(args)
        .env_remove("CONSTELLATION_COOKIE")
        .output()
        .expect("running the daemon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
}

#[test]
fn the_daemon_explains_bad_configurations() {
    let dir = std::env::temp_dir().join(format!("constellation-test-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = dir.join("nodes.toml");
    let write = |text: &str| std::fs::write(&toml, text).unwrap();
    let path = toml.to_str().unwrap();

    write("[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"lots\"\ncpu = 0\n");
    daemon_fails(&["127.0.0.1:0", path], "line 4: mem \"lots\"");
    write("[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n");
    daemon_fails(&["127.0.0.1:0", path], "no bridge_bind");
    write("[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n");
    daemon_fails(&["127.0.0.9:0", path], "no entry of nodes.toml has fabric_addr = \"127.0.0.9:0\"");
    // A node nobody runs: the master retries, then names it.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    write(&format!(
        "[[nodes]]\nfabric_addr = \"127.0.0.1:0\"\nbridge_bind = \"127.0.0.1:0\"\nmem = \"1 GiB\"\ncpu = 0\n\
         [[nodes]]\nfabric_addr = \"{unused}\"\nmem = \"1 GiB\"\ncpu = 1\n"
    ));
    daemon_fails(&["--connect-timeout", "1", "127.0.0.1:0", path], &format!("cannot reach the node at {unused}"));
    // No cookie on an address others can reach.
    daemon_fails(&["0.0.0.0:0"], "without a cookie");
    // A port in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    daemon_fails(&[&taken.local_addr().unwrap().to_string()], "the port is in use");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cargo_deploy_explains_an_unreachable_bridge_and_a_binary_without_init() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let output = Command::new(workspace_binary("cargo-deploy"))
        .args(["deploy", "--binary"])
        .arg(util::example("hello"))
        .arg(unused.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach the bridge at {unused}")), "{stderr}");

    let node = util::cluster::Node { ip: "127.0.0.2", mem: "2 GiB", cpu: 1.0 };
    let cluster = Cluster::start(&[node], &["--probe-timeout", "2"]);
    // The scenario that exits before init, and one that never gets to init.
    let finished = cluster.deploy("scenarios", &["no_init"]).run();
    assert_eq!(finished.code, Some(1));
    assert!(finished.stderr_text().contains("without calling constellation::init"), "{}", finished.stderr_text());
    let finished = cluster.deploy("cluster_scenarios", &["never_init"]).run();
    assert_eq!(finished.code, Some(1));
    assert!(
        finished.stderr_text().contains("did not call constellation::init within 2 s"),
        "{}",
        finished.stderr_text()
    );
}
