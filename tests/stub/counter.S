/*
 * Mica's counter stub guest: prints "tick 0\n", "tick 1\n", ... to COM1 forever,
 * one line about every 100 million TSC cycles (a few hundredths of a second).
 * Tests pause and resume on any /dev/kvm: while paused, the count must not move.
 * Loaded like stub.S (ELF at 16 MiB, long mode, stack at 0x8ff0 from the VMM).
 */
    .code64
    .section .text
    .globl _start
_start:
    xor     %r12, %r12              /* the count */
next:
    lea     tick(%rip), %rsi
    mov     $tick_len, %ecx
    call    puts
    /* the count in decimal, built backwards at the end of digits */
    mov     %r12, %rax
    lea     digits_end(%rip), %rdi
    xor     %ecx, %ecx
    mov     $10, %r8
1:  xor     %edx, %edx
    div     %r8
    add     $'0', %dl
    dec     %rdi
    mov     %dl, (%rdi)
    inc     %ecx
    test    %rax, %rax
    jnz     1b
    mov     %rdi, %rsi
    call    puts
    mov     $0x3f8, %dx
    mov     $'\n', %al
    outb    %al, %dx
    inc     %r12
    /* wait about 100M TSC cycles */
    rdtsc
    shl     $32, %rdx
    or      %rdx, %rax
    mov     %rax, %r9
2:  pause
    rdtsc
    shl     $32, %rdx
    or      %rdx, %rax
    sub     %r9, %rax
    cmp     $100000000, %rax
    jb      2b
    jmp     next

/* writes %ecx bytes at %rsi to COM1 */
puts:
    mov     $0x3f8, %dx
3:  lodsb
    outb    %al, %dx
    loop    3b
    ret

    .section .rodata
tick:
    .ascii  "tick "
    .set    tick_len, . - tick

    .section .data
digits:
    .space  24
digits_end:
