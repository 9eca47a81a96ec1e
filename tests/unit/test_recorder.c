/* Recording writer and reader: round trips, cut fields, truncated and damaged files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rec_fixture.h"
#include "rec_test_keys.h"
#include "recorder/rec.h"

#define T0 1796300000000000LL /* 2026-12-03 */

typedef struct fixture {
    rec_scratch scratch;
    sp_rec_meta meta;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    rec_scratch_open(&f->scratch, "rec");
    f->meta = (sp_rec_meta){.session_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                            .kind = "postgres",
                            .identity = "alice@example.org",
                            .target = "billing",
                            .database = "billing",
                            .db_user = "sp_alice_7f3a",
                            .client_addr = "192.0.2.10:51234",
                            .started_at = T0};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    rec_scratch_close(&f->scratch);
    free(f);
    return 0;
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

/* One expected event, as text fields. */
typedef struct expect_ev {
    enum sp_rec_type type;
    int64_t ts;
    const char *fields[4];
} expect_ev;

static const expect_ev script[] = {
    {SP_EV_SESSION_START, T0, {"application_name", "psql", "client_encoding", "UTF8"}},
    {SP_EV_QUERY, T0 + 1000, {"select 1; select 2"}},
    {SP_EV_COMPLETE, T0 + 1500, {"SELECT 1", "1"}},
    {SP_EV_COMPLETE, T0 + 1600, {"SELECT 1", "1"}},
    {SP_EV_READY, T0 + 1700, {"I"}},
    {SP_EV_PARSE, T0 + 2000000, {"s1", "select * from patients where id = $1"}},
    {SP_EV_BIND, T0 + 2000100, {"", "s1", "1"}},
    {SP_EV_EXECUTE, T0 + 2000200, {"", "0"}},
    {SP_EV_ERROR, T0 + 2000900, {"42501", "permission denied for table patients"}},
    {SP_EV_SESSION_END, T0 + 9000000, {"client closed the connection"}},
};

static size_t expect_fields(const expect_ev *e)
{
    size_t n = 0;
    while (n < 4 && e->fields[n])
        n++;
    return n;
}

static void write_script_event(sp_rec *r, const expect_ev *e)
{
    sp_rec_field fields[4];
    size_t n = expect_fields(e);
    for (size_t i = 0; i < n; i++)
        fields[i] = (sp_rec_field){e->fields[i], strlen(e->fields[i])};
    assert_int_equal(sp_rec_event(r, e->type, e->ts, fields, n), 0);
}

/* Writes the script, flushing after events 1, 4 and 7: four chunks. */
static char *write_script(fixture *f)
{
    char err[256];
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++) {
        write_script_event(r, &script[i]);
        if (i == 1 || i == 4 || i == 7)
            assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    }
    assert_int_equal(sp_rec_chunks(r), 3);
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "client closed the connection"), 0);
    return path;
}

static void assert_event_is(const sp_rec_ev *ev, const expect_ev *e)
{
    assert_int_equal(ev->type, e->type);
    assert_int_equal(ev->ts_us, e->ts);
    assert_int_equal(ev->flags, 0);
    size_t n = expect_fields(e);
    assert_int_equal(ev->n_fields, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ev->fields[i].len, strlen(e->fields[i]));
        assert_memory_equal(ev->fields[i].data, e->fields[i], ev->fields[i].len);
    }
}

static void test_round_trip(void **state)
{
    fixture *f = *state;
    char *path = write_script(f);
    assert_non_null(strstr(path, "/2026/12/03/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b.spr"));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    char day[256];
    snprintf(day, sizeof(day), "%s/2026/12/03", f->scratch.dir);
    assert_int_equal(stat(day, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);

    char err[256];
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    assert_non_null(rd);
    const sp_rec_header *h = sp_rec_reader_header(rd);
    assert_int_equal(h->version, 2);
    assert_string_equal(h->session_id, f->meta.session_id);
    assert_string_equal(h->kind, "postgres");
    assert_string_equal(h->identity, "alice@example.org");
    assert_string_equal(h->target, "billing");
    assert_string_equal(h->database, "billing");
    assert_string_equal(h->db_user, "sp_alice_7f3a");
    assert_string_equal(h->client_addr, "192.0.2.10:51234");
    assert_int_equal(h->started_at, T0);

    sp_rec_ev ev;
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++) {
        assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
        assert_event_is(&ev, &script[i]);
    }
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 0);
    const char *reason = NULL;
    assert_int_equal(sp_rec_reader_state(rd, &reason), SP_REC_SEALED);
    assert_string_equal(reason, "client closed the connection");
    assert_int_equal(sp_rec_reader_chunks(rd), 4);
    sp_rec_reader_close(rd);

    /* A session id that is a path is refused. */
    sp_rec_meta bad = f->meta;
    bad.session_id = "../../etc/x";
    assert_null(sp_rec_create(f->scratch.dir, &bad, 1024, err, sizeof(err)));
    /* Creating the same session twice never overwrites. */
    assert_null(sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err)));
    assert_non_null(strstr(err, "File exists"));
    free(path);
}

