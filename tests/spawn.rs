//! Spawning: what a child inherits, many spawns at once, the recursive
//! Fibonacci, local capacity and memory limits.
mod util;
use std::time::Duration;
use util::Job;

#[test]
fn argv_environment_and_cwd_are_inherited() {
    let job = Job::new("scenarios", &["inherit", "extra-arg"]).env("SCENARIO_COLOUR", "blue").run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("args: "), "args: inherit extra-arg");
    // The project's own variables (CONSTELLATION_FORMAT) are not inherited.
    let vars = job.line("vars: ");
    assert!(vars.contains("SCENARIO_COLOUR=blue"), "{vars}");
    assert!(vars.contains("SET_AT_RUNTIME=yes"), "set by the parent before spawning: {vars}");
    assert!(!vars.contains("CONSTELLATION_"), "{vars}");
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(job.line("cwd: "), format!("cwd: {}", cwd.display()));
}

#[test]
fn a_child_sees_the_environment_and_cwd_of_the_moment_of_its_spawn() {
    let cwd = std::env::current_dir().unwrap().display().to_string();
    let job = Job::new("scenarios", &["inherit_changes", &cwd]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("first: "), format!("first: unset in {cwd}"));
    assert_eq!(job.line("changed: "), format!("changed: yes in {cwd}"));
    assert_eq!(job.line("moved: "), "moved: unset in /");
    assert_eq!(job.line("back: "), format!("back: unset in {cwd}"));
    job.assert_nothing_left();
}

#[test]
fn killing_the_zygote_ends_the_processes_it_forked_and_spawning_goes_on() {
    let running = Job::new("scenarios", &["zygote_killed"]).start();
    running.wait_for_stdout("ready", Duration::from_secs(30));
    let bridge = running.bridge_pid();
    let zygotes: Vec<i32> = util::processes_with_marker(running.marker())
        .into_iter()
        .filter(|&pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let forked_by_zygote = environ.windows(24).any(|w| w == b"CONSTELLATION_FDS=zygote");
            forked_by_zygote && util::parent_of(pid) == Some(bridge)
        })
        .collect();
    assert_eq!(zygotes.len(), 1, "one zygote, a child of the bridge");
    // SAFETY: kill takes plain integers; the pid is the job's zygote, alive.
    assert_eq!(unsafe { libc::kill(zygotes[0], libc::SIGKILL) }, 0);
    let job = running.finish();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("down: "), "down: killed by signal 9");
    assert_eq!(job.line("after: "), "after: 7");
    job.assert_nothing_left();
}

#[test]
fn a_cgroup_passes_to_a_new_process_with_its_own_limit_unless_its_limit_was_hit() {
    let job = Job::new("scenarios", &["cgroup_reuse"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let cgroup = |prefix: &str| {
        let line = job.line(prefix);
        let (path, limit) = line[prefix.len()..].rsplit_once(' ').unwrap();
        (path.to_string(), limit.parse::<u64>().unwrap_or(0))
    };
    let (first, second, killed, after) = (cgroup("first: "), cgroup("second: "), cgroup("killed: "), cgroup("after: "));
    if !first.0.contains("constellation-") {
        eprintln!("skipped: no memory cgroups on this machine ({first:?})");
        return;
    }
    assert_eq!(first.1, 30 << 20);
    assert_eq!(second, (first.0.clone(), 50 << 20), "the first child's cgroup, with the second's limit");
    assert_eq!(killed.1, 30 << 20);
    assert_eq!(after.1, 40 << 20);
    assert_ne!(after.0, killed.0, "a cgroup whose limit killed its process is not reused");
    let ended: Vec<String> = job.all_stdout().lines().filter(|l| l.starts_with("ended: ")).map(String::from).collect();
    assert_eq!(ended.len(), 4, "{ended:?}");
    assert!(ended[2].contains("memory"), "{ended:?}");
    job.assert_nothing_left();
}

#[test]
fn two_hundred_concurrent_spawns() {
    let job = Job::new("scenarios", &["concurrent_spawns"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("200 children"), "200 children, sum 19900");
    assert_eq!(job.spawns().len(), 200);
    assert_eq!(job.exits().len(), 201);
    job.assert_nothing_left();
}

#[test]
fn fibonacci_of_10_spawns_176_processes() {
    let job = Job::new("fibonacci", &["10"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.stdout_of(&job.top()), "fibonacci(10) = 55\n");
    let spawns = job.spawns();
    assert_eq!(spawns.len(), 176);
    let exits = job.exits();
    assert_eq!(exits.len(), 177);
    assert!(exits.values().all(|s| s["code"] == 0));
    job.assert_nothing_left();
}

#[test]
fn try_spawn_beyond_capacity_is_refused_and_spawn_warns() {
    let job = Job::new("scenarios", &["capacity"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("try_spawn: "), "try_spawn: Err(NoCapacity)");
    assert_eq!(job.line("spawn: "), "spawn: Ok(1)");
    let warnings: Vec<_> = job.events.iter().filter(|e| e["event"] == "warning").collect();
    assert_eq!(warnings.len(), 1, "one warning past physical memory: {warnings:?}");
    assert!(warnings[0]["message"].as_str().unwrap().contains("more than this machine's"));
}

#[test]
fn exceeding_the_memory_limit_stops_the_process() {
    Job::new("scenarios", &["memory_limit"]).run().assert_memory_limited();
}
