//! How the bridge shows the job: the human format (process output on stdout and
//! stderr exactly as written, headers and notes on stderr) or JSON lines.

use crate::{sys, ExitStatus, Pid, SupervisorEvent};
use serde_json::{json, Value};

const STDOUT: i32 = 1;
const STDERR: i32 = 2;

/// The job's output, in the format chosen at start.
pub(crate) struct Printer {
    json: bool,
    colour: bool,
    /// The process whose header was printed last.
    current: Option<Pid>,
    /// Whether the last line printed has not ended yet.
    mid_line: bool,
    /// Where the output goes, if not to fds 1 and 2.
    sink: Option<Sink>,
    /// Bytes for one fd not yet written: consecutive writes to the same fd go
    /// out as one, at the latest when the bridge has handled what woke it.
    pending: (i32, Vec<u8>),
}

impl Drop for Printer {
    fn drop(&mut self) {
        self.flush();
    }
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer").field("json", &self.json).field("to_sink", &self.sink.is_some()).finish()
    }
}

/// Where a deployed job's output goes instead of this process's fds 1 and 2,
/// in the order it is printed.
pub(crate) use crate::cluster::OutputSink as Sink;

impl Printer {
    pub(crate) fn new(json: bool) -> Printer {
        Printer {
            json,
            colour: !json && sys::is_terminal(STDERR),
            current: None,
            mid_line: false,
            sink: None,
            pending: (STDOUT, Vec::new()),
        }
    }

    /// A printer whose output goes to `sink`, uncoloured.
    pub(crate) fn to_sink(json: bool, sink: Sink) -> Printer {
        Printer { json, colour: false, current: None, mid_line: false, sink: Some(sink), pending: (STDOUT, Vec::new()) }
    }

    fn write(&mut self, fd: i32, bytes: &[u8]) {
        if self.pending.0 != fd {
            self.flush();
            self.pending.0 = fd;
        }
        self.pending.1.extend_from_slice(bytes);
    }

    /// Writes out what is pending.
    pub(crate) fn flush(&mut self) {
        let (fd, bytes) = &mut self.pending;
        if bytes.is_empty() {
            return;
        }
        match &mut self.sink {
            Some(sink) => sink(*fd as u8, bytes),
            // A closed stdout or stderr must not stop the job; what cannot be
            // shown is dropped.
            None => drop(sys::write_all(*fd, bytes)),
        }
        bytes.clear();
    }

    fn event(&mut self, value: Value) {
        let mut line = value.to_string();
        line.push('\n');
        self.write(STDOUT, line.as_bytes());
    }

    /// Prints `pid`'s header if another process printed last.
    fn switch_to(&mut self, pid: Pid) {
        if self.current == Some(pid) {
            return;
        }
        if self.mid_line {
            self.write(STDERR, b"\n");
            self.mid_line = false;
        }
        let header = if self.colour {
            let colour = 31 + (pid.incarnation() % 6);
            format!("\x1b[1;{colour}m{pid}:\x1b[0m\n")
        } else {
            format!("{pid}:\n")
        };
        self.write(STDERR, header.as_bytes());
        self.current = Some(pid);
    }

    /// A line the bridge adds about `pid`, such as `spawned: 9a1b2c3`.
    fn note(&mut self, pid: Pid, text: &str) {
        self.switch_to(pid);
        if self.mid_line {
            self.write(STDERR, b"\n");
            self.mid_line = false;
        }
        let line = if self.colour { format!("   \x1b[2m{text}\x1b[0m\n") } else { format!("   {text}\n") };
        self.write(STDERR, line.as_bytes());
    }

    /// The job's first event: its top process.
    pub(crate) fn top(&mut self, top: Pid) {
        if self.json {
            self.event(json!({"event": "spawn", "parent": null, "child": top.tag()}));
        }
    }

    pub(crate) fn spawned(&mut self, parent: Pid, child: Pid) {
        if self.json {
            self.event(json!({"event": "spawn", "parent": parent.tag(), "child": child.tag()}));
        } else {
            self.note(parent, &format!("spawned: {child}"));
        }
    }

    /// Bytes `pid` wrote to `fd`; empty when it closed `fd`.
    pub(crate) fn output(&mut self, pid: Pid, fd: u8, data: &[u8]) {
        if self.json {
            self.event(json!({"event": "output", "pid": pid.tag(), "fd": fd, "data": data}));
            return;
        }
        if data.is_empty() {
            return;
        }
        self.switch_to(pid);
        let target = if fd == 2 { STDERR } else { STDOUT };
        for line in data.split_inclusive(|&b| b == b'\n') {
            if !self.mid_line {
                self.write(STDERR, b"   ");
            }
            self.write(target, line);
            self.mid_line = !line.ends_with(b"\n");
        }
    }

    pub(crate) fn exited(&mut self, pid: Pid, status: &ExitStatus) {
        if self.json {
            self.event(json!({"event": "exit", "pid": pid.tag(), "status": status_json(status)}));
        } else {
            let text = match status {
                ExitStatus::Success => "exited: 0".to_owned(),
                ExitStatus::Code(code) => format!("exited: {code}"),
                other => format!("exited: {other}"),
            };
            self.note(pid, &text);
        }
    }

    /// What supervisor `pid` did with one of its children.
    pub(crate) fn supervisor(&mut self, pid: Pid, event: &SupervisorEvent) {
        if self.json {
            self.event(json!({
                "event": "supervisor",
                "supervisor": pid.tag(),
                "child": event.child,
                "pid": event.pid.map(|p| p.tag()),
                "action": event.action.as_str(),
                "reason": event.reason,
                "restarts": event.restarts,
            }));
            return;
        }
        let mut line = format!("supervisor: {} {:?}", event.action.as_str(), event.child);
        if let Some(child) = event.pid {
            line.push_str(&format!(" ({child})"));
        }
        if let Some(reason) = &event.reason {
            line.push_str(&format!(": {reason}"));
        }
        if event.restarts > 0 {
            let plural = if event.restarts == 1 { "" } else { "s" };
            line.push_str(&format!(" [{} restart{plural} in the window]", event.restarts));
        }
        self.note(pid, &line);
    }

    /// A message from the bridge itself, such as a warning.
    pub(crate) fn warning(&mut self, text: &str) {
        if self.json {
            self.event(json!({"event": "warning", "message": text}));
        } else {
            if self.mid_line {
                self.write(STDERR, b"\n");
                self.mid_line = false;
            }
            self.current = None;
            self.write(STDERR, format!("constellation: {text}\n").as_bytes());
        }
    }
}

/// The JSON form of an exit status: `code` or `signal`, plus `panic`, `killed_by`,
/// `lost` or `memory_exceeded` when they apply.
fn status_json(status: &ExitStatus) -> Value {
    match status {
        ExitStatus::Success => json!({"code": 0}),
        ExitStatus::Code(code) => json!({"code": code}),
        ExitStatus::Signal(signal) => json!({"signal": signal}),
        ExitStatus::Panicked(message) => json!({"code": 101, "panic": message}),
        ExitStatus::MemoryExceeded(limit) => {
            json!({"signal": libc::SIGKILL, "memory_exceeded": limit.bytes()})
        }
        ExitStatus::KilledBy(pid) => json!({"signal": libc::SIGKILL, "killed_by": pid.tag()}),
        ExitStatus::Lost => json!({"signal": libc::SIGKILL, "lost": true}),
        ExitStatus::NoProc => json!({"code": 1, "noproc": true}),
    }
}
