//! Slurm: a real Slurm (one slurmctld and three slurmd on this host, with munge)
//! started by the test, and `salloc -N 3 constellation slurm BINARY` run in it:
//! the job's output and exit code, a failing program's exit code, and `scancel`
//! stopping everything with nothing left behind.
//!
//! Needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/run`
//! installs them); skipped with a message without them.
mod util;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use util::{cluster::workspace_binary, Job};

/// A Slurm of three nodes on this host, stopped and removed when dropped.
struct Slurm {
    dir: PathBuf,
    daemons: Vec<Child>,
}

fn available(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|o| o.status.success())
}

/// A base port with `count` free ports from it on 127.0.0.1.
fn free_ports(count: u16) -> u16 {
    let mut base = 20000 + (std::process::id() % 20000) as u16;
    loop {
        if (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
        base = 20000 + (base + 7 - 20000) % 40000;
    }
}

impl Slurm {
    fn start() -> Result<Slurm, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the Slurm test needs root (slurmd runs jobs as their users)".into());
        }
        for program in ["slurmctld", "slurmd", "salloc", "munged", "scontrol"] {
            if !available(program) {
                return Err(format!(
                    "{program} is not installed (apt-get install slurmctld slurmd slurm-client munge)"
                ));
            }
        }
        let dir = std::env::temp_dir().join(format!("constellation-test-slurm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["state", "munge", "run", "log"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        let key = dir.join("munge/munge.key");
        let bytes: Vec<u8> = (0..128).map(|i| (constellation::cluster::random_u64() >> (i % 8)) as u8).collect();
        std::fs::write(&key, bytes).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).map_err(|e| e.to_string())?;
        let ports = free_ports(4);
        let d = dir.display();
        let conf = format!(
            "ClusterName=cst{id}\nSlurmctldHost=localhost\nSlurmctldPort={ports}\n\
             AuthType=auth/munge\nAuthInfo=socket={d}/run/munge.socket\nCredType=cred/munge\nMpiDefault=none\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_CPU_Memory\nDefMemPerCPU=100\nMailProg=/bin/true\nReturnToService=2\n\
             SlurmUser=root\nSlurmdUser=root\nStateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool-%n\n\
             SlurmctldPidFile={d}/run/slurmctld.pid\nSlurmdPidFile={d}/run/slurmd-%n.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd-%n.log\n\
             NodeName=n[1-3] NodeHostname=localhost NodeAddr=127.0.0.1 Port={}-{} CPUs=2 RealMemory=2000\n\
             PartitionName=debug Nodes=n[1-3] Default=YES MaxTime=INFINITE State=UP\n",
            ports + 1,
            ports + 3,
            id = std::process::id()
        );
        std::fs::write(dir.join("slurm.conf"), conf).map_err(|e| e.to_string())?;
        let mut slurm = Slurm { dir: dir.clone(), daemons: Vec::new() };
        let mut munged = Command::new("munged");
        munged.args(["-F", "--key-file"]).arg(&key).arg("--socket").arg(dir.join("run/munge.socket"));
        munged.arg("--pid-file").arg(dir.join("run/munged.pid")).arg("--log-file").arg(dir.join("log/munged.log"));
        munged.arg("--seed-file").arg(dir.join("munge/seed"));
        slurm.spawn(munged)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join("run/munge.socket").exists() {
            if Instant::now() > deadline {
                return Err("munged did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut slurmctld = slurm.command("slurmctld");
        slurmctld.args(["-D", "-i"]);
        slurm.spawn(slurmctld)?;
        for node in ["n1", "n2", "n3"] {
            let mut slurmd = slurm.command("slurmd");
            slurmd.args(["-D", "-N", node]);
            slurm.spawn(slurmd)?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let sinfo = slurm.command("sinfo").args(["-h", "-o", "%T %D"]).output().map_err(|e| e.to_string())?;
            if String::from_utf8_lossy(&sinfo.stdout).trim() == "idle 3" {
                return Ok(slurm);
            }
            if Instant::now() > deadline {
                return Err(format!("the Slurm nodes did not come up: {}", String::from_utf8_lossy(&sinfo.stdout)));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A Slurm command of this Slurm.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.dir.join("slurm.conf"));
        command
    }

    fn spawn(&mut self, mut command: Command) -> Result<(), String> {
        let child = command
            .env("SLURM_CONF", self.dir.join("slurm.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {command:?}: {e}"))?;
        self.daemons.push(child);
        Ok(())
    }

    /// `salloc -N 3 constellation slurm --env SCENARIO_MARKER EXAMPLE -- ARGS`.
    fn salloc(&self, example: &Path, args: &[&str]) -> Job {
        let mut command = self.command("salloc");
        command
            .env("CONSTELLATION_LOG", "info")
            .args(["-N", "3"])
            .arg(workspace_binary("constellation"))
            .args(["slurm", "--env", "SCENARIO_MARKER"])
            .arg(example)
            .arg("--")
            .args(args);
        Job::from_command(command)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/slurmctld.log")).unwrap_or_default()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        for daemon in self.daemons.iter_mut().rev() {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn jobs_run_in_a_slurm_allocation_and_scancel_stops_everything() {
    let slurm = match Slurm::start() {
        Ok(slurm) => slurm,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // fibonacci across a three-node allocation.
    let finished = slurm.salloc(&util::example("fibonacci"), &["8"]).run();
    assert_eq!(finished.code, Some(0), "{}\n{}", finished.stderr_text(), slurm.log());
    assert_eq!(finished.line("fibonacci"), "fibonacci(8) = 21");
    assert_eq!(finished.stderr_text().matches("registered at").count(), 3, "{}", finished.stderr_text());
    finished.assert_nothing_left();

    // A failing program's exit code.
    let finished = slurm.salloc(&util::example("cluster_scenarios"), &["exit", "7"]).run();
    assert_eq!(finished.code, Some(7), "{}", finished.stderr_text());
    finished.assert_nothing_left();

    // scancel ends the job, the daemons and every process.
    let running = slurm.salloc(&util::example("cluster_scenarios"), &["supervised"]).start();
    running.wait_for_stdout("worker on", Duration::from_secs(60));
    let squeue = slurm.command("squeue").args(["-h", "-o", "%i"]).output().unwrap();
    let job = String::from_utf8_lossy(&squeue.stdout).trim().to_string();
    assert!(!job.is_empty(), "no Slurm job is running");
    assert!(slurm.command("scancel").arg(&job).status().unwrap().success());
    let finished = running.finish();
    assert_ne!(finished.code, Some(0), "{}", finished.stderr_text());
    finished.assert_nothing_left();
}
