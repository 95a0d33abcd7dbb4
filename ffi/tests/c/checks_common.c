/* Output and byte helpers shared by the portable checks (no C library). */
#include "checks.h"

void say(const char *s) { plat_write(s); }

static void write_u64(uint64_t v) {
    char buf[21];
    int i = 20;
    buf[i] = 0;
    do {
        buf[--i] = (char)('0' + (v % 10));
        v /= 10;
    } while (v != 0 && i > 0);
    plat_write(&buf[i]);
}

void say_u64(const char *label, uint64_t v) {
    plat_write(label);
    write_u64(v);
    plat_write("\n");
}

void check(checks_t *c, const char *what, int ok) {
    if (ok) {
        c->passed++;
        plat_write("ok   ");
    } else {
        c->failed++;
        plat_write("FAIL ");
    }
    plat_write(what);
    plat_write("\n");
}

void check_err(checks_t *c, const char *what, ots_error_t got, ots_error_t want) {
    check(c, what, got == want);
    if (got != want) {
        plat_write("     got ");
        plat_write(ots_error_str((int32_t)got));
        plat_write(", want ");
        plat_write(ots_error_str((int32_t)want));
        plat_write("\n");
    }
}

int bytes_eq(const void *a, const void *b, size_t n) {
    const uint8_t *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i]) return 0;
    return 1;
}

int str_eq(const char *a, const char *b) {
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

void copy_bytes(void *dst, const void *src, size_t n) {
    uint8_t *d = dst;
    const uint8_t *s = src;
    for (size_t i = 0; i < n; i++) d[i] = s[i];
}

void fill_bytes(void *dst, uint8_t v, size_t n) {
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) d[i] = v;
}

void pattern_id(char buf[8], unsigned i) {
    buf[0] = 'p';
    buf[1] = '-';
    buf[2] = (char)('0' + (i / 10) % 10);
    buf[3] = (char)('0' + i % 10);
    buf[4] = 0;
}
