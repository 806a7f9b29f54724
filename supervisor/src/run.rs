//! The running supervisor: starts its children, turns their exit signals into
//! restarts by strategy and intensity, and stops everything on shutdown or
//! failure.

use crate::{
    handle::{answer, Answer, ChildCount, ChildInfo, Control, HandleError, Request, CONTROL_MAILBOX},
    spec::{Child, Restart, Shutdown, Start, Strategy, Supervisor},
};
use constellation::{
    exits, kill, on_shutdown, pid, report_supervisor_event, shutdown, shutdown_and_wait, trap_exits, Block, Exit,
    ExitStatus, Mailbox, Pid, Sender, SupervisorAction, SupervisorEvent,
};
use futures::{select, FutureExt, StreamExt};
use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex},
    time::Instant,
};

/// Set once the children are stopped after a shutdown request.
static STOPPED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

struct Running {
    spec: Supervisor,
    /// The live incarnation of each child, by index in `spec.children`.
    pids: Vec<Option<Pid>>,
    /// Children that ended for good (temporary, or transient that ended normally).
    done: Vec<bool>,
    /// Children terminated through a handle: kept, but not restarted.
    held: Vec<bool>,
    /// Children started from a dynamic supervisor's template so far.
    instances: u64,
    restarts: VecDeque<Instant>,
    /// Exit signals received while waiting for another.
    pending: VecDeque<Exit>,
    exits: constellation::Exits,
}

pub(crate) fn run(spec: Supervisor) {
    trap_exits(true);
    if let Some(name) = &spec.name {
        if let Err(error) = constellation::register(name) {
            panic!("supervisor: cannot register as {name:?}: {error}");
        }
    }
    let control = Mailbox::<Control>::open(CONTROL_MAILBOX);
    let me = pid();
    on_shutdown(move || {
        Sender::<Control>::to_mailbox(me, CONTROL_MAILBOX).send(Control::Stop).block();
        let (lock, stopped) = &STOPPED;
        let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = stopped.wait(done).unwrap_or_else(|e| e.into_inner());
        }
    });
    let count = spec.children.len();
    let mut sup = Running {
        spec,
        pids: vec![None; count],
        done: vec![false; count],
        held: vec![false; count],
        instances: 0,
        restarts: VecDeque::new(),
        pending: VecDeque::new(),
        exits: exits(),
    };
    for index in 0..count {
        if let Err(error) = sup.start(index) {
            let name = sup.spec.children[index].name.clone();
            sup.stop_all();
            panic!("supervisor: child {name:?} failed to start: {error}");
        }
    }
    loop {
        // Nothing runs and nothing will: a normal end (a dynamic supervisor waits
        // for requests instead).
        if sup.spec.template.is_none() && sup.pids.iter().all(Option::is_none) && sup.done.iter().all(|&d| d) {
            return;
        }
        let exit = match sup.pending.pop_front() {
            Some(exit) => exit,
            None => {
                let event = async {
                    select! {
                        exit = sup.exits.next().fuse() => exit.map(Ok),
                        control = control.recv().fuse() => Some(Err(control)),
                    }
                }
                .block();
                match event {
                    Some(Ok(exit)) => exit,
                    Some(Err(Ok((_, Control::Stop)))) => {
                        sup.stop_all();
                        let (lock, stopped) = &STOPPED;
                        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                        stopped.notify_all();
                        return;
                    }
                    Some(Err(Ok((from, Control::Call { reply_to, request })))) => {
                        let reply = sup.on_request(request);
                        answer(from, &reply_to, reply);
                        continue;
                    }
                    Some(Err(Err(error))) => {
                        log::warn!("supervisor: a bad control message: {error}");
                        continue;
                    }
                    // The job's bridge is gone: nothing can be supervised.
                    None => return,
                }
            }
        };
        sup.on_exit(exit);
    }
}

impl Running {
    fn report(&self, index: usize, pid: Option<Pid>, action: SupervisorAction, reason: Option<String>) {
        report_supervisor_event(SupervisorEvent {
            child: self.spec.children[index].name.clone(),
            pid,
            action,
            reason,
            restarts: self.restarts.len() as u32,
        });
    }

    fn start(&mut self, index: usize) -> Result<(), constellation::SpawnError> {
        let pid = self.spec.children[index].start()?;
        self.pids[index] = Some(pid);
        self.report(index, Some(pid), SupervisorAction::Started, None);
        Ok(())
    }

    /// Waits for the exit signal of `pid`, keeping the others for later.
    fn wait_for(&mut self, pid: Pid) -> ExitStatus {
        if let Some(at) = self.pending.iter().position(|e| e.pid == pid) {
            return self.pending.remove(at).expect("found above").status;
        }
        loop {
            match self.exits.next().block() {
                Some(exit) if exit.pid == pid => return exit.status,
                Some(exit) => self.pending.push_back(exit),
                None => return ExitStatus::Lost,
            }
        }
    }

