/* Recording integrity: verify finds a flipped byte, a deleted, swapped or cut chunk at the
 * right chunk; unsealed files verify intact; crashed recordings are sealed; keys rotate; the
 * wrong master key fails clearly; seeking by the index. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rec_fixture.h"
#include "rec_test_keys.h"
#include "recorder/rec.h"
#include "recorder/seal.h"
#include "replay/replay.h"

#define T0 1796300000000000LL /* 2026-12-03 */
#define SEC 1000000LL
#define CHUNKS 5
#define CHUNK_HEADER 64

typedef struct fixture {
    rec_scratch scratch;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    rec_scratch_open(&f->scratch, "verify");
    *state = f;
    /* Each test starts from the full key set (some load less). */
    return rec_test_keys_setup(NULL) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rec_scratch_close(&f->scratch);
    free(f);
    return rec_test_keys_teardown(NULL);
}

/* What a crash leaves: the chunks without the trailer (the footer says where it starts). */
static void truncate_to_chunks(const char *path)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    uint8_t footer[16];
    fseek(fp, -16, SEEK_END);
    assert_int_equal(fread(footer, 1, sizeof(footer), fp), sizeof(footer));
    fclose(fp);
    assert_memory_equal(footer + 8, "SPTREND\n", 8);
    assert_int_equal(truncate(path, (off_t)sp_get_be64(footer)), 0);
}

/* CHUNKS chunks, chunk i holding two events at T0 + 10 s * i; sealed when seal is true. */
static char *write_rec(fixture *f, const char *id, bool seal)
{
    char err[256];
    sp_rec_meta meta = {.session_id = id,
                        .kind = "postgres",
                        .identity = "alice",
                        .target = "clinic",
                        .database = "clinic",
                        .db_user = "sp_alice",
                        .client_addr = "127.0.0.1:5000",
                        .started_at = T0};
    sp_rec *r = sp_rec_create(f->scratch.dir, &meta, 1024, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    for (int i = 0; i < CHUNKS; i++) {
        char sql[64];
        snprintf(sql, sizeof(sql), "select %d from patients", i);
        assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0 + i * 10 * SEC, sql, NULL), 0);
        assert_int_equal(
            sp_rec_eventv(r, SP_EV_COMPLETE, T0 + i * 10 * SEC + 500, "SELECT 1", "1", NULL), 0);
        assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    }
    if (seal) {
        assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "client closed the connection"), 0);
    } else {
        assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "never seen"), 0);
        truncate_to_chunks(path);
    }
    return path;
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *data = malloc((size_t)n + 1);
    assert_int_equal(fread(data, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return data;
}

static void write_all(const char *path, const uint8_t *data, size_t len)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(data, 1, len, fp), len);
    fclose(fp);
}

/* Offset of chunk no (no == CHUNKS: where the chunks end). */
static size_t chunk_offset(const uint8_t *data, int no)
{
    size_t off = 7 + 2 + 2 + 4 + sp_get_be32(data + 11) + 4;
    for (int i = 0; i < no; i++) {
        assert_memory_equal(data + off, "SPCK", 4);
        off += CHUNK_HEADER + sp_get_be32(data + off + 8);
    }
    return off;
}

static sp_verify_result verify(const char *path, int64_t index_chunks, bool ended,
                               const char *reason)
{
    sp_verify_expect e = {.chunk_count = index_chunks, .ended = ended, .end_reason = reason};
    sp_verify_result res;
    sp_verify_recording(path, &e, &res);
    return res;
}

static void assert_tampered_at(const char *path, uint64_t chunk, const char *why)
{
    sp_verify_result res = verify(path, CHUNKS, true, "client closed the connection");
    if (res.status != SP_VERIFY_TAMPERED || !res.has_bad_chunk || res.bad_chunk != chunk ||
        !strstr(res.detail, why))
        fail_msg("expected tampered at chunk %llu (%s), got %s at %llu: %s",
                 (unsigned long long)chunk, why, sp_verify_status_name(res.status),
                 (unsigned long long)res.bad_chunk, res.detail);
}

