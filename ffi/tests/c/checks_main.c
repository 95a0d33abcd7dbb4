/*
 * The portable checks (sync cycle, bad input) as a host program: the C API
 * driven from C on Linux, run by ffi/tests/c_programs.rs natively, under
 * AddressSanitizer and under valgrind. Exits 0 when every check passed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checks.h"

void plat_write(const char *s) { fputs(s, stdout); }
void plat_stack_repaint(void) {}
size_t plat_stack_depth(void) { return 0; }
size_t plat_stack_peak(void) { return 0; }

static uint8_t *exact;

uint8_t *plat_exact_copy(const uint8_t *src, size_t n) {
    free(exact);
    exact = malloc(n ? n : 1);
    if (!exact) {
        fputs("out of memory\n", stderr);
        exit(2);
    }
    if (n) memcpy(exact, src, n);
    return exact;
}

int main(void) {
    checks_t c = {0, 0};
    call_stack_t cs = {0};
    run_sync_cycle(&c, &cs);
    run_bad_input(&c);
    free(exact);
    exact = NULL;
    printf("c checks: %u passed, %u failed\n", c.passed, c.failed);
    fflush(stdout);
    return (c.failed == 0 && c.passed > 0) ? 0 : 1;
}
