/* The audit trail: OCSF shape, and the SHA-256 chain across files and writer processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "recorder/audit.h"

#define ZERO_HASH "0000000000000000000000000000000000000000000000000000000000000000"

typedef struct fixture {
    char dir[64];
    char host[256];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp-test-audit-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(gethostname(f->host, sizeof(f->host)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void sha256_hex(const char *p, size_t n, char out[65])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)p, n, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void today_path_in(const fixture *f, const char *dir, char *out, size_t outlen)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    snprintf(out, outlen, "%s/audit-%s-%04d-%02d-%02d.jsonl", dir, f->host, tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday);
}

static void today_path(const fixture *f, char *out, size_t outlen)
{
    today_path_in(f, f->dir, out, outlen);
}

static char *slurp(const char *path)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, fp);
    buf[n] = '\0';
    fclose(fp);
    return buf;
}

/* Checks every line's "prev" against the SHA-256 of the line before; returns the line count
 * and the hash of the last line. */
static size_t verify_chain(const char *path, const char *first_prev, char last_hash[65],
                           json_t **lines_out)
{
    char *text = slurp(path);
    char expect[65];
    snprintf(expect, sizeof(expect), "%s", first_prev);
    size_t n = 0;
    json_t *lines = json_array();
    for (char *line = text, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        json_error_t jerr;
        json_t *o = json_loadb(line, (size_t)(nl - line), 0, &jerr);
        assert_non_null(o);
        assert_string_equal(json_string_value(json_object_get(o, "prev")), expect);
        sha256_hex(line, (size_t)(nl - line), expect);
        json_array_append_new(lines, o);
        n++;
    }
    memcpy(last_hash, expect, 65);
    free(text);
    if (lines_out)
        *lines_out = lines;
    else
        json_decref(lines);
    return n;
}

static void emit_logon(const char *actor, bool ok)
{
    json_t *e = sp_audit_new(SP_AUDIT_AUTH_LOGON, "logon", ok, actor);
    assert_non_null(e);
    json_object_set_new(e, "user", sp_audit_user(actor, "human"));
    sp_audit_emit(e);
}

static void test_event_shape(void **state)
{
    (void)state;
    json_t *e = sp_audit_new(SP_AUDIT_DATASTORE_CONNECT, "session-start", false, "alice");
    assert_int_equal(json_integer_value(json_object_get(e, "class_uid")), 6005);
    assert_string_equal(json_string_value(json_object_get(e, "class_name")), "Datastore Activity");
    assert_string_equal(json_string_value(json_object_get(e, "activity_name")), "Connect");
    assert_string_equal(json_string_value(json_object_get(e, "status")), "Failure");
    assert_int_equal(json_integer_value(json_object_get(e, "status_id")), 2);
    json_int_t ms = json_integer_value(json_object_get(e, "time"));
    assert_true(ms > 1700000000000LL && ms < 4102444800000LL);
    const char *dt = json_string_value(json_object_get(e, "time_dt"));
    assert_int_equal(strlen(dt), 24); /* 2026-12-03T14:17:15.123Z */
    assert_int_equal(dt[23], 'Z');
    json_t *actor = json_object_get(json_object_get(e, "actor"), "user");
    assert_string_equal(json_string_value(json_object_get(actor, "name")), "alice");
    json_t *meta = json_object_get(e, "metadata");
    assert_string_equal(json_string_value(json_object_get(meta, "version")), "1.8.0");
    json_t *product = json_object_get(meta, "product");
    assert_string_equal(json_string_value(json_object_get(product, "name")), "sallyport");
    assert_string_equal(json_string_value(json_object_get(product, "vendor_name")), "sallyport");
    json_decref(e);

    e = sp_audit_new(SP_AUDIT_ACCOUNT_CREATE, "identity-add", true, "local-admin");
    assert_string_equal(json_string_value(json_object_get(e, "status")), "Success");
    assert_int_equal(json_integer_value(json_object_get(e, "status_id")), 1);
    json_decref(e);

    json_t *u = sp_audit_user("deploy-bot", "service");
    assert_string_equal(json_string_value(json_object_get(u, "type")), "Service");
    assert_int_equal(json_integer_value(json_object_get(u, "type_id")), 4);
    json_decref(u);
    u = sp_audit_user("bob", "human");
    assert_int_equal(json_integer_value(json_object_get(u, "type_id")), 1);
    json_decref(u);
}

