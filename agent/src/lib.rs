//! `mica-agent`: Mica's compute host (Nova's `nova-compute`). One runs on
//! each compute host, as root; it is the only thing that starts `mica-vmm`
//! processes there, and it talks to the controller over RPC only.
//!
//! ```text
//!   conductor ◄──── RPC (mica-rpc: amqp:// or memory://) ────► service (this crate's [`service`])
//!                                                                  │ Backend trait
//!                                          ┌───────────────────────┴──────────────┐
//!                                   [`host::VmmBackend`]                  [`sim::SimulatedBackend`]
//!        image cache · disks · bridges/taps/DHCP/nftables · VMM runner     pretend instances
//! ```
//!
//! - [`service`]: registration, heartbeats, inventory reports, the compute
//!   handlers, power-state sync — the same for every backend.
//! - [`host`]: the real backend, built from [`images`], [`disks`],
//!   [`network`], [`runner`] (one actor per VMM) and [`store`] (what survives
//!   an agent restart), with [`resources`] for placement.
//! - [`sim`]: the simulated backend, and [`sim::spawn_fleet`] to run many
//!   agents in one process.
//! - [`config`]: the TOML file and its overrides.
//! - [`console`]: the console channel the console proxy reaches VNC and
//!   serial consoles through.

pub mod backend;
pub mod config;
pub mod console;
pub mod disks;
pub mod host;
pub mod images;
pub mod locks;
pub mod network;
pub mod programs;
pub mod resources;
pub mod runner;
pub mod service;
pub mod sim;
pub mod store;
pub mod sys;
pub mod testing;

pub use backend::{Backend, Event};
pub use config::Config;
pub use host::VmmBackend;
pub use service::{Agent, AgentError, AgentOptions, ConsoleOptions};
pub use sim::{SimulatedBackend, spawn_fleet};
