//! The `cargo deploy` command line as users meet it: its help, shown in the
//! guide's reference exactly as the binary prints it, and its refusals.
//! (Building this test also builds the binary for the workspace's cluster tests.)
use std::process::Command;

fn cargo_deploy() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cargo-deploy"));
    command.arg("deploy");
    command
}

#[test]
fn the_reference_shows_the_help_as_it_is() {
    let output = cargo_deploy().arg("--help").output().unwrap();
    assert!(output.status.success());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guide/src/reference/cli-cargo-deploy.txt");
    let documented = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        documented,
        "{} is out of date: regenerate it with `cargo deploy --help`",
        path.display()
    );
}

#[test]
fn a_missing_bridge_and_an_unset_variable_are_explained() {
    let output = cargo_deploy().args(["--binary", "/bin/true"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("<BRIDGE_ADDR>"));
    let output = cargo_deploy()
        .args(["--binary", "/bin/true", "--env", "SURELY_NOT_SET_ANYWHERE", "127.0.0.1:1"])
        .env_remove("SURELY_NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("SURELY_NOT_SET_ANYWHERE is not set here"));
}
