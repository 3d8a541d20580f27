//! Logs: `tracing` to stderr, with the time since start and the level.

use tracing_subscriber::EnvFilter;

/// Sets up logging. `level` is a level or a tracing filter; without it,
/// `RUST_LOG` decides, then `info`.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).unwrap_or_else(|e| {
            eprintln!("mica-vmm: --log-level {l:?} is not a valid filter ({e}); using info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .try_init();
}
