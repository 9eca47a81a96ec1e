/* SSH recordings read back: the asciicast v2 and JSON exports, the --no-wait text, the
 * playback schedule, and a timed playback at high speed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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
    rec_scratch_open(&f->scratch, "term");
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

/* A new recording of alice's session on host1 (kind "ssh", or another to test refusals). */
static sp_rec *new_recording(fixture *f, const char *kind)
{
    sp_rec_meta meta = {.session_id = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c",
                        .kind = kind,
                        .identity = "alice@example.org",
                        .target = "host1",
                        .database = "",
                        .db_user = "ops",
                        .client_addr = "192.0.2.10:51234",
                        .started_at = T0};
    char err[256];
    sp_rec *r = sp_rec_create(f->scratch.dir, &meta, 4096, err, sizeof(err));
    assert_non_null(r);
    snprintf(f->path, sizeof(f->path), "%s", sp_rec_path(r));
    return r;
}

/* An interactive shell with input recorded, a UTF-8 character split across two output
 * events, invalid bytes, a resize, stderr with colours, an sftp channel, an exec channel, a
 * forward, a signal and exit statuses. */
static void write_ssh_session(fixture *f, const char *kind)
{
    sp_rec *r = new_recording(f, kind);
    EV(SP_EV_CHANNEL_OPEN, T0, "0", "session");
    EV(SP_EV_PTY, T0 + 10 * MS, "0", "xterm-256color", "80", "24");
    EV(SP_EV_ENV, T0 + 11 * MS, "0", "LANG", "C.UTF-8");
    EV(SP_EV_SHELL, T0 + 12 * MS, "0");
    EV(SP_EV_TERM_OUT, T0 + 500 * MS, "0", "$ ");
    EV(SP_EV_TERM_IN, T0 + 1000 * MS, "0", "l");
    EV(SP_EV_TERM_OUT, T0 + 1001 * MS, "0", "l");
    EV(SP_EV_TERM_IN, T0 + 1100 * MS, "0", "s");
    EV(SP_EV_TERM_OUT, T0 + 1101 * MS, "0", "s");
    EV(SP_EV_TERM_IN, T0 + 1200 * MS, "0", "\r");
    assert_int_equal(sp_rec_flush(r, f->scratch.cctx, NULL), 0);
    /* "é" is C3 A9: the chunk boundary falls inside it; FF is no UTF-8 at all */
    EV(SP_EV_TERM_OUT, T0 + 1210 * MS, "0", "\r\ncaf\xc3");
    EV(SP_EV_TERM_OUT, T0 + 1220 * MS, "0", "\xa9 \xff\\\r\n");
    EV(SP_EV_RESIZE, T0 + 2000 * MS, "0", "100", "30");
    EV(SP_EV_TERM_ERR, T0 + 9000 * MS, "0", "\x1b[31merr\x1b[0m\r\n");
    EV(SP_EV_CHANNEL_OPEN, T0 + 9500 * MS, "1", "session");
    EV(SP_EV_SUBSYSTEM, T0 + 9501 * MS, "1", "sftp");
    EV(SP_EV_TERM_OUT, T0 + 9600 * MS, "1", "\x02sftp-protocol");
    EV(SP_EV_SFTP, T0 + 9700 * MS, "1", "open", "/etc/hosts", "", "0");
    EV(SP_EV_SFTP, T0 + 9800 * MS, "1", "read", "/etc/hosts", "", "1234");
    EV(SP_EV_SFTP, T0 + 9900 * MS, "1", "rename", "/tmp/a", "/tmp/b", "0");
    EV(SP_EV_CHANNEL_CLOSE, T0 + 9950 * MS, "1", "100", "2000");
    EV(SP_EV_CHANNEL_OPEN, T0 + 10000 * MS, "2", "session");
    EV(SP_EV_EXEC, T0 + 10001 * MS, "2", "ls -la \x1b[2J\xe2\x80\xae");
    EV(SP_EV_TERM_OUT, T0 + 10050 * MS, "2", "ok\n");
    EV(SP_EV_EXIT, T0 + 10100 * MS, "2", "status", "0");
    EV(SP_EV_CHANNEL_CLOSE, T0 + 10101 * MS, "2", "0", "3");
    EV(SP_EV_CHANNEL_OPEN, T0 + 11000 * MS, "3", "direct-tcpip");
    EV(SP_EV_FORWARD, T0 + 11001 * MS, "3", "local", "10.0.0.5:5432");
    EV(SP_EV_CHANNEL_CLOSE, T0 + 11500 * MS, "3", "10", "20");
    EV(SP_EV_SIGNAL, T0 + 12000 * MS, "0", "INT");
    EV(SP_EV_EXIT, T0 + 12001 * MS, "0", "status", "3");
    EV(SP_EV_CHANNEL_CLOSE, T0 + 12002 * MS, "0", "5", "60");
    EV(SP_EV_SESSION_END, T0 + 12003 * MS, "client-closed");
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "client-closed"), 0);
}