/* Reads everything; returns the number of events and the final state. */
static size_t read_events(const uint8_t *data, size_t len, enum sp_rec_state *state, int *last_rc,
                          char *err, size_t errlen)
{
    sp_rec_reader *rd = sp_rec_reader_open_mem(data, len, err, errlen);
    if (!rd)
        return (size_t)-1;
    sp_rec_ev ev;
    size_t n = 0;
    int rc;
    while ((rc = sp_rec_reader_next(rd, &ev, err, errlen)) == 1) {
        assert_true(n < sizeof(script) / sizeof(script[0]));
        assert_event_is(&ev, &script[n]);
        n++;
    }
    *last_rc = rc;
    *state = sp_rec_reader_state(rd, NULL);
    sp_rec_reader_close(rd);
    return n;
}

/* Chunk boundaries of the script recording, found by reading whole chunks from a prefix. */
static void test_truncated_at_every_offset(void **state)
{
    fixture *f = *state;
    char *path = write_script(f);
    size_t len;
    uint8_t *data = read_all(path, &len);
    static const size_t events_after_chunk[] = {0, 2, 5, 8, 10};
    size_t prev_events = 0;
    for (size_t cut = 0; cut < len; cut++) {
        uint8_t *copy = malloc(cut ? cut : 1); /* exact size: ASan sees any over-read */
        memcpy(copy, data, cut);
        enum sp_rec_state st;
        int rc;
        char err[256];
        size_t n = read_events(copy, cut, &st, &rc, err, sizeof(err));
        free(copy);
        if (n == (size_t)-1)
            continue; /* header itself cut: refused at open */
        assert_int_equal(rc, 0);
        assert_int_equal(st, SP_REC_UNSEALED);
        /* only whole chunks: the count is one of the chunk boundaries, never decreasing */
        bool boundary = false;
        for (size_t i = 0; i < 5; i++)
            boundary |= n == events_after_chunk[i];
        assert_true(boundary);
        assert_true(n >= prev_events);
        prev_events = n;
    }
    assert_int_equal(prev_events, 10);
    enum sp_rec_state st;
    int rc;
    char err[256];
    assert_int_equal(read_events(data, len, &st, &rc, err, sizeof(err)), 10);
    assert_int_equal(st, SP_REC_SEALED);
    free(data);
    free(path);
}

/* Find the offset of chunk `no` by walking chunk headers. */
static size_t chunk_offset(const uint8_t *data, size_t len, int no)
{
    size_t meta_len = sp_get_be32(data + 11);
    size_t off = 7 + 2 + 2 + 4 + meta_len + 4;
    for (int i = 0; i < no; i++) {
        assert_true(off + 64 <= len);
        assert_memory_equal(data + off, "SPCK", 4);
        off += 64 + sp_get_be32(data + off + 8);
    }
    return off;
}

