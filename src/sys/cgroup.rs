//! Memory limits and CPU weights through cgroups (v1 or v2), with `RLIMIT_DATA` as
//! the memory fallback where no cgroup can be made.
//!
//! Each process gets its own cgroup, named after its OS pid, beside the cgroup its
//! monitor runs in. The process enters it itself, right after the monitor forks it
//! and before it allocates; the monitor removes it after reaping the process.

use super::{limit_data, OsPid};
use crate::Resources;
use std::{fs, io, path::PathBuf};

/// How a process's memory limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemoryLimit {
    /// A cgroup's memory controller, which kills the process past the limit.
    Cgroup,
    /// `RLIMIT_DATA`: allocations past the limit fail.
    Rlimit,
}

fn own_cgroup(controller: &str) -> Option<String> {
    let table = fs::read_to_string("/proc/self/cgroup").ok()?;
    table.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.to_owned())
    })
}

fn dir_for(controller: &str, pid: OsPid) -> Option<PathBuf> {
    let name = format!("constellation-{}", pid.0);
    if controller.is_empty() {
        let path = own_cgroup("")?;
        Some(PathBuf::from(format!("/sys/fs/cgroup{}", path.trim_end_matches('/'))).join(name))
    } else {
        let path = own_cgroup(controller)?;
        let mount = if controller == "cpu" { "cpu" } else { controller };
        Some(PathBuf::from(format!("/sys/fs/cgroup/{mount}{}", path.trim_end_matches('/'))).join(name))
    }
}

fn make_and_enter(dir: &PathBuf, settings: &[(&str, String)], pid: OsPid) -> io::Result<()> {
    fs::create_dir(dir)?;
    let result = settings
        .iter()
        .try_for_each(|(file, value)| fs::write(dir.join(file), value))
        .and_then(|()| fs::write(dir.join("cgroup.procs"), pid.0.to_string()));
    if result.is_err() {
        let _ = fs::remove_dir(dir);
    }
    result
}

/// Puts process `pid` (the caller) under a memory limit and CPU weight of
/// `resources`, preferring cgroups. Returns how memory is enforced.
pub(crate) fn enter_limits(pid: OsPid, resources: &Resources) -> io::Result<MemoryLimit> {
    let bytes = resources.mem.bytes();
    let v1_memory =
        dir_for("memory", pid).filter(|d| d.parent().is_some_and(|p| p.join("memory.limit_in_bytes").exists()));
    let memory = match v1_memory {
        Some(dir) => make_and_enter(&dir, &[("memory.limit_in_bytes", bytes.to_string())], pid).is_ok(),
        None => match dir_for("", pid).filter(|d| d.parent().is_some_and(|p| p.join("memory.max").exists())) {
            Some(dir) => {
                let weight = ((resources.cpu.cores() * 100.0).round() as u64).clamp(1, 10_000);
                make_and_enter(
                    &dir,
                    &[
                        ("memory.max", bytes.to_string()),
                        ("memory.swap.max", "0".into()),
                        ("cpu.weight", weight.to_string()),
                    ],
                    pid,
                )
                .is_ok()
            }
            None => false,
        },
    };
    // CPU as a weight in the v1 cpu controller: 1024 shares a core.
    if let Some(dir) = dir_for("cpu", pid).filter(|d| d.parent().is_some_and(|p| p.join("cpu.shares").exists())) {
        let shares = ((resources.cpu.cores() * 1024.0).round() as u64).max(2);
        let _ = make_and_enter(&dir, &[("cpu.shares", shares.to_string())], pid);
    }
    if memory {
        Ok(MemoryLimit::Cgroup)
    } else {
        limit_data(bytes)?;
        Ok(MemoryLimit::Rlimit)
    }
}

/// Whether the memory controller killed process `pid` for exceeding its limit.
pub(crate) fn memory_exceeded(pid: OsPid) -> bool {
    let counters = [
        dir_for("memory", pid).map(|d| d.join("memory.oom_control")),
        dir_for("", pid).map(|d| d.join("memory.events")),
    ];
    counters.into_iter().flatten().any(|file| {
        fs::read_to_string(file)
            .is_ok_and(|text| text.lines().any(|line| line.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0")))
    })
}

/// Removes the cgroups made for process `pid`, once it has been reaped.
pub(crate) fn remove(pid: OsPid) {
    for dir in [dir_for("memory", pid), dir_for("cpu", pid), dir_for("", pid)].into_iter().flatten() {
        if dir.exists() {
            // A grandchild still inside keeps it busy; the kernel then keeps it.
            let _ = fs::remove_dir(&dir);
        }
    }
}
