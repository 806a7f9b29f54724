//! The three restart strategies, with real processes: which children are stopped
//! (in reverse order) and restarted (in order) when one crashes.
mod util;
use util::Job;

fn run(strategy: &str) -> util::Finished {
    let job = Job::new("supervision", &[strategy]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    job.assert_nothing_left();
    job
}

#[test]
fn one_for_one_restarts_only_the_crashed_child() {
    let job = run("one_for_one");
    assert_eq!(job.line("lives: "), "lives: a 1, b 1, b 2, c 1");
    assert_eq!(job.actions_of("a"), ["started", "stopped"]);
    assert_eq!(job.actions_of("b"), ["started", "exited", "restarting", "started", "stopped"]);
    assert_eq!(job.actions_of("c"), ["started", "stopped"]);
    // Stopped in reverse order at shutdown.
    let stops: Vec<String> =
        job.supervisor_events().into_iter().filter(|(a, _)| a == "stopped").map(|(_, c)| c).collect();
    assert_eq!(stops, ["c", "b", "a"]);
}

#[test]
fn one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() {
    let job = run("one_for_all");
    assert_eq!(job.line("lives: "), "lives: a 1, a 2, b 1, b 2, c 1, c 2");
    let after_crash: Vec<(String, String)> =
        job.supervisor_events().into_iter().skip_while(|(a, c)| !(a == "exited" && c == "b")).take(8).collect();
    let expected = [
        ("exited", "b"),
        ("stopped", "c"),
        ("stopped", "a"),
        ("restarting", "a"),
        ("started", "a"),
        ("restarting", "b"),
        ("started", "b"),
        ("restarting", "c"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, c)| (a.to_string(), c.to_string())).collect();
    assert_eq!(after_crash, expected);
}

#[test]
fn rest_for_one_restarts_the_crashed_child_and_those_after_it() {
    let job = run("rest_for_one");
    assert_eq!(job.line("lives: "), "lives: a 1, b 1, b 2, c 1, c 2");
    assert_eq!(job.actions_of("a"), ["started", "stopped"]);
    assert_eq!(job.actions_of("c"), ["started", "stopped", "restarting", "started", "stopped"]);
}
