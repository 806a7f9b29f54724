//! How processes end, as the job reports it: exit codes, panics, signals.
mod util;
use util::Job;

#[test]
fn process_exit_code_is_the_jobs_exit_code() {
    let job = Job::new("scenarios", &["exit_code", "7"]).run();
    assert_eq!(job.code, Some(7));
    assert_eq!(job.exits()[&job.top()]["code"], 7);
    let human = Job::new("scenarios", &["exit_code", "3"]).human().run();
    assert_eq!(human.code, Some(3));
    assert!(human.stderr_text().contains("   exited: 3\n"), "{}", human.stderr_text());
}

#[test]
fn panicking_child_shows_its_message_and_parent_recv_errs() {
    let job = Job::new("scenarios", &["panic_child"]).run();
    assert_eq!(job.code, Some(0));
    let (_, child) = &job.spawns()[0];
    assert_eq!(job.exits()[child]["panic"], "boom");
    assert_eq!(job.exits()[child]["code"], 101);
    assert!(
        String::from_utf8_lossy(&job.output(child, 2)).contains("boom"),
        "the panic message is on the child's stderr"
    );
    assert_eq!(job.line("recv: "), "recv: Err(PeerEnded)");
    let human = Job::new("scenarios", &["panic_child"]).human().run();
    assert!(human.stderr_text().contains("   exited: panicked: boom\n"), "{}", human.stderr_text());
}

#[test]
fn abort_is_shown_as_a_signal() {
    let job = Job::new("scenarios", &["abort_child"]).run();
    let (_, child) = &job.spawns()[0];
    assert_eq!(job.exits()[child]["signal"], libc::SIGABRT);
    assert_eq!(job.line("recv: "), "recv: Err(PeerEnded)");
    let human = Job::new("scenarios", &["abort_child"]).human().run();
    assert!(human.stderr_text().contains("   exited: killed by signal 6\n"), "{}", human.stderr_text());
}

#[test]
fn panicking_top_process_exits_101() {
    let job = Job::new("scenarios", &["sender_to_self"]).run();
    assert_eq!(job.code, Some(101));
    let panic = job.exits()[&job.top()]["panic"].as_str().unwrap().to_owned();
    assert!(panic.contains("cannot open a Sender from process") && panic.contains("to itself"), "{panic}");
}
