/*
 * Every bad input of the C API, driven from C: each call returns its error
 * code and changes nothing; none reads or writes outside what it was given
 * (the host runs this under AddressSanitizer and under valgrind).
 *
 * Null pointers, buffers too small, misaligned memory, wrong slot counts,
 * NaN / infinite / non-unit embeddings, bad strings, bad configuration,
 * calls out of order, re-entry from a callback, and every truncation and
 * every one-byte corruption of a real response and of a real snapshot.
 * Truncated and corrupted copies sit in memory that ends exactly where they
 * do (plat_exact_copy), so a read one byte past them is caught.
 */
#include "checks.h"
#include "fixtures.h"

#define TX 8192
#define SNAP OTS_MAX_SNAPSHOT_LEN(FX_SLOTS)

static uint64_t mem[OTS_CLIENT_SIZE(FX_SLOTS) / 8 + 1];
static uint64_t mem2[OTS_CLIENT_SIZE(FX_SLOTS) / 8 + 1];
static uint8_t tx[TX];
static uint8_t snap[SNAP];
static float vec[OTS_DIM + 1];
static int16_t codes[OTS_DIM];

static ots_config_t config(void) {
    ots_config_t cfg;
    ots_config_init(&cfg, FX_DEVICE_ID);
    ots_config_set_key_hex(&cfg, FX_DEVICE_KEY_HEX);
    return cfg;
}

static ots_client_t *fresh(checks_t *c, const ots_codebook_t *cb, uint64_t *m, size_t m_len) {
    ots_config_t cfg = config();
    ots_client_t *client = 0;
    ots_error_t e = ots_client_init(m, m_len, FX_SLOTS, cb, &cfg, &client);
    if (e != OTS_OK) check_err(c, "fresh client", e, OTS_OK);
    return client;
}

static ots_pattern_t pat(const char *id, const float *v) {
    ots_pattern_t p = {id, v, OTS_DIM, 0.9f, 30, "drama"};
    return p;
}


/* A sink whose callback calls back into its own client. */
typedef struct {
    ots_client_t *client;
    ots_error_t inner;
    unsigned calls;
} reentry_t;

static void reenter(void *user, const ots_global_pattern_t *g) {
    (void)g;
    reentry_t *r = user;
    uint64_t seq = 0;
    if (r->calls++ == 0) {
        r->inner = ots_client_seq(r->client, &seq);
    } else {
        /* Replacing the running client from its own callback. */
        ots_codebook_t cb;
        ots_config_t cfg;
        ots_client_t *again = 0;
        ots_codebook_minilm_v1(&cb);
        ots_config_init(&cfg, "tv");
        ots_error_t e = ots_client_init(r->client, OTS_CLIENT_SIZE(8), 8, &cb, &cfg, &again);
        if (e != OTS_ERROR_REENTRANT || again != 0) r->inner = e;
        e = ots_client_deinit(r->client);
        if (e != OTS_ERROR_REENTRANT) r->inner = e;
    }
}

