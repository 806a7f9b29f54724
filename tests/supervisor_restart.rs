//! Restart types after normal and abnormal ends, restart intensity, and failure
//! escalating through a nested tree.
mod util;
use util::Job;

#[test]
fn restart_types_after_normal_and_abnormal_ends() {
    let job = Job::new("supervision", &["restart_types"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(
        job.line("lives: "),
        "lives: permanent_ok 1, temporary_bad 1, transient_bad 1, transient_bad 2, transient_ok 1"
    );
    assert_eq!(job.actions_of("transient_ok"), ["started", "exited"], "transient: not restarted after exit 0");
    assert_eq!(job.actions_of("temporary_bad"), ["started", "exited"], "temporary: never restarted");
    assert_eq!(job.actions_of("transient_bad")[..4], ["started", "exited", "restarting", "started"]);
    job.assert_nothing_left();
}

#[test]
fn a_permanent_child_is_restarted_after_exit_0_until_the_intensity_is_spent() {
    let job = Job::new("supervision", &["permanent_normal_exit"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("lives: "), "lives: once 1, once 2, once 3");
    let status = job.line("supervisor: ");
    assert!(
        status.contains("panicked: supervisor: child \"once\" ended (exit code 0) and more than 2 restarts"),
        "{status}"
    );
    assert_eq!(job.actions_of("once").last().map(String::as_str), Some("gave up"));
}

#[test]
fn exceeded_intensity_escalates_through_a_nested_tree() {
    let job = Job::new("supervision", &["escalation"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let outer = job.line("outer: ");
    assert!(
        outer
            .starts_with("outer: panicked: supervisor: child \"inner\" ended (panicked: supervisor: child \"crasher\""),
        "{outer}"
    );
    // inner was restarted once by outer, then outer gave up.
    assert_eq!(job.actions_of("inner"), ["started", "exited", "restarting", "started", "exited", "gave up"]);
    job.assert_nothing_left();
}

#[test]
fn a_child_that_fails_to_start_fails_the_supervisor_after_stopping_the_others() {
    let job = Job::new("supervision", &["start_failure"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let status = job.line("supervisor: ");
    assert!(status.starts_with("supervisor: panicked: supervisor: child \"second\" failed to start"), "{status}");
    assert!(status.contains("already registered"), "{status}");
    assert_eq!(job.actions_of("first"), ["started", "stopped"]);
    job.assert_nothing_left();
}
