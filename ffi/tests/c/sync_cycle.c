/*
 * The device's sync cycle through the C API, for both codebook profiles:
 * the checks of examples/cortex-m/src/sync_cycle.rs, repeated from C.
 *
 * 1. upsert 8 real patterns (rows of data/minilm/patterns_public.f32);
 * 2. prepare the upload: byte for byte the one the host's Rust client
 *    prepared (fixtures.c, ffi/examples/fixtures.rs), and its Authorization
 *    value equal to the host's;
 * 3. a corrupted copy of the recorded response is refused and changes
 *    nothing (the request stays in flight);
 * 4. apply the recorded response: 7 acks, a conflict with the server's
 *    state, a global removal, 2 global upserts, 2 trends through the sink;
 * 5. the acked state: codes equal to the target's own quantisation at
 *    revision 1, the conflict's server codes at revision 5, sequence 2,
 *    cursor 42, next sync in 600 s;
 * 6. snapshot equal to the host's, restored into a second client with the
 *    same sequence, cursor and acked state.
 */
#include "checks.h"
#include "fixtures.h"

#define TX 8192
#define RX 16384

/* Caller-owned memory: all static, nothing on the heap. */
static uint64_t client_mem[OTS_CLIENT_SIZE(FX_SLOTS) / 8 + 1];
static uint64_t restored_mem[OTS_CLIENT_SIZE(FX_SLOTS) / 8 + 1];
static uint8_t tx[TX];
static uint8_t rx[RX];
static uint8_t snapshot[OTS_MAX_SNAPSHOT_LEN(FX_SLOTS)];
static int16_t codes[OTS_DIM];
static int16_t want_codes[OTS_DIM];

/* What the response brought down. */
typedef struct {
    unsigned upserts;
    int upserts_ok;
    uint32_t removed_id;
    uint64_t removed_version;
    unsigned removals;
    unsigned trends;
    int trends_ok;
    unsigned resets;
} sink_state_t;

static float dot(const float *a, const float *b) {
    float s = 0.0f;
    for (int i = 0; i < OTS_DIM; i++) s += a[i] * b[i];
    return s;
}

static void on_reset(void *user) { ((sink_state_t *)user)->resets++; }

static void on_upsert(void *user, const ots_global_pattern_t *g) {
    sink_state_t *s = user;
    unsigned k = s->upserts++;
    if (k >= 2) {
        s->upserts_ok = 0;
        return;
    }
    /* The reconstruction is close to the row the server quantised. */
    float cos = dot(fx_rows[FX_GLOBAL_ROW[k]], g->embedding);
    s->upserts_ok &= g->id == FX_GLOBAL_IDS[k] && g->version == FX_VERSIONS[1 + k] &&
                     cos > 0.97f && g->contributors == 12 && g->sample_count == 1000;
}

static void on_remove(void *user, uint32_t id, uint64_t version) {
    sink_state_t *s = user;
    s->removals++;
    s->removed_id = id;
    s->removed_version = version;
}

static void on_trend(void *user, const ots_trend_t *t, uint64_t version) {
    sink_state_t *s = user;
    unsigned k = s->trends++;
    if (k >= 2) {
        s->trends_ok = 0;
        return;
    }
    s->trends_ok &= str_eq(t->content_id, FX_TREND_CONTENT[k]) && t->score == FX_TREND_SCORE[k] &&
                    str_eq(t->region, FX_TREND_REGION[k]) &&
                    str_eq(t->category, FX_TREND_CATEGORY[k]) &&
                    t->calculated_at == FX_TREND_AT[k] && version == FX_VERSIONS[3 + k];
}

static ots_error_t make_config(ots_config_t *cfg) {
    ots_error_t e = ots_config_init(cfg, FX_DEVICE_ID);
    if (e != OTS_OK) return e;
    return ots_config_set_key_hex(cfg, FX_DEVICE_KEY_HEX);
}

static ots_pattern_t pattern(unsigned i, char id[8]) {
    pattern_id(id, i);
    ots_pattern_t p = {
        .id = id,
        .embedding = fx_rows[i],
        .embedding_len = OTS_DIM,
        .success_rate = FX_RATE,
        .sample_count = FX_SAMPLES_BASE + i,
        .category = (i % 2 == 0) ? "drama" : "comedy",
    };
    return p;
}

