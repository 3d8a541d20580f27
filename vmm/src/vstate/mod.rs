//! KVM state: the VM and its memory, the vCPUs and their threads.

pub mod memory;
pub mod vcpu;
pub mod vm;
