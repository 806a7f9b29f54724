//! The constellation cluster daemon (binary `constellation`) and what `cargo
//! deploy` shares with it.
//!
//! A cluster is a daemon per machine. Nodes run `constellation ADDR`; one
//! machine runs `constellation ADDR nodes.toml`, the master, which places every
//! process and runs the bridge daemon that `cargo deploy` sends programs to:
//!
//! ```text
//! constellation --cookie-file ~/.constellation-cookie 127.0.0.2:12360 &
//! constellation --cookie-file ~/.constellation-cookie 127.0.0.3:12360 &
//! constellation --cookie-file ~/.constellation-cookie 127.0.0.1:12360 nodes.toml &
//! cargo deploy --cookie-file ~/.constellation-cookie --example fibonacci 127.0.0.1:12361
//! ```
//!
//! Inside a Slurm allocation, `constellation slurm BINARY` does all of that for
//! one job; in a Kubernetes StatefulSet, `constellation k8s` finds the node list
//! itself. The guide's "Running on a cluster" chapter walks through each. This
//! library is what the two binaries are made of:
//!
//! - [`node`]: the node role (binaries, processes, the lease).
//! - [`master`]: placement, node heartbeats and loss.
//! - [`deploy`]: the bridge daemon, and [`bridge`]: one deployment's bridge.
//! - [`client`]: the deploying side, for `cargo deploy`.
//! - [`k8s`]: the node list of a Kubernetes StatefulSet; [`slurm`]: a cluster
//!   inside a Slurm allocation.
//! - [`auth`], [`wire`], [`config`]: cookies, frames and messages, `nodes.toml`.

pub mod auth;
pub mod bridge;
pub mod client;
pub mod config;
pub mod deploy;
pub mod k8s;
pub mod logger;
pub mod master;
pub mod node;
mod node_link;
mod os;
mod reaper;
pub mod slurm;
pub mod wire;