/* Loads only the public key, as an auditor without the master key would. */
static void use_public_key_only(fixture *f)
{
    char pem[1024], id[32], err[256], path[128];
    assert_int_equal(
        sp_keys_public(test_keys.signing, pem, sizeof(pem), id, sizeof(id), err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s/public.pem", f->scratch.dir);
    write_all(path, (const uint8_t *)pem, strlen(pem));
    assert_int_equal(sp_rec_keys_init_readonly(NULL, path, err, sizeof(err)), 0);
    assert_true(sp_rec_keys_can_verify());
    assert_false(sp_rec_keys_can_write());
}

static void test_sealed_ok(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "sealed", true);
    sp_verify_result res = verify(path, CHUNKS, true, "client closed the connection");
    assert_int_equal(res.status, SP_VERIFY_SEALED_OK);
    assert_true(res.content_checked);
    assert_int_equal(res.chunks, CHUNKS);
    assert_string_equal(res.end_reason, "client closed the connection");
    use_public_key_only(f);
    res = verify(path, CHUNKS, true, "client closed the connection");
    assert_int_equal(res.status, SP_VERIFY_SEALED_OK);
    assert_false(res.content_checked);
    free(path);
}

/* A flipped byte in chunk 2's ciphertext: found at chunk 2 with the master key (it does not
 * authenticate) and with the public key only (chunk 3's link to it breaks). */
static void test_flipped_byte(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "flip", true);
    size_t len;
    uint8_t *data = read_all(path, &len);
    data[chunk_offset(data, 2) + CHUNK_HEADER + 3] ^= 0x01;
    write_all(path, data, len);
    assert_tampered_at(path, 2, "altered");
    use_public_key_only(f);
    assert_tampered_at(path, 2, "altered");
    /* The last chunk: the signed chain head no longer matches it. */
    data[chunk_offset(data, 2) + CHUNK_HEADER + 3] ^= 0x01;
    data[chunk_offset(data, CHUNKS) - 5] ^= 0x80;
    write_all(path, data, len);
    assert_tampered_at(path, CHUNKS - 1, "altered");
    free(data);
    free(path);
}

static void test_deleted_chunk(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "delete", true);
    size_t len;
    uint8_t *data = read_all(path, &len);
    size_t c2 = chunk_offset(data, 2), c3 = chunk_offset(data, 3);
    memmove(data + c2, data + c3, len - c3);
    write_all(path, data, len - (c3 - c2));
    assert_tampered_at(path, 2, "missing, duplicated or out of order");
    free(data);
    free(path);
}

static void test_swapped_chunks(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "swap", true);
    size_t len;
    uint8_t *data = read_all(path, &len);
    size_t c1 = chunk_offset(data, 1), c2 = chunk_offset(data, 2), c3 = chunk_offset(data, 3);
    uint8_t *copy = malloc(len + (c2 - c1)); /* room for the duplicate below */
    memcpy(copy, data, c1);
    memcpy(copy + c1, data + c2, c3 - c2);
    memcpy(copy + c1 + (c3 - c2), data + c1, c2 - c1);
    memcpy(copy + c3, data + c3, len - c3);
    write_all(path, copy, len);
    assert_tampered_at(path, 1, "out of order");
    /* A duplicated chunk likewise. */
    memcpy(copy, data, c2);
    memcpy(copy + c2, data + c1, c2 - c1);
    memcpy(copy + c2 + (c2 - c1), data + c2, len - c2);
    write_all(path, copy, len + (c2 - c1));
    assert_tampered_at(path, 2, "duplicated");
    free(copy);
    free(data);
    free(path);
}

/* Cut inside chunk 3, and cut cleanly after chunk 3: both lose the trailer; the sessions index
 * knows the session ended with 5 chunks. */
