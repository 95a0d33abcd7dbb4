/*
 * Reset and fault handling of the C firmware: the vector table, .data and
 * .bss set-up, the FPU (the library is built for the hard-float ABI), and
 * the stack paint that main.c measures the stack high-water mark against,
 * as cortex-m-rt's `paint-stack` does for the Rust firmware.
 */
#include <stdint.h>

#include "firmware.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _stack_start;
extern int main(void);

void Reset_Handler(void);
void Fault_Handler(void);

__attribute__((section(".vector_table"), used)) static const uintptr_t vector_table[16] = {
    (uintptr_t)&_stack_start, /* initial stack pointer */
    (uintptr_t)Reset_Handler,
    (uintptr_t)Fault_Handler, /* NMI */
    (uintptr_t)Fault_Handler, /* HardFault */
    (uintptr_t)Fault_Handler, /* MemManage */
    (uintptr_t)Fault_Handler, /* BusFault */
    (uintptr_t)Fault_Handler, /* UsageFault */
};

void Reset_Handler(void) {
    uint32_t *src = &_sidata, *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    /* CP10 and CP11 full access (SCB->CPACR), before any float instruction. */
    *(volatile uint32_t *)0xE000ED88 |= 0xFu << 20;
    __asm volatile("dsb\n isb" ::: "memory");
    stack_paint_all();
    semihost_exit(main() == 0);
}

void Fault_Handler(void) {
    semihost_write("FAULT: the firmware took an exception\n");
    semihost_exit(0);
}
