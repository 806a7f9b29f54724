//! Constellation: distributed programs in Rust, where every unit of work is a real
//! operating-system process.
//!
//! A program calls [`init`] first thing in `main`, then [`spawn`]s closures as new
//! processes and talks to them over typed channels ([`Sender`], [`Receiver`]).
//! Each process runs under a monitor that reports its output and how it ended to
//! the job's bridge, which prints everything as it happens and ends with the top
//! process's exit code once every process has ended.
//!
//! ```no_run
//! use constellation::*;
//!
//! fn main() {
//!     init(Resources::default());
//!     let child = spawn(Resources::default(), FnOnce!(move |parent: Pid| {
//!         Sender::<usize>::new(parent).send(42).block();
//!     }))
//!     .block()
//!     .expect("spawn failed");
//!     let value = Receiver::<usize>::new(child).recv().block().unwrap();
//!     println!("the child sent {value}");
//! }
//! ```
//!
//! Users depend on `constellation`, `serde_closure` and `serde`: the closure macros
//! [`FnOnce!`], [`FnMut!`] and [`Fn!`] expand to code naming the latter two.
#![doc(test(attr(deny(warnings))))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]

mod attention;
mod biased;
mod block;
mod bridge;
mod channel;
#[doc(hidden)]
pub mod cluster;
mod codec;
mod exit_status;
mod inbox;
mod job;
mod lane;
mod mailbox;
mod monitor;
mod net;
mod otp;
mod outbox;
mod pid;
mod pool;
mod proto;
mod reactor;
mod resources;
mod runtime;
mod spawn;
mod sys;
mod transport;
mod zygote;

pub use block::{sleep, timeout, Block, Elapsed, Sleep, Timeout};
pub use channel::{Receiver, RecvError, SendError, Sender};
pub use exit_status::ExitStatus;
pub use job::{capacity, fanout, job, Fanout, Job, JobError};
pub use mailbox::{Mailbox, MailboxRecv};
pub use otp::{
    demonitor, exits, kill, link, monitor, on_shutdown, register, report_supervisor_event, shutdown, shutdown_and_wait,
    spawn_link, trap_exits, unlink, unregister, whereis, Down, Exit, Exits, Monitor, RegisterError, SupervisorAction,
    SupervisorEvent,
};
pub use pid::Pid;
pub use pool::{Pool, PoolRun};
pub use resources::{Cpu, Mem, ParseResourceError, Resources};
pub use runtime::{init, pid, resources};
pub use serde_closure::{Fn, FnMut, FnOnce};
pub use spawn::{spawn, try_spawn, Placement, ProcessFn, Spawn, SpawnError, SpawnOptions};
