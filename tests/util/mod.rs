//! Shared helpers for the end-to-end tests: run an example program as a user
//! would (in a process group of its own, with a deadline), read its JSON-lines or
//! human output, and check that nothing it started is left behind.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;

use serde_json::Value;
use std::{
    collections::HashMap,
    io::{Read, Write},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

/// How long any one program may run before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The path of a built example (cargo test builds every example).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(path.exists(), "{} is missing: build the examples first (cargo build --examples)", path.display());
    path
}

/// A marker put in the environment of the job, so its processes can be found.
fn new_marker() -> String {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed), Instant::now().elapsed().as_nanos())
}

/// The OS pids of live processes whose environment holds `marker`.
pub fn processes_with_marker(marker: &str) -> Vec<i32> {
    let needle = format!("SCENARIO_MARKER={marker}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Zombies have already ended; their parent reaps them.
        let zombie = stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && environ.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// The OS pid of the parent of process `pid`, while it lives.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// A job being run.
pub struct Running {
    child: Child,
    marker: String,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<thread::JoinHandle<()>>,
    started: Instant,
    deadline: Duration,
}

/// How to run a job.
pub struct Job {
    command: Command,
    format: String,
    stdin: Option<Vec<u8>>,
    deadline: Duration,
}

impl Job {
    /// The example `name` with `args`, showing JSON lines.
    pub fn new(name: &str, args: &[&str]) -> Job {
        let mut command = Command::new(example(name));
        command.args(args);
        command.env_remove("RUST_BACKTRACE");
        Job { command, format: "json".into(), stdin: None, deadline: DEADLINE }
    }

    /// A job started by `command` (which runs a bridge, such as `salloc ...
    /// constellation slurm ...`), showing JSON lines.
    pub fn from_command(mut command: Command) -> Job {
        command.env_remove("RUST_BACKTRACE");
        Job { command, format: "json".into(), stdin: None, deadline: DEADLINE }
    }

    /// Shows the human format instead of JSON lines.
    pub fn human(self) -> Job {
        self.format("human")
    }

    /// Allows the job to run for `deadline` instead of [`DEADLINE`].
    pub fn deadline(mut self, deadline: Duration) -> Job {
        self.deadline = deadline;
        self
    }

    /// Sets `CONSTELLATION_FORMAT`.
    pub fn format(mut self, format: &str) -> Job {
        self.format = format.into();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Job {
        self.command.env(key, value);
        self
    }

    pub fn stdin(mut self, bytes: &[u8]) -> Job {
        self.stdin = Some(bytes.to_vec());
        self
    }

    pub fn start(mut self) -> Running {
        let marker = new_marker();
        self.command
            .env("SCENARIO_MARKER", &marker)
            .env("CONSTELLATION_FORMAT", &self.format)
            .stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = self.command.spawn().expect("starting the example");
        if let Some(bytes) = self.stdin {
            let mut stdin = child.stdin.take().expect("piped");
            thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            pump(child.stdout.take().expect("piped"), stdout.clone()),
            pump(child.stderr.take().expect("piped"), stderr.clone()),
        ];
        Running { child, marker, stdout, stderr, readers, started: Instant::now(), deadline: self.deadline }
    }

    /// Runs the job to its end.
    pub fn run(self) -> Finished {
        self.start().finish()
    }
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    })
}

impl Running {
    /// The bridge's OS pid (also its process group's id).
    pub fn bridge_pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The job's stdout so far (all processes, JSON decoded).
    pub fn stdout_text(&self) -> String {
        Finished::stdout_of_events(&parse_events(&self.stdout.lock().unwrap()), None)
    }

    /// Waits until the job's stdout (all processes, JSON decoded) contains `text`.
    pub fn wait_for_stdout(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let events = parse_events(&self.stdout.lock().unwrap());
            if Finished::stdout_of_events(&events, None).contains(text) {
                return;
            }
            assert!(Instant::now() < deadline, "the job did not print {text:?} within {within:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the bridge, or to its whole process group.
    pub fn signal(&self, signal: i32, whole_group: bool) {
        let target = if whole_group { -self.bridge_pid() } else { self.bridge_pid() };
        // SAFETY: kill takes plain integers.
        assert_eq!(unsafe { libc::kill(target, signal) }, 0, "sending signal {signal}");
    }

    /// Waits for the bridge to end (killing the job at the deadline) and collects
    /// what it printed.
    pub fn finish(mut self) -> Finished {
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the bridge") {
                break status;
            }
            if self.started.elapsed() > self.deadline {
                kill_all(&self.marker);
                let _ = self.child.kill();
                let _ = self.child.wait();
                let events = parse_events(&self.stdout.lock().unwrap());
                let tail: Vec<String> = events.iter().rev().take(40).rev().map(describe).collect();
                panic!(
                    "the job ran past {:?}; its last events:\n{}\nstderr:\n{}",
                    self.deadline,
                    tail.join("\n"),
                    String::from_utf8_lossy(&self.stderr.lock().unwrap())
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The pipes close when the last process of the job is gone.
        let (done_tx, done_rx) = mpsc::channel();
        let readers = std::mem::take(&mut self.readers);
        thread::spawn(move || {
            readers.into_iter().for_each(|r| drop(r.join()));
            let _ = done_tx.send(());
        });
        let drained = done_rx.recv_timeout(Duration::from_secs(10)).is_ok();
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        let finished = Finished {
            code: status.code(),
            signal: status.signal(),
            events: parse_events(&stdout),
            stdout,
            stderr,
            marker: self.marker.clone(),
            bridge: self.bridge_pid(),
        };
        if !drained {
            // A failing test leaves nothing behind either.
            kill_all(&self.marker);
        }
        assert!(drained, "the job's output pipes stayed open after the bridge ended: something was left behind");
        finished
    }
}

/// An event as a line a person reads (output decoded as text).
fn describe(event: &Value) -> String {
    if event["event"] == "output" {
        let bytes: Vec<u8> = event["data"]
            .as_array()
            .map(|d| d.iter().filter_map(|b| b.as_u64()).map(|b| b as u8).collect())
            .unwrap_or_default();
        format!("{} fd{}: {:?}", event["pid"], event["fd"], String::from_utf8_lossy(&bytes))
    } else {
        event.to_string()
    }
}

fn parse_events(stdout: &[u8]) -> Vec<Value> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect()
}

/// The cgroups named after bridge `bridge` (`constellation-<pid>-...`) beside
/// this test's own, in the memory and cpu controllers.
fn cgroups_of(bridge: i32) -> Vec<String> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let prefix = format!("constellation-{bridge}-");
    let mut found = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let mount = match controllers {
            "memory" => "memory",
            c if c.split(',').any(|c| c == "cpu") => "cpu",
            _ => continue,
        };
        let dir = format!("/sys/fs/cgroup/{mount}{}", path.trim_end_matches('/'));
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                found.push(format!("{mount}/{name}"));
            }
        }
    }
    found
}

