//! Misuse of `init` is a clear message, not a hang or a crash elsewhere.
mod util;
use util::Job;

#[test]
fn using_the_api_before_init_names_init() {
    let job = Job::new("scenarios", &["no_init"]).run();
    assert_eq!(job.code, Some(101));
    let stderr = job.stderr_text();
    assert!(stderr.contains("call constellation::init"), "{stderr}");
}

#[test]
fn init_after_threads_exist_is_refused() {
    let job = Job::new("scenarios", &["threads_first"]).run();
    assert_eq!(job.code, Some(101));
    let stderr = job.stderr_text();
    assert!(stderr.contains("init must be called before any thread is started"), "{stderr}");
}

#[test]
fn unknown_output_format_is_refused() {
    let job = Job::new("hello", &[]).format("xml").run();
    assert_eq!(job.code, Some(101));
    assert!(job.stderr_text().contains("is not a format"), "{}", job.stderr_text());
}
