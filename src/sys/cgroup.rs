//! Memory limits and CPU weights through cgroups (v1 or v2), with `RLIMIT_DATA` as
//! the memory fallback where no cgroup can be made.
//!
//! Each process gets its own cgroup, named by the bridge (`constellation-<bridge
//! pid>-<n>`), beside the cgroup the bridge and the monitors run in. Making a
//! cgroup costs the better part of a millisecond, so the bridge makes them ahead
//! of need ([`prepare`]); the process enters its own right after its monitor
//! forks it and before it allocates ([`enter_limits`]), and the monitor removes
//! it after reporting the process's end ([`remove`]). A CPU weight gets a cgroup
//! of its own only when it differs from the default one, or when a node daemon
//! asks for CPU quotas (`constellation --cpu-quota`).

use super::limit_data;
use crate::Resources;
use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::OnceLock,
};

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
        matches.then(|| path.trim_end_matches('/').to_owned())
    })
}

/// The directory holding the memory cgroups of this process's job, and whether
/// it is cgroup v2. Found once: a process that has entered its own cgroup still
/// gets its job's, and a process forked after the first call does not look again.
fn memory_parent() -> Option<&'static (PathBuf, bool)> {
    static PARENT: OnceLock<Option<(PathBuf, bool)>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            if let Some(path) = own_cgroup("memory") {
                let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{path}"));
                if dir.join("memory.limit_in_bytes").exists() {
                    return Some((dir, false));
                }
            }
            let dir = PathBuf::from(format!("/sys/fs/cgroup{}", own_cgroup("")?));
            dir.join("memory.max").exists().then_some((dir, true))
        })
        .as_ref()
}

/// The directory holding the v1 CPU cgroups of this process's job; found once.
fn cpu_parent() -> Option<&'static PathBuf> {
    static PARENT: OnceLock<Option<PathBuf>> = OnceLock::new();
    PARENT
        .get_or_init(|| {
            let dir = PathBuf::from(format!("/sys/fs/cgroup/cpu{}", own_cgroup("cpu")?));
            dir.join("cpu.shares").exists().then_some(dir)
        })
        .as_ref()
}

/// Finds the job's cgroup directories now, so processes forked later (by the
/// zygote) inherit the answer instead of reading `/proc` each.
pub(crate) fn find_parents() {
    memory_parent();
    cpu_parent();
}

/// Makes the memory cgroup `name` ahead of need. Returns whether it exists now.
pub(crate) fn prepare(name: &str) -> bool {
    memory_parent().is_some_and(|(parent, _)| fs::create_dir(parent.join(name)).is_ok())
}

/// Makes cgroup `dir` if need be, applies `settings` and moves the calling
/// process in, which must have a single thread.
///
/// In v1, the thread moves itself through `tasks`: moving a whole process
/// through `cgroup.procs` takes a machine-wide lock that waits for an RCU grace
/// period, 200–300 µs here and serialised between all processes, while a thread
/// moving itself needs no such lock. In v2, a domain cgroup only takes whole
/// processes.
fn enter(dir: &Path, settings: &[(&str, String)], v2: bool) -> io::Result<()> {
    let apply = || settings.iter().try_for_each(|(file, value)| fs::write(dir.join(file), value));
    // Usually the bridge made it: trying `mkdir` anyway would take the parent
    // directory's lock, which every process starting at once contends for.
    match apply() {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            match fs::create_dir(dir) {
                Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
                _ => {}
            }
            apply()?;
        }
        result => result?,
    }
    if v2 {
        fs::write(dir.join("cgroup.procs"), super::getpid().0.to_string())
    } else {
        fs::write(dir.join("tasks"), "0")
    }
}

/// The scheduler period a hard CPU quota is measured over.
const CPU_PERIOD_US: u64 = 100_000;