static void api_misuse(checks_t *c, const ots_codebook_t *cb) {
    ots_config_t cfg = config();
    ots_client_t *client = 0;

    check(c, "unsupported slot counts have no size",
          ots_client_size(0) == 0 && ots_client_size(7) == 0 && ots_client_size(9) == 0 &&
              ots_client_size(UINT32_MAX) == 0);
    check(c, "ots_client_size(8) <= OTS_CLIENT_SIZE(8)",
          ots_client_size(8) > 0 && ots_client_size(8) <= OTS_CLIENT_SIZE(8));
    const uint32_t bad_slots[] = {0, 1, 7, 9, 1000, UINT32_MAX};
    int all = 1;
    for (unsigned i = 0; i < sizeof bad_slots / sizeof bad_slots[0]; i++)
        all &= ots_client_init(mem, sizeof mem, bad_slots[i], cb, &cfg, &client) ==
               OTS_ERROR_UNSUPPORTED_SLOTS;
    check(c, "wrong slot counts (0, 1, 7, 9, 1000, UINT32_MAX): UNSUPPORTED_SLOTS", all && client == 0);

    check_err(c, "init: NULL memory", ots_client_init(0, sizeof mem, 8, cb, &cfg, &client),
              OTS_ERROR_NULL_POINTER);
    check_err(c, "init: NULL out", ots_client_init(mem, sizeof mem, 8, cb, &cfg, 0), OTS_ERROR_NULL_POINTER);
    check_err(c, "init: NULL codebook", ots_client_init(mem, sizeof mem, 8, 0, &cfg, &client),
              OTS_ERROR_NULL_POINTER);
    check_err(c, "init: NULL config", ots_client_init(mem, sizeof mem, 8, cb, 0, &client),
              OTS_ERROR_NULL_POINTER);
    check_err(c, "init: memory one byte short",
              ots_client_init(mem, ots_client_size(8) - 1, 8, cb, &cfg, &client), OTS_ERROR_BUFFER_TOO_SMALL);
    check_err(c, "init: memory misaligned by 4",
              ots_client_init((uint8_t *)mem + 4, sizeof mem - 4, 8, cb, &cfg, &client), OTS_ERROR_MISALIGNED);
    check_err(c, "init: memory misaligned by 1",
              ots_client_init((uint8_t *)mem + 1, sizeof mem - 1, 8, cb, &cfg, &client), OTS_ERROR_MISALIGNED);
    check(c, "failed inits wrote no handle", client == 0);

    ots_codebook_t zero;
    fill_bytes(&zero, 0, sizeof zero);
    check_err(c, "init: uninitialised codebook", ots_client_init(mem, sizeof mem, 8, &zero, &cfg, &client),
              OTS_ERROR_NOT_INITIALISED);
    check_err(c, "codebook: NULL out", ots_codebook_minilm_v1(0), OTS_ERROR_NULL_POINTER);
    check_err(c, "codebook: misaligned out", ots_codebook_minilm_small_v1((ots_codebook_t *)((uint8_t *)&zero + 4)),
              OTS_ERROR_MISALIGNED);
    static const uint8_t junk[64] = {'O', 'T', 'C', 'B', 1};
    check_err(c, "codebook from a junk blob", ots_codebook_from_blob(junk, sizeof junk, &zero),
              OTS_ERROR_BAD_CODEBOOK);
    check_err(c, "codebook from a NULL blob", ots_codebook_from_blob(0, 10, &zero), OTS_ERROR_NULL_POINTER);

    /* Memory that holds no client. */
    fill_bytes(mem2, 0, sizeof mem2);
    uint64_t v = 0;
    check_err(c, "call on zeroed memory: NOT_INITIALISED", ots_client_seq((ots_client_t *)mem2, &v),
              OTS_ERROR_NOT_INITIALISED);
    check_err(c, "call with a NULL client", ots_client_seq(0, &v), OTS_ERROR_NULL_POINTER);
    client = fresh(c, cb, mem, sizeof mem);
    check_err(c, "call with a misaligned handle", ots_client_seq((ots_client_t *)((uint8_t *)client + 2), &v),
              OTS_ERROR_MISALIGNED);
    check_err(c, "getter with a NULL out", ots_client_seq(client, 0), OTS_ERROR_NULL_POINTER);
    check_err(c, "deinit", ots_client_deinit(client), OTS_OK);
    check_err(c, "call after deinit: NOT_INITIALISED", ots_client_seq(client, &v), OTS_ERROR_NOT_INITIALISED);
    check_err(c, "deinit twice: NOT_INITIALISED", ots_client_deinit(client), OTS_ERROR_NOT_INITIALISED);
}

