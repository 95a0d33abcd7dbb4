/*
 * ots_sync: a complete small-Linux sync client in C, on the omega-tv-sync
 * C API and libcurl.
 *
 * It keeps its patterns in memory (real MiniLM vectors from a file of
 * little-endian f32 rows, drifting a little every round, as a TV's learned
 * patterns do), restores the client from its state file when there is one,
 * syncs with Constellation, applies what comes back, and after every
 * applied sync writes the snapshot to the state file with write-then-rename
 * (a power cut leaves the old file or the new one, never a torn one).
 *
 *   ots_sync --server URL --device ID --key HEX --state FILE --data F32
 *            [--patterns N] [--rounds FIRST:COUNT] [--dump FILE]
 *
 * --dump writes the acknowledged state (per pattern: id, revision and the
 * 384 integer codes; then the sequence and global version) for a checker
 * to compare with the server's. Exit status 0 when every round synced.
 *
 * Memory: the client (OTS_CLIENT_SIZE(8)), the request, response and
 * snapshot buffers are static; libcurl allocates for itself.
 */
#define _POSIX_C_SOURCE 200809L

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "omega_tv_sync.h"

#define SLOTS 8
#define MAX_PATTERNS 8
#define TX 16384
#define RX 16384 /* = caps.max_bytes (the default) */
#define MAX_ATTEMPTS 8

static uint64_t client_mem[OTS_CLIENT_SIZE(SLOTS) / 8 + 1];
static uint8_t tx[TX];
static uint8_t rx[RX];
static uint8_t snapshot[OTS_MAX_SNAPSHOT_LEN(SLOTS)];
static float rows[64][OTS_DIM];
static size_t n_rows;

typedef struct {
    const char *server, *device, *key, *state, *data, *dump;
    unsigned patterns, first, rounds;
} args_t;

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(uint64_t ms) {
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int fail(const char *what, ots_error_t e) {
    fprintf(stderr, "ots_sync: %s: %s\n", what, ots_error_str(e));
    return 1;
}

/* ---- files ---- */

static int read_rows(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ots_sync: %s: %s\n", path, strerror(errno));
        return 1;
    }
    n_rows = fread(rows, sizeof rows[0], sizeof rows / sizeof rows[0], f);
    fclose(f);
    return n_rows == 0;
}

/* Reads the whole state file into `snapshot`; 0 bytes when it is absent. */
static int read_state(const char *path, size_t *len) {
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? 0 : 1;
    *len = fread(snapshot, 1, sizeof snapshot, f);
    int bad = ferror(f) || !feof(f);
    fclose(f);
    return bad;
}

/* Writes `len` bytes to PATH.tmp, syncs it, renames it over PATH and syncs
 * the directory: the file holds the old state or the new one, whole. */
static int write_state(const char *path, const uint8_t *bytes, size_t len) {
    char tmp[4096], dir[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return 1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return 1;
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, bytes + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            close(fd);
            return 1;
        }
        done += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) return 1;
    if (rename(tmp, path) != 0) return 1;
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
    int dfd = open(dir, O_RDONLY);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* ---- HTTP over libcurl ---- */

typedef struct {
    uint8_t *buf;
    size_t cap, len;
    int overflow;
} body_t;

static size_t on_body(char *data, size_t size, size_t n, void *user) {
    body_t *b = user;
    size_t k = size * n;
    if (k > b->cap - b->len) {
        b->overflow = 1; /* never cut a response: a transport failure */
        return 0;
    }
    memcpy(b->buf + b->len, data, k);
    b->len += k;
    return k;
}

/* The response's X-OTS-Signature value (64 hex digits, header whitespace
 * trimmed by the library); kept here until the response is applied. */
static char sig_value[80];

