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
    // Each line: the label, the child's cgroup, its limit there, and the limit asked.
    let children = |label: &str| -> Vec<(String, String, String)> {
        let prefix = format!("{label}: ");
        let all = job.all_stdout();
        let lines = all.lines().filter_map(|line| line.strip_prefix(prefix.as_str()));
        lines
            .map(|rest| {
                let words: Vec<&str> = rest.split(' ').collect();
                (words[0].to_string(), words[1].to_string(), words[2].to_string())
            })
            .collect()
    };
    let (before, killed, after) = (children("before"), children("killed"), children("after"));
    assert_eq!((before.len(), killed.len(), after.len()), (6, 1, 6), "{}", job.all_stdout());
    if !before[0].0.contains("constellation-") {
        eprintln!("skipped: no memory cgroups on this machine ({:?})", before[0]);
        return;
    }
    for (path, limit, asked) in before.iter().chain(&killed).chain(&after) {
        assert_eq!(limit, asked, "{path} has another process's limit");
    }
    let distinct: std::collections::HashSet<&String> = before.iter().map(|(path, _, _)| path).collect();
    assert!(distinct.len() < before.len(), "no cgroup was reused: {before:?}");
    assert!(
        after.iter().all(|(path, _, _)| *path != killed[0].0),
        "a cgroup whose limit killed its process was reused"
    );
    let all = job.all_stdout();
    let ended: Vec<&str> = all.lines().filter(|l| l.starts_with("ended: ")).collect();
    assert_eq!(ended.len(), 13);
    assert!(ended[6].contains("memory limit"), "{ended:?}");
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
