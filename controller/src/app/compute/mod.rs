//! The compute API's app layer (Nova v2.1): servers and their actions,
//! flavors, key pairs, server groups, quotas, hosts (services, hypervisors,
//! aggregates, availability zones).

pub mod actions;
pub mod common;
pub mod consoles;
pub mod flavors;
pub mod hosts;
pub mod keypairs;
pub mod lifecycle;
pub mod passwords;
pub mod quotas;
pub mod server_groups;
pub mod servers;
pub mod states;
