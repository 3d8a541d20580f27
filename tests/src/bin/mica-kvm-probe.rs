//! Prints what this machine's `/dev/kvm` offers, one `key=value` per line:
//! `api_version`, a few capabilities and the vCPU limits. The nested-host test
//! runs it inside L1 to show that L1's KVM is real.

use kvm_ioctls::{Cap, Kvm};

fn main() {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("mica-kvm-probe: cannot open /dev/kvm: {e}");
            std::process::exit(1);
        }
    };
    println!("api_version={}", kvm.get_api_version());
    println!("max_vcpus={}", kvm.get_max_vcpus());
    println!("nr_vcpus={}", kvm.get_nr_vcpus());
    for (name, cap) in [
        ("irqchip", Cap::Irqchip),
        ("user_memory", Cap::UserMemory),
        ("ioeventfd", Cap::Ioeventfd),
        ("irqfd", Cap::Irqfd),
        ("tsc_deadline_timer", Cap::TscDeadlineTimer),
        ("ext_cpuid", Cap::ExtCpuid),
    ] {
        println!("cap_{name}={}", kvm.check_extension(cap));
    }
    match kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES) {
        Ok(cpuid) => println!("supported_cpuid_entries={}", cpuid.as_slice().len()),
        Err(e) => println!("supported_cpuid_entries=error:{e}"),
    }
}
