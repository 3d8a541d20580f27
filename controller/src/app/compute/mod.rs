//! The compute API's app layer (Nova v2.1): servers and their actions,
//! flavors, key pairs, server groups, quotas, hosts (services, hypervisors,
//! aggregates, availability zones).

pub mod lifecycle;
pub mod states;
