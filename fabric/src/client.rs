//! The deploying side of a bridge daemon connection, as `cargo deploy` (and the
//! cluster benchmark) use it: connect, authenticate, send the binary, then read
//! the job's output until its exit code.

use crate::{
    auth::{self, Role},
    wire::{hash_hex, read_frame, write_frame, FromBridge, ToBridge, CHUNK, MAX_FRAME},
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

/// What to run on the cluster.
#[derive(Debug)]
pub struct Deploy<'a> {
    /// The bridge daemon's address (IP:PORT or HOST:PORT).
    pub bridge: &'a str,
    /// The cluster's cookie (empty for none).
    pub cookie: &'a [u8],
    /// The executable.
    pub binary: &'a Path,
    /// The arguments after the program's name.
    pub args: Vec<String>,
    /// Environment variables for the job's processes.
    pub vars: Vec<(String, String)>,
    /// JSON lines instead of the human format.
    pub json: bool,
}

/// A deployed job whose output is still to be read.
#[derive(Debug)]
pub struct Deployed {
    stream: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
}

impl Deploy<'_> {
    /// Connects to the bridge daemon and sends the binary.
    pub fn start(self) -> Result<Deployed, String> {
        let bytes = std::fs::read(self.binary).map_err(|e| format!("cannot read {}: {e}", self.binary.display()))?;
        let name = self.binary.file_name().map_or_else(|| "program".into(), |n| n.to_string_lossy().into_owned());
        let mut stream = connect(self.bridge)?;
        auth::connect(&mut stream, self.cookie, Role::Deploy)
            .map_err(|e| format!("the bridge at {}: {e}", self.bridge))?;
        let _ = stream.set_nodelay(true);
        let lost = |e: std::io::Error| format!("sending the binary to the bridge at {}: {e}", self.bridge);
        let hash = hash_hex(&bytes);
        let deploy = ToBridge::Deploy {
            name,
            args: self.args,
            vars: self.vars,
            json: self.json,
            size: bytes.len() as u64,
            hash,
        };
        write_frame(&mut stream, &deploy).map_err(lost)?;
        for chunk in bytes.chunks(CHUNK) {
            write_frame(&mut stream, &ToBridge::Chunk { len: chunk.len() as u32 }).map_err(lost)?;
            stream.write_all(chunk).map_err(lost)?;
        }
        let writer = Arc::new(Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
        Ok(Deployed { stream, writer })
    }
}

impl Deployed {
    /// Sends Stop (Ctrl-C) or input to the job from any thread.
    pub fn sender(&self) -> impl Fn(&ToBridge) -> bool + Send + 'static {
        let writer = self.writer.clone();
        move |message| writer.lock().map(|mut w| write_frame(&mut *w, message).is_ok()).unwrap_or(false)
    }

    /// Sends this process's stdin to the job's top process, then its end, from a
    /// thread of its own.
    pub fn forward_stdin(&self) {
        let send = self.sender();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                let data = match stdin.read(&mut buf) {
                    Ok(n) => buf[..n].to_vec(),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => Vec::new(),
                };
                let end = data.is_empty();
                if !send(&ToBridge::Stdin { data }) || end {
                    return;
                }
            }
        });
    }

    /// Stops the job (as Ctrl-C does on one machine) whenever this process gets
    /// one of `signals`.
    pub fn stop_on(&self, signals: &[i32]) -> Result<(), String> {
        let send = self.sender();
        let mut signals = signal_hook::iterator::Signals::new(signals).map_err(|e| format!("handling Ctrl-C: {e}"))?;
        std::thread::spawn(move || {
            for _ in signals.forever() {
                send(&ToBridge::Stop);
            }
        });
        Ok(())
    }

    /// Reads the job's output (given to `output` with its fd, 1 or 2) until it
    /// ends; returns its exit code.
    pub fn wait(mut self, mut output: impl FnMut(u8, &[u8])) -> Result<i32, String> {
        loop {
            match read_frame::<FromBridge>(&mut self.stream, MAX_FRAME) {
                Ok(FromBridge::Output { fd, data }) => output(fd, &data),
                Ok(FromBridge::Exit { code }) => return Ok(code),
                Ok(FromBridge::Error { message }) => return Err(message),
                Err(error) => {
                    return Err(format!("the connection to the bridge was lost before the job ended: {error}"))
                }
            }
        }
    }
}

/// Writes a job's output where `cargo run` would: fd 1 to stdout, 2 to stderr.
pub fn print_output(fd: u8, data: &[u8]) {
    // Nowhere to report a closed terminal; the job goes on.
    let _ = match fd {
        1 => std::io::stdout().lock().write_all(data).and_then(|()| std::io::stdout().lock().flush()),
        _ => std::io::stderr().lock().write_all(data),
    };
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not an address of a bridge (IP:PORT or HOST:PORT): {e}"))?
        .collect();
    let mut last = None;
    for candidate in addrs {
        match TcpStream::connect_timeout(&candidate, Duration::from_secs(10)) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = Some(error),
        }
    }
    Err(format!(
        "cannot reach the bridge at {addr}: {} (is `constellation ADDR nodes.toml` running, with bridge_bind = \"{addr}\"?)",
        last.map_or_else(|| "no address".to_string(), |e| e.to_string())
    ))
}
