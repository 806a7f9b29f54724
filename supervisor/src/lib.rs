//! Erlang/OTP-style supervision trees for Constellation processes.
//!
//! A [`Supervisor`] is a process that starts child processes, watches them, and
//! restarts them when they end, so a program stays up when parts of it crash.
//!
//! ```no_run
//! use constellation::*;
//! use constellation_supervisor::*;
//! use std::time::Duration;
//!
//! fn main() {
//!     init(Resources::default());
//!     Supervisor::new(OneForOne)
//!         .intensity(3, Duration::from_secs(5))
//!         .child(Child::new("db", Resources::default(), Fn!(|_parent: Pid| {
//!             // serve until something goes wrong
//!         })).restart(Restart::Transient))
//!         .run();
//! }
//! ```
//!
//! # Semantics, and their OTP counterparts
//!
//! - **Start order.** Children start in the order they were added, each only after
//!   the previous one has started; they are stopped in reverse order. A child that
//!   fails to start fails the supervisor's start: the children already started are
//!   stopped and the supervisor's process ends with a panic naming the child.
//! - **Restart types** ([`Restart`]): `Permanent` children are always restarted,
//!   `Transient` ones only after an abnormal end (anything but exit code 0), and
//!   `Temporary` ones never (OTP's `permanent`, `transient`, `temporary`).
//! - **Strategies**: [`OneForOne`] restarts only the child that ended;
//!   [`OneForAll`] stops all the others (in reverse order) and restarts them all
//!   (in order); [`RestForOne`] does that for the children started after it
//!   (OTP's `one_for_one`, `one_for_all`, `rest_for_one`).
//! - **Intensity.** More than `max` restarts within `period`
//!   ([`Supervisor::intensity`], OTP's `intensity` and `period`, by default 1 in
//!   5 s) makes the supervisor stop all its children and end its process with a
//!   panic naming the child and reason. Its own supervisor sees that as an
//!   abnormal exit and applies its own policy: failure escalates up the tree.
//!   [`Supervisor::run`] returns only after a normal shutdown, never with a
//!   failure a caller could drop.
//! - **Shutdown** ([`Shutdown`]): `BrutalKill` kills the child at once;
//!   `Timeout(d)` sends it SIGTERM (running its
//!   [`on_shutdown`](constellation::on_shutdown) hooks) and kills it after `d`;
//!   `Infinity` waits as long as it takes (the default for child supervisors, as
//!   in OTP).
//! - **No orphans, no two incarnations.** Children are *bound* to their supervisor
//!   ([`SpawnOptions::bind`](constellation::SpawnOptions)): whenever the supervisor
//!   ends, however it ends, its whole subtree is killed, even children that trap
//!   exits. A child's end is reported to the supervisor only once its own subtree
//!   has ended, so a restart never overlaps the previous incarnation.
//! - **Names.** A child spec may carry a registered name
//!   ([`Child::register`]); each incarnation holds it from its start, so clients
//!   find the current one with [`whereis`](constellation::whereis) or send to it
//!   with [`Sender::to_registered`](constellation::Sender::to_registered).
//! - **Reports.** Each start, exit, restart and stop is one line on the job's
//!   output (and a JSON `supervisor` event): supervisor, child, reason, and the
//!   restarts in the current window.
//!
//! - **Operating a running tree.** A [`SupervisorHandle`] (from the supervisor's
//!   `Pid` or registered name, in any process) lists, counts, terminates,
//!   restarts and deletes children, through the supervisor's control mailbox
//!   (OTP's `which_children`, `count_children`, `terminate_child`,
//!   `restart_child`, `delete_child`). A [`DynamicSupervisor`] starts children
//!   from one template on request (OTP's `simple_one_for_one` and `start_child`).
//!
//! A supervisor traps exits: its children's ends reach it as messages. Children
//! are processes of any closure type: each spec stores its closure as a
//! [`ProcessFn`](constellation::ProcessFn) (trampoline plus serialised bytes), so it
//! can be started any number of times.
#![doc(test(attr(deny(warnings))))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod handle;
mod run;
mod spec;

pub use handle::{ChildCount, ChildInfo, HandleError, SupervisorHandle};
pub use spec::{Child, DynamicSupervisor, Restart, Shutdown, Strategy, Supervisor};
pub use Strategy::{OneForAll, OneForOne, RestForOne};