static void test_truncated(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "cut", true);
    size_t len;
    uint8_t *data = read_all(path, &len);
    size_t c3 = chunk_offset(data, 3), c4 = chunk_offset(data, 4);
    write_all(path, data, c3 + 20);
    assert_tampered_at(path, 3, "cut short");
    write_all(path, data, c4);
    assert_tampered_at(path, 4, "cut short");
    /* The index may lag by up to 10 s: an ended session whose file has every chunk the index
     * counted but no trailer was still cut (the trailer removed). */
    sp_verify_result res = verify(path, 3, true, "client closed the connection");
    assert_int_equal(res.status, SP_VERIFY_TAMPERED);
    assert_non_null(strstr(res.detail, "no trailer"));
    free(data);
    free(path);
}

static void test_unsealed_intact_and_missing(void **state)
{
    fixture *f = *state;
    char *path = write_rec(f, "crash", false);
    sp_verify_result res = verify(path, CHUNKS - 1, true, "gateway-crashed");
    assert_int_equal(res.status, SP_VERIFY_UNSEALED_INTACT);
    assert_int_equal(res.chunks, CHUNKS);
    res = verify(path, 2, false, "");
    assert_int_equal(res.status, SP_VERIFY_UNSEALED_INTACT);
    /* More chunks in the index than on disk: cut. */
    res = verify(path, CHUNKS + 3, true, "gateway-crashed");
    assert_int_equal(res.status, SP_VERIFY_TAMPERED);
    assert_int_equal(res.bad_chunk, CHUNKS);
    unlink(path);
    res = verify(path, CHUNKS, true, "gateway-crashed");
    assert_int_equal(res.status, SP_VERIFY_MISSING);
    free(path);
}

