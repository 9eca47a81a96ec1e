/* The query timeline of a known recording, as text and as JSON lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rec_fixture.h"
#include "rec_test_keys.h"
#include "recorder/rec.h"
#include "replay/replay.h"

#define T0 1796300000000000LL /* 2026-12-03T12:13:20Z */
#define MS 1000LL

typedef struct fixture {
    rec_scratch scratch;
    char path[512];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    rec_scratch_open(&f->scratch, "replay");
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

#define EV(type, ts, ...) assert_int_equal(sp_rec_eventv(r, type, ts, __VA_ARGS__, NULL), 0)

/* A session exercising each kind of statement; `seal` false leaves it as a crash would. */
static void write_session(fixture *f, bool seal)
{
    sp_rec_meta meta = {.session_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                        .kind = "postgres",
                        .identity = "alice@example.org",
                        .target = "billing",
                        .database = "billing",
                        .db_user = "sp_alice_7f3a",
                        .client_addr = "192.0.2.10:51234",
                        .started_at = T0};
    char err[256];
    sp_rec *r = sp_rec_create(f->scratch.dir, &meta, 4096, err, sizeof(err));
    assert_non_null(r);
    snprintf(f->path, sizeof(f->path), "%s", sp_rec_path(r));
    EV(SP_EV_SESSION_START, T0, "application_name", "psql");
    /* a simple query with two statements, one with a ';' inside a string */
    EV(SP_EV_QUERY, T0 + 1000 * MS, "select 1;\n  select ';' as semi -- the end;\n");
    EV(SP_EV_ROWS, T0 + 1001 * MS, "1");
    EV(SP_EV_COMPLETE, T0 + 1002 * MS, "SELECT 1", "1");
    EV(SP_EV_COMPLETE, T0 + 1005 * MS, "SELECT 1", "1");
    EV(SP_EV_READY, T0 + 1006 * MS, "I");
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    /* extended protocol: a named statement, executed twice through the unnamed portal */
    EV(SP_EV_PARSE, T0 + 2000 * MS, "s1", "select name from patients where id = $1");
    EV(SP_EV_BIND, T0 + 2001 * MS, "", "s1", "1", "42");
    EV(SP_EV_EXECUTE, T0 + 2001 * MS, "", "0");
    EV(SP_EV_COMPLETE, T0 + 2004 * MS, "SELECT 1", "1");
    EV(SP_EV_BIND, T0 + 2010 * MS, "", "s1", "1", "43");
    EV(SP_EV_EXECUTE, T0 + 2010 * MS, "", "0");
    EV(SP_EV_COMPLETE, T0 + 2012 * MS, "SELECT 0", "0");
    EV(SP_EV_READY, T0 + 2013 * MS, "I");
    /* an error in a pipeline: the statement after it never runs */
    EV(SP_EV_PARSE, T0 + 3000 * MS, "", "delete from audit_log");
    EV(SP_EV_BIND, T0 + 3000 * MS, "", "", "0");
    EV(SP_EV_EXECUTE, T0 + 3000 * MS, "", "0");
    EV(SP_EV_PARSE, T0 + 3000 * MS, "", "select 2");
    EV(SP_EV_BIND, T0 + 3000 * MS, "", "", "0");
    EV(SP_EV_EXECUTE, T0 + 3000 * MS, "", "0");
    EV(SP_EV_ERROR, T0 + 3002 * MS, "42501", "permission denied for table audit_log");
    EV(SP_EV_READY, T0 + 3003 * MS, "I");
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    EV(SP_EV_QUERY, T0 + 4000 * MS, "copy t from stdin");
    EV(SP_EV_COPY, T0 + 4100 * MS, "in", "1234");
    EV(SP_EV_COMPLETE, T0 + 4120 * MS, "COPY 3", "3");
    EV(SP_EV_READY, T0 + 4121 * MS, "I");
    EV(SP_EV_QUERY, T0 + 5000 * MS, "create table x (a int)");
    EV(SP_EV_COMPLETE, T0 + 5007 * MS, "CREATE TABLE", "-1");
    EV(SP_EV_READY, T0 + 5008 * MS, "I");
    EV(SP_EV_NOTE, T0 + 6000 * MS, "recording gap");
    /* a terminal escape in a statement is shown, not sent to the terminal */
    EV(SP_EV_QUERY, T0 + 65000 * MS, "select '\x1b[2J'");
    if (seal) {
        EV(SP_EV_SESSION_END, T0 + 70000 * MS, "idle timeout");
        assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "idle timeout"), 0);
    } else {
        assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
        assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "unused"), 0);
        /* cut the trailer off, as a crash before the seal would */
        FILE *fp = fopen(f->path, "rb");
        fseek(fp, 0, SEEK_END);
        long len = ftell(fp);
        fclose(fp);
        assert_int_equal(truncate(f->path, len - 3), 0);
    }
}

static char *timeline_of(const char *path, bool json, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    *rc = sp_replay_timeline(path, out, json);
    fclose(out);
    return text;
}

