//! CPUID: KVM's supported set, with the topology and identity of each vCPU filled
//! in. Every vCPU is one core of one socket (no SMT), its APIC id its index.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

/// CPUID.1:ECX bit 24: the LAPIC timer's TSC-deadline mode (KVM emulates it with
/// an in-kernel LAPIC; Linux then needs no PIT to calibrate the LAPIC timer).
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: the package has several logical processors.
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaves 0xb and 0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of an APIC id that number the cores of a package holding `count`.
fn core_id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// The CPUID of vCPU `index` out of `count`, from KVM's supported set.
pub fn vcpu_cpuid(supported: &CpuId, index: u32, count: u32) -> CpuId {
    let mut cpuid = supported.clone();
    let apic_id = index;
    let shift = core_id_bits(count);
    let mut has_hypervisor_leaf = false;
    for e in cpuid.as_mut_slice() {
        patch_entry(e, apic_id, count, shift);
        has_hypervisor_leaf |= e.function == LEAF_HYPERVISOR;
    }
    if !has_hypervisor_leaf {
        // KVM normally reports its signature leaf; if it doesn't, add it so the
        // guest knows it runs on KVM (kvm-clock, PV EOI, ...).
        let sig = b"KVMKVMKVM\0\0\0";
        let word = |i: usize| u32::from_le_bytes([sig[i], sig[i + 1], sig[i + 2], sig[i + 3]]);
        let _ = cpuid.push(kvm_cpuid_entry2 {
            function: LEAF_HYPERVISOR,
            eax: LEAF_HYPERVISOR + 1,
            ebx: word(0),
            ecx: word(4),
            edx: word(8),
            ..Default::default()
        });
    }
    cpuid
}

fn patch_entry(e: &mut kvm_cpuid_entry2, apic_id: u32, count: u32, shift: u32) {
    match e.function {
        LEAF_FEATURES => {
            // EBX: [31:24] initial APIC id, [23:16] logical processors per package,
            // [15:8] CLFLUSH line size (kept), [7:0] brand index (kept).
            e.ebx = (apic_id << 24) | (count.min(255) << 16) | (e.ebx & 0xffff);
            e.ecx |= ECX_HYPERVISOR | ECX_TSC_DEADLINE;
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS
            // Intel deterministic cache parameters: [31:26] cores per package - 1,
            // [25:14] logical processors sharing this cache - 1.
            if e.eax & 0x1f != 0 => {
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((count - 1) & 0x3f) << 26);
            }
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = shift;
                    e.ebx = count;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_AMD_SIZES => {
            // ECX: [15:12] APIC id bits for cores, [7:0] cores per package - 1.
            e.ecx = (e.ecx & !0xf0ff) | (shift << 12) | ((count - 1) & 0xff);
        }
        LEAF_AMD_TOPOLOGY => {
            // EAX extended APIC id; EBX [15:8] threads per core - 1, [7:0] core id;
            // ECX [10:8] nodes per processor - 1, [7:0] node id.
            e.eax = apic_id;
            e.ebx = apic_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0800,
            eax: if function == LEAF_CACHE_PARAMS {
                0x63
            } else {
                0
            },
            ..Default::default()
        }
    }

    fn find(c: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_package_size() {
        let supported = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_CACHE_PARAMS, 3),
            entry(LEAF_EXT_TOPOLOGY, 0),
            entry(LEAF_EXT_TOPOLOGY, 1),
            entry(LEAF_AMD_SIZES, 0),
        ])
        .unwrap();
        let c = vcpu_cpuid(&supported, 3, 4);
        let f = find(&c, LEAF_FEATURES, 0);
        assert_eq!(f.ebx >> 24, 3);
        assert_eq!((f.ebx >> 16) & 0xff, 4);
        assert_eq!(f.ebx & 0xff00, 0x0800, "CLFLUSH size kept");
        assert_ne!(f.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(f.edx & EDX_HTT, 0);
        let core = find(&c, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        assert_eq!(find(&c, LEAF_AMD_SIZES, 0).ecx & 0xff, 3);
        assert_eq!(find(&c, LEAF_CACHE_PARAMS, 3).eax >> 26, 3);
        // The hypervisor leaf is added when KVM did not list it.
        assert_eq!(find(&c, LEAF_HYPERVISOR, 0).ebx.to_le_bytes(), *b"KVMK");
    }

    #[test]
    fn core_id_bits_round_up() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(core_id_bits), [0, 1, 2, 2, 3, 5]);
    }
}