static char *export_of(const char *path, enum sp_export_format format, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    *rc = sp_export(path, format, out);
    fclose(out);
    return text;
}

static const char expected_cast[] =
    "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 1796300000, \"env\": "
    "{\"TERM\": \"xterm-256color\"}, \"title\": \"sallyport session "
    "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c alice@example.org@host1\"}\n"
    "[0.500000, \"o\", \"$ \"]\n"
    "[1.000000, \"i\", \"l\"]\n"
    "[1.001000, \"o\", \"l\"]\n"
    "[1.100000, \"i\", \"s\"]\n"
    "[1.101000, \"o\", \"s\"]\n"
    "[1.200000, \"i\", \"\\r\"]\n"
    "[1.210000, \"o\", \"\\r\\ncaf\"]\n"
    "[1.220000, \"o\", \"\xc3\xa9 \xef\xbf\xbd\\\\\\r\\n\"]\n"
    "[2.000000, \"r\", \"100x30\"]\n"
    "[9.000000, \"o\", \"\\u001B[31merr\\u001B[0m\\r\\n\"]\n"
    "[10.050000, \"o\", \"ok\\n\"]\n";

static void test_asciicast(void **state)
{
    fixture *f = *state;
    write_ssh_session(f, "ssh");
    int rc;
    char *text = export_of(f->path, SP_EXPORT_ASCIICAST, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(text, expected_cast);
    free(text);
}

/* asciinema itself reads the export (when installed: tests/run.sh does not require it).
 * `asciinema cat` wants a terminal, so it runs under script(1). */
static void test_asciinema_reads_export(void **state)
{
    fixture *f = *state;
    if (system("command -v asciinema >/dev/null 2>&1 && command -v script >/dev/null 2>&1"))
        skip();
    write_ssh_session(f, "ssh");
    char cast_path[600], cmd[1400];
    snprintf(cast_path, sizeof(cast_path), "%s/session.cast", f->scratch.dir);
    FILE *out = fopen(cast_path, "w");
    assert_non_null(out);
    assert_int_equal(sp_export(f->path, SP_EXPORT_ASCIICAST, out), 0);
    fclose(out);
    snprintf(cmd, sizeof(cmd), "script -qec 'asciinema cat %s' /dev/null </dev/null", cast_path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char shown[4096];
    size_t n = fread(shown, 1, sizeof(shown) - 1, p);
    shown[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_non_null(strstr(shown, "caf\xc3\xa9 \xef\xbf\xbd\\"));
    assert_non_null(strstr(shown, "\x1b[31merr\x1b[0m"));
    assert_null(strstr(shown, "sftp-protocol"));
}

static void test_asciicast_refuses_postgres(void **state)
{
    fixture *f = *state;
    write_ssh_session(f, "postgres");
    int rc;
    char *text = export_of(f->path, SP_EXPORT_ASCIICAST, &rc);
    assert_int_equal(rc, 1);
    assert_string_equal(text, "");
    free(text);
}

/* A cut sequence still pending when its channel closes is shown, not lost. */
static void test_asciicast_cut_at_close(void **state)
{
    fixture *f = *state;
    sp_rec_meta meta = {
        .session_id = "s2", .kind = "ssh", .identity = "bob", .target = "t", .started_at = T0};
    char err[256];
    sp_rec *r = sp_rec_create(f->scratch.dir, &meta, 4096, err, sizeof(err));
    assert_non_null(r);
    snprintf(f->path, sizeof(f->path), "%s", sp_rec_path(r));
    EV(SP_EV_TERM_OUT, T0 + 100 * MS, "4", "x\xe2\x82");
    EV(SP_EV_CHANNEL_CLOSE, T0 + 200 * MS, "4", "0", "3");
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "client-closed"), 0);
    int rc;
    char *text = export_of(f->path, SP_EXPORT_ASCIICAST, &rc);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(text, "\"width\": 80, \"height\": 24"));
    assert_non_null(strstr(text, "\"env\": {}"));
    assert_non_null(strstr(text, "}\n[0.100000, \"o\", \"x\"]\n"
                                 "[0.200000, \"o\", \"\xef\xbf\xbd\xef\xbf\xbd\"]\n"));
    free(text);
}

