/*
 * Mica's stub guest: the smallest guest that proves a VMM ran it. mica-vmm loads
 * it like a vmlinux (ELF, 64-bit entry, long mode already set up) and it
 *   1. writes "MICA-STUB-OK\n" to COM1 (I/O port 0x3f8),
 *   2. powers the VM off through the ACPI hardware-reduced sleep control
 *      register of Mica's platform (I/O port 0x3c0; SLP_TYP=5, SLP_EN),
 *   3. halts forever if the VMM ignored that.
 * Used by tests and benchmarks of the VMM's own start-up cost on any /dev/kvm,
 * including software hypervisors that cannot run a Linux kernel.
 */
    .code64
    .section .text
    .globl _start
_start:
    mov     $0x3f8, %dx
    lea     message(%rip), %rsi
    mov     $message_len, %ecx
1:  lodsb
    outb    %al, %dx
    loop    1b
    mov     $0x3c0, %dx
    mov     $0x34, %al          /* (5 << 2) | (1 << 5): S5, sleep enable */
    outb    %al, %dx
2:  hlt
    jmp     2b

    .section .rodata
message:
    .ascii  "MICA-STUB-OK\n"
    .set    message_len, . - message
