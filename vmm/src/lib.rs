//! `mica-vmm`, Mica's virtual machine monitor: one process runs one KVM guest.
//!
//! Config → build → run:
//! [`config`] loads and checks the VM's JSON configuration, [`builder`] turns it
//! into a running VM, and [`vmm`] (the controller) runs it to its end, taking
//! [`api`] actions from the control socket.
//!
//! Threads:
//! - main: the controller ([`vmm`]); the only thread that changes the VM's state;
//! - one per vCPU ([`vstate::vcpu`]): `KVM_RUN` and port I/O / MMIO dispatch;
//! - devices ([`event_loop`]): one event-manager loop for every device's I/O;
//! - api ([`api::server`]): the control socket;
//! - vnc ([`vnc`]), with a display: the RFB server on the framebuffer;
//! - signals: turns SIGTERM/SIGINT/SIGHUP into controller events.
//!
//! The guest platform (memory map, ACPI, devices) is described in
//! [`arch::x86_64`].

pub mod api;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod devices;
pub mod event_loop;
pub mod logger;
pub mod metrics;
pub mod vmm;
pub mod vnc;
pub mod vstate;

use std::time::Instant;

use mica_vmm_api::exit_code;

/// Runs a VM to its end; returns the process exit code.
pub fn run(opts: cli::RunOptions, started: Instant) -> i32 {
    logger::init(opts.log_level.as_deref());
    let config = match config::load(&opts.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mica-vmm: invalid configuration: {e}");
            return exit_code::ERROR;
        }
    };
    let span = tracing::info_span!("vmm", id = opts.id.as_deref().unwrap_or("-"));
    let _entered = span.enter();
    match vmm::launch(config, &opts, started) {
        Ok(reason) => reason.code(),
        Err(e) => {
            tracing::error!("{}", error_chain(&e));
            eprintln!("mica-vmm: {}", error_chain(&e));
            exit_code::ERROR
        }
    }
}

/// An error and its sources, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