/// Puts the calling process, which must have a single thread, in cgroup `name` under a memory limit and a
/// CPU weight of `resources` (with `hard_cpu`, also a quota of that many cores),
/// preferring cgroups. Returns how memory is enforced.
pub(crate) fn enter_limits(name: &str, resources: &Resources, hard_cpu: bool) -> io::Result<MemoryLimit> {
    let quota_us = ((resources.cpu.cores() * CPU_PERIOD_US as f64).round() as u64).max(1_000);
    let bytes = resources.mem.bytes();
    let memory = match memory_parent() {
        Some((parent, false)) => {
            enter(&parent.join(name), &[("memory.limit_in_bytes", bytes.to_string())], false).is_ok()
        }
        Some((parent, true)) => {
            let weight = ((resources.cpu.cores() * 100.0).round() as u64).clamp(1, 10_000);
            let mut settings = vec![
                ("memory.max", bytes.to_string()),
                ("memory.swap.max", "0".into()),
                ("cpu.weight", weight.to_string()),
            ];
            if hard_cpu {
                settings.push(("cpu.max", format!("{quota_us} {CPU_PERIOD_US}")));
            }
            enter(&parent.join(name), &settings, true).is_ok()
        }
        None => false,
    };
    // CPU as a weight in the v1 cpu controller (1024 shares a core), when it is
    // not the weight every process has by default, and as a quota if asked.
    if resources.cpu != Resources::default().cpu || hard_cpu {
        if let Some(parent) = cpu_parent() {
            let shares = ((resources.cpu.cores() * 1024.0).round() as u64).max(2);
            let mut settings = vec![("cpu.shares", shares.to_string())];
            if hard_cpu {
                settings.push(("cpu.cfs_period_us", CPU_PERIOD_US.to_string()));
                settings.push(("cpu.cfs_quota_us", quota_us.to_string()));
            }
            let _ = enter(&parent.join(name), &settings, false);
        }
    }
    if memory {
        Ok(MemoryLimit::Cgroup)
    } else {
        limit_data(bytes)?;
        Ok(MemoryLimit::Rlimit)
    }
}

/// Whether the memory controller killed the process of cgroup `name` for
/// exceeding its limit.
pub(crate) fn memory_exceeded(name: &str) -> bool {
    let Some((parent, v2)) = memory_parent() else { return false };
    let file = parent.join(name).join(if *v2 { "memory.events" } else { "memory.oom_control" });
    fs::read_to_string(file)
        .is_ok_and(|text| text.lines().any(|line| line.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0")))
}

/// The most memory still charged to a cgroup for it to be reused: the page
/// cache its last process read stays charged to it, and would count against
/// the next one's limit.
const REUSABLE_CHARGE: u64 = 1 << 20;

/// Whether cgroup `name`, whose process has been reaped, can take another
/// process: no process is left in it, its limit never killed one, and less than
/// [`REUSABLE_CHARGE`] is still charged to it. Reusing a cgroup saves making and
/// removing one, which both wait on a lock every cgroup operation of the machine
/// takes.
pub(crate) fn reusable(name: &str) -> bool {
    let Some((parent, v2)) = memory_parent() else { return false };
    let dir = parent.join(name);
    let (procs, usage) = if *v2 { ("cgroup.procs", "memory.current") } else { ("tasks", "memory.usage_in_bytes") };
    let empty = fs::read_to_string(dir.join(procs)).is_ok_and(|text| text.trim().is_empty());
    let charged = fs::read_to_string(dir.join(usage)).ok().and_then(|text| text.trim().parse::<u64>().ok());
    empty && charged.is_some_and(|bytes| bytes < REUSABLE_CHARGE) && !memory_exceeded(name)
}

/// Removes cgroup `name` once its process has been reaped.
pub(crate) fn remove(name: &str) {
    let memory = memory_parent().map(|(parent, _)| parent.join(name));
    let cpu = cpu_parent().map(|parent| parent.join(name));
    for dir in [memory, cpu].into_iter().flatten() {
        // A grandchild still inside keeps it busy; the kernel then keeps it.
        let _ = fs::remove_dir(&dir);
    }
}

/// Removes the cgroups whose bridge (the pid in their name) `remove` says to;
/// those still holding a process stay. Returns how many stay.
fn sweep(remove: impl Fn(&str) -> bool) -> usize {
    let mut staying = 0;
    let parents = [memory_parent().map(|(parent, _)| parent), cpu_parent()];
    for parent in parents.into_iter().flatten() {
        let Ok(entries) = fs::read_dir(parent) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("constellation-")) else { continue };
            let bridge = rest.split('-').next().unwrap_or_default();
            if remove(bridge) && fs::remove_dir(entry.path()).is_err() {
                staying += 1;
            }
        }
    }
    staying
}

/// Removes the cgroups that jobs whose bridge has ended left behind (a bridge
/// killed with SIGKILL cannot clean up).
pub(crate) fn sweep_stale() {
    sweep(|bridge| bridge.is_empty() || !PathBuf::from(format!("/proc/{bridge}")).exists());
}

/// Removes every cgroup of the job of bridge `bridge_pid` that no process holds
/// any more; returns how many are still held.
pub(crate) fn remove_job(bridge_pid: i32) -> usize {
    let own = bridge_pid.to_string();
    sweep(|bridge| bridge == own)
}
