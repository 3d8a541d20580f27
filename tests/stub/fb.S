/*
 * Mica's framebuffer stub guest. Loaded like stub.S (ELF at 16 MiB, long mode,
 * the VMM's identity map of the first 4 GiB, %rsi = zero page). It reads the
 * framebuffer from boot_params.screen_info (lfb_base, lfb_width, lfb_height,
 * lfb_linelength), fills it with the test pattern
 *     pixel(x, y) = (x & 0xff) << 16 | (y & 0xff) << 8 | ((x + y) & 0xff)
 * (x8r8g8b8), writes "MICA-FB-READY\n" to COM1, then does what the first byte
 * of its command line says:
 *   'k'  keyboard echo: every byte read from the i8042 (port 0x60) goes to COM1
 *        as two hex digits and a newline;
 *   't'  ticks: about every 100M TSC cycles, pixel (0, 0) := n (n = 1, 2, ...),
 *        then the byte 'A' + n % 26 to COM1 (the host times both: latency);
 *   's'  scroll: about every 20M TSC cycles, moves the screen up 16 lines and
 *        fills the last 16 with a new colour (a console printing lines);
 *   else halt with interrupts off (an idle screen).
 */
    .code64
    .section .text
    .globl _start
_start:
    mov     %rsi, %rbx                  /* zero page */
    movl    0x18(%rbx), %r8d            /* lfb_base */
    movzwl  0x12(%rbx), %r9d            /* width */
    movzwl  0x14(%rbx), %r10d           /* height */
    movzwl  0x24(%rbx), %r11d           /* bytes per line */

    xor     %r13, %r13                  /* y */
fill_row:
    cmp     %r10, %r13
    jae     filled
    mov     %r13, %rdi
    imul    %r11, %rdi
    add     %r8, %rdi                   /* line address */
    xor     %r12, %r12                  /* x */
fill_px:
    cmp     %r9, %r12
    jae     next_row
    mov     %r12, %rax
    and     $0xff, %eax
    shl     $16, %eax
    mov     %r13, %rcx
    and     $0xff, %ecx
    shl     $8, %ecx
    or      %ecx, %eax
    mov     %r12, %rcx
    add     %r13, %rcx
    and     $0xff, %ecx
    or      %ecx, %eax
    movl    %eax, (%rdi,%r12,4)
    inc     %r12
    jmp     fill_px
next_row:
    inc     %r13
    jmp     fill_row
filled:
    lea     ready(%rip), %rsi
    mov     $ready_len, %ecx
    call    puts
    movb    0x20000, %al                /* the command line's first byte */
    cmp     $'k', %al
    je      keys
    cmp     $'t', %al
    je      ticks
    cmp     $'s', %al
    je      scroll
    cli
1:  hlt
    jmp     1b

keys:
    inb     $0x64, %al
    test    $1, %al
    jz      keys_wait
    inb     $0x60, %al
    mov     %al, %r12b
    shr     $4, %al
    call    hexdigit
    mov     %r12b, %al
    and     $0xf, %al
    call    hexdigit
    mov     $'\n', %al
    mov     $0x3f8, %dx
    outb    %al, %dx
    jmp     keys
keys_wait:
    pause
    jmp     keys

ticks:
    xor     %r12, %r12
2:  mov     $100000000, %rdi
    call    delay
    inc     %r12
    movl    %r12d, (%r8)
    mov     %r12, %rax
    xor     %edx, %edx
    mov     $26, %ecx
    div     %rcx
    lea     'A'(%rdx), %eax
    mov     $0x3f8, %dx
    outb    %al, %dx
    jmp     2b

scroll:
    xor     %r12, %r12                  /* the colour of the new lines */
3:  mov     %r11, %rcx
    shl     $4, %rcx                    /* 16 lines in bytes */
    mov     %r8, %rdi
    lea     (%r8,%rcx), %rsi
    mov     %r10, %rax
    sub     $16, %rax
    imul    %r11, %rax                  /* bytes to move */
    mov     %rax, %rcx
    shr     $3, %rcx
    cld
    rep movsq
    /* %rdi is now the first of the last 16 lines */
    mov     %r11, %rcx
    shl     $4, %rcx
    shr     $2, %rcx
    add     $0x010203, %r12d
    mov     %r12d, %eax
    rep stosl
    mov     $20000000, %rdi
    call    delay
    jmp     3b

/* waits about %rdi TSC cycles */
delay:
    rdtsc
    shl     $32, %rdx
    or      %rdx, %rax
    mov     %rax, %rsi
4:  pause
    rdtsc
    shl     $32, %rdx
    or      %rdx, %rax
    sub     %rsi, %rax
    cmp     %rdi, %rax
    jb      4b
    ret

/* writes the hex digit of %al (0-15) to COM1 */
hexdigit:
    cmp     $10, %al
    jb      5f
    add     $('a' - 10 - '0'), %al
5:  add     $'0', %al
    mov     $0x3f8, %dx
    outb    %al, %dx
    ret

/* writes %ecx bytes at %rsi to COM1 */
puts:
    mov     $0x3f8, %dx
6:  lodsb
    outb    %al, %dx
    loop    6b
    ret

    .section .rodata
ready:
    .ascii  "MICA-FB-READY\n"
    .set    ready_len, . - ready