/* The first line ever links to 64 zeros; files and directory are private. */
static void test_first_line(void **state)
{
    fixture *f = *state;
    char sub[128], err[256];
    snprintf(sub, sizeof(sub), "%s/audit", f->dir);
    assert_int_equal(sp_audit_open(sub, NULL, err, sizeof(err)), 0);
    emit_logon("alice", true);
    sp_audit_close();
    char path[512];
    today_path_in(f, sub, path, sizeof(path));
    char last[65];
    assert_int_equal(verify_chain(path, ZERO_HASH, last, NULL), 1);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(sub, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
}

/* Two writer "processes" one after the other, starting a new day after an earlier file. */
static void test_chain_across_files_and_writers(void **state)
{
    fixture *f = *state;
    char earlier[512], err[256];
    snprintf(earlier, sizeof(earlier), "%s/audit-%s-2000-01-01.jsonl", f->dir, f->host);
    const char *old_lines = "{\"n\":1,\"prev\":\"" ZERO_HASH "\"}\n{\"n\":2,\"prev\":\"x\"}\n";
    FILE *fp = fopen(earlier, "w");
    fputs(old_lines, fp);
    fclose(fp);
    /* Another host's file, an older one of ours and an empty newer one must not be chosen. */
    char other[512];
    snprintf(other, sizeof(other), "%s/audit-%s-2000-01-05.jsonl", f->dir, f->host);
    fclose(fopen(other, "w"));
    snprintf(other, sizeof(other), "%s/audit-%s-1999-12-31.jsonl", f->dir, f->host);
    fp = fopen(other, "w");
    fputs("{\"n\":0}\n", fp);
    fclose(fp);
    snprintf(other, sizeof(other), "%s/audit-zzzz-other-2000-01-02.jsonl", f->dir);
    fp = fopen(other, "w");
    fputs("{\"n\":9}\n", fp);
    fclose(fp);

    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("alice", true);
    emit_logon("bob", false);
    sp_audit_close();
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("carol", true);
    emit_logon("dave", true);
    sp_audit_close();

    char prev_of_today[65];
    const char *last_old = "{\"n\":2,\"prev\":\"x\"}";
    sha256_hex(last_old, strlen(last_old), prev_of_today);
    char path[512], last[65];
    today_path(f, path, sizeof(path));
    json_t *lines = NULL;
    assert_int_equal(verify_chain(path, prev_of_today, last, &lines), 4);
    const char *names[] = {"alice", "bob", "carol", "dave"};
    for (size_t i = 0; i < 4; i++) {
        json_t *o = json_array_get(lines, i);
        json_t *user = json_object_get(json_object_get(o, "actor"), "user");
        assert_string_equal(json_string_value(json_object_get(user, "name")), names[i]);
        assert_null(json_object_get(o, "dropped_before"));
    }
    json_decref(lines);
}

/* A line cut short by a crashed writer is terminated and chained to, so verify sees it. */
static void test_torn_last_line(void **state)
{
    fixture *f = *state;
    char path[512], err[256];
    today_path(f, path, sizeof(path));
    FILE *fp = fopen(path, "w");
    fputs("{\"torn\":tr", fp);
    fclose(fp);
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("alice", true);
    sp_audit_close();
    char *text = slurp(path);
    char *second = strchr(text, '\n');
    assert_non_null(second);
    assert_int_equal(second - text, strlen("{\"torn\":tr"));
    char expect[65];
    sha256_hex("{\"torn\":tr", strlen("{\"torn\":tr"), expect);
    json_error_t jerr;
    json_t *o = json_loads(second + 1, 0, &jerr);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "prev")), expect);
    json_decref(o);
    free(text);
}

/* Events that could not be queued are counted on the next line written. */
static void test_dropped_are_reported(void **state)
{
    fixture *f = *state;
    char err[256];
    emit_logon("early", true); /* before open: cannot be written */
    emit_logon("early", true);
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("alice", true);
    emit_logon("bob", true);
    sp_audit_close();
    char path[512], last[65];
    today_path(f, path, sizeof(path));
    json_t *lines = NULL;
    assert_int_equal(verify_chain(path, ZERO_HASH, last, &lines), 2);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(lines, 0), "dropped_before")), 2);
    assert_null(json_object_get(json_array_get(lines, 1), "dropped_before"));
    json_decref(lines);
}

static void test_open_errors(void **state)
{
    fixture *f = *state;
    char path[512], err[256];
    snprintf(path, sizeof(path), "%s/file", f->dir);
    FILE *fp = fopen(path, "w");
    fclose(fp);
    assert_int_equal(sp_audit_open(path, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, path));
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "already open"));
    sp_audit_close();
    sp_audit_close(); /* closing twice is harmless */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_event_shape),
        cmocka_unit_test_setup_teardown(test_first_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_across_files_and_writers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_last_line, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_are_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
