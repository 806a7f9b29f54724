//! `cargo deploy`: builds a constellation program with cargo, sends it to a
//! cluster's bridge daemon, prints the job's output as `cargo run` would, stops the
//! job on Ctrl-C, and exits with the top process's exit code.

use clap::Parser;
use constellation_fabric::{
    auth,
    client::{print_output, Deploy},
};
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
};

/// Build a constellation program and run it on a cluster.
///
/// Builds the program with cargo (as `cargo build` would, with the flags given),
/// sends it to the bridge daemon at BRIDGE_ADDR (the master's bridge_bind in
/// nodes.toml), and prints the job's output as `cargo run` would. Ctrl-C stops
/// the job; cargo deploy exits with the top process's exit code.
///
/// Examples:
///
///   cargo deploy --release --example fibonacci 127.0.0.1:12361 -- 10
///
///   cargo deploy --cookie-file ~/.constellation-cookie --bin server --env RUST_LOG 10.0.0.1:12361
///
///   cargo deploy --slurm "-N 3 --time 10" --release --example fibonacci
///
/// Environment: CONSTELLATION_COOKIE (the cookie, if no --cookie-file),
/// CONSTELLATION_FORMAT=json (JSON lines instead of the human format).
#[derive(Debug, Parser)]
#[command(name = "cargo deploy", bin_name = "cargo deploy", version, verbatim_doc_comment)]
struct Cli {
    /// Build in release mode.
    #[arg(long)]
    release: bool,
    /// Deploy this binary target of the package.
    #[arg(long, value_name = "NAME", conflicts_with = "example")]
    bin: Option<String>,
    /// Deploy this example of the package.
    #[arg(long, value_name = "NAME")]
    example: Option<String>,
    /// Features to build with (as cargo build --features).
    #[arg(long, value_name = "FEATURES")]
    features: Option<String>,
    /// The package to build (as cargo build -p).
    #[arg(short = 'p', long, value_name = "SPEC")]
    package: Option<String>,
    /// Deploy this already-built executable instead of building.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["bin", "example", "features", "package", "release"])]
    binary: Option<PathBuf>,
    /// A file holding the cluster's shared secret.
    #[arg(long, value_name = "FILE")]
    cookie_file: Option<PathBuf>,
    /// Pass this environment variable (with its value here) to the job's
    /// processes; repeat for several.
    #[arg(long = "env", value_name = "NAME")]
    env: Vec<String>,
    /// Run in a new Slurm allocation instead of on a running cluster: `salloc`
    /// with these options (such as "-N 3 --time 10") runs `constellation slurm`
    /// (found on PATH) with the program built.
    #[arg(long, value_name = "SALLOC_OPTIONS", allow_hyphen_values = true, conflicts_with = "bridge_addr")]
    slurm: Option<String>,
    /// The bridge daemon's address, as IP:PORT or HOST:PORT.
    #[arg(required_unless_present = "slurm")]
    bridge_addr: Option<String>,
    /// Arguments for the program.
    #[arg(last = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    // Run as `cargo deploy ...`, cargo passes "deploy" first.
    let args = std::env::args_os().enumerate().filter(|(i, a)| !(*i == 1 && a == "deploy")).map(|(_, a)| a);
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(error) => {
            eprintln!("cargo deploy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32, String> {
    let cookie = auth::load_cookie(cli.cookie_file.as_deref()).map_err(|e| e.to_string())?.unwrap_or_default();
    let binary = match &cli.binary {
        Some(path) => path.clone(),
        None => build(&cli)?,
    };
    let mut vars = Vec::new();
    for var in &cli.env {
        match std::env::var(var) {
            Ok(value) => vars.push((var.clone(), value)),
            Err(_) => return Err(format!("--env {var}: {var} is not set here, so there is no value to pass")),
        }
    }
    if let Some(salloc) = &cli.slurm {
        return run_in_slurm(salloc, &cli, &binary);
    }
    let bridge = cli.bridge_addr.as_deref().ok_or("give the bridge's address (or --slurm)")?;
    let json = std::env::var("CONSTELLATION_FORMAT").is_ok_and(|f| f == "json");
    let deploy = Deploy { bridge, cookie: &cookie, binary: &binary, args: cli.args.clone(), vars, json };
    let deployed = deploy.start()?;
    deployed.stop_on(&[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    deployed.forward_stdin();
    deployed.wait(print_output)
}

/// `salloc OPTIONS constellation slurm ... BINARY -- ARGS`: the job in a new
/// Slurm allocation; returns its exit code.
fn run_in_slurm(salloc: &str, cli: &Cli, binary: &std::path::Path) -> Result<i32, String> {
    let mut command = Command::new("salloc");
    command.args(salloc.split_whitespace()).args(["constellation", "slurm"]);
    if let Some(cookie) = &cli.cookie_file {
        command.arg("--cookie-file").arg(cookie);
    }
    for var in &cli.env {
        command.args(["--env", var]);
    }
    command.arg(binary).arg("--").args(&cli.args);
    let status = command.status().map_err(|e| format!("cannot run salloc (is Slurm's client installed?): {e}"))?;
    Ok(status.code().unwrap_or(1))
}

/// Builds the program with cargo; returns the executable cargo names.
fn build(cli: &Cli) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--message-format=json-render-diagnostics"]);
    if cli.release {
        command.arg("--release");
    }
    if let Some(bin) = &cli.bin {
        command.args(["--bin", bin]);
    }
    if let Some(example) = &cli.example {
        command.args(["--example", example]);
    }
    if let Some(features) = &cli.features {
        command.args(["--features", features]);
    }
    if let Some(package) = &cli.package {
        command.args(["-p", package]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut executables = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if message["reason"] != "compiler-artifact" {
                continue;
            }
            let Some(executable) = message["executable"].as_str() else { continue };
            let name = message["target"]["name"].as_str().unwrap_or_default().to_string();
            let kinds: Vec<String> = message["target"]["kind"]
                .as_array()
                .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            executables.push((name, kinds, PathBuf::from(executable)));
        }
    }
    let status = child.wait().map_err(|e| format!("waiting for cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    let wanted = |name: &str, kinds: &[String]| match (&cli.bin, &cli.example) {
        (Some(bin), _) => name == bin && kinds.iter().any(|k| k == "bin"),
        (_, Some(example)) => name == example && kinds.iter().any(|k| k == "example"),
        _ => kinds.iter().any(|k| k == "bin"),
    };
    let mut found: Vec<_> = executables.into_iter().filter(|(name, kinds, _)| wanted(name, kinds)).collect();
    match found.len() {
        0 => Err("cargo built no executable to deploy: pass --bin NAME or --example NAME".into()),
        1 => Ok(found.remove(0).2),
        _ => {
            let names: Vec<_> = found.iter().map(|(name, _, _)| name.as_str()).collect();
            Err(format!("cargo built several executables ({}): pass --bin NAME to choose one", names.join(", ")))
        }
    }
}
