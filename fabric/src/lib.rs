//! The constellation cluster daemon (binary `constellation`) and what `cargo
//! deploy` shares with it.
//!
//! `constellation ADDR` runs a node; `constellation ADDR nodes.toml` runs the
//! master, which also runs the bridge daemon `cargo deploy` connects to. See the
//! guide's "Running on a cluster" chapter for a walkthrough.
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
mod os;
mod reaper;
pub mod slurm;
pub mod wire;
