//! The resource tracker: what this host offers placement. Inventories of
//! `VCPU`, `MEMORY_MB` and `DISK_GB` from the real machine (online CPUs,
//! `MemTotal`, the size of the file system holding the state folder), minus
//! the configured reserves, with the configured allocation ratios; traits for
//! the CPU's features read with `cpuid` (os-traits names such as
//! `HW_CPU_X86_AVX2`) and for what the Mica driver supports.

use std::collections::BTreeMap;
use std::path::Path;

use mica_rpc::conductor::{HypervisorInfo, Inventory};

use crate::backend::Resources;
use crate::config::ResourcesSection;

/// What the machine has, before reserves and ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCapacity {
    pub cpus: u64,
    pub memory_mb: u64,
    pub disk_gb: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("cannot read {what}")]
    Read {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no MemTotal in /proc/meminfo")]
    NoMemTotal,
}

/// Reads the machine's capacity; disk is the file system of `state_dir`.
pub fn probe(state_dir: &Path) -> Result<HostCapacity, ResourceError> {
    let meminfo =
        std::fs::read_to_string("/proc/meminfo").map_err(|source| ResourceError::Read {
            what: "/proc/meminfo",
            source,
        })?;
    let memory_mb = mem_total_kib(&meminfo).ok_or(ResourceError::NoMemTotal)? / 1024;
    let space = crate::sys::fs_space(state_dir).map_err(|source| ResourceError::Read {
        what: "the state folder's file system",
        source,
    })?;
    Ok(HostCapacity {
        cpus: online_cpus(),
        memory_mb,
        disk_gb: space.total >> 30,
    })
}

/// The number of online CPUs (`/sys/devices/system/cpu/online`).
pub fn online_cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1)
        })
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> Option<u64> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
                n += b.checked_sub(a)? + 1;
            }
            None => {
                part.parse::<u64>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Placement inventories from the capacity and the configuration.
pub fn inventories(cap: &HostCapacity, cfg: &ResourcesSection) -> BTreeMap<String, Inventory> {
    let inv = |total: u64, reserved: u64, ratio: f64| Inventory {
        total,
        reserved: reserved.min(total),
        min_unit: 1,
        max_unit: total.max(1),
        step_size: 1,
        allocation_ratio: ratio,
    };
    BTreeMap::from([
        (
            "VCPU".to_owned(),
            inv(cap.cpus, cfg.reserved_host_cpus, cfg.cpu_allocation_ratio),
        ),
        (
            "MEMORY_MB".to_owned(),
            inv(
                cap.memory_mb,
                cfg.reserved_host_memory_mb,
                cfg.ram_allocation_ratio,
            ),
        ),
        (
            "DISK_GB".to_owned(),
            inv(
                cap.disk_gb,
                cfg.reserved_host_disk_mb.div_ceil(1024),
                cfg.disk_allocation_ratio,
            ),
        ),
    ])
}

/// Traits of what the Mica driver supports on every host.
pub const DRIVER_TRAITS: &[&str] = &[
    "COMPUTE_ARCH_X86_64",
    "COMPUTE_IMAGE_TYPE_QCOW2",
    "COMPUTE_IMAGE_TYPE_RAW",
    "COMPUTE_NET_VIF_MODEL_VIRTIO",
    "COMPUTE_STORAGE_BUS_VIRTIO",
];

/// The registers of the `cpuid` leaves the traits come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuidLeaves {
    /// Leaf 1: ECX, EDX.
    pub l1_ecx: u32,
    pub l1_edx: u32,
    /// Leaf 7, subleaf 0: EBX, ECX, EDX (zero when the CPU has no leaf 7).
    pub l7_ebx: u32,
    pub l7_ecx: u32,
    pub l7_edx: u32,
    /// Leaf 0x8000_0001: ECX, EDX.
    pub e1_ecx: u32,
    pub e1_edx: u32,
}

