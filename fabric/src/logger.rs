//! The daemon's log: one line per event on stderr, filtered by `CONSTELLATION_LOG`
//! (`error`, `warn`, `info` (the default), `debug` or `trace`).

use std::{io::Write, time::Instant};

struct Logger {
    level: log::LevelFilter,
    started: Instant,
    role: String,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let seconds = self.started.elapsed().as_secs_f64();
            let line = format!("[{seconds:9.3} {} {}] {}\n", record.level(), self.role, record.args());
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger; `role` prefixes every line (such as `node 10.0.0.2:12360`).
pub fn init(role: String) {
    let level = match std::env::var("CONSTELLATION_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        "off" => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    if log::set_boxed_logger(Box::new(Logger { level, started: Instant::now(), role })).is_ok() {
        log::set_max_level(level);
    }
}
