//! The local APIC's LINT pins, wired as on a PC: LINT0 takes external (8259)
//! interrupts, LINT1 is the NMI line.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

#[derive(Debug, thiserror::Error)]
pub enum LapicError {
    #[error("KVM_GET_LAPIC")]
    Get(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_LAPIC")]
    Set(#[source] kvm_ioctls::Error),
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn get_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

/// Sets the delivery mode (bits 10:8) of an LVT entry.
fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Configures LINT0 as ExtINT and LINT1 as NMI.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), LapicError> {
    let mut state = vcpu.get_lapic().map_err(LapicError::Get)?;
    let lvt0 = get_reg(&state, APIC_LVT0);
    set_reg(
        &mut state,
        APIC_LVT0,
        with_delivery_mode(lvt0, APIC_MODE_EXTINT),
    );
    let lvt1 = get_reg(&state, APIC_LVT1);
    set_reg(
        &mut state,
        APIC_LVT1,
        with_delivery_mode(lvt1, APIC_MODE_NMI),
    );
    vcpu.set_lapic(&state).map_err(LapicError::Set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_registers_round_trip_with_the_new_mode() {
        let mut state = kvm_lapic_state::default();
        set_reg(&mut state, APIC_LVT0, 0x0001_0000);
        let v = with_delivery_mode(get_reg(&state, APIC_LVT0), APIC_MODE_EXTINT);
        set_reg(&mut state, APIC_LVT0, v);
        assert_eq!(get_reg(&state, APIC_LVT0), 0x0001_0700);
    }
}
