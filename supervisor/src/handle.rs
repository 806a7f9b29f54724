//! `SupervisorHandle`: operate a running supervisor from any process, through its
//! control mailbox: list, count, terminate, restart, delete and (for a
//! [`DynamicSupervisor`](crate::DynamicSupervisor)) start children.

use crate::spec::Restart;
use constellation::{monitor, whereis, Block, Mailbox, Pid, Sender};
use futures::{select, FutureExt};
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

/// The mailbox through which a supervisor is operated.
pub(crate) const CONTROL_MAILBOX: &str = "constellation.supervisor";

/// What a supervisor's control mailbox receives.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Stop every child and end normally (sent by the supervisor's SIGTERM hook).
    Stop,
    /// A handle's request; the answer goes to mailbox `reply_to` of the sender.
    Call { reply_to: String, request: Request },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    WhichChildren,
    CountChildren,
    TerminateChild(String),
    RestartChild(String),
    DeleteChild(String),
    StartChild,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Answer {
    Children(Vec<ChildInfo>),
    Count(ChildCount),
    Done(Result<Option<Pid>, HandleError>),
}

/// One child of a running supervisor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    /// Its name in the supervisor.
    pub name: String,
    /// Its running incarnation, if any.
    pub pid: Option<Pid>,
    /// When it is restarted.
    pub restart: Restart,
    /// Whether it is a supervisor itself.
    pub supervisor: bool,
}

/// How many children a running supervisor has (OTP's `count_children`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildCount {
    /// Child specs, running or not.
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Child specs that are supervisors.
    pub supervisors: usize,
    /// Child specs that are workers.
    pub workers: usize,
}

/// Why a handle's operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandleError {
    /// The supervisor has no child of that name.
    NotFound(String),
    /// The child is running: terminate it first.
    Running(String),
    /// The child is not running.
    NotRunning(String),
    /// The operation needs a `DynamicSupervisor`.
    NotDynamic,
    /// The child could not be started.
    StartFailed(String),
    /// The supervisor has ended, or no process holds its name.
    NoSupervisor,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleError::NotFound(name) => write!(f, "the supervisor has no child named {name:?}"),
            HandleError::Running(name) => write!(f, "child {name:?} is running; terminate it first"),
            HandleError::NotRunning(name) => write!(f, "child {name:?} is not running"),
            HandleError::NotDynamic => f.write_str("only a DynamicSupervisor starts children on request"),
            HandleError::StartFailed(reason) => write!(f, "the child could not be started: {reason}"),
            HandleError::NoSupervisor => f.write_str("the supervisor has ended, or no process holds its name"),
        }
    }
}

impl std::error::Error for HandleError {}

/// Operates a running supervisor, found by `Pid` or registered name.
///
/// Each call waits for the supervisor's answer, or fails with
/// [`HandleError::NoSupervisor`] if the supervisor ends first.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    Pid(Pid),
    Name(String),
}

impl SupervisorHandle {
    /// The supervisor running as process `pid`.
    pub fn new(pid: Pid) -> SupervisorHandle {
        SupervisorHandle { target: Target::Pid(pid) }
    }

    /// The supervisor registered under `name` at the time of each call.
    pub fn registered(name: &str) -> SupervisorHandle {
        SupervisorHandle { target: Target::Name(name.to_owned()) }
    }

    fn call(&self, request: Request) -> Result<Answer, HandleError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let supervisor = match &self.target {
            Target::Pid(pid) => *pid,
            Target::Name(name) => whereis(name).ok_or(HandleError::NoSupervisor)?,
        };
        let reply_to = format!("constellation.supervisor.reply.{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let replies = Mailbox::<Answer>::open(&reply_to);
        let down = monitor(supervisor);
        Sender::<Control>::to_mailbox(supervisor, CONTROL_MAILBOX).send(Control::Call { reply_to, request }).block();
        let answer = async {
            select! {
                answer = replies.recv().fuse() => answer.ok().map(|(_, answer)| answer),
                _ = down.fuse() => None,
            }
        }
        .block();
        answer.ok_or(HandleError::NoSupervisor)
    }

    /// The children, in start order.
    ///
    /// # Errors
    /// [`HandleError::NoSupervisor`] if the supervisor is gone.
    pub fn which_children(&self) -> Result<Vec<ChildInfo>, HandleError> {
        match self.call(Request::WhichChildren)? {
            Answer::Children(children) => Ok(children),
            _ => Err(HandleError::NoSupervisor),
        }
    }

    /// How many children there are.
    ///
    /// # Errors
    /// [`HandleError::NoSupervisor`] if the supervisor is gone.
    pub fn count_children(&self) -> Result<ChildCount, HandleError> {
        match self.call(Request::CountChildren)? {
            Answer::Count(count) => Ok(count),
            _ => Err(HandleError::NoSupervisor),
        }
    }

    fn done(&self, request: Request) -> Result<Option<Pid>, HandleError> {
        match self.call(request)? {
            Answer::Done(result) => result,
            _ => Err(HandleError::NoSupervisor),
        }
    }

    /// Stops child `name` (as its spec says) and keeps its spec, not restarting it
    /// until [`restart_child`](Self::restart_child).
    ///
    /// # Errors
    /// [`HandleError::NotFound`], or [`HandleError::NoSupervisor`].
    pub fn terminate_child(&self, name: &str) -> Result<(), HandleError> {
        self.done(Request::TerminateChild(name.to_owned())).map(drop)
    }

    /// Starts terminated child `name` again; returns its new incarnation.
    ///
    /// # Errors
    /// [`HandleError::Running`] if it runs, [`HandleError::NotFound`],
    /// [`HandleError::StartFailed`], or [`HandleError::NoSupervisor`].
    pub fn restart_child(&self, name: &str) -> Result<Pid, HandleError> {
        self.done(Request::RestartChild(name.to_owned()))?.ok_or(HandleError::NotRunning(name.to_owned()))
    }

    /// Removes terminated child `name`'s spec.
    ///
    /// # Errors
    /// [`HandleError::Running`] if it runs, [`HandleError::NotFound`], or
    /// [`HandleError::NoSupervisor`].
    pub fn delete_child(&self, name: &str) -> Result<(), HandleError> {
        self.done(Request::DeleteChild(name.to_owned())).map(drop)
    }

    /// Starts a new child from a [`DynamicSupervisor`](crate::DynamicSupervisor)'s
    /// template; returns its `Pid`.
    ///
    /// # Errors
    /// [`HandleError::NotDynamic`], [`HandleError::StartFailed`], or
    /// [`HandleError::NoSupervisor`].
    pub fn start_child(&self) -> Result<Pid, HandleError> {
        self.done(Request::StartChild)?.ok_or(HandleError::NoSupervisor)
    }
}

/// Sends `answer` to mailbox `reply_to` of `to`.
pub(crate) fn answer(to: Pid, reply_to: &str, answer: Answer) {
    Sender::<Answer>::to_mailbox(to, reply_to).send(answer).block();
}