static void test_seal_after_crash(void **state)
{
    fixture *f = *state;
    char err[512];
    char *path = write_rec(f, "orphan", false);
    /* A torn partial chunk at the end, as a power loss mid-write leaves. */
    size_t len;
    uint8_t *data = read_all(path, &len);
    uint8_t *torn = malloc(len + 30);
    memcpy(torn, data, len);
    memcpy(torn + len, data + chunk_offset(data, 1), 30);
    write_all(path, torn, len + 30);
    /* The index says more chunks than there are: cut, never sealed over. */
    assert_int_equal(sp_rec_seal_file(path, "gateway-crashed", CHUNKS + 1, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cut short"));
    assert_int_equal(sp_rec_seal_file(path, "gateway-crashed", CHUNKS, err, sizeof(err)), 0);
    sp_verify_result res = verify(path, CHUNKS, true, "gateway-crashed");
    assert_int_equal(res.status, SP_VERIFY_SEALED_OK);
    assert_string_equal(res.end_reason, "gateway-crashed");
    /* Chunks untouched: the sealed file starts with the crashed file's bytes. */
    size_t sealed_len;
    uint8_t *sealed = read_all(path, &sealed_len);
    assert_memory_equal(sealed, data, len);
    assert_int_equal(sp_rec_seal_file(path, "gateway-crashed", 0, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "already sealed"));
    /* A tampered orphan is not sealed over. */
    char *path2 = write_rec(f, "orphan-bad", false);
    free(data);
    data = read_all(path2, &len);
    data[chunk_offset(data, 1) + CHUNK_HEADER + 1] ^= 0x10;
    write_all(path2, data, len);
    assert_int_equal(sp_rec_seal_file(path2, "gateway-crashed", 0, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "tampered"));
    free(sealed);
    free(torn);
    free(data);
    free(path);
    free(path2);
}

static int read_count(const char *path, char *err, size_t errlen)
{
    sp_rec_reader *rd = sp_rec_reader_open(path, err, errlen);
    if (!rd)
        return -1;
    sp_rec_ev ev;
    int n = 0;
    while (sp_rec_reader_next(rd, &ev, err, errlen) == 1)
        n++;
    enum sp_rec_state st = sp_rec_reader_state(rd, NULL);
    sp_rec_reader_close(rd);
    return st == SP_REC_SEALED ? n : -2;
}

/* After rotation both the old and the new recording open; a key file holding a different key
 * under the old id, or lacking it, fails clearly. */
static void test_rotate_and_wrong_key(void **state)
{
    fixture *f = *state;
    char err[512], id[SP_KEY_ID_MAX];
    char *old_path = write_rec(f, "before-rotation", true);
    size_t old_len;
    char *old_keys = (char *)read_all(test_keys.master, &old_len);
    old_keys[old_len] = '\0';
    assert_int_equal(sp_keys_rotate(test_keys.master, id, sizeof(id), err, sizeof(err)), 0);
    sp_config cfg = {
        .path = "test", .master_key_file = test_keys.master, .signing_key_file = test_keys.signing};
    assert_int_equal(sp_rec_keys_init(&cfg, err, sizeof(err)), 0);
    char *new_path = write_rec(f, "after-rotation", true);
    assert_int_equal(read_count(old_path, err, sizeof(err)), 2 * CHUNKS);
    assert_int_equal(read_count(new_path, err, sizeof(err)), 2 * CHUNKS);
    size_t len;
    uint8_t *hdr = read_all(new_path, &len);
    assert_non_null(memmem(hdr, 512, id, strlen(id)));
    free(hdr);

    /* Only the new key: the old recording names a key that is not loaded. */
    size_t cur_len;
    char *cur = (char *)read_all(test_keys.master, &cur_len);
    cur[cur_len] = '\0';
    assert_int_equal(sp_rec_keys_load_text(strstr(cur, id), NULL, err, sizeof(err)), 0);
    assert_int_equal(read_count(old_path, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "not in the loaded master_key_file"));

    /* The old id with another key: the data key does not unwrap. */
    char *old_line = strstr(old_keys, "\nmk-") + 1;
    char forged[256];
    snprintf(forged, sizeof(forged), "%.*s AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
             (int)strcspn(old_line, " "), old_line);
    assert_int_equal(sp_rec_keys_load_text(forged, NULL, err, sizeof(err)), 0);
    assert_int_equal(read_count(old_path, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "cannot unwrap the recording's data key"));
    free(cur);
    free(old_keys);
    free(old_path);
    free(new_path);
}

static int64_t first_ts_after_seek(const char *path, int64_t ts)
{
    char err[256];
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    assert_non_null(rd);
    assert_int_equal(sp_rec_reader_seek(rd, ts, err, sizeof(err)), 0);
    sp_rec_ev ev;
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    int64_t first = ev.ts_us;
    while (sp_rec_reader_next(rd, &ev, err, sizeof(err)) == 1)
        ;
    assert_int_not_equal(sp_rec_reader_state(rd, NULL), SP_REC_DAMAGED);
    sp_rec_reader_close(rd);
    return first;
}

/* By the trailer's index when sealed, by the chunk headers when not. */
static void test_seek(void **state)
{
    fixture *f = *state;
    char *sealed = write_rec(f, "seek-sealed", true);
    char *open_rec = write_rec(f, "seek-open", false);
    const char *paths[] = {sealed, open_rec};
    for (int i = 0; i < 2; i++) {
        assert_int_equal(first_ts_after_seek(paths[i], T0 + 25 * SEC), T0 + 20 * SEC);
        assert_int_equal(first_ts_after_seek(paths[i], T0 + 20 * SEC), T0 + 20 * SEC);
        assert_int_equal(first_ts_after_seek(paths[i], T0 - SEC), T0);
        assert_int_equal(first_ts_after_seek(paths[i], T0 + 3600 * SEC), T0 + 40 * SEC);
    }
    free(sealed);
    free(open_rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sealed_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flipped_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_chunk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swapped_chunks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsealed_intact_and_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seal_after_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotate_and_wrong_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seek, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
