/*
 * Portable C checks of the C API: the sync cycle (sync_cycle.c) and the
 * bad-input table (bad_input.c). They run natively on the host (checks_main.c,
 * under AddressSanitizer and valgrind) and on the Cortex-M4F under QEMU
 * (ffi/examples/cortex-m). Nothing here allocates or uses the C library
 * beyond what a freestanding firmware has; the platform supplies output and
 * the stack measurement.
 */
#ifndef OTS_CHECKS_H
#define OTS_CHECKS_H

#include <stddef.h>
#include <stdint.h>

#include "omega_tv_sync.h"

/* ---- provided by the platform ---- */

/* Writes a NUL-terminated string (no newline added). */
void plat_write(const char *s);
/* Paints the unused stack below the caller (firmware) or does nothing (host). */
void plat_stack_repaint(void);
/* Current stack depth in bytes below the stack's top (0 on the host). */
size_t plat_stack_depth(void);
/* Deepest stack use since the last paint, in bytes from the top (0 on the host). */
size_t plat_stack_peak(void);
/* A copy of `n` bytes of `src` in memory that ends exactly after them, so
 * that a read past the end is caught: a heap block of exactly `n` bytes on
 * the host (valgrind and AddressSanitizer see every byte past it), the end
 * of a static buffer on the firmware. Valid until the next call. */
uint8_t *plat_exact_copy(const uint8_t *src, size_t n);

/* ---- shared helpers (checks_common.c) ---- */

typedef struct {
    unsigned passed;
    unsigned failed;
} checks_t;

/* Records one check and prints `ok   what` or `FAIL what`. */
void check(checks_t *c, const char *what, int ok);
/* Records that `got` equals `want` (ots_error_t values); prints both names on failure. */
void check_err(checks_t *c, const char *what, ots_error_t got, ots_error_t want);
/* Prints `label` then the decimal `v` and a newline. */
void say_u64(const char *label, uint64_t v);
void say(const char *s);
int bytes_eq(const void *a, const void *b, size_t n);
int str_eq(const char *a, const char *b);
void copy_bytes(void *dst, const void *src, size_t n);
void fill_bytes(void *dst, uint8_t v, size_t n);
/* `p-NN` into buf[5]. */
void pattern_id(char buf[8], unsigned i);

/* Stack use of `call` beyond the caller's depth, raised into `slot`. */
#define MEASURE(slot, call)                                      \
    do {                                                         \
        plat_stack_repaint();                                    \
        size_t base_ = plat_stack_depth();                       \
        call;                                                    \
        size_t used_ = plat_stack_peak();                        \
        used_ = used_ > base_ ? used_ - base_ : 0;               \
        if (used_ > (slot)) (slot) = used_;                      \
    } while (0)

/* Stack use of each C API call, maximum over the runs. */
typedef struct {
    size_t init, upsert, prepare, sign, apply, snapshot, restore, quantize;
} call_stack_t;

/* The sync cycle of examples/cortex-m for both codebook profiles. */
void run_sync_cycle(checks_t *c, call_stack_t *cs);
/* Every bad input of the C API: each returns its error code. */
void run_bad_input(checks_t *c);

#endif
