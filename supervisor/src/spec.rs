//! What a supervisor supervises: the [`Supervisor`] and [`Child`] specifications,
//! built with chained calls and serialisable, so a tree can be sent to the
//! process that runs it.

use constellation::{Block, Pid, ProcessFn, Resources, Spawn, SpawnOptions};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_closure::FnOnce;
use std::time::Duration;

/// Which children a supervisor restarts when one ends (see the crate docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Restart only the child that ended (OTP's `one_for_one`).
    OneForOne,
    /// Stop all the others and restart them all (OTP's `one_for_all`).
    OneForAll,
    /// Stop and restart the children started after it (OTP's `rest_for_one`).
    RestForOne,
}

/// When a child is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal end: anything but exit code 0.
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shutdown {
    /// Killed at once (SIGKILL).
    BrutalKill,
    /// Asked to end (SIGTERM, running its `on_shutdown` hooks), killed after this long.
    Timeout(Duration),
    /// Asked to end, and waited for as long as it takes.
    Infinity,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Start {
    Process(ProcessFn),
    Supervisor(Box<Supervisor>),
}

/// A child specification: a name, what to run, and how to restart and stop it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Child {
    pub(crate) name: String,
    pub(crate) resources: Resources,
    pub(crate) start: Start,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) register: Option<String>,
}

impl Child {
    /// A child process running `f(supervisor_pid)`: `Permanent`, stopped with a
    /// 5 s timeout.
    ///
    /// # Panics
    /// If `f` cannot be serialised.
    pub fn new<F>(name: &str, resources: Resources, f: F) -> Child
    where
        F: serde_closure::traits::FnOnce<(Pid,), Output = ()> + Serialize + DeserializeOwned + 'static,
    {
        Child {
            name: name.to_owned(),
            resources,
            start: Start::Process(ProcessFn::new(f)),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            register: None,
        }
    }

    /// A child supervisor, its own process and subtree: `Permanent`, stopped with
    /// `Shutdown::Infinity` (it stops its own children first).
    pub fn supervisor(name: &str, supervisor: Supervisor) -> Child {
        Child {
            name: name.to_owned(),
            resources: Resources::default(),
            start: Start::Supervisor(Box::new(supervisor)),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            register: None,
        }
    }

    /// Sets when the child is restarted.
    pub fn restart(mut self, restart: Restart) -> Child {
        self.restart = restart;
        self
    }

    /// Sets how the child is stopped.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Child {
        self.shutdown = shutdown;
        self
    }

    /// Registers each incarnation under `name` from its start (see
    /// [`whereis`](constellation::whereis)).
    pub fn register(mut self, name: &str) -> Child {
        self.register = Some(name.to_owned());
        self
    }

    /// Sets the child's resources.
    pub fn resources(mut self, resources: Resources) -> Child {
        self.resources = resources;
        self
    }

    /// The child's name in its supervisor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts an incarnation, bound and linked to the calling supervisor.
    pub(crate) fn start(&self) -> Result<Pid, constellation::SpawnError> {
        let options =
            SpawnOptions { link: true, bind: true, register: self.register.clone(), ..SpawnOptions::default() };
        match &self.start {
            Start::Process(f) => f.spawn(self.resources, options).block(),
            Start::Supervisor(supervisor) => {
                let supervisor = supervisor.clone();
                let run = FnOnce!(move |_parent: Pid| supervisor.run());
                ProcessFn::new(run).spawn(self.resources, options).block()
            }
        }
    }
}

/// A supervisor specification: a strategy, a restart intensity and children.
///
/// Run it in the current process with [`run`](Supervisor::run), or in a new one
/// with [`spawn`](Supervisor::spawn).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Supervisor {
    pub(crate) strategy: Strategy,
    pub(crate) max_restarts: u32,
    pub(crate) period: Duration,
    pub(crate) children: Vec<Child>,
    /// For a dynamic supervisor: the spec each `start_child` instantiates.
    pub(crate) template: Option<Child>,
    /// The name the supervisor registers its own process under.
    pub(crate) name: Option<String>,
}

impl Supervisor {
    /// A supervisor with `strategy`, no children, and OTP's default intensity of
    /// 1 restart in 5 seconds.
    pub fn new(strategy: Strategy) -> Supervisor {
        Supervisor {
            strategy,
            max_restarts: 1,
            period: Duration::from_secs(5),
            children: Vec::new(),
            template: None,
            name: None,
        }
    }

    /// Allows at most `max_restarts` restarts within any `period`; one more makes
    /// the supervisor stop everything and fail.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Supervisor {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// Registers the supervisor's process under `name` when it starts, so
    /// [`SupervisorHandle::registered`](crate::SupervisorHandle::registered) finds it.
    pub fn register(mut self, name: &str) -> Supervisor {
        self.name = Some(name.to_owned());
        self
    }

    /// Adds a child, started after those added before it.
    ///
    /// # Panics
    /// If a child of the same name was added already.
    pub fn child(mut self, child: Child) -> Supervisor {
        assert!(
            self.children.iter().all(|c| c.name != child.name),
            "constellation-supervisor: two children named {:?}",
            child.name
        );
        self.children.push(child);
        self
    }

    /// Runs the supervisor in this process until it shuts down normally: when it
    /// is asked to (`shutdown` of its process), or when no child is running and
    /// none will be restarted.
    ///
    /// # Panics
    /// When a child fails to start or the restart intensity is exceeded, after
    /// stopping every child: the process ends with that failure, for its own
    /// supervisor to handle.
    pub fn run(self) {
        crate::run::run(self)
    }

    /// Runs the supervisor in a new process with `resources`.
    pub fn spawn(self, resources: Resources) -> Spawn {
        let supervisor = self;
        let run = FnOnce!(move |_parent: Pid| supervisor.run());
        ProcessFn::new(run).spawn(resources, SpawnOptions::default())
    }
}

/// A supervisor whose children, all from one template, are started at run time
/// with [`SupervisorHandle::start_child`](crate::SupervisorHandle::start_child),
/// from any process (OTP's `simple_one_for_one`).
///
/// Children are named after the template with a sequence number (`worker#1`),
/// restarted one for one as the template's [`Restart`] says, and forgotten once
/// they end for good. A dynamic supervisor runs until it is shut down.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DynamicSupervisor {
    supervisor: Supervisor,
}

impl DynamicSupervisor {
    /// A dynamic supervisor of children made from `template`, with OTP's default
    /// intensity of 1 restart in 5 seconds.
    pub fn new(template: Child) -> DynamicSupervisor {
        let mut supervisor = Supervisor::new(Strategy::OneForOne);
        supervisor.template = Some(template);
        DynamicSupervisor { supervisor }
    }

    /// Allows at most `max_restarts` restarts within any `period`.
    pub fn intensity(self, max_restarts: u32, period: Duration) -> DynamicSupervisor {
        DynamicSupervisor { supervisor: self.supervisor.intensity(max_restarts, period) }
    }

    /// Registers the supervisor's process under `name` when it starts.
    pub fn register(self, name: &str) -> DynamicSupervisor {
        DynamicSupervisor { supervisor: self.supervisor.register(name) }
    }

    /// Runs the dynamic supervisor in this process until it is shut down.
    ///
    /// # Panics
    /// When the restart intensity is exceeded, after stopping every child.
    pub fn run(self) {
        self.supervisor.run()
    }

    /// Runs the dynamic supervisor in a new process with `resources`.
    pub fn spawn(self, resources: Resources) -> Spawn {
        self.supervisor.spawn(resources)
    }
}
