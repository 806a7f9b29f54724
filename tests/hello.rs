//! Hello world, as a user runs it: the process tree, each process's output, the
//! exit statuses, and the human format's split between stdout and stderr.
mod util;
use util::Job;

#[test]
fn hello_world_json() {
    let job = Job::new("hello", &[]).run();
    assert_eq!(job.code, Some(0), "stderr: {}", job.stderr_text());
    let top = job.top();
    let spawns = job.spawns();
    assert_eq!(spawns.len(), 1);
    let (parent, child) = &spawns[0];
    assert_eq!(parent, &top);
    assert!(job.stdout_of(&top).starts_with(&format!("Hello, world! I am the top process, {top}.\n")));
    assert_eq!(job.stdout_of(child), format!("Hello from {child}, spawned by {top}.\n"));
    assert!(job.stdout_of(&top).ends_with(&format!("The child sent: greetings from {child}\n")));
    let exits = job.exits();
    assert_eq!(exits.len(), 2);
    assert!(exits.values().all(|status| status["code"] == 0), "{exits:?}");
    job.assert_nothing_left();
}

#[test]
fn hello_world_human_format_keeps_stdout_exact() {
    let job = Job::new("hello", &[]).human().run();
    assert_eq!(job.code, Some(0));
    let stdout = String::from_utf8(job.stdout.clone()).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "stdout holds only what the processes wrote: {stdout:?}");
    assert!(lines[0].starts_with("Hello, world! I am the top process, "));
    let stderr = job.stderr_text();
    let top = lines[0].trim_start_matches("Hello, world! I am the top process, ").trim_end_matches('.');
    assert!(stderr.starts_with(&format!("{top}:\n")), "stderr starts with the top process's header: {stderr:?}");
    assert!(stderr.contains("   spawned: "), "{stderr:?}");
    assert!(stderr.contains("   exited: 0\n"), "{stderr:?}");
    assert!(!stderr.contains("\x1b["), "no colour when stderr is not a terminal");
    job.assert_nothing_left();
}
