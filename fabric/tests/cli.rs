//! The `constellation` command line as users meet it: its help, shown in the
//! guide's reference exactly as the binary prints it, and its refusals.
//! (Building this test also builds the binary for the workspace's cluster tests.)
use std::process::Command;

fn constellation() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_constellation"));
    command.env_remove("CONSTELLATION_COOKIE");
    command
}

#[test]
fn the_reference_shows_the_help_as_it_is() {
    let output = constellation().arg("--help").output().unwrap();
    assert!(output.status.success());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guide/src/reference/cli-constellation.txt");
    let documented = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        documented,
        "{} is out of date: regenerate it with `constellation --help`",
        path.display()
    );
}

#[test]
fn a_missing_address_and_a_bad_one_are_explained() {
    let output = constellation().output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("<ADDR>"));
    let output = constellation().arg("localhost").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an address to listen on"));
    let output = constellation().arg("k8s").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("POD_NAME is not set"));
    let output = constellation().args(["slurm", "/bin/true"]).env_remove("SLURM_JOB_NODELIST").output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("run inside a Slurm allocation"));
}
