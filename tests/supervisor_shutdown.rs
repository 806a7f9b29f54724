//! Stopping children: `on_shutdown` hooks run, a child that ignores SIGTERM is
//! killed after its timeout, and killing a supervisor takes its whole subtree.
mod util;
use util::Job;

#[test]
fn shutdown_timeout_then_kill_of_a_child_that_ignores_sigterm() {
    let job = Job::new("supervision", &["shutdown_timeout"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let spawns = job.spawns();
    let supervisor = &spawns[0].1;
    let (polite, stubborn) = (&spawns[1].1, &spawns[2].1);
    assert_eq!(job.stdout_of(polite), "polite cleans up\n");
    assert_eq!(job.stdout_of(stubborn), "stubborn ignores the shutdown\n");
    assert_eq!(job.exits()[stubborn]["killed_by"], supervisor.as_str());
    assert_eq!(job.actions_of("stubborn"), ["started", "stopped"]);
    // Reverse order: the stubborn child (started last) is stopped first.
    let stops: Vec<String> =
        job.supervisor_events().into_iter().filter(|(a, _)| a == "stopped").map(|(_, c)| c).collect();
    assert_eq!(stops, ["stubborn", "polite"]);
    job.assert_nothing_left();
}

#[test]
fn killing_a_supervisor_takes_its_subtree_even_children_that_trap_exits() {
    let job = Job::new("supervision", &["kill_supervisor"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("supervisor: "), "supervisor: killed by signal 9");
    let spawns = job.spawns();
    let supervisor = &spawns[0].1;
    let trapper = &spawns[1].1;
    let inner = &spawns[2].1;
    let leaf = &spawns[3].1;
    let exits = job.exits();
    assert_eq!(exits[trapper]["killed_by"], supervisor.as_str(), "a trapping child still ends");
    assert_eq!(exits[inner]["killed_by"], supervisor.as_str());
    assert_eq!(exits[leaf]["killed_by"], inner.as_str());
    job.assert_nothing_left();
}