static void test_json_export(void **state)
{
    fixture *f = *state;
    write_ssh_session(f, "ssh");
    int rc;
    char *text = export_of(f->path, SP_EXPORT_JSON, &rc);
    assert_int_equal(rc, 0);
    size_t lines = 0, escaped_events = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
        json_error_t jerr;
        json_t *o = json_loads(line, 0, &jerr);
        assert_non_null(o);
        const char *type = json_string_value(json_object_get(o, "type"));
        assert_non_null(type);
        json_t *fields = json_object_get(o, "fields");
        if (lines == 0) {
            assert_string_equal(type, "header");
            assert_string_equal(json_string_value(json_object_get(o, "kind")), "ssh");
            assert_string_equal(json_string_value(json_object_get(o, "db_user")), "ops");
        } else if (lines == 2) {
            assert_string_equal(type, "pty");
            assert_int_equal(json_integer_value(json_object_get(o, "code")), SP_EV_PTY);
            assert_int_equal(json_integer_value(json_object_get(o, "offset_us")), 10 * MS);
            assert_int_equal(json_integer_value(json_object_get(o, "ts_us")), T0 + 10 * MS);
            assert_int_equal(json_array_size(fields), 4);
            assert_string_equal(json_string_value(json_array_get(fields, 1)), "xterm-256color");
        } else if (lines == 12) {
            /* each event as recorded: the split character is not joined here */
            assert_string_equal(type, "term_out");
            assert_string_equal(json_string_value(json_array_get(fields, 1)),
                                "\\xa9 \\xff\\\\\r\n");
        } else if (lines == 23) {
            assert_string_equal(type, "exec");
            assert_string_equal(json_string_value(json_array_get(fields, 1)),
                                "ls -la \x1b[2J\xe2\x80\xae");
            assert_null(json_object_get(o, "escaped"));
        } else if (strcmp(type, "trailer") == 0) {
            assert_string_equal(json_string_value(json_object_get(o, "state")), "sealed");
            assert_string_equal(json_string_value(json_object_get(o, "end_reason")),
                                "client-closed");
        }
        json_t *escaped = json_object_get(o, "escaped");
        if (escaped) {
            escaped_events++;
            assert_int_equal(json_array_size(escaped), 1);
            assert_int_equal(json_integer_value(json_array_get(escaped, 0)), 1);
        }
        json_decref(o);
    }
    assert_int_equal(lines, 35); /* header, 33 events, trailer */
    assert_int_equal(escaped_events, 2);
    free(text);
}