static void test_damage_is_reported(void **state)
{
    fixture *f = *state;
    char *path = write_script(f);
    size_t len;
    uint8_t *data = read_all(path, &len);
    enum sp_rec_state st;
    int rc;
    char err[256];

    /* A flipped byte in chunk 1's stored bytes: chunk 0's events, then damage at chunk 1. */
    size_t c1 = chunk_offset(data, len, 1);
    data[c1 + 70] ^= 0x55;
    assert_int_equal(read_events(data, len, &st, &rc, err, sizeof(err)), 2);
    assert_int_equal(rc, -1);
    assert_int_equal(st, SP_REC_DAMAGED);
    assert_non_null(strstr(err, "chunk 1"));
    assert_non_null(strstr(err, "does not authenticate"));
    data[c1 + 70] ^= 0x55;

    /* A flipped byte in chunk 2's header. */
    size_t c2 = chunk_offset(data, len, 2);
    data[c2 + 5] ^= 0x01;
    assert_int_equal(read_events(data, len, &st, &rc, err, sizeof(err)), 5);
    assert_int_equal(st, SP_REC_DAMAGED);
    assert_non_null(strstr(err, "chunk 2"));
    data[c2 + 5] ^= 0x01;

    /* Chunk 1 removed: the sequence gap is damage, not a clean end. */
    size_t c3 = chunk_offset(data, len, 3);
    memmove(data + c1, data + c2, len - c2);
    assert_int_equal(read_events(data, len - (c2 - c1), &st, &rc, err, sizeof(err)), 2);
    assert_int_equal(st, SP_REC_DAMAGED);
    assert_non_null(strstr(err, "sequence"));
    free(data);

    /* The tail zero-filled after a crash is a torn write: unsealed, not damaged. */
    data = read_all(path, &len);
    memset(data + c3, 0, len - c3);
    assert_int_equal(read_events(data, len, &st, &rc, err, sizeof(err)), 8);
    assert_int_equal(rc, 0);
    assert_int_equal(st, SP_REC_UNSEALED);

    /* Bytes after the trailer. */
    free(data);
    data = read_all(path, &len);
    uint8_t *longer = malloc(len + 3);
    memcpy(longer, data, len);
    memcpy(longer + len, "xyz", 3);
    assert_int_equal(read_events(longer, len + 3, &st, &rc, err, sizeof(err)), 10);
    assert_int_equal(st, SP_REC_DAMAGED);
    assert_non_null(strstr(err, "after the trailer"));
    free(longer);

    /* Not a recording at all. */
    assert_null(sp_rec_reader_open_mem((const uint8_t *)"hello", 5, err, sizeof(err)));
    assert_non_null(strstr(err, "magic"));
    free(data);
    free(path);
}

static void test_cut_fields_and_unsealed(void **state)
{
    fixture *f = *state;
    char err[256];
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, 8, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    /* "é" is two bytes: a cut at 8 would split it, so the text is cut at 7. */
    assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0, "select é from t", NULL), 0);
    assert_int_equal(sp_rec_eventv(r, SP_EV_COMPLETE, T0 + 5, "SELECT 1", "1", NULL), 0);
    assert_int_equal(sp_rec_eventv(r, SP_EV_READY, T0 + 6, "I", NULL), 0);
    const char *many[SP_REC_MAX_FIELDS + 2];
    sp_rec_field fields[SP_REC_MAX_FIELDS + 2];
    for (size_t i = 0; i < SP_REC_MAX_FIELDS + 2; i++) {
        many[i] = "x";
        fields[i] = (sp_rec_field){many[i], 1};
    }
    assert_int_equal(sp_rec_event(r, SP_EV_NOTE, T0 + 7, fields, SP_REC_MAX_FIELDS + 2), 0);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    /* The gateway "crashes": no close, the file stays unsealed. */
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    assert_non_null(rd);
    sp_rec_ev ev;
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.flags, SP_REC_FLAG_TRUNCATED);
    assert_int_equal(ev.fields[0].len, 7);
    assert_memory_equal(ev.fields[0].data, "select ", 7);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.flags, 0); /* "SELECT 1" is exactly 8 bytes */
    assert_int_equal(ev.fields[0].len, 8);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.flags, SP_REC_FLAG_FIELDS_DROPPED);
    assert_int_equal(ev.n_fields, SP_REC_MAX_FIELDS);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 0);
    const char *reason = "unset";
    assert_int_equal(sp_rec_reader_state(rd, &reason), SP_REC_UNSEALED);
    assert_null(reason);
    sp_rec_reader_close(rd);
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "gateway stopped"), 0);
    free(path);
}

/* An event larger than a chunk's raw limit is stored in a chunk of its own; a buffer that was
 * allowed to grow past the limit is split at event boundaries. */
static void test_large_events(void **state)
{
    fixture *f = *state;
    char err[256];
    size_t big = SP_REC_MAX_CHUNK_RAW + 1000;
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, big, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    char *text = malloc(big);
    for (size_t i = 0; i < big; i++)
        text[i] = (char)('a' + i % 26);
    sp_rec_field field = {text, big};
    assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0, "before", NULL), 0);
    assert_int_equal(sp_rec_event(r, SP_EV_QUERY, T0 + 1, &field, 1), 0);
    assert_true(sp_rec_wants_flush(r));
    assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0 + 2, "after", NULL), 0);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    assert_int_equal(sp_rec_chunks(r), 3);
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "done"), 0);

    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    assert_non_null(rd);
    sp_rec_ev ev;
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.fields[0].len, 6);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.fields[0].len, big);
    assert_memory_equal(ev.fields[0].data, text, big);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(ev.fields[0].len, 5);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 0);
    assert_int_equal(sp_rec_reader_state(rd, NULL), SP_REC_SEALED);
    sp_rec_reader_close(rd);
    free(text);
    free(path);
}