    /// Stops child `index` as its spec says, and waits until it (and its subtree)
    /// has ended.
    fn stop(&mut self, index: usize) {
        let Some(pid) = self.pids[index].take() else { return };
        let child: &Child = &self.spec.children[index];
        match child.shutdown {
            Shutdown::BrutalKill => kill(pid),
            Shutdown::Timeout(timeout) => shutdown(pid, timeout),
            Shutdown::Infinity => shutdown_and_wait(pid),
        }
        let status = self.wait_for(pid);
        self.report(index, Some(pid), SupervisorAction::Stopped, Some(status.to_string()));
    }

    /// Stops every running child, last started first.
    fn stop_all(&mut self) {
        for index in (0..self.pids.len()).rev() {
            self.stop(index);
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let Some(index) = self.pids.iter().position(|p| *p == Some(exit.pid)) else {
            // Not a current child: an incarnation already replaced, or another link.
            return;
        };
        self.pids[index] = None;
        let child = &self.spec.children[index];
        self.report(index, Some(exit.pid), SupervisorAction::Exited, Some(exit.status.to_string()));
        let restart = match child.restart {
            Restart::Permanent => true,
            Restart::Transient => !exit.status.success(),
            Restart::Temporary => false,
        };
        if !restart {
            self.done[index] = true;
            if self.spec.template.is_some() {
                self.forget(index);
            }
            return;
        }
        let now = Instant::now();
        self.restarts.push_back(now);
        while self.restarts.front().is_some_and(|&t| now.duration_since(t) > self.spec.period) {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 > self.spec.max_restarts {
            let reason = format!(
                "child {:?} ended ({}) and more than {} restarts in {:?} were needed",
                child.name, exit.status, self.spec.max_restarts, self.spec.period
            );
            self.report(index, None, SupervisorAction::GaveUp, Some(reason.clone()));
            self.stop_all();
            panic!("supervisor: {reason}");
        }
        let affected: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne => vec![index],
            Strategy::OneForAll => (0..self.pids.len()).collect(),
            Strategy::RestForOne => (index..self.pids.len()).collect(),
        };
        for &other in affected.iter().rev() {
            self.stop(other);
        }
        for &other in &affected {
            if self.done[other]
                || self.held[other]
                || (other != index && self.spec.children[other].restart == Restart::Temporary)
            {
                continue;
            }
            self.report(other, None, SupervisorAction::Restarting, None);
            if let Err(error) = self.start(other) {
                let name = self.spec.children[other].name.clone();
                self.stop_all();
                panic!("supervisor: child {name:?} failed to restart: {error}");
            }
        }
    }

    /// Removes child `index`, which is not running, from the supervisor.
    fn forget(&mut self, index: usize) {
        self.spec.children.remove(index);
        self.pids.remove(index);
        self.done.remove(index);
        self.held.remove(index);
    }

    fn find(&self, name: &str) -> Result<usize, HandleError> {
        self.spec.children.iter().position(|c| c.name == name).ok_or_else(|| HandleError::NotFound(name.to_owned()))
    }

    /// Carries out a handle's request.
    fn on_request(&mut self, request: Request) -> Answer {
        match request {
            Request::WhichChildren => Answer::Children(
                self.spec
                    .children
                    .iter()
                    .zip(&self.pids)
                    .map(|(child, pid)| ChildInfo {
                        name: child.name.clone(),
                        pid: *pid,
                        restart: child.restart,
                        supervisor: matches!(child.start, Start::Supervisor(_)),
                    })
                    .collect(),
            ),
            Request::CountChildren => {
                let supervisors = self.spec.children.iter().filter(|c| matches!(c.start, Start::Supervisor(_))).count();
                Answer::Count(ChildCount {
                    specs: self.spec.children.len(),
                    active: self.pids.iter().filter(|p| p.is_some()).count(),
                    supervisors,
                    workers: self.spec.children.len() - supervisors,
                })
            }
            Request::TerminateChild(name) => Answer::Done(self.find(&name).map(|index| {
                self.stop(index);
                self.held[index] = true;
                None
            })),
            Request::RestartChild(name) => Answer::Done(self.find(&name).and_then(|index| {
                if self.pids[index].is_some() {
                    return Err(HandleError::Running(name));
                }
                self.start(index).map_err(|e| HandleError::StartFailed(e.to_string()))?;
                self.held[index] = false;
                self.done[index] = false;
                Ok(self.pids[index])
            })),
            Request::DeleteChild(name) => Answer::Done(self.find(&name).and_then(|index| {
                if self.pids[index].is_some() {
                    return Err(HandleError::Running(name));
                }
                self.forget(index);
                Ok(None)
            })),
            Request::StartChild => {
                let Some(template) = &self.spec.template else { return Answer::Done(Err(HandleError::NotDynamic)) };
                self.instances += 1;
                let mut child: Child = template.clone();
                child.name = format!("{}#{}", template.name, self.instances);
                self.spec.children.push(child);
                self.pids.push(None);
                self.done.push(false);
                self.held.push(false);
                let index = self.pids.len() - 1;
                Answer::Done(match self.start(index) {
                    Ok(()) => Ok(self.pids[index]),
                    Err(error) => {
                        self.forget(index);
                        Err(HandleError::StartFailed(error.to_string()))
                    }
                })
            }
        }
    }
}