static const char expected_no_wait[] =
    "session 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c  identity alice@example.org  target host1 as "
    "ops  from 192.0.2.10:51234  started 2026-12-03T12:13:20.000000Z\n"
    "[00:00:00.000 ch0 open] session\n"
    "[00:00:00.010 ch0 pty] xterm-256color 80x24\n"
    "[00:00:00.011 ch0 env] LANG=C.UTF-8\n"
    "[00:00:00.012 ch0 shell]\n"
    "$ ls\n"
    "[00:00:01.000 ch0 input] ls\\r\n"
    "\ncaf\xc3\xa9 \\xff\\\\\n"
    "[00:00:02.000 ch0 resize] 100x30\n"
    "\\e[31merr\\e[0m\n"
    "[00:00:09.500 ch1 open] session\n"
    "[00:00:09.501 ch1 subsystem] sftp\n"
    "[00:00:09.700 ch1 sftp] open /etc/hosts\n"
    "[00:00:09.800 ch1 sftp] read /etc/hosts (1234 bytes)\n"
    "[00:00:09.900 ch1 sftp] rename /tmp/a -> /tmp/b\n"
    "[00:00:09.950 ch1 close] 100 bytes in, 2000 bytes out\n"
    "[00:00:10.000 ch2 open] session\n"
    "[00:00:10.001 ch2 exec] ls -la \\e[2J\\u202e\n"
    "ok\n"
    "[00:00:10.100 ch2 exit] status 0\n"
    "[00:00:10.101 ch2 close] 0 bytes in, 3 bytes out\n"
    "[00:00:11.000 ch3 open] direct-tcpip\n"
    "[00:00:11.001 ch3 forward] local 10.0.0.5:5432\n"
    "[00:00:11.500 ch3 close] 10 bytes in, 20 bytes out\n"
    "[00:00:12.000 ch0 signal] INT\n"
    "[00:00:12.001 ch0 exit] status 3\n"
    "[00:00:12.002 ch0 close] 5 bytes in, 60 bytes out\n"
    "end: client-closed\n"
    "recording: sealed (2 chunks, 33 events)\n";

static char *replay_of(const char *path, const sp_term_opts *opts, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    *rc = sp_replay_terminal(path, out, out, opts);
    fclose(out);
    return text;
}

static void test_no_wait(void **state)
{
    fixture *f = *state;
    write_ssh_session(f, "ssh");
    sp_term_opts opts = {.speed = 1, .no_wait = true};
    int rc;
    char *text = replay_of(f->path, &opts, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(text, expected_no_wait);
    free(text);
}

/* Output that tries to rewrite the transcript: it moves the cursor over the exec line before it
 * and prints a forged one, then turns on concealed text for everything after. In the
 * transcript it is text; the real event lines stand. A CR LF split across two events is one
 * line break. */
static void test_no_wait_output_cannot_drive_the_terminal(void **state)
{
    fixture *f = *state;
    sp_rec *r = new_recording(f, "ssh");
    EV(SP_EV_CHANNEL_OPEN, T0, "0", "session");
    EV(SP_EV_EXEC, T0 + 100 * MS, "0", "cat /etc/passwd > /tmp/loot");
    EV(SP_EV_TERM_OUT, T0 + 110 * MS, "0",
       "\x1b[1A\r\x1b[2K[00:00:00.100 ch0 exec] uptime\r\n\x1b[8m\x1b[?1049h");
    EV(SP_EV_CHANNEL_OPEN, T0 + 200 * MS, "1", "session");
    EV(SP_EV_EXEC, T0 + 201 * MS, "1", "rm -f /tmp/loot");
    EV(SP_EV_TERM_OUT, T0 + 210 * MS, "1", "x\r");
    EV(SP_EV_TERM_OUT, T0 + 211 * MS, "1", "\ny\r");
    EV(SP_EV_EXIT, T0 + 220 * MS, "1", "status", "0");
    EV(SP_EV_SESSION_END, T0 + 300 * MS, "client-closed");
    assert_int_equal(sp_rec_close_sync(r, f->scratch.cctx, "client-closed"), 0);

    sp_term_opts opts = {.speed = 1, .no_wait = true};
    int rc;
    char *text = replay_of(f->path, &opts, &rc);
    assert_int_equal(rc, 0);
    assert_null(strchr(text, 0x1b));
    assert_non_null(strstr(text, "[00:00:00.100 ch0 exec] cat /etc/passwd > /tmp/loot\n"
                                 "\\e[1A\\r\\e[2K[00:00:00.100 ch0 exec] uptime\n"
                                 "\\e[8m\\e[?1049h\n"));
    assert_non_null(strstr(text, "[00:00:00.201 ch1 exec] rm -f /tmp/loot\nx\ny\\r\n"
                                 "[00:00:00.220 ch1 exit] status 0\n"));
    assert_non_null(strstr(text, "end: client-closed\nrecording: sealed"));
    free(text);
}

static const struct {
    double speed, idle_limit_s;
    int64_t ts_ms[5];
    int64_t play_ms[5];
} schedule_cases[] = {
    /* recorded pace */
    {1, 0, {500, 1000, 8000, 8000, 8100}, {500, 1000, 8000, 8000, 8100}},
    /* twice as fast */
    {2, 0, {500, 1000, 8000, 8000, 8100}, {250, 500, 4000, 4000, 4050}},
    /* a 7 s pause capped at 2 s */
    {1, 2, {500, 1000, 8000, 8000, 8100}, {500, 1000, 3000, 3000, 3100}},
    /* both: the cap is in recorded time, then the speed applies */
    {4, 2, {500, 1000, 8000, 8000, 8100}, {125, 250, 750, 750, 775}},
    /* a clock that stepped back adds no pause, and the next gap counts from there */
    {1, 0, {500, 1000, 400, 600, 700}, {500, 1000, 1000, 1200, 1300}},
};

static void test_schedule(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof(schedule_cases) / sizeof(schedule_cases[0]); c++) {
        sp_term_schedule s;
        sp_term_schedule_init(&s, T0, schedule_cases[c].speed, schedule_cases[c].idle_limit_s);
        for (size_t i = 0; i < 5; i++) {
            int64_t at = sp_term_schedule_next(&s, T0 + schedule_cases[c].ts_ms[i] * MS);
            assert_int_equal(at, schedule_cases[c].play_ms[i] * MS);
        }
    }
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Playback writes exactly the terminal's bytes (the sftp channel's are not), and waits: at
 * 100x with pauses capped at 1 s, the 10.05 s up to the last output take 32.2 ms. */