static void bad_config(checks_t *c, const ots_codebook_t *cb) {
    ots_config_t cfg;
    ots_client_t *client = 0;
    char long_id[OTS_DEVICE_ID_MAX + 2];
    fill_bytes(long_id, 'a', sizeof long_id);
    long_id[sizeof long_id - 1] = 0;

    check_err(c, "config: NULL config", ots_config_init(0, "tv"), OTS_ERROR_NULL_POINTER);
    check_err(c, "config: NULL device id", ots_config_init(&cfg, 0), OTS_ERROR_NULL_POINTER);
    check_err(c, "config: empty device id", ots_config_init(&cfg, ""), OTS_ERROR_EMPTY_ID);
    check_err(c, "config: 65-byte device id", ots_config_init(&cfg, long_id), OTS_ERROR_STRING_TOO_LONG);
    check_err(c, "config: space in the device id", ots_config_init(&cfg, "tv 1"), OTS_ERROR_INVALID_CHAR);
    check_err(c, "config: non-ASCII device id", ots_config_init(&cfg, "t\xc3\xa9l\xc3\xa9"), OTS_ERROR_INVALID_CHAR);
    check_err(c, "config: key of 63 hex digits",
              ots_config_set_key_hex(&cfg, "6f6d6567612d74762d73796e632d71656d752d636f727465782d6d34662d6b3"),
              OTS_ERROR_MALFORMED);
    check_err(c, "config: key with a non-hex digit",
              ots_config_set_key_hex(&cfg, "6f6d6567612d74762d73796e632d71656d752d636f727465782d6d34662d6bzz"),
              OTS_ERROR_MALFORMED);
    check_err(c, "config: key of 65 hex digits",
              ots_config_set_key_hex(&cfg, "6f6d6567612d74762d73796e632d71656d752d636f727465782d6d34662d6b311"),
              OTS_ERROR_MALFORMED);

    cfg = config();
    cfg.device_id[0] = 0;
    check_err(c, "init: empty device id in the config", ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client),
              OTS_ERROR_EMPTY_ID);
    cfg = config();
    fill_bytes(cfg.device_id, 'x', sizeof cfg.device_id);
    check_err(c, "init: device id without a NUL in its array",
              ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client), OTS_ERROR_STRING_TOO_LONG);
    cfg = config();
    cfg.caps.max_bytes = 100;
    check_err(c, "init: caps.max_bytes below OTS_MIN_DOWNLOAD_FRAME",
              ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client), OTS_ERROR_OUT_OF_RANGE);
    cfg = config();
    cfg.caps.max_bytes = OTS_MAX_DOWNLOAD_FRAME + 1;
    check_err(c, "init: caps.max_bytes above OTS_MAX_DOWNLOAD_FRAME",
              ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client), OTS_ERROR_OUT_OF_RANGE);
    cfg = config();
    cfg.filter.min_success_rate = 1.5f;
    check_err(c, "init: filter rate 1.5", ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client),
              OTS_ERROR_RATE_OUT_OF_RANGE);
    cfg = config();
    cfg.filter.min_success_rate = __builtin_nanf("");
    check_err(c, "init: filter rate NaN", ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client),
              OTS_ERROR_NON_FINITE);
    cfg = config();
    cfg.accept_zstd = 1;
    check_err(c, "init: accept_zstd in a build without zstd",
              ots_client_init(mem, sizeof mem, 8, cb, &cfg, &client), OTS_ERROR_INVALID_ARGUMENT);
    check(c, "no handle after refused configs", client == 0);

    ots_quality_filter_t f = ots_quality_filter_default();
    check(c, "quality filter: defaults 0.7 / 10, inclusive",
          f.min_success_rate == 0.7f && f.min_samples == 10 && ots_quality_filter_accepts(&f, 0.7f, 10) &&
              !ots_quality_filter_accepts(&f, 0.69f, 10) && !ots_quality_filter_accepts(&f, 0.9f, 9) &&
              !ots_quality_filter_accepts(&f, __builtin_nanf(""), 100) && !ots_quality_filter_accepts(0, 1.0f, 100));
}

