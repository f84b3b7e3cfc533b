/*
 * emud.h - minimal support for bare-metal guests on the emud-virt machine.
 */
#ifndef EMUD_H
#define EMUD_H

#include <stdint.h>

/* Memory map (see docs/architecture.md, "The machine (emud-virt)"). */
#define SYSCON_BASE     0x00100000u
#define CLINT_BASE      0x02000000u
#define PLIC_BASE       0x0c000000u
#define UART0_BASE      0x10000000u
#define HPET_BASE       0xfed00000u
#define RAM_BASE        0x80000000u

#define REG32(addr)     (*(volatile uint32_t *)(uintptr_t)(addr))

/* CLINT (SiFive layout, hart 0). mtime runs at 10 MHz. */
#define CLINT_MSIP          REG32(CLINT_BASE + 0x0000)
#define CLINT_MTIMECMP_LO   REG32(CLINT_BASE + 0x4000)
#define CLINT_MTIMECMP_HI   REG32(CLINT_BASE + 0x4004)
#define CLINT_MTIME_LO      REG32(CLINT_BASE + 0xbff8)
#define CLINT_MTIME_HI      REG32(CLINT_BASE + 0xbffc)

/* PLIC (SiFive layout, context 0 = hart 0 M-mode). */
#define PLIC_PRIORITY(src)  REG32(PLIC_BASE + 4u * (src))
#define PLIC_PENDING(word)  REG32(PLIC_BASE + 0x1000 + 4u * (word))
#define PLIC_ENABLE(word)   REG32(PLIC_BASE + 0x2000 + 4u * (word))
#define PLIC_THRESHOLD      REG32(PLIC_BASE + 0x200000)
#define PLIC_CLAIM          REG32(PLIC_BASE + 0x200004)
#define UART0_IRQ           10

/* mstatus / mie / mip bits and mcause values used by the guests. */
#define MSTATUS_MIE     (1u << 3)
#define MIE_MSIE        (1u << 3)
#define MIE_MTIE        (1u << 7)
#define MIE_MEIE        (1u << 11)
#define MCAUSE_INTR     0x80000000u
#define MTVEC_VECTORED  1u

/* CSR access; csr must be a literal name such as mstatus. */
#define csr_read(csr) ({ uint32_t v_; \
        __asm__ volatile ("csrr %0, " #csr : "=r"(v_) :: "memory"); v_; })
#define csr_write(csr, val) \
        __asm__ volatile ("csrw " #csr ", %0" :: "rK"(val) : "memory")
#define csr_set(csr, bits) \
        __asm__ volatile ("csrs " #csr ", %0" :: "rK"(bits) : "memory")
#define csr_clear(csr, bits) \
        __asm__ volatile ("csrc " #csr ", %0" :: "rK"(bits) : "memory")

/*
 * A trap handler written in C. The attribute makes gcc save every register
 * it touches and return with mret; mtvec needs 4-byte alignment (the low two
 * bits select the mode), while C functions are only 2-aligned with RVC.
 * crt0 points mtvec at trap_handler, whose default (weak, in emud.c) prints
 * the trap and powers off with EXIT_UNHANDLED_TRAP; define your own
 * "TRAP_HANDLER void trap_handler(void)" to replace it.
 */
#define TRAP_HANDLER    __attribute__((interrupt("machine"), aligned(4)))
#define EXIT_UNHANDLED_TRAP 99
void trap_handler(void);

/* PL011 UART0; crt0 calls uart_init() before main. Output is "\n"-only. */
void uart_init(void);
void uart_putc(char c);
void uart_puts(const char *s);          /* no newline appended */
void uart_puthex(uint32_t v);           /* always 8 lowercase digits */
void uart_putdec(uint32_t v);

/* For interrupt-driven guests' trap handlers: the trap must be the machine
 * external interrupt (anything else is reported and fatal); claims it at the
 * PLIC and returns the source. Complete it with PLIC_CLAIM = source. */
uint32_t claim_external_interrupt(void);

/* Power off via the syscon: 0 = success, else fail with exit code (crt0.S). */
void poweroff(int code) __attribute__((noreturn));

#endif