/// `(register, bit, trait)`: os-traits names for CPUID feature bits.
const CPUID_TRAITS: &[(Reg, u32, &str)] = &[
    (Reg::L1Edx, 23, "HW_CPU_X86_MMX"),
    (Reg::L1Edx, 25, "HW_CPU_X86_SSE"),
    (Reg::L1Edx, 26, "HW_CPU_X86_SSE2"),
    (Reg::L1Ecx, 0, "HW_CPU_X86_SSE3"),
    (Reg::L1Ecx, 1, "HW_CPU_X86_CLMUL"),
    (Reg::L1Ecx, 5, "HW_CPU_X86_VMX"),
    (Reg::L1Ecx, 5, "HW_CPU_X86_INTEL_VMX"),
    (Reg::L1Ecx, 9, "HW_CPU_X86_SSSE3"),
    (Reg::L1Ecx, 12, "HW_CPU_X86_FMA3"),
    (Reg::L1Ecx, 17, "HW_CPU_X86_INTEL_PCID"),
    (Reg::L1Ecx, 19, "HW_CPU_X86_SSE41"),
    (Reg::L1Ecx, 20, "HW_CPU_X86_SSE42"),
    (Reg::L1Ecx, 25, "HW_CPU_X86_AESNI"),
    (Reg::L1Ecx, 28, "HW_CPU_X86_AVX"),
    (Reg::L1Ecx, 29, "HW_CPU_X86_F16C"),
    (Reg::L7Ebx, 2, "HW_CPU_X86_SGX"),
    (Reg::L7Ebx, 3, "HW_CPU_X86_BMI"),
    (Reg::L7Ebx, 5, "HW_CPU_X86_AVX2"),
    (Reg::L7Ebx, 8, "HW_CPU_X86_BMI2"),
    (Reg::L7Ebx, 11, "HW_CPU_X86_TSX"),
    (Reg::L7Ebx, 14, "HW_CPU_X86_MPX"),
    (Reg::L7Ebx, 16, "HW_CPU_X86_AVX512F"),
    (Reg::L7Ebx, 17, "HW_CPU_X86_AVX512DQ"),
    (Reg::L7Ebx, 21, "HW_CPU_X86_AVX512IFMA"),
    (Reg::L7Ebx, 26, "HW_CPU_X86_AVX512PF"),
    (Reg::L7Ebx, 27, "HW_CPU_X86_AVX512ER"),
    (Reg::L7Ebx, 28, "HW_CPU_X86_AVX512CD"),
    (Reg::L7Ebx, 29, "HW_CPU_X86_SHA"),
    (Reg::L7Ebx, 30, "HW_CPU_X86_AVX512BW"),
    (Reg::L7Ebx, 31, "HW_CPU_X86_AVX512VL"),
    (Reg::L7Ecx, 1, "HW_CPU_X86_AVX512VBMI"),
    (Reg::L7Ecx, 6, "HW_CPU_X86_AVX512VBMI2"),
    (Reg::L7Ecx, 8, "HW_CPU_X86_AVX512GFNI"),
    (Reg::L7Ecx, 9, "HW_CPU_X86_AVX512VAES"),
    (Reg::L7Ecx, 10, "HW_CPU_X86_AVX512VPCLMULQDQ"),
    (Reg::L7Ecx, 11, "HW_CPU_X86_AVX512VNNI"),
    (Reg::L7Ecx, 12, "HW_CPU_X86_AVX512BITALG"),
    (Reg::L7Ecx, 14, "HW_CPU_X86_AVX512VPOPCNTDQ"),
    (Reg::L7Edx, 10, "HW_CPU_X86_INTEL_MD_CLEAR"),
    (Reg::L7Edx, 26, "HW_CPU_X86_INTEL_SPEC_CTRL"),
    (Reg::L7Edx, 27, "HW_CPU_X86_STIBP"),
    (Reg::L7Edx, 31, "HW_CPU_X86_INTEL_SSBD"),
    (Reg::E1Ecx, 2, "HW_CPU_X86_SVM"),
    (Reg::E1Ecx, 2, "HW_CPU_X86_AMD_SVM"),
    (Reg::E1Ecx, 5, "HW_CPU_X86_ABM"),
    (Reg::E1Ecx, 6, "HW_CPU_X86_SSE4A"),
    (Reg::E1Ecx, 11, "HW_CPU_X86_XOP"),
    (Reg::E1Ecx, 16, "HW_CPU_X86_FMA4"),
    (Reg::E1Ecx, 21, "HW_CPU_X86_TBM"),
    (Reg::E1Edx, 26, "HW_CPU_X86_PDPE1GB"),
    (Reg::E1Edx, 31, "HW_CPU_X86_3DNOW"),
];

