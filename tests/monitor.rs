//! `monitor`: how a watched process ended, or `NoProc` for one already gone or
//! never known.
mod util;
use util::Job;

#[test]
fn monitor_reports_exit_codes_panics_kills_and_noproc() {
    let job = Job::new("scenarios", &["monitor"]).run();
    assert_eq!(job.code, Some(0), "{}", job.stderr_text());
    assert_eq!(job.line("code: "), "code: Code(7)");
    assert_eq!(job.line("panic: "), "panic: Panicked(\"boom\")");
    assert_eq!(job.line("gone: "), "gone: NoProc");
    assert_eq!(job.line("unknown: "), "unknown: NoProc");
    assert_eq!(job.line("killed: "), "killed: killed by signal 9");
    job.assert_nothing_left();
}
