//! The command line.

use std::ffi::OsString;
use std::path::PathBuf;

pub const HELP: &str = "\
mica-vmm: Mica's virtual machine monitor. One process runs one KVM guest.

USAGE:
    mica-vmm --config <vm.json> [--api-sock <path>] [--id <id>] [--log-level <level>]
    mica-vmm --help | --version

OPTIONS:
    --config <path>      The VM's configuration (JSON, below). Required.
    --api-sock <path>    Serve the control socket (HTTP/1.1 + JSON) on this Unix
                         socket path. A stale socket file left by a killed VMM is
                         replaced; a live one is an error. Removed at exit.
    --id <id>            A name for this VMM in logs and in GET /vm.
    --log-level <level>  error, warn, info (default), debug or trace; or any
                         tracing filter such as `mica_vmm=debug`. RUST_LOG works too.
                         Logs go to stderr.

CONFIGURATION (vm.json; unknown fields are errors):
    vcpus         number, 1-32                              required
    memory_mib    number, at least 32                       required
    kernel        path to a vmlinux (ELF) or a bzImage      required
    initrd        path to an initramfs                      optional
    cmdline       kernel command line                       optional
    disks         [{\"id\", \"path\", \"read_only\"}]             optional
                  virtio-blk devices vda, vdb, ... in order; id is the disk
                  serial (unique, at most 20 bytes); path a raw image
    nics          [{\"id\", \"tap\", \"mac\"}]                    optional
                  virtio-net devices on host tap devices; id defaults to netN
    serial        {\"log\", \"log_max_bytes\", \"socket\"}        optional
                  COM1 output appended to the log file (rotated to <log>.1 past
                  log_max_bytes, default 8 MiB) and sent to every client of the
                  Unix socket, whose input goes to the guest
    display       {\"width\", \"height\", \"vnc_socket\", \"vnc_tcp\"}  optional
                  a 32 bpp linear framebuffer (default 1024x768) the guest kernel
                  draws tty1 on, and a VNC (RFB 3.8, no authentication) server
                  on it: on the Unix socket and/or a loopback TCP address
                  (\"127.0.0.1:5901\"); without it, no framebuffer and no cost
    rng           offer virtio-rng (default true)
    boot_timer    offer the boot timer (default true): the VMM appends
                  mica.boot_timer=<address> to the command line; the guest's
                  first write there marks \"userspace reached\"

GUEST PLATFORM:
    COM1 16550 (port 0x3f8, IRQ 4), i8042 (ports 0x60/0x64, IRQ 1; reset, Ctrl-Alt-Del),
    ACPI hardware-reduced: RSDP/XSDT/FADT/MADT/DSDT, sleep control at port 0x3c0,
    PCI configuration ports 0xcf8-0xcff with a host bridge only,
    GED power button; virtio-mmio devices described in the DSDT (LNRO0005),
    in-kernel IOAPIC/LAPIC/PIT; with a display, an EFI-type framebuffer at
    0xd0000000 (boot_params.screen_info). A guest reset that follows
    Ctrl-Alt-Del typed on the VNC console is a reboot (boots again).

CONTROL SOCKET:
    GET  /vm                         state, config, uptime, boot time
    PUT  /vm/state    {\"state\": \"paused\"|\"running\"}
    POST /vm/shutdown {\"timeout_s\": N}  ACPI power button; stop after N s (default 30)
    POST /vm/stop                    stop at once
    POST /vm/reboot   {\"hard\": bool}    Ctrl-Alt-Del, or reset at once; boots again
    GET  /metrics                    counters
    Errors are {\"error\": \"...\"}; 409 when the VM's state does not allow the action.

EXIT CODES:
    0  guest powered off, or stopped (socket, SIGTERM, SIGINT)
    1  error (configuration, KVM, internal)
    2  command-line error
    3  the guest asked for a reset nobody requested (e.g. `reboot` in the guest)
    4  a graceful shutdown timed out and the VM was stopped
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    Version,
    Run(RunOptions),
}

/// Options of a VMM run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    pub config: PathBuf,
    pub api_sock: Option<PathBuf>,
    pub id: Option<String>,
    pub log_level: Option<String>,
}

/// A command-line error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("{0} given twice")]
    Repeated(&'static str),
    #[error("--config <path> is required")]
    NoConfig,
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    let mut args = args.into_iter();
    let mut config = None;
    let mut api_sock = None;
    let mut id = None;
    let mut log_level = None;
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned()))?;
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &'static str| -> Result<String, CliError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => args
                    .next()
                    .ok_or(CliError::MissingValue(flag))?
                    .into_string()
                    .map_err(|a| CliError::NotUtf8(a.to_string_lossy().into_owned())),
            }
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" => set_once(&mut config, "--config", PathBuf::from(value("--config")?))?,
            "--api-sock" => set_once(
                &mut api_sock,
                "--api-sock",
                PathBuf::from(value("--api-sock")?),
            )?,
            "--id" => set_once(&mut id, "--id", value("--id")?)?,
            "--log-level" => set_once(&mut log_level, "--log-level", value("--log-level")?)?,
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    Ok(Command::Run(RunOptions {
        config: config.ok_or(CliError::NoConfig)?,
        api_sock,
        id,
        log_level,
    }))
}

fn set_once<T>(slot: &mut Option<T>, flag: &'static str, value: T) -> Result<(), CliError> {
    if slot.is_some() {
        return Err(CliError::Repeated(flag));
    }
    *slot = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn parses_run_options_in_both_forms() {
        assert_eq!(
            p(&[
                "--config",
                "vm.json",
                "--api-sock=/run/a.sock",
                "--id",
                "vm1"
            ])
            .unwrap(),
            Command::Run(RunOptions {
                config: "vm.json".into(),
                api_sock: Some("/run/a.sock".into()),
                id: Some("vm1".into()),
                log_level: None,
            })
        );
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(p(&["--config", "x", "--help"]).unwrap(), Command::Help);
        assert_eq!(p(&["-V"]).unwrap(), Command::Version);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(p(&[]).unwrap_err(), CliError::NoConfig);
        assert_eq!(
            p(&["--config"]).unwrap_err(),
            CliError::MissingValue("--config")
        );
        assert_eq!(
            p(&["--config", "a", "--config", "b"]).unwrap_err(),
            CliError::Repeated("--config")
        );
        assert_eq!(
            p(&["--bogus"]).unwrap_err(),
            CliError::Unknown("--bogus".into())
        );
    }
}