static size_t on_header(char *data, size_t size, size_t n, void *user) {
    ots_response_t *r = user;
    size_t k = size * n;
    const char name[] = "retry-after:";
    const char sig[] = "x-ots-signature:";
    if (k > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        r->retry_after_s = (uint32_t)strtoul(data + sizeof name - 1, NULL, 10);
        r->has_retry_after = 1;
    } else if (k > sizeof sig - 1 && strncasecmp(data, sig, sizeof sig - 1) == 0) {
        size_t v = k - (sizeof sig - 1);
        while (v > 0 && (data[sizeof sig - 1 + v - 1] == '\r' || data[sizeof sig - 1 + v - 1] == '\n')) v--;
        if (v <= sizeof sig_value) {
            memcpy(sig_value, data + sizeof sig - 1, v);
            r->signature = (const uint8_t *)sig_value;
            r->signature_len = v;
        }
    }
    return k;
}

/* One HTTP exchange. `body` NULL: GET. Returns 0 and fills `resp` (its body
 * in rx) when a response arrived, 1 on a transport failure. */
static int http(CURL *curl, const char *url, const char *const *headers, size_t n_headers,
                const uint8_t *body, size_t body_len, ots_response_t *resp) {
    struct curl_slist *list = NULL;
    for (size_t i = 0; i < n_headers; i++) {
        struct curl_slist *next = curl_slist_append(list, headers[i]);
        if (!next) {
            curl_slist_free_all(list);
            return 1;
        }
        list = next;
    }
    body_t b = {rx, sizeof rx, 0, 0};
    memset(resp, 0, sizeof *resp);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, list);
    if (body) {
        curl_easy_setopt(curl, CURLOPT_POST, 1L);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, (const char *)body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)body_len);
    } else {
        curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
    CURLcode rc = curl_easy_perform(curl);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(list);
    if (rc != CURLE_OK || b.overflow) {
        fprintf(stderr, "ots_sync: transport: %s%s\n", curl_easy_strerror(rc),
                b.overflow ? " (response larger than the buffer)" : "");
        return 1;
    }
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    resp->status = (uint16_t)status;
    resp->body = rx;
    resp->body_len = b.len;
    return 0;
}

/* ---- what comes down ---- */

typedef struct {
    unsigned upserts, removals, trends, resets;
} sink_counts_t;

static void on_reset(void *u) { ((sink_counts_t *)u)->resets++; }
static void on_upsert(void *u, const ots_global_pattern_t *g) {
    (void)g;
    ((sink_counts_t *)u)->upserts++;
}
static void on_remove(void *u, uint32_t id, uint64_t v) {
    (void)id;
    (void)v;
    ((sink_counts_t *)u)->removals++;
}
static void on_trend(void *u, const ots_trend_t *t, uint64_t v) {
    (void)t;
    (void)v;
    ((sink_counts_t *)u)->trends++;
}

/* ---- the patterns ---- */

/* Pattern i in round r: row i drifted towards another row, renormalised. */
static void pattern_vector(unsigned i, unsigned r, float out[OTS_DIM]) {
    const float *a = rows[i % n_rows];
    const float *b = rows[(i + r + 1 + MAX_PATTERNS) % n_rows];
    float w = 0.02f * (float)(r + 1), norm = 0.0f;
    for (int d = 0; d < OTS_DIM; d++) {
        out[d] = a[d] + w * b[d];
        norm += out[d] * out[d];
    }
    norm = sqrtf(norm);
    for (int d = 0; d < OTS_DIM; d++) out[d] /= norm;
}

static void pattern_id(unsigned i, char id[OTS_PATTERN_ID_MAX + 1]) {
    snprintf(id, OTS_PATTERN_ID_MAX + 1, "pat-%02u", i);
}

/* ---- one sync round ---- */

