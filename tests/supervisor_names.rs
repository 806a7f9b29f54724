//! A child spec's registered name follows its incarnations; incarnations of a
//! child never overlap.
mod util;
use util::Job;

#[test]
fn whereis_finds_a_restarted_child() {
    let job = Job::new("supervision", &["registered_child"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("whereis: "), "whereis: found");
    assert_eq!(job.line("after: "), "after: None", "the name is released when the child ends");
}

#[test]
fn no_two_incarnations_of_a_child_run_at_once() {
    // In the nested tree, inner's second incarnation is spawned only after the
    // first one and its whole subtree have exited.
    let job = Job::new("supervision", &["escalation"]).run();
    let spawns = job.spawns();
    let outer = &spawns[0].1;
    let inner_spawns: Vec<&String> = spawns.iter().filter(|(p, _)| p == outer).map(|(_, c)| c).collect();
    assert_eq!(inner_spawns.len(), 2);
    let (first, second) = (inner_spawns[0], inner_spawns[1]);
    let first_subtree: Vec<&String> =
        spawns.iter().filter(|(p, _)| p == first).map(|(_, c)| c).chain([first]).collect();
    let second_start = job
        .position(|e| e["event"] == "spawn" && e["child"] == second.as_str())
        .expect("the second incarnation's spawn");
    for pid in first_subtree {
        let exit = job.position(|e| e["event"] == "exit" && e["pid"] == pid.as_str()).expect("an exit");
        assert!(exit < second_start, "{pid} of the first incarnation exited after the second started");
    }
}
