//! Logs: `tracing` to stderr, with the time since start and the level.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// Sets up logging. `level` is a level (`info`) or a list of targets with
/// levels (`mica_vmm=debug,warn`); without it, `RUST_LOG` decides, then `info`.
pub fn init(level: Option<&str>) {
    let spec = level
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("mica-vmm: log level {spec:?} is not valid ({e}); using info");
        Targets::new().with_default(LevelFilter::INFO)
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .try_init();
}