static void cycle(checks_t *c, call_stack_t *cs, const ots_codebook_t *cb, const fx_recorded_t *fx) {
    ots_config_t cfg;
    ots_client_t *client = 0;
    ots_error_t e;
    check_err(c, "  config (device id, key from hex)", make_config(&cfg), OTS_OK);
    MEASURE(cs->init, e = ots_client_init(client_mem, sizeof client_mem, FX_SLOTS, cb, &cfg, &client));
    check_err(c, "  client in static memory (OTS_CLIENT_SIZE(8))", e, OTS_OK);
    if (e != OTS_OK) return;

    /* 1. Patterns from the real vectors. */
    unsigned ok = 0;
    for (unsigned i = 0; i < FX_PATTERNS; i++) {
        char id[8];
        ots_pattern_t p = pattern(i, id);
        MEASURE(cs->upsert, e = ots_client_upsert(client, &p, FX_NOW_MS));
        ok += e == OTS_OK;
    }
    size_t pending = 0;
    ots_client_pending(client, &pending);
    check(c, "  upsert 8 real patterns, all pending", ok == FX_PATTERNS && pending == FX_PATTERNS);

    /* 2. The upload, byte-exact with the host's, and its signature. */
    size_t n = 0;
    MEASURE(cs->prepare, e = ots_client_prepare(client, tx, sizeof tx, &n));
    check_err(c, "  prepare", e, OTS_OK);
    check(c, "  upload frame equals the host's byte for byte",
          n == fx->upload_len && bytes_eq(tx, fx->upload, n));
    char auth[OTS_AUTH_HEADER_MAX + 1];
    size_t auth_len = 0;
    MEASURE(cs->sign, e = ots_client_authorization(client, OTS_METHOD_POST, OTS_SYNC_PATH, tx, n,
                                                   auth, sizeof auth, &auth_len));
    uint64_t counter = 0;
    ots_client_auth_counter(client, &counter);
    check(c, "  Authorization header (HMAC-SHA256) equals the host's",
          e == OTS_OK && str_eq(auth, fx->auth) && counter == 2);

    /* 3. A corrupted response changes nothing. */
    size_t len = fx->response_len;
    copy_bytes(rx, fx->response, len);
    rx[len / 2] ^= 0x20;
    /* The server's X-OTS-Signature for the request's counter. */
    ots_response_t resp = {
        .status = 200, .body = rx, .body_len = len, .signature = (const uint8_t *)fx->response_sig, .signature_len = 64};
    ots_outcome_t out;
    sink_state_t st = {0, 1, 0, 0, 0, 0, 1, 0};
    ots_sink_t sink = {&st, on_reset, on_upsert, on_remove, on_trend};
    e = ots_client_apply(client, tx, n, &resp, FX_NOW_MS, &sink, &out);
    size_t in_flight = 0;
    uint64_t seq = 0;
    ots_client_in_flight(client, &in_flight);
    ots_client_seq(client, &seq);
    check(c, "  corrupted response refused, request still in flight",
          e == OTS_ERROR_CHECKSUM && in_flight == n && seq == 1 && st.upserts == 0 &&
              st.removals == 0 && st.trends == 0);

    /* 4. The recorded response. */
    copy_bytes(rx, fx->response, len);
    MEASURE(cs->apply, e = ots_client_apply(client, tx, n, &resp, FX_NOW_MS, &sink, &out));
    check_err(c, "  apply", e, OTS_OK);
    check(c, "  response applied: 7 acks, 1 conflict, 3 global changes, 2 trends",
          out.kind == OTS_OUTCOME_SYNCED && out.summary.uploaded == FX_PATTERNS &&
              out.summary.acked == FX_PATTERNS - 1 && out.summary.conflicts == 1 &&
              out.summary.globals == 3 && out.summary.trends == 2 && !out.summary.more);

    /* 5. The acked state. */
    int acks_ok = 1;
    for (unsigned i = 0; i < FX_PATTERNS; i++) {
        if (i == FX_CONFLICT) continue;
        char id[8];
        pattern_id(id, i);
        uint32_t rev = 0;
        MEASURE(cs->quantize, e = ots_codebook_quantize(cb, fx_rows[i], OTS_DIM, want_codes, OTS_DIM));
        acks_ok &= e == OTS_OK;
        acks_ok &= ots_client_acked(client, id, &rev, codes, OTS_DIM) == OTS_OK &&
                   rev == FX_ACK_REV && bytes_eq(codes, want_codes, sizeof codes);
    }
    check(c, "  acked codes = the target's own quantisation, revision 1", acks_ok);
    {
        char id[8];
        pattern_id(id, FX_CONFLICT);
        uint32_t rev = 0;
        int conflict_ok =
            ots_codebook_quantize(cb, fx_rows[FX_SERVER_ROW], OTS_DIM, want_codes, OTS_DIM) == OTS_OK &&
            ots_client_acked(client, id, &rev, codes, OTS_DIM) == OTS_OK && rev == FX_SERVER_REV &&
            bytes_eq(codes, want_codes, sizeof codes);
        ots_client_pending(client, &pending);
        check(c, "  conflict: server's codes adopted at its revision, merge pending",
              conflict_ok && pending == 1);
    }
    uint64_t gv = 0, next = 0;
    ots_client_seq(client, &seq);
    ots_client_global_version(client, &gv);
    ots_client_in_flight(client, &in_flight);
    ots_client_next_sync_at(client, &next);
    check(c, "  sequence 2, cursor 42, next sync in 600 s",
          seq == 2 && gv == FX_GLOBAL_VERSION && in_flight == 0 &&
              next == FX_NOW_MS + (uint64_t)FX_NEXT_SYNC_S * 1000);
    check(c, "  sink: 1 removal, 2 global patterns (cos > 0.97 to their rows), 2 trends",
          st.removals == 1 && st.removed_id == FX_GLOBAL_REMOVED &&
              st.removed_version == FX_VERSIONS[0] && st.upserts == 2 && st.upserts_ok &&
              st.trends == 2 && st.trends_ok && st.resets == 0);
    ots_stats_t stats;
    ots_client_stats(client, &stats);
    check(c, "  stats: 1 synced, 7 acked, 1 conflict, 1 resend (the corrupted response)",
          stats.synced == 1 && stats.acked == 7 && stats.conflicts == 1 && stats.resends == 1);

    /* 6. Snapshot and restore. */
    size_t sn = 0;
    MEASURE(cs->snapshot, e = ots_client_snapshot(client, snapshot, sizeof snapshot, &sn));
    check(c, "  snapshot equals the host's byte for byte",
          e == OTS_OK && sn == fx->snapshot_len && bytes_eq(snapshot, fx->snapshot, sn));
    ots_client_t *restored = 0;
    e = ots_client_init(restored_mem, sizeof restored_mem, FX_SLOTS, cb, &cfg, &restored);
    if (e == OTS_OK) MEASURE(cs->restore, e = ots_client_restore(restored, snapshot, sn));
    uint64_t rseq = 0, rgv = 0;
    ots_client_seq(restored, &rseq);
    ots_client_global_version(restored, &rgv);
    int same = e == OTS_OK && rseq == seq && rgv == gv;
    for (unsigned i = 0; i < FX_PATTERNS; i++) {
        char id[8];
        pattern_id(id, i);
        uint32_t r1 = 0, r2 = 0;
        ots_error_t e1 = ots_client_acked(client, id, &r1, codes, OTS_DIM);
        ots_error_t e2 = ots_client_acked(restored, id, &r2, want_codes, OTS_DIM);
        same &= e1 == OTS_OK && e2 == OTS_OK && r1 == r2 && bytes_eq(codes, want_codes, sizeof codes);
    }
    check(c, "  restored: same sequence, cursor, acked state", same);
    check_err(c, "  deinit", ots_client_deinit(restored), OTS_OK);
    check_err(c, "  deinit", ots_client_deinit(client), OTS_OK);
}

void run_sync_cycle(checks_t *c, call_stack_t *cs) {
    ots_codebook_t cb;
    size_t flash = 0;

    check_err(c, "codebook minilm_v1", ots_codebook_minilm_v1(&cb), OTS_OK);
    ots_codebook_flash_bytes(&cb, &flash);
    say_u64("sync cycle: minilm_v1, codebook bytes=", flash);
    cycle(c, cs, &cb, &fx_v1);

    check_err(c, "codebook minilm_small_v1", ots_codebook_minilm_small_v1(&cb), OTS_OK);
    ots_codebook_flash_bytes(&cb, &flash);
    say_u64("sync cycle: minilm_small_v1, codebook bytes=", flash);
    cycle(c, cs, &cb, &fx_small);
}