static const char expected_text[] =
    "session 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b  identity alice@example.org  target "
    "billing/billing as sp_alice_7f3a  from 192.0.2.10:51234  started "
    "2026-12-03T12:13:20.000000Z\n"
    "00:00:01.000      2.000 ms  select 1  rows=1\n"
    "00:00:01.002      3.000 ms  select ';' as semi -- the end;  rows=1\n"
    "00:00:02.001      3.000 ms  select name from patients where id = $1  params: $1='42'  "
    "rows=1\n"
    "00:00:02.010      2.000 ms  select name from patients where id = $1  params: $1='43'  "
    "rows=0\n"
    "00:00:03.000      2.000 ms  delete from audit_log  error 42501 permission denied for table "
    "audit_log\n"
    "00:00:04.000    120.000 ms  copy t from stdin  copy in 1234 bytes, rows=3\n"
    "00:00:05.000      7.000 ms  create table x (a int)  CREATE TABLE\n"
    "00:00:06.000  note: recording gap\n"
    "00:01:05.000          - ms  select '\\x1b[2J'  no result (the session ended first)\n"
    "end: idle timeout\n"
    "recording: sealed (3 chunks, 32 events)\n";

static void test_timeline_text(void **state)
{
    fixture *f = *state;
    write_session(f, true);
    int rc;
    char *text = timeline_of(f->path, false, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(text, expected_text);
    free(text);
}

static void test_timeline_unsealed(void **state)
{
    fixture *f = *state;
    write_session(f, false);
    int rc;
    char *text = timeline_of(f->path, false, &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(text, "00:00:05.000      7.000 ms  create table x (a int)"));
    assert_non_null(strstr(text, "end: unknown (the recording has no end)\n"
                                 "recording: unsealed (after 3 whole chunks; the trailer is cut "
                                 "short)\n"));
    free(text);
}

static void test_timeline_json(void **state)
{
    fixture *f = *state;
    write_session(f, true);
    int rc;
    char *text = timeline_of(f->path, true, &rc);
    assert_int_equal(rc, 0);
    size_t lines = 0, statements = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        assert_non_null(o);
        const char *kind = json_string_value(json_object_get(o, "kind"));
        assert_non_null(kind);
        if (lines == 0) {
            assert_string_equal(kind, "session");
            assert_string_equal(json_string_value(json_object_get(o, "identity")),
                                "alice@example.org");
        }
        if (strcmp(kind, "statement") == 0) {
            statements++;
            if (statements == 3) {
                assert_string_equal(json_string_value(json_object_get(o, "statement")),
                                    "select name from patients where id = $1");
                assert_string_equal(json_string_value(json_object_get(o, "protocol")), "extended");
                assert_string_equal(json_string_value(json_object_get(o, "prepared")), "s1");
                assert_string_equal(
                    json_string_value(json_array_get(json_object_get(o, "params"), 0)), "42");
                assert_int_equal(json_integer_value(json_object_get(o, "rows")), 1);
                assert_string_equal(json_string_value(json_object_get(o, "offset")),
                                    "00:00:02.001");
                assert_true(json_real_value(json_object_get(o, "duration_ms")) == 3.0);
            }
            if (statements == 5) {
                assert_string_equal(json_string_value(json_object_get(o, "result")), "error");
                assert_string_equal(json_string_value(json_object_get(o, "sqlstate")), "42501");
            }
            if (statements == 8) /* the escape is kept exactly, JSON-escaped */
                assert_string_equal(json_string_value(json_object_get(o, "statement")),
                                    "select '\x1b[2J'");
        }
        if (strcmp(kind, "end") == 0) {
            assert_string_equal(json_string_value(json_object_get(o, "reason")), "idle timeout");
            assert_string_equal(json_string_value(json_object_get(o, "recording")), "sealed");
        }
        json_decref(o);
        lines++;
    }
    assert_int_equal(statements, 8);
    assert_int_equal(lines, 11); /* session, 8 statements, 1 note, end */
    free(text);
}

static void test_timeline_damaged_and_missing(void **state)
{
    fixture *f = *state;
    write_session(f, true);
    /* damage the last chunk's stored bytes (just before the trailer, which the footer's
     * offset names): the first two chunks still print */
    FILE *fp = fopen(f->path, "r+b");
    uint8_t footer[16];
    fseek(fp, -16, SEEK_END);
    assert_int_equal(fread(footer, 1, sizeof(footer), fp), sizeof(footer));
    long trailer = (long)sp_get_be64(footer);
    fseek(fp, trailer - 20, SEEK_SET);
    int c = fgetc(fp);
    fseek(fp, trailer - 20, SEEK_SET);
    fputc(c ^ 0xff, fp);
    fclose(fp);
    int rc;
    char *text = timeline_of(f->path, false, &rc);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(text, "delete from audit_log  error 42501"));
    assert_null(strstr(text, "create table"));
    assert_non_null(strstr(text, "end: unknown (the recording has no end)\n"
                                 "recording: damaged at chunk 2 at offset "));
    assert_non_null(strstr(text, ": does not authenticate (its bytes were altered)\n"));
    free(text);

    char missing[600];
    snprintf(missing, sizeof(missing), "%s/nope.spr", f->scratch.dir);
    text = timeline_of(missing, false, &rc);
    assert_int_equal(rc, 1);
    assert_string_equal(text, "");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_timeline_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeline_unsealed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeline_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeline_damaged_and_missing, setup, teardown),
    };
    return cmocka_run_group_tests(tests, rec_test_keys_setup, rec_test_keys_teardown);
}
