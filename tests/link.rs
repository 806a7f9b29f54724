//! Links: an abnormal end takes linked processes with it, unless they trap exits;
//! a normal end does not; linking to a process already gone is a `NoProc` signal.
mod util;
use util::Job;

#[test]
fn an_abnormal_exit_kills_linked_processes() {
    let job = Job::new("scenarios", &["link_cascade"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    let line = job.line("middle: ");
    assert!(line.starts_with("middle: killed by link to "), "{line}");
    assert!(!job.all_stdout().contains("middle survived"));
    // The JSON exit event names the link.
    let spawns = job.spawns();
    let (middle, crasher) = (&spawns[0].1, &spawns[1].1);
    assert_eq!(job.exits()[middle]["killed_by"], crasher.as_str());
    assert_eq!(job.exits()[crasher]["panic"], "crash");
    job.assert_nothing_left();
}

#[test]
fn a_process_trapping_exits_receives_them_as_messages() {
    let job = Job::new("scenarios", &["link_trapped"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("crasher: "), "crasher: panicked: crash");
    assert_eq!(job.line("finisher: "), "finisher: exit code 0");
    assert_eq!(job.line("relink: "), "relink: no such process");
    assert_eq!(job.line("middle: "), "middle: exit code 0");
}

#[test]
fn a_normal_exit_does_not_propagate() {
    let job = Job::new("scenarios", &["normal_exit_no_cascade"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("middle says: "), "middle says: still here");
}

#[test]
fn demonitor_and_unlink_cancel_what_they_set_up() {
    let job = Job::new("scenarios", &["demonitor_unlink"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("demonitored: "), "demonitored: Err(Elapsed)");
    assert_eq!(job.line("crasher: "), "crasher: panicked: crash after the unlink");
    assert_eq!(job.line("survived"), "survived the unlinked crash");
}
