/*
 * Mica's idle stub guest: writes "MICA-IDLE-READY\n" to COM1, then halts with
 * interrupts off, forever. The VMM keeps running until it is told to stop, so
 * tests and benchmarks can measure a live VMM (control socket latency, memory
 * overhead) on any /dev/kvm. Loaded like stub.S (ELF at 16 MiB, long mode).
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
    cli
2:  hlt
    jmp     2b

    .section .rodata
message:
    .ascii  "MICA-IDLE-READY\n"
    .set    message_len, . - message
