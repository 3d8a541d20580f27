//! `mica-vmm`: parse the command line, then hand over to the library.

use std::time::Instant;

use mica_vmm::cli::{self, Command};

fn main() {
    // The earliest instant of the process that Rust code sees: uptime and boot
    // times are measured from here.
    let started = Instant::now();
    let code = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            0
        }
        Ok(Command::Version) => {
            println!("mica-vmm {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Ok(Command::Run(opts)) => mica_vmm::run(opts, started),
        Err(e) => {
            eprintln!("mica-vmm: {e}\nTry `mica-vmm --help`.");
            mica_vmm_api::exit_code::USAGE
        }
    };
    std::process::exit(code);
}