static void test_timed_playback(void **state)
{
    fixture *f = *state;
    write_ssh_session(f, "ssh");
    sp_term_opts opts = {.speed = 100, .idle_limit_s = 1};
    char *out_text = NULL, *ev_text = NULL;
    size_t out_len = 0, ev_len = 0;
    FILE *out = open_memstream(&out_text, &out_len);
    FILE *events = open_memstream(&ev_text, &ev_len);
    int64_t began = mono_us();
    int rc = sp_replay_terminal(f->path, out, events, &opts);
    int64_t took = mono_us() - began;
    fclose(out);
    fclose(events);
    assert_int_equal(rc, 0);
    assert_string_equal(out_text, "$ ls\r\ncaf\xc3\xa9 \xff\\\r\n\x1b[31merr\x1b[0m\r\nok\n");
    assert_non_null(strstr(ev_text, "session 0190a1b2"));
    assert_non_null(strstr(ev_text, "end: client-closed\nrecording: sealed"));
    assert_null(strstr(ev_text, "exec"));
    /* 0.5 + 0.501 + 0.1 + 0.109 + 0.01 + 1 (7.78 capped) + 1 (1.05 capped), over 100 */
    assert_true(took >= 32 * MS);
    assert_true(took < 2000 * MS);
    free(out_text);
    free(ev_text);
}

static void test_utf8_at(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t n;
        int want;
    } cases[] = {
        {"a", 1, 1},
        {"\xc3\xa9", 2, 2},
        {"\xc3", 1, -1},
        {"\xc3x", 2, 0},
        {"\xc0\x80", 2, 0},     /* overlong */
        {"\xed\xa0\x80", 3, 0}, /* surrogate */
        {"\xe2\x82", 2, -1},    /* start of the euro sign */
        {"\xe2\x82\xac", 3, 3},
        {"\xf0\x9f\x98\x80", 4, 4},
        {"\xf0\x9f\x98", 3, -1},
        {"\xf4\x90\x80\x80", 4, 0}, /* past U+10FFFF */
        {"\xff", 1, 0},
        {"\xa9", 1, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        assert_int_equal(sp_replay_utf8_at((const uint8_t *)cases[i].bytes, cases[i].n),
                         cases[i].want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_asciicast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_asciinema_reads_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_asciicast_refuses_postgres, setup, teardown),
        cmocka_unit_test_setup_teardown(test_asciicast_cut_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_json_export, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_wait_output_cannot_drive_the_terminal, setup,
                                        teardown),
        cmocka_unit_test(test_schedule),
        cmocka_unit_test_setup_teardown(test_timed_playback, setup, teardown),
        cmocka_unit_test(test_utf8_at),
    };
    return cmocka_run_group_tests(tests, rec_test_keys_setup, rec_test_keys_teardown);
}
