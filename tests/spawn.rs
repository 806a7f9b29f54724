//! Spawning: what a child inherits, many spawns at once, the recursive
//! Fibonacci, local capacity and memory limits.
mod util;
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