static int sync_round(CURL *curl, ots_client_t *client, const args_t *a, unsigned round) {
    char url[1024], auth[OTS_AUTH_HEADER_MAX + 1], h_auth[OTS_AUTH_HEADER_MAX + 32];
    char h_device[OTS_DEVICE_ID_MAX + 32], h_version[64];
    ots_error_t e;
    snprintf(url, sizeof url, "%s%s", a->server, OTS_SYNC_PATH);
    snprintf(h_device, sizeof h_device, "X-Device-ID: %s", a->device);

    for (unsigned i = 0; i < a->patterns; i++) {
        float v[OTS_DIM];
        char id[OTS_PATTERN_ID_MAX + 1];
        pattern_vector(i, round, v);
        pattern_id(i, id);
        ots_pattern_t p = {id, v, OTS_DIM, 0.8f + 0.01f * (float)i, 20 + round * 5 + i,
                           i % 2 ? "comedy" : "drama"};
        if ((e = ots_client_upsert(client, &p, now_ms())) != OTS_OK) return fail("upsert", e);
    }

    for (unsigned attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        size_t n = 0;
        if ((e = ots_client_in_flight(client, &n)) != OTS_OK) return fail("in_flight", e);
        if (n == 0 && (e = ots_client_prepare(client, tx, sizeof tx, &n)) != OTS_OK)
            return fail("prepare", e);
        size_t auth_len = 0;
        e = ots_client_authorization(client, OTS_METHOD_POST, OTS_SYNC_PATH, tx, n, auth, sizeof auth, &auth_len);
        if (e != OTS_OK) return fail("authorization", e);
        uint64_t version = 0;
        ots_client_global_version(client, &version);
        snprintf(h_version, sizeof h_version, "X-Sync-Version: %" PRIu64, version);
        snprintf(h_auth, sizeof h_auth, "Authorization: %s", auth);
        const char *headers[] = {h_device, h_version, "Content-Type: application/octet-stream", h_auth};
        size_t n_headers = auth_len ? 4 : 3;

        ots_response_t resp;
        if (http(curl, url, headers, n_headers, tx, n, &resp) != 0) {
            ots_client_transport_failed(client, now_ms());
        } else {
            sink_counts_t got = {0, 0, 0, 0};
            ots_sink_t sink = {&got, on_reset, on_upsert, on_remove, on_trend};
            ots_outcome_t out;
            e = ots_client_apply(client, tx, n, &resp, now_ms(), &sink, &out);
            if (e == OTS_OK && out.kind == OTS_OUTCOME_SYNCED) {
                size_t sn = 0;
                if ((e = ots_client_snapshot(client, snapshot, sizeof snapshot, &sn)) != OTS_OK)
                    return fail("snapshot", e);
                if (write_state(a->state, snapshot, sn) != 0) {
                    fprintf(stderr, "ots_sync: cannot write %s: %s\n", a->state, strerror(errno));
                    return 1;
                }
                uint64_t seq = 0;
                ots_client_seq(client, &seq);
                printf("sync %u: seq %" PRIu64 ", %u uploaded, %u acked, %u conflicts, %u globals, "
                       "%u trends, snapshot %zu B\n",
                       round + 1, seq - 1, out.summary.uploaded, out.summary.acked, out.summary.conflicts,
                       out.summary.globals, out.summary.trends, sn);
                return 0;
            }
            if (e == OTS_OK && out.kind == OTS_OUTCOME_RESEQUENCED) {
                printf("sync %u: resequenced at %" PRIu64 "\n", round + 1, out.seq);
                continue; /* prepare a new request now */
            }
            if (e != OTS_OK && ots_error_class(e) != OTS_CLASS_INPUT && ots_error_class(e) != OTS_CLASS_PEER)
                return fail("apply", e);
            if (e != OTS_OK) fprintf(stderr, "ots_sync: response refused (%s); resending\n", ots_error_str(e));
        }
        /* Resend the same bytes when the client says so (bounded). */
        uint64_t at = 0, now = now_ms();
        ots_client_next_sync_at(client, &at);
        if (at > now) sleep_ms(at - now > 2000 ? 2000 : at - now);
    }
    fprintf(stderr, "ots_sync: round %u did not sync in %d attempts\n", round + 1, MAX_ATTEMPTS);
    return 1;
}