static void bad_patterns(checks_t *c, const ots_codebook_t *cb) {
    ots_client_t *client = fresh(c, cb, mem, sizeof mem);
    ots_pattern_t p;
    size_t len = 99;

    copy_bytes(vec, fx_rows[0], sizeof fx_rows[0]);
    p = pat("p-00", vec);
    check_err(c, "upsert: NULL client", ots_client_upsert(0, &p, 0), OTS_ERROR_NULL_POINTER);
    check_err(c, "upsert: NULL pattern", ots_client_upsert(client, 0, 0), OTS_ERROR_NULL_POINTER);
    p.embedding = 0;
    check_err(c, "upsert: NULL embedding", ots_client_upsert(client, &p, 0), OTS_ERROR_NULL_POINTER);
    p = pat(0, vec);
    check_err(c, "upsert: NULL id", ots_client_upsert(client, &p, 0), OTS_ERROR_NULL_POINTER);
    p = pat("p-00", vec);
    p.category = 0;
    check_err(c, "upsert: NULL category", ots_client_upsert(client, &p, 0), OTS_ERROR_NULL_POINTER);
    p = pat("p-00", (const float *)((const uint8_t *)vec + 1));
    check_err(c, "upsert: embedding misaligned by 1 byte", ots_client_upsert(client, &p, 0), OTS_ERROR_MISALIGNED);
    p = pat("p-00", vec);
    p.embedding_len = OTS_DIM - 1;
    check_err(c, "upsert: 383 floats", ots_client_upsert(client, &p, 0), OTS_ERROR_WRONG_LENGTH);
    p.embedding_len = OTS_DIM + 1;
    check_err(c, "upsert: 385 floats", ots_client_upsert(client, &p, 0), OTS_ERROR_WRONG_LENGTH);

    p = pat("p-00", vec);
    vec[17] = __builtin_nanf("");
    check_err(c, "upsert: NaN in the embedding", ots_client_upsert(client, &p, 0), OTS_ERROR_NON_FINITE);
    vec[17] = __builtin_inff();
    check_err(c, "upsert: infinity in the embedding", ots_client_upsert(client, &p, 0), OTS_ERROR_NON_FINITE);
    copy_bytes(vec, fx_rows[0], sizeof fx_rows[0]);
    for (int i = 0; i < OTS_DIM; i++) vec[i] *= 2.0f;
    check_err(c, "upsert: norm 2", ots_client_upsert(client, &p, 0), OTS_ERROR_NOT_UNIT_NORM);
    for (int i = 0; i < OTS_DIM; i++) vec[i] *= 0.25f;
    check_err(c, "upsert: norm 0.5", ots_client_upsert(client, &p, 0), OTS_ERROR_NOT_UNIT_NORM);
    fill_bytes(vec, 0, sizeof vec);
    check_err(c, "upsert: zero vector", ots_client_upsert(client, &p, 0), OTS_ERROR_NOT_UNIT_NORM);

    copy_bytes(vec, fx_rows[0], sizeof fx_rows[0]);
    p.success_rate = 1.5f;
    check_err(c, "upsert: success rate 1.5", ots_client_upsert(client, &p, 0), OTS_ERROR_RATE_OUT_OF_RANGE);
    p.success_rate = -0.1f;
    check_err(c, "upsert: success rate -0.1", ots_client_upsert(client, &p, 0), OTS_ERROR_RATE_OUT_OF_RANGE);
    p.success_rate = __builtin_nanf("");
    check_err(c, "upsert: success rate NaN", ots_client_upsert(client, &p, 0), OTS_ERROR_NON_FINITE);
    p = pat("", vec);
    check_err(c, "upsert: empty id", ots_client_upsert(client, &p, 0), OTS_ERROR_EMPTY_ID);
    p = pat("p-0123456789abcde", vec); /* 17 bytes */
    check_err(c, "upsert: 17-byte id", ots_client_upsert(client, &p, 0), OTS_ERROR_STRING_TOO_LONG);
    p = pat("p 00", vec);
    check_err(c, "upsert: space in the id", ots_client_upsert(client, &p, 0), OTS_ERROR_INVALID_CHAR);
    p = pat("p-00", vec);
    p.category = "drama\x7f";
    check_err(c, "upsert: control byte in the category", ots_client_upsert(client, &p, 0), OTS_ERROR_INVALID_CHAR);

    size_t n = 99;
    ots_client_len(client, &n);
    check(c, "refused patterns changed nothing (0 patterns)", n == 0);

    /* Capacity: 8 slots, then a ninth id. */
    int ok = 1;
    for (unsigned i = 0; i < FX_SLOTS; i++) {
        char id[8];
        pattern_id(id, i);
        p = pat(id, fx_rows[i]);
        ok &= ots_client_upsert(client, &p, 0) == OTS_OK;
    }
    char id9[8];
    pattern_id(id9, 9);
    p = pat(id9, fx_rows[9]);
    check(c, "8 patterns in 8 slots", ok);
    check_err(c, "upsert: a ninth id in 8 slots", ots_client_upsert(client, &p, 0), OTS_ERROR_CAPACITY_EXCEEDED);
    check_err(c, "remove: unknown id", ots_client_remove(client, "p-77", 0), OTS_ERROR_NOT_FOUND);
    check_err(c, "remove: NULL id", ots_client_remove(client, 0, 0), OTS_ERROR_NULL_POINTER);

    uint32_t rev;
    check_err(c, "acked: not acknowledged yet", ots_client_acked(client, "p-00", &rev, codes, OTS_DIM),
              OTS_ERROR_NOT_FOUND);
    check_err(c, "acked: 383 codes", ots_client_acked(client, "p-00", &rev, codes, OTS_DIM - 1),
              OTS_ERROR_BUFFER_TOO_SMALL);
    check_err(c, "acked: codes misaligned",
              ots_client_acked(client, "p-00", &rev, (int16_t *)((uint8_t *)codes + 1), OTS_DIM - 1),
              OTS_ERROR_MISALIGNED);
    check_err(c, "quantize: 383 floats", ots_codebook_quantize(cb, fx_rows[0], OTS_DIM - 1, codes, OTS_DIM),
              OTS_ERROR_WRONG_LENGTH);
    check_err(c, "quantize: 383 codes", ots_codebook_quantize(cb, fx_rows[0], OTS_DIM, codes, OTS_DIM - 1),
              OTS_ERROR_BUFFER_TOO_SMALL);

    /* Buffers too small and calls out of order. */
    check_err(c, "prepare: NULL buffer", ots_client_prepare(client, 0, TX, &len), OTS_ERROR_NULL_POINTER);
    check_err(c, "prepare: NULL length", ots_client_prepare(client, tx, TX, 0), OTS_ERROR_NULL_POINTER);
    check_err(c, "prepare: 44-byte buffer", ots_client_prepare(client, tx, OTS_MIN_REQUEST_LEN - 1, &len),
              OTS_ERROR_BUFFER_TOO_SMALL);
    ots_client_in_flight(client, &n);
    check(c, "nothing in flight after a refused prepare", n == 0 && len == 99);
    ots_outcome_t out;
    ots_response_t resp = {.status = 200, .body = fx_v1.response, .body_len = fx_v1.response_len};
    check_err(c, "apply with no request in flight", ots_client_apply(client, tx, 45, &resp, 0, 0, &out),
              OTS_ERROR_PROTOCOL_VIOLATION);
    check_err(c, "prepare: the minimum buffer holds the head", ots_client_prepare(client, tx, OTS_MIN_REQUEST_LEN, &len),
              OTS_OK);
    check_err(c, "prepare while in flight: BUSY", ots_client_prepare(client, tx, TX, &len), OTS_ERROR_BUSY);
    check_err(c, "apply: sent_len differs from the request's", ots_client_apply(client, tx, len - 1, &resp, 0, 0, &out),
              OTS_ERROR_WRONG_LENGTH);
    check_err(c, "apply: NULL sent", ots_client_apply(client, 0, len, &resp, 0, 0, &out), OTS_ERROR_NULL_POINTER);
    check_err(c, "apply: NULL response", ots_client_apply(client, tx, len, 0, 0, 0, &out), OTS_ERROR_NULL_POINTER);
    check_err(c, "apply: NULL outcome", ots_client_apply(client, tx, len, &resp, 0, 0, 0), OTS_ERROR_NULL_POINTER);
    resp.body = 0;
    check_err(c, "apply: NULL body with a length", ots_client_apply(client, tx, len, &resp, 0, 0, &out),
              OTS_ERROR_NULL_POINTER);

    char auth[OTS_AUTH_HEADER_MAX + 1];
    check_err(c, "authorization: 114-byte buffer",
              ots_client_authorization(client, OTS_METHOD_POST, OTS_SYNC_PATH, tx, len, auth, OTS_AUTH_HEADER_MAX, &n),
              OTS_ERROR_BUFFER_TOO_SMALL);
    check_err(c, "authorization: method 7",
              ots_client_authorization(client, 7, OTS_SYNC_PATH, tx, len, auth, sizeof auth, &n),
              OTS_ERROR_INVALID_ARGUMENT);
    check_err(c, "authorization: NULL path",
              ots_client_authorization(client, OTS_METHOD_POST, 0, tx, len, auth, sizeof auth, &n),
              OTS_ERROR_NULL_POINTER);
    uint64_t counter = 0;
    ots_client_auth_counter(client, &counter);
    check(c, "refused signatures took no counter", counter == 1);

    char path[OTS_FEED_PATH_MAX + 1];
    check_err(c, "feed path: 96-byte buffer", ots_client_feed_path(client, 10, 4096, path, OTS_FEED_PATH_MAX, &n),
              OTS_ERROR_BUFFER_TOO_SMALL);
    check_err(c, "apply_feed while a request is in flight: BUSY",
              ots_client_apply_feed(client, fx_v1.response, fx_v1.response_len, 0, &out.summary), OTS_ERROR_BUSY);
    check_err(c, "snapshot: 10-byte buffer", ots_client_snapshot(client, snap, 10, &n), OTS_ERROR_BUFFER_TOO_SMALL);
    check_err(c, "snapshot: NULL buffer", ots_client_snapshot(client, 0, SNAP, &n), OTS_ERROR_NULL_POINTER);
    check_err(c, "restore: NULL bytes", ots_client_restore(client, 0, 10), OTS_ERROR_NULL_POINTER);
    ots_client_deinit(client);
}

