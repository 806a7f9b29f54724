//! The name registry: unique names, found with `whereis`, released at exit.
mod util;
use util::Job;

#[test]
fn names_are_unique_found_and_released() {
    let job = Job::new("scenarios", &["registry"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("register: "), "register: Ok(())");
    let rival = job.line("rival: ");
    assert!(rival.starts_with("rival: Err(Taken { name: \"store\", by: Pid(TOP at"), "{rival}");
    assert!(rival.ends_with(" true"), "whereis finds the holder: {rival}");
    assert_eq!(job.line("after its end: "), "after its end: None");
    assert_eq!(job.line("again: "), "again: Ok(())");
    assert_eq!(job.line("unregistered: "), "unregistered: None");
}
