/*
 * C firmware for the Cortex-M4F that links the omega-tv-sync C API (the
 * no_std static library) and runs, under QEMU (mps2-an386), the sync cycle
 * of examples/cortex-m (tests/c/sync_cycle.c: upload and snapshot byte for
 * byte equal to the host's, the recorded server response applied, acked
 * codes equal to the target's own quantisation, restore) and the bad-input
 * table (tests/c/bad_input.c), then prints the stack figures and exits
 * through semihosting: 0 when every check passed, 1 otherwise.
 *
 * Stack: startup.c paints the stack at reset; the deepest overwritten word
 * is the high-water mark. Each C API call is also measured alone on a
 * freshly painted stack (MEASURE in tests/c/checks.h).
 */
#include <stdint.h>

#include "checks.h"
#include "firmware.h"

#define PAINT 0xCCCCCCCCu
/* Bytes below the stack pointer that a repaint leaves alone (its own frame). */
#define REPAINT_MARGIN 256u

extern uint32_t _stack_end, _stack_start;

/* ---- semihosting ---- */

static int semihost(int op, const void *arg) {
    register int r0 __asm("r0") = op;
    register const void *r1 __asm("r1") = arg;
    __asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void semihost_write(const char *s) { semihost(0x04, s); }

void semihost_exit(int success) {
    /* ADP_Stopped_ApplicationExit (QEMU exits 0) or RunTimeErrorUnknown (1). */
    semihost(0x18, (const void *)(uintptr_t)(success ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

/* The library calls this only if a panic ever happened inside it. */
void ots_platform_panic(void) {
    semihost_write("PANIC inside the library\n");
    semihost_exit(0);
}

/* ---- stack ---- */

static uint32_t sp_now(void) {
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

static void paint_below(uint32_t margin) {
    uint32_t stop = (sp_now() - margin) & ~3u;
    for (volatile uint32_t *p = &_stack_end; (uint32_t)p < stop; p++) *p = PAINT;
}

void stack_paint_all(void) { paint_below(64); }

size_t plat_stack_peak(void) {
    const volatile uint32_t *p = &_stack_end;
    while ((uintptr_t)p < (uintptr_t)&_stack_start && *p == PAINT) p++;
    return (size_t)((uintptr_t)&_stack_start - (uintptr_t)p);
}

/* The deepest point of the run so far, kept across repaints. */
static size_t deepest;

void plat_stack_repaint(void) {
    size_t p = plat_stack_peak();
    if (p > deepest) deepest = p;
    paint_below(REPAINT_MARGIN);
}

size_t plat_stack_depth(void) { return (size_t)((uintptr_t)&_stack_start - sp_now()); }

static size_t run_peak(void) {
    size_t p = plat_stack_peak();
    return p > deepest ? p : deepest;
}

/* ---- the rest of the platform ---- */

void plat_write(const char *s) { semihost_write(s); }

static uint8_t exact_buf[16384];

uint8_t *plat_exact_copy(const uint8_t *src, size_t n) {
    if (n > sizeof exact_buf) {
        semihost_write("plat_exact_copy: too large\n");
        semihost_exit(0);
    }
    uint8_t *dst = exact_buf + sizeof exact_buf - n;
    copy_bytes(dst, src, n);
    return dst;
}

int main(void) {
    checks_t c = {0, 0};
    call_stack_t cs = {0};

    say("C firmware on Cortex-M4F: omega-tv-sync C API (no_std static library)\n");
    say_u64("ots_client_size(8)=", ots_client_size(8));
    say_u64("OTS_CLIENT_SIZE(8)=", OTS_CLIENT_SIZE(8));
    say_u64("OTS_MAX_SNAPSHOT_LEN(8)=", OTS_MAX_SNAPSHOT_LEN(8));
    say_u64("stack_size_bytes=", (uintptr_t)&_stack_start - (uintptr_t)&_stack_end);

    /* The sync cycle, with its own high-water mark. */
    plat_stack_repaint();
    deepest = 0;
    run_sync_cycle(&c, &cs);
    size_t cycle_peak = run_peak();
    say_u64("sync_cycle_stack_peak_bytes=", cycle_peak);
    say_u64("c_api_stack_bytes init=", cs.init);
    say_u64("c_api_stack_bytes upsert=", cs.upsert);
    say_u64("c_api_stack_bytes prepare=", cs.prepare);
    say_u64("c_api_stack_bytes authorization=", cs.sign);
    say_u64("c_api_stack_bytes apply=", cs.apply);
    say_u64("c_api_stack_bytes snapshot=", cs.snapshot);
    say_u64("c_api_stack_bytes restore=", cs.restore);
    say_u64("c_api_stack_bytes quantize=", cs.quantize);

    run_bad_input(&c);
    if (cycle_peak > deepest) deepest = cycle_peak;
    say_u64("stack_peak_bytes=", run_peak());

    say_u64("c firmware checks passed=", c.passed);
    say_u64("c firmware checks failed=", c.failed);
    return (c.failed == 0 && c.passed > 0) ? 0 : 1;
}
