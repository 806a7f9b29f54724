//! One deployment's bridge: this executable, started by the bridge daemon. It
//! probes the binary for its top process's `Resources`, then runs the core's
//! bridge with the master as its scheduler, relaying the job's output to `cargo
//! deploy` and its Ctrl-C (or disconnection) to the job as a stop.

use crate::{
    deploy::BridgeSettings,
    wire::{read_frame, write_frame, FromBridge, ToBridge, MAX_FRAME},
};
use constellation::{cluster, Resources};
use parking_lot::Mutex;
use std::{
    fs::File,
    io::{self, Read, Write},
    net::TcpStream,
    os::{
        fd::{FromRawFd, RawFd},
        unix::net::UnixStream,
    },
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

/// Runs the bridge of the deployment whose fds `fds` names; never returns.
pub fn run(fds: &str) -> ! {
    // If the master dies, the scheduler connection closes and the job stops. (No
    // parent-death signal: it would fire when the daemon's thread that started
    // this process ends.)
    let fds: Vec<RawFd> = fds.split(',').filter_map(|fd| fd.parse().ok()).collect();
    let [deploy, scheduler, settings] = fds[..] else {
        eprintln!("constellation: {} is malformed", crate::deploy::BRIDGE_VAR);
        std::process::exit(1)
    };
    // SAFETY: the bridge daemon passed these fds to this process alone.
    let (deploy, scheduler, mut settings) =
        unsafe { (TcpStream::from_raw_fd(deploy), UnixStream::from_raw_fd(scheduler), File::from_raw_fd(settings)) };
    let mut bytes = Vec::new();
    let settings: BridgeSettings =
        match settings.read_to_end(&mut bytes).and_then(|_| cluster::decode::<BridgeSettings>(&bytes)) {
            Ok(settings) => settings,
            Err(error) => {
                eprintln!("constellation: reading the deployment's settings: {error}");
                std::process::exit(1)
            }
        };
    let deploy = Arc::new(Mutex::new(deploy));
    let resources = match probe(&settings) {
        Ok(resources) => resources,
        Err(message) => {
            let _ = write_frame(&mut *deploy.lock(), &FromBridge::Error { message });
            std::process::exit(1)
        }
    };
    let (output, relay) = match relay_output(&deploy) {
        Ok(relay) => relay,
        Err(error) => {
            let message = format!("redirecting the job's output: {error}");
            let _ = write_frame(&mut *deploy.lock(), &FromBridge::Error { message });
            std::process::exit(1)
        }
    };
    let (stdin_ours, stdin_theirs) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(error) => {
            let message = format!("making the job's input: {error}");
            let _ = write_frame(&mut *deploy.lock(), &FromBridge::Error { message });
            std::process::exit(1)
        }
    };
    watch_client(&deploy, stdin_ours);
    let mut args = vec![settings.name.into_bytes()];
    args.extend(settings.args.into_iter().map(String::into_bytes));
    let vars = settings.vars.into_iter().map(|(k, v)| (k.into_bytes(), v.into_bytes())).collect();
    let code = cluster::run_bridge(cluster::Deployment {
        scheduler,
        bind: settings.bind,
        json: settings.json,
        args,
        vars,
        resources,
        stdin: Some(stdin_theirs),
        heartbeats: settings.heartbeats,
        output,
    });
    // The bridge, and with it the queue's sender, is gone: the relay ends once
    // it has written everything.
    let _ = relay.join();
    let _ = write_frame(&mut *deploy.lock(), &FromBridge::Exit { code });
    std::process::exit(code)
}

/// Runs the binary once to learn the `Resources` its `init` asks for.
fn probe(settings: &BridgeSettings) -> Result<Resources, String> {
    let mut child = Command::new(&settings.binary)
        .args(&settings.args)
        .env_clear()
        .envs(settings.vars.iter().map(|(k, v)| (k, v)))
        .env(cluster::PROBE_VAR, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the binary cannot be run on the master: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= settings.probe_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => return Err(format!("waiting for the binary: {error}")),
        }
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    if let Some(resources) = cluster::parse_probe_answer(&stdout) {
        return Ok(resources);
    }
    let advice = "a deployed program must call constellation::init(...) first thing in main";
    match status {
        None => Err(format!(
            "the binary did not call constellation::init within {:.0} s: {advice}",
            settings.probe_timeout.as_secs_f64()
        )),
        Some(status) => {
            let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(2000)..]).trim().to_string();
            let said = if tail.is_empty() { String::new() } else { format!("; it said:\n{tail}") };
            Err(format!("the binary ended ({status}) without calling constellation::init: {advice}{said}"))
        }
    }
}

/// How much output waits for a slow `cargo deploy` (in chunks of at most 64 KiB)
/// before the bridge itself waits: it must keep exchanging heartbeats with its
/// monitors while a terminal is paused.
const OUTPUT_QUEUE: usize = 1024;

/// The job's output, in the order the bridge prints it, relayed to `cargo
/// deploy` through a bounded queue by a thread of its own. Returns where the
/// bridge writes and the thread, which ends once that is dropped.
fn relay_output(deploy: &Arc<Mutex<TcpStream>>) -> io::Result<(cluster::OutputSink, std::thread::JoinHandle<()>)> {
    let (queue, queued) = std::sync::mpsc::sync_channel::<FromBridge>(OUTPUT_QUEUE);
    let deploy = deploy.clone();
    let relay = std::thread::Builder::new().name("relay".into()).spawn(move || {
        for output in queued {
            if write_frame(&mut *deploy.lock(), &output).is_err() {
                break;
            }
        }
    })?;
    let output = move |fd: u8, data: &[u8]| {
        // If cargo deploy is gone, the job is being stopped; the output is dropped.
        let _ = queue.send(FromBridge::Output { fd, data: data.to_vec() });
    };
    Ok((Box::new(output), relay))
}

/// Passes `cargo deploy`'s input on to the job (through `stdin`), and stops the
/// job when it asks (Ctrl-C: as SIGINT does locally) or disconnects (as SIGTERM).
fn watch_client(deploy: &Arc<Mutex<TcpStream>>, stdin: UnixStream) {
    let Ok(mut reader) = deploy.lock().try_clone() else { return };
    let _ = std::thread::Builder::new().name("client".into()).spawn(move || {
        let mut stdin = Some(stdin);
        let signal = loop {
            match read_frame::<ToBridge>(&mut reader, MAX_FRAME) {
                Ok(ToBridge::Stop) => break libc::SIGINT,
                Ok(ToBridge::Stdin { data }) if data.is_empty() => stdin = None,
                Ok(ToBridge::Stdin { data }) => {
                    if let Some(pipe) = &mut stdin {
                        if pipe.write_all(&data).is_err() {
                            stdin = None;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => break libc::SIGTERM,
            }
        };
        // SAFETY: kill takes plain integers; the bridge handles both signals.
        unsafe { libc::kill(libc::getpid(), signal) };
    });
}