#[derive(Debug, Clone, Copy)]
enum Reg {
    L1Ecx,
    L1Edx,
    L7Ebx,
    L7Ecx,
    L7Edx,
    E1Ecx,
    E1Edx,
}

/// The os-traits of the features set in `leaves`, sorted.
pub fn traits_from_cpuid(leaves: &CpuidLeaves) -> Vec<String> {
    let mut traits: Vec<String> = CPUID_TRAITS
        .iter()
        .filter(|(reg, bit, _)| {
            let value = match reg {
                Reg::L1Ecx => leaves.l1_ecx,
                Reg::L1Edx => leaves.l1_edx,
                Reg::L7Ebx => leaves.l7_ebx,
                Reg::L7Ecx => leaves.l7_ecx,
                Reg::L7Edx => leaves.l7_edx,
                Reg::E1Ecx => leaves.e1_ecx,
                Reg::E1Edx => leaves.e1_edx,
            };
            value & (1 << bit) != 0
        })
        .map(|(_, _, name)| (*name).to_owned())
        .collect();
    traits.sort();
    traits.dedup();
    traits
}

/// Reads this CPU's leaves.
#[cfg(target_arch = "x86_64")]
#[allow(unused_unsafe)] // `__cpuid_count` is a safe function in newer Rust.
pub fn read_cpuid() -> CpuidLeaves {
    use std::arch::x86_64::{__cpuid_count, CpuidResult};
    const NONE: CpuidResult = CpuidResult {
        eax: 0,
        ebx: 0,
        ecx: 0,
        edx: 0,
    };
    // SAFETY: cpuid exists on every x86_64 CPU and only reads registers.
    let cpuid = |leaf: u32, sub: u32| unsafe { __cpuid_count(leaf, sub) };
    let max = cpuid(0, 0).eax;
    let max_ext = cpuid(0x8000_0000, 0).eax;
    let l1 = cpuid(1, 0);
    let l7 = if max >= 7 { cpuid(7, 0) } else { NONE };
    let e1 = if max_ext >= 0x8000_0001 {
        cpuid(0x8000_0001, 0)
    } else {
        NONE
    };
    CpuidLeaves {
        l1_ecx: l1.ecx,
        l1_edx: l1.edx,
        l7_ebx: l7.ebx,
        l7_ecx: l7.ecx,
        l7_edx: l7.edx,
        e1_ecx: e1.ecx,
        e1_edx: e1.edx,
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn read_cpuid() -> CpuidLeaves {
    CpuidLeaves::default()
}

/// Every trait of this host: the CPU's and the driver's, sorted.
pub fn host_traits() -> Vec<String> {
    let mut traits = traits_from_cpuid(&read_cpuid());
    traits.extend(DRIVER_TRAITS.iter().map(|t| (*t).to_owned()));
    traits.sort();
    traits.dedup();
    traits
}

/// The CPU's model name (`/proc/cpuinfo`).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The whole report for `capacity`.
pub fn report(
    capacity: &HostCapacity,
    cfg: &ResourcesSection,
    traits: &[String],
    cpu_model: &str,
    host_ip: &str,
    running_vms: u32,
) -> Resources {
    Resources {
        inventories: inventories(capacity, cfg),
        traits: traits.to_vec(),
        hypervisor: HypervisorInfo {
            hypervisor_type: "mica".into(),
            hypervisor_version: hypervisor_version(env!("CARGO_PKG_VERSION")),
            host_ip: host_ip.to_owned(),
            cpu_model: cpu_model.to_owned(),
            running_vms,
        },
    }
}

/// Nova's integer version encoding: `major * 1_000_000 + minor * 1_000 + patch`.
pub fn hypervisor_version(version: &str) -> u64 {
    let mut parts = version
        .split(['.', '-', '+'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    major * 1_000_000 + minor * 1_000 + patch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn mem_total_is_read_in_kib() {
        let text = "MemTotal:       24594572 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_kib(text), Some(24_594_572));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn inventories_subtract_reserves_and_carry_ratios() {
        let cap = HostCapacity {
            cpus: 8,
            memory_mb: 32_000,
            disk_gb: 500,
        };
        let cfg = ResourcesSection {
            reserved_host_cpus: 1,
            reserved_host_memory_mb: 512,
            reserved_host_disk_mb: 1500,
            cpu_allocation_ratio: 16.0,
            ram_allocation_ratio: 1.5,
            disk_allocation_ratio: 1.0,
        };
        let inv = inventories(&cap, &cfg);
        assert_eq!(
            inv.keys().collect::<Vec<_>>(),
            ["DISK_GB", "MEMORY_MB", "VCPU"]
        );
        let vcpu = &inv["VCPU"];
        assert_eq!((vcpu.total, vcpu.reserved, vcpu.max_unit), (8, 1, 8));
        assert_eq!(vcpu.allocation_ratio, 16.0);
        assert_eq!(inv["MEMORY_MB"].reserved, 512);
        assert_eq!(inv["MEMORY_MB"].allocation_ratio, 1.5);
        // Reserved disk is in MB; placement counts whole GB (rounded up).
        assert_eq!(inv["DISK_GB"].reserved, 2);
        // A reserve larger than the host is capped at the host.
        let tiny = HostCapacity {
            cpus: 1,
            memory_mb: 256,
            disk_gb: 1,
        };
        assert_eq!(inventories(&tiny, &cfg)["MEMORY_MB"].reserved, 256);
    }

    #[test]
    fn cpuid_bits_map_to_os_traits() {
        let leaves = CpuidLeaves {
            l1_edx: (1 << 25) | (1 << 26),
            l1_ecx: (1 << 28) | (1 << 20) | (1 << 25),
            l7_ebx: (1 << 5) | (1 << 3),
            e1_ecx: 1 << 2,
            ..Default::default()
        };
        assert_eq!(
            traits_from_cpuid(&leaves),
            [
                "HW_CPU_X86_AESNI",
                "HW_CPU_X86_AMD_SVM",
                "HW_CPU_X86_AVX",
                "HW_CPU_X86_AVX2",
                "HW_CPU_X86_BMI",
                "HW_CPU_X86_SSE",
                "HW_CPU_X86_SSE2",
                "HW_CPU_X86_SSE42",
                "HW_CPU_X86_SVM",
            ]
        );
        assert!(traits_from_cpuid(&CpuidLeaves::default()).is_empty());
    }

    #[test]
    fn this_cpu_has_sse2() {
        // Every x86_64 CPU has SSE2: a real cpuid read must say so.
        assert!(host_traits().contains(&"HW_CPU_X86_SSE2".to_owned()));
    }

    #[test]
    fn versions_encode_like_novas() {
        assert_eq!(hypervisor_version("0.1.0"), 1_000);
        assert_eq!(hypervisor_version("2.3.4-rc1"), 2_003_004);
    }
}
