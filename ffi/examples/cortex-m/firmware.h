/* The firmware's platform layer (semihosting, stack measurement). */
#ifndef OTS_FIRMWARE_H
#define OTS_FIRMWARE_H

#include <stddef.h>

/* Semihosting SYS_WRITE0: a NUL-terminated string on QEMU's console. */
void semihost_write(const char *s);
/* Semihosting SYS_EXIT: QEMU exits with status 0 when `success`, else 1. */
__attribute__((noreturn)) void semihost_exit(int success);
/* Paints the whole stack below the current frame (at reset). */
void stack_paint_all(void);

#endif
