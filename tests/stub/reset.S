/*
 * Mica's reset stub guest: writes "MICA-RESET\n" to COM1, then asks the i8042
 * keyboard controller to pulse the CPU reset line (command 0xfe on port 0x64),
 * the way `reboot=k` does. A VMM must report "guest requested reset".
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
    mov     $0x64, %dx
    mov     $0xfe, %al
    outb    %al, %dx
2:  hlt
    jmp     2b

    .section .rodata
message:
    .ascii  "MICA-RESET\n"
    .set    message_len, . - message
