//! Mailboxes: a registered server answers processes it has never met; values of
//! the wrong type are an error; a flood of mail arrives whole and in order;
//! threads blocked on the bridge's answers each hear theirs.
mod util;
use util::Job;

#[test]
fn a_registered_server_answers_workers_it_never_met() {
    let job = Job::new("scenarios", &["mailboxes"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("answers: "), "answers: [100, 200, 300]");
    assert_eq!(job.line("typed: "), "typed: Err(TypeMismatch { expected: \"alloc::string::String\", found: \"u64\" })");
    job.assert_nothing_left();
}

#[test]
fn threads_blocked_on_the_bridge_each_hear_what_is_theirs() {
    let job = Job::new("scenarios", &["threads_share_the_bridge"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("rounds: "), "rounds: 1200");
    assert_eq!(job.line("silent: "), "silent: [Err(PeerEnded), Err(PeerEnded)]");
    job.assert_nothing_left();
}

#[test]
fn a_flood_of_mail_arrives_whole_and_in_order() {
    // 8 MB through the bridge while the receiver is not reading yet: the
    // sender's connection to the bridge fills and drains again.
    let job = Job::new("scenarios", &["mail_flood"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("mail: "), "mail: 2000 in order true");
    job.assert_nothing_left();
}