static int dump(ots_client_t *client, const args_t *a) {
    FILE *f = fopen(a->dump, "w");
    if (!f) return 1;
    for (unsigned i = 0; i < a->patterns; i++) {
        char id[OTS_PATTERN_ID_MAX + 1];
        int16_t codes[OTS_DIM];
        uint32_t rev = 0;
        pattern_id(i, id);
        ots_error_t e = ots_client_acked(client, id, &rev, codes, OTS_DIM);
        if (e != OTS_OK) {
            fclose(f);
            return fail("acked", e);
        }
        fprintf(f, "pattern %s %" PRIu32, id, rev);
        for (int d = 0; d < OTS_DIM; d++) fprintf(f, " %d", codes[d]);
        fputc('\n', f);
    }
    uint64_t seq = 0, version = 0;
    ots_client_seq(client, &seq);
    ots_client_global_version(client, &version);
    fprintf(f, "seq %" PRIu64 "\nglobal_version %" PRIu64 "\n", seq, version);
    return fclose(f) != 0;
}

static int parse_args(int argc, char **argv, args_t *a) {
    memset(a, 0, sizeof *a);
    a->patterns = 6;
    a->rounds = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--server")) a->server = v;
        else if (!strcmp(k, "--device")) a->device = v;
        else if (!strcmp(k, "--key")) a->key = v;
        else if (!strcmp(k, "--state")) a->state = v;
        else if (!strcmp(k, "--data")) a->data = v;
        else if (!strcmp(k, "--dump")) a->dump = v;
        else if (!strcmp(k, "--patterns")) a->patterns = (unsigned)atoi(v);
        else if (!strcmp(k, "--rounds")) {
            if (sscanf(v, "%u:%u", &a->first, &a->rounds) != 2) return 1;
        } else return 1;
    }
    return !a->server || !a->device || !a->key || !a->state || !a->data || a->patterns == 0 ||
           a->patterns > MAX_PATTERNS;
}

int main(int argc, char **argv) {
    args_t a;
    if (parse_args(argc, argv, &a)) {
        fprintf(stderr, "usage: ots_sync --server URL --device ID --key HEX --state FILE --data F32 "
                        "[--patterns N<=8] [--rounds FIRST:COUNT] [--dump FILE]\n");
        return 2;
    }
    if (read_rows(a.data)) return 1;

    ots_codebook_t cb;
    ots_config_t cfg;
    ots_client_t *client = NULL;
    ots_error_t e;
    if ((e = ots_codebook_minilm_v1(&cb)) != OTS_OK) return fail("codebook", e);
    if ((e = ots_config_init(&cfg, a.device)) != OTS_OK) return fail("device id", e);
    if ((e = ots_config_set_key_hex(&cfg, a.key)) != OTS_OK) return fail("key", e);
    if ((e = ots_client_init(client_mem, sizeof client_mem, SLOTS, &cb, &cfg, &client)) != OTS_OK)
        return fail("client", e);

    size_t len = 0;
    if (read_state(a.state, &len)) {
        fprintf(stderr, "ots_sync: cannot read %s\n", a.state);
        return 1;
    }
    if (len > 0) {
        if ((e = ots_client_restore(client, snapshot, len)) != OTS_OK) return fail("restore", e);
        uint64_t seq = 0;
        ots_client_seq(client, &seq);
        printf("restored %zu B from %s: next seq %" PRIu64 "\n", len, a.state, seq);
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    CURL *curl = curl_easy_init();
    int rc = curl ? 0 : 1;
    if (curl) {
        curl_easy_setopt(curl, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    }
    for (unsigned r = a.first; rc == 0 && r < a.first + a.rounds; r++) rc = sync_round(curl, client, &a, r);
    if (rc == 0 && a.dump) rc = dump(client, &a);
    if (curl) curl_easy_cleanup(curl);
    curl_global_cleanup();
    ots_client_deinit(client);
    return rc;
}