fn kill_all(marker: &str) {
    for pid in processes_with_marker(marker) {
        // SAFETY: kill takes plain integers; these processes carry this test's marker.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// What a job showed, once it ended.
pub struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub events: Vec<Value>,
    marker: String,
    bridge: i32,
}

impl Finished {
    /// Fails unless every process of the job is gone within a few seconds, and,
    /// when the bridge ended by itself, every cgroup it made.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_with_marker(&self.marker);
            let cgroups = if self.code.is_some() { cgroups_of(self.bridge) } else { Vec::new() };
            if left.is_empty() && cgroups.is_empty() {
                return;
            }
            if Instant::now() > deadline && left.is_empty() {
                panic!("cgroups left behind: {cgroups:?}");
            }
            if Instant::now() > deadline {
                kill_all(&self.marker);
                panic!("processes left behind: {left:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Checks the `memory_limit` scenario: its child was stopped at its 50 MiB
    /// (by a cgroup, which says so; under RLIMIT_DATA the allocation fails and it
    /// aborts), and its parent saw it end.
    pub fn assert_memory_limited(&self) {
        assert_eq!(self.code, Some(0), "{}", self.stderr_text());
        let (_, child) = &self.spawns()[0];
        let status = &self.exits()[child];
        assert!(!self.stdout_of(child).contains("without being stopped"), "the child allocated past its limit");
        let memory_killed = status["memory_exceeded"] == 50 * 1024 * 1024;
        let aborted = status["signal"] == libc::SIGABRT;
        assert!(memory_killed || aborted, "{status}");
        assert_eq!(self.line("recv: "), "recv: Err(PeerEnded)");
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Each process's exit status and what it wrote to stderr, for failure
    /// messages of jobs run in the JSON format (where a panic's message is an
    /// output event, not the job's stderr).
    pub fn account(&self) -> String {
        let mut exits: Vec<(String, Value)> = self.exits().into_iter().collect();
        exits.sort_by(|a, b| a.0.cmp(&b.0));
        exits
            .into_iter()
            .map(|(pid, status)| {
                format!("{pid} {status}: {}\n", String::from_utf8_lossy(&self.output(&pid, 2)).trim_end())
            })
            .collect()
    }

    /// The top process's tag, named by the first event.
    pub fn top(&self) -> String {
        let first = self.events.first().expect("no events");
        assert_eq!(first["event"], "spawn", "the first event names the top process");
        assert!(first["parent"].is_null());
        first["child"].as_str().expect("a tag").to_owned()
    }

    /// (parent, child) for every spawn after the top process.
    pub fn spawns(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "spawn" && !e["parent"].is_null())
            .map(|e| (e["parent"].as_str().unwrap().to_owned(), e["child"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// Every process's exit status, by tag.
    pub fn exits(&self) -> HashMap<String, Value> {
        self.events
            .iter()
            .filter(|e| e["event"] == "exit")
            .map(|e| (e["pid"].as_str().unwrap().to_owned(), e["status"].clone()))
            .collect()
    }

    /// The bytes process `pid` wrote to `fd`.
    pub fn output(&self, pid: &str, fd: u64) -> Vec<u8> {
        self.events
            .iter()
            .filter(|e| e["event"] == "output" && e["pid"] == pid && e["fd"] == fd)
            .flat_map(|e| e["data"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8))
            .collect()
    }

    /// Process `pid`'s stdout as text.
    pub fn stdout_of(&self, pid: &str) -> String {
        String::from_utf8_lossy(&self.output(pid, 1)).into_owned()
    }

    /// Every process's stdout, in arrival order.
    pub fn all_stdout(&self) -> String {
        Finished::stdout_of_events(&self.events, None)
    }

    fn stdout_of_events(events: &[Value], pid: Option<&str>) -> String {
        let bytes: Vec<u8> = events
            .iter()
            .filter(|e| e["event"] == "output" && e["fd"] == 1 && pid.is_none_or(|p| e["pid"] == p))
            .flat_map(|e| e["data"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The one line of the top process's stdout that starts with `prefix`.
    pub fn line(&self, prefix: &str) -> String {
        let all = self.all_stdout();
        let lines: Vec<&str> = all.lines().filter(|l| l.starts_with(prefix)).collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line starting with {prefix:?} in:\n{all}\nstderr:\n{}",
            self.stderr_text()
        );
        lines[0].to_owned()
    }
}

impl Finished {
    /// The supervisor events, as (action, child name) in order.
    pub fn supervisor_events(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "supervisor")
            .map(|e| (e["action"].as_str().unwrap().to_owned(), e["child"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// The supervisor events for one child, as actions in order.
    pub fn actions_of(&self, child: &str) -> Vec<String> {
        self.supervisor_events().into_iter().filter(|(_, c)| c == child).map(|(a, _)| a).collect()
    }

    /// The index in the event stream of the first event matching `pred`.
    pub fn position(&self, pred: impl Fn(&Value) -> bool) -> Option<usize> {
        self.events.iter().position(pred)
    }
}