/* A real request and response: every truncation and every flipped byte. */
static void bad_responses(checks_t *c, const ots_codebook_t *cb) {
    ots_client_t *client = fresh(c, cb, mem, sizeof mem);
    int ok = 1;
    for (unsigned i = 0; i < FX_PATTERNS; i++) {
        char id[8];
        pattern_id(id, i);
        ots_pattern_t p = pat(id, fx_rows[i]);
        p.category = (i % 2 == 0) ? "drama" : "comedy";
        p.sample_count = FX_SAMPLES_BASE + i;
        ok &= ots_client_upsert(client, &p, FX_NOW_MS) == OTS_OK;
    }
    size_t n = 0;
    ok &= ots_client_prepare(client, tx, TX, &n) == OTS_OK;
    check(c, "the recorded request, prepared again", ok && n == fx_v1.upload_len && bytes_eq(tx, fx_v1.upload, n));
    /* Signed as it was sent (counter 1): the recorded answer is signed for it. */
    char auth[OTS_AUTH_HEADER_MAX + 1];
    size_t auth_len = 0;
    check_err(c, "the request is signed",
              ots_client_authorization(client, OTS_METHOD_POST, OTS_SYNC_PATH, tx, n, auth, sizeof auth, &auth_len),
              OTS_OK);
    const uint8_t *sig = (const uint8_t *)fx_v1.response_sig;

    ots_outcome_t out;
    size_t len = fx_v1.response_len;
    unsigned refused = 0, truncated = 0;
    for (size_t k = 0; k < len; k++) {
        ots_response_t resp = {
            .status = 200, .body = plat_exact_copy(fx_v1.response, k), .body_len = k, .signature = sig, .signature_len = 64};
        ots_error_t e = ots_client_apply(client, tx, n, &resp, FX_NOW_MS, 0, &out);
        refused += e != OTS_OK && ots_error_class(e) == OTS_CLASS_INPUT;
        truncated += e == OTS_ERROR_TRUNCATED;
    }
    say_u64("  truncations refused: ", refused);
    check(c, "every truncation of the response (0..len-1 bytes) refused as bad input", refused == len);
    check(c, "  among them OTS_ERROR_TRUNCATED", truncated > 0);

    unsigned flips = 0;
    for (size_t k = 0; k < len; k++) {
        uint8_t *b = plat_exact_copy(fx_v1.response, len);
        b[k] ^= 0x01;
        ots_response_t resp = {.status = 200, .body = b, .body_len = len, .signature = sig, .signature_len = 64};
        ots_error_t e = ots_client_apply(client, tx, n, &resp, FX_NOW_MS, 0, &out);
        flips += e != OTS_OK;
    }
    check(c, "every one-bit corruption of the response refused (CRC-32)", flips == len);

    uint64_t seq = 0, gv = 7;
    size_t in_flight = 0;
    ots_client_seq(client, &seq);
    ots_client_global_version(client, &gv);
    ots_client_in_flight(client, &in_flight);
    check(c, "after all of them: nothing applied, the request still in flight",
          seq == 1 && gv == 0 && in_flight == n);

    /* Statuses other than 200. */
    static const uint8_t json409[] = "{\"error\":\"sequence\",\"detail\":\"x\"}";
    ots_response_t r409 = {.status = 409, .body = json409, .body_len = sizeof json409 - 1};
    check_err(c, "409 without last_seq: PROTOCOL_VIOLATION", ots_client_apply(client, tx, n, &r409, 0, 0, &out),
              OTS_ERROR_PROTOCOL_VIOLATION);
    static const uint8_t forged409[] = "{\"error\":\"stale_sequence\",\"last_seq\":18446744073709551614}";
    ots_response_t f409 = {.status = 409, .body = forged409, .body_len = sizeof forged409 - 1};
    check_err(c, "an unsigned 409 (forged): UNAUTHENTICATED", ots_client_apply(client, tx, n, &f409, 0, 0, &out),
              OTS_ERROR_UNAUTHENTICATED);
    ots_client_seq(client, &seq);
    ots_client_in_flight(client, &in_flight);
    check(c, "  the sequence did not move, the request is still in flight", seq == 1 && in_flight == n);
    ots_stats_t stats;
    ots_client_stats(client, &stats);
    check(c, "  counted as unauthenticated", stats.unauthenticated == 1);
    ots_response_t unsigned200 = {.status = 200, .body = fx_v1.response, .body_len = len};
    check_err(c, "the real response without its signature: UNAUTHENTICATED",
              ots_client_apply(client, tx, n, &unsigned200, FX_NOW_MS, 0, &out), OTS_ERROR_UNAUTHENTICATED);
    ots_response_t r503 = {.status = 503, .has_retry_after = 1, .retry_after_s = 30, .body = 0, .body_len = 0};
    check_err(c, "503 with Retry-After", ots_client_apply(client, tx, n, &r503, 1000, 0, &out), OTS_OK);
    check(c, "  retry no sooner than Retry-After", out.kind == OTS_OUTCOME_RETRY_LATER && out.at_ms >= 31000);

    /* Re-entry from a callback. */
    reentry_t re = {client, OTS_OK, 0};
    ots_sink_t sink = {&re, 0, reenter, 0, 0};
    ots_response_t resp = {.status = 200, .body = fx_v1.response, .body_len = len, .signature = sig, .signature_len = 64};
    check_err(c, "apply: misaligned sink",
              ots_client_apply(client, tx, n, &resp, FX_NOW_MS, (const ots_sink_t *)((const uint8_t *)&sink + 1), &out),
              OTS_ERROR_MISALIGNED);
    check_err(c, "the real response applies", ots_client_apply(client, tx, n, &resp, FX_NOW_MS, &sink, &out), OTS_OK);
    check(c, "a callback calling into its own client (a getter, init, deinit) gets OTS_ERROR_REENTRANT",
          re.calls == 2 && re.inner == OTS_ERROR_REENTRANT);
    ots_client_seq(client, &seq);
    check(c, "  and the client is usable again afterwards", seq == 2);

    /* The snapshot: every truncation and every flipped byte. */
    size_t sn = 0;
    check_err(c, "snapshot", ots_client_snapshot(client, snap, SNAP, &sn), OTS_OK);
    ots_client_t *other = fresh(c, cb, mem2, sizeof mem2);
    unsigned bad = 0;
    for (size_t k = 0; k < sn; k += (k < 64 ? 1 : 37)) {
        bad += ots_client_restore(other, plat_exact_copy(snap, k), k) != OTS_OK;
    }
    unsigned tried = 0;
    for (size_t k = 0; k < sn; k += (k < 64 ? 1 : 37)) tried++;
    check(c, "truncated snapshots refused", bad == tried);
    bad = 0;
    for (size_t k = 0; k < sn; k++) {
        uint8_t *b = plat_exact_copy(snap, sn);
        b[k] ^= 0x80;
        bad += ots_client_restore(other, b, sn) != OTS_OK;
    }
    check(c, "every corrupted snapshot byte refused", bad == sn);
    ots_client_seq(other, &seq);
    size_t count = 9;
    ots_client_len(other, &count);
    check(c, "  the target client unchanged (sequence 1, no patterns)", seq == 1 && count == 0);
    check_err(c, "the intact snapshot restores", ots_client_restore(other, snap, sn), OTS_OK);

    /* A snapshot of another device. */
    ots_config_t cfg;
    ots_config_init(&cfg, "another-tv");
    ots_client_t *third = 0;
    ots_client_init(mem2, sizeof mem2, 8, cb, &cfg, &third);
    check_err(c, "snapshot of another device: PROTOCOL_VIOLATION", ots_client_restore(third, snap, sn),
              OTS_ERROR_PROTOCOL_VIOLATION);
    ots_codebook_t small;
    ots_codebook_minilm_small_v1(&small);
    cfg = config();
    ots_client_init(mem2, sizeof mem2, 8, &small, &cfg, &third);
    check_err(c, "snapshot of another codebook: UNKNOWN_CODEBOOK", ots_client_restore(third, snap, sn),
              OTS_ERROR_UNKNOWN_CODEBOOK);
    ots_client_deinit(third);
    ots_client_deinit(client);
}