typedef struct close_result {
    int calls;
    int status;
} close_result;

static void on_closed(void *arg, int status)
{
    close_result *res = arg;
    res->calls++;
    res->status = status;
}

/* The asynchronous close seals the file through the loop and reports once. */
static void test_close_on_loop(void **state)
{
    fixture *f = *state;
    char err[256];
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    for (size_t i = 0; i < sizeof(script) / sizeof(script[0]); i++)
        write_script_event(r, &script[i]);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, &loop), 0);
    close_result res = {0, 99};
    sp_rec_close(r, f->scratch.cctx, &loop, "client closed the connection", on_closed, &res);
    assert_int_equal(res.calls, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(res.calls, 1);
    assert_int_equal(res.status, 0);
    assert_int_equal(uv_loop_close(&loop), 0);

    size_t len;
    uint8_t *data = read_all(path, &len);
    enum sp_rec_state st;
    int rc;
    assert_int_equal(read_events(data, len, &st, &rc, err, sizeof(err)), 10);
    assert_int_equal(st, SP_REC_SEALED);
    free(data);
    free(path);
}

/* The first flush on a loop starts an fsync; closing the recording while it is in flight
 * (synchronously, or on the loop) must not touch freed memory or a closed descriptor. */
static void test_close_with_fsync_pending(void **state)
{
    fixture *f = *state;
    char err[256];
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    f->meta.session_id = "pending-sync";
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err));
    assert_non_null(r);
    write_script_event(r, &script[1]);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, &loop), 0);
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "closed with fsync pending"), 0);

    f->meta.session_id = "pending-async";
    r = sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err));
    assert_non_null(r);
    char *path = strdup(sp_rec_path(r));
    write_script_event(r, &script[1]);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, &loop), 0);
    write_script_event(r, &script[2]);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, &loop), 0); /* no second fsync within 5 s */
    close_result res = {0, 99};
    sp_rec_close(r, f->scratch.cctx, &loop, "done", on_closed, &res);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(res.calls, 1);
    assert_int_equal(res.status, 0);
    assert_int_equal(uv_loop_close(&loop), 0);

    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    assert_non_null(rd);
    sp_rec_ev ev;
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 1);
    assert_int_equal(sp_rec_reader_next(rd, &ev, err, sizeof(err)), 0);
    assert_int_equal(sp_rec_reader_state(rd, NULL), SP_REC_SEALED);
    sp_rec_reader_close(rd);
    free(path);
}

/* A write failure marks the recording failed with the path and the reason. */
static void test_write_failure(void **state)
{
    fixture *f = *state;
    char err[256];
    if (access("/dev/full", W_OK) != 0)
        skip();
    sp_rec *r = sp_rec_create(f->scratch.dir, &f->meta, 1024, err, sizeof(err));
    assert_non_null(r);
    /* Swap the descriptor for /dev/full, which fails every write with ENOSPC. */
    int full = open("/dev/full", O_WRONLY | O_CLOEXEC);
    assert_true(full >= 0);
    char fdpath[64];
    snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", full);
    int target = -1;
    /* The recording's descriptor is the newest one before `full`. */
    for (int fd = full - 1; fd > 2 && target < 0; fd--) {
        char link[512], name[64];
        snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(name, link, sizeof(link) - 1);
        if (n > 0) {
            link[n] = '\0';
            if (strcmp(link, sp_rec_path(r)) == 0)
                target = fd;
        }
    }
    assert_true(target >= 0);
    assert_int_equal(dup2(full, target), target);
    close(full);
    assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0, "select 1", NULL), 0);
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), -1);
    assert_true(sp_rec_failed(r));
    assert_non_null(strstr(sp_rec_error(r), "No space left on device"));
    assert_non_null(strstr(sp_rec_error(r), "write /tmp/sp-test-rec-"));
    assert_int_equal(sp_rec_eventv(r, SP_EV_QUERY, T0, "select 2", NULL), -1);
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "x"), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_at_every_offset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damage_is_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_fields_and_unsealed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_events, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_on_loop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_fsync_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, rec_test_keys_setup, rec_test_keys_teardown);
}