static void error_names(checks_t *c) {
    check(c, "error names: checksum, truncated, null_pointer, unknown",
          str_eq(ots_error_str(OTS_ERROR_CHECKSUM), "checksum") && str_eq(ots_error_str(OTS_ERROR_TRUNCATED), "truncated") &&
              str_eq(ots_error_str(OTS_ERROR_NULL_POINTER), "null_pointer") && str_eq(ots_error_str(-5), "unknown") &&
              str_eq(ots_error_str(OTS_OK), "ok"));
    check(c, "error classes: resource, peer, input, API, transport, unknown",
          ots_error_class(OTS_ERROR_BUFFER_TOO_SMALL) == OTS_CLASS_RESOURCE &&
              ots_error_class(OTS_ERROR_UNKNOWN_CODEBOOK) == OTS_CLASS_PEER &&
              ots_error_class(OTS_ERROR_CHECKSUM) == OTS_CLASS_INPUT &&
              ots_error_class(OTS_ERROR_MISALIGNED) == OTS_CLASS_API &&
              ots_error_class(OTS_ERROR_TRANSPORT) == OTS_CLASS_TRANSPORT && ots_error_class(1000) == OTS_CLASS_UNKNOWN);
}

void run_bad_input(checks_t *c) {
    ots_codebook_t cb;
    if (ots_codebook_minilm_v1(&cb) != OTS_OK) {
        check(c, "codebook", 0);
        return;
    }
    say("bad input: API misuse\n");
    api_misuse(c, &cb);
    say("bad input: configuration\n");
    bad_config(c, &cb);
    say("bad input: patterns, buffers, order\n");
    bad_patterns(c, &cb);
    say("bad input: responses and snapshots\n");
    bad_responses(c, &cb);
    error_names(c);
}
