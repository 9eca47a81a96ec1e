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

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/util.h"
#include "recorder/audit.h"
#include "recorder/audit_verify.h"

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

/* ---- checkpoints and audit verify ---- */

static void write_key(const fixture *f, char *path, size_t len)
{
    snprintf(path, len, "%s/signing.pem", f->dir);
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(key);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(fp);
    chmod(path, 0600);
    EVP_PKEY_free(key);
}

/* Lines 1-4 logons, 5 a checkpoint, 6-7 logons, 8 the shutdown checkpoint. */
static void write_trail(const fixture *f, const char *key_path)
{
    char err[256];
    sp_audit_options opt = {.checkpoint_interval_us = 3600LL * 1000000,
                            .signing_key_file = key_path};
    assert_int_equal(sp_audit_open(f->dir, &opt, err, sizeof(err)), 0);
    const char *names[] = {"u1", "u2", "u3", "u4"};
    for (size_t i = 0; i < 4; i++)
        emit_logon(names[i], true);
    sp_audit_request_checkpoint();
    emit_logon("u6", true);
    emit_logon("u7", false);
    sp_audit_close();
}

/* The lines of a file, each without its newline; returns the count. */
static size_t split_lines(const char *path, char *lines[], size_t max)
{
    char *text = slurp(path);
    size_t n = 0;
    for (char *line = text, *nl; n < max && (nl = strchr(line, '\n')) != NULL; line = nl + 1)
        lines[n++] = strndup(line, (size_t)(nl - line));
    free(text);
    return n;
}

static void write_lines(const char *path, char *lines[], size_t n)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (size_t i = 0; i < n; i++)
        fprintf(fp, "%s\n", lines[i]);
    fclose(fp);
}

static json_t *verify_paths(const char **paths, size_t n, const char *key_path,
                            const char *syslog_path)
{
    uint8_t pub[SP_AUDIT_PUBKEY_LEN];
    char err[512];
    assert_int_equal(sp_audit_load_public_key(key_path, pub, err, sizeof(err)), 0);
    sp_audit_verify_opts o = {
        .paths = paths, .n_paths = n, .public_key = pub, .syslog_path = syslog_path};
    json_t *r = sp_audit_verify(&o, err, sizeof(err));
    assert_non_null(r);
    return r;
}

static void assert_break(json_t *r, const char *file_suffix, long line, const char *kind)
{
    json_t *b = json_object_get(r, "break");
    if (!json_is_object(b))
        fail_msg("expected a break (%s at line %ld), the trail verified", kind, line);
    assert_false(json_is_true(json_object_get(r, "ok")));
    const char *file = json_string_value(json_object_get(b, "file"));
    assert_non_null(strstr(file, file_suffix));
    assert_int_equal(json_integer_value(json_object_get(b, "line")), line);
    assert_string_equal(json_string_value(json_object_get(b, "kind")), kind);
    json_decref(r);
}

typedef struct tamper_case {
    const char *name;
    int edit_line;   /* 1-based; 0 = none */
    int delete_line; /* 1-based; 0 = none */
    int swap_line;   /* swap this line with the next; 0 = none */
    int resign_line; /* spoil the signature of this checkpoint line */
    long expect_line;
    const char *expect_kind;
} tamper_case;

static const tamper_case tamper_cases[] = {
    {.name = "edit", .edit_line = 3, .expect_line = 3, .expect_kind = "edited"},
    {.name = "delete", .delete_line = 3, .expect_line = 3, .expect_kind = "deleted"},
    {.name = "reorder", .swap_line = 3, .expect_line = 3, .expect_kind = "reordered"},
    {.name = "bad signature", .resign_line = 5, .expect_line = 5, .expect_kind = "bad-signature"},
    {.name = "delete before checkpoint",
     .delete_line = 4,
     .expect_line = 4,
     .expect_kind = "deleted"},
};

static void tamper(char *lines[], size_t *n, const tamper_case *c)
{
    if (c->edit_line) {
        char *p = strstr(lines[c->edit_line - 1], "\"u3\"");
        assert_non_null(p);
        p[2] = '9'; /* still valid JSON, another name */
    }
    if (c->delete_line) {
        free(lines[c->delete_line - 1]);
        memmove(&lines[c->delete_line - 1], &lines[c->delete_line],
                (*n - (size_t)c->delete_line) * sizeof(char *));
        (*n)--;
    }
    if (c->swap_line) {
        char *t = lines[c->swap_line - 1];
        lines[c->swap_line - 1] = lines[c->swap_line];
        lines[c->swap_line] = t;
    }
    if (c->resign_line) {
        char *p = strstr(lines[c->resign_line - 1], "\"signature\":\"");
        assert_non_null(p);
        p += strlen("\"signature\":\"");
        p[0] = p[0] == 'A' ? 'B' : 'A';
    }
}

static void test_verify_intact_trail(void **state)
{
    fixture *f = *state;
    char key[256], path[512];
    write_key(f, key, sizeof(key));
    write_trail(f, key);
    today_path(f, path, sizeof(path));
    char *lines[16];
    size_t n = split_lines(path, lines, 16);
    assert_int_equal(n, 8);
    assert_non_null(strstr(lines[4], "\"reason\":\"requested\""));
    assert_non_null(strstr(lines[7], "\"reason\":\"shutdown\""));
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    const char *paths[] = {path};
    json_t *r = verify_paths(paths, 1, key, NULL);
    assert_true(json_is_true(json_object_get(r, "ok")));
    assert_int_equal(json_integer_value(json_object_get(r, "lines")), 8);
    assert_int_equal(json_integer_value(json_object_get(r, "checkpoints")), 2);
    assert_string_equal(json_string_value(json_object_get(r, "signatures")), "checked");
    json_decref(r);
}

static void test_verify_finds_tampering(void **state)
{
    fixture *f = *state;
    char key[256], path[512];
    write_key(f, key, sizeof(key));
    write_trail(f, key);
    today_path(f, path, sizeof(path));
    for (size_t i = 0; i < SP_ARRAY_LEN(tamper_cases); i++) {
        const tamper_case *c = &tamper_cases[i];
        char *lines[16], copy[600];
        size_t n = split_lines(path, lines, 16);
        tamper(lines, &n, c);
        snprintf(copy, sizeof(copy), "%s/audit-copy-2000-01-0%zu.jsonl", f->dir, i + 1);
        write_lines(copy, lines, n);
        for (size_t j = 0; j < n; j++)
            free(lines[j]);
        const char *paths[] = {copy};
        print_message("case %s\n", c->name);
        assert_break(verify_paths(paths, 1, key, NULL), "audit-copy", c->expect_line,
                     c->expect_kind);
    }
}

/* Day one ends with lines after a checkpoint; cutting them is seen from day two. */
static void test_verify_cut_after_checkpoint(void **state)
{
    fixture *f = *state;
    char key[256], today[512], day1[512];
    write_key(f, key, sizeof(key));
    write_trail(f, key);
    today_path(f, today, sizeof(today));
    snprintf(day1, sizeof(day1), "%s/audit-%s-2000-01-01.jsonl", f->dir, f->host);
    assert_int_equal(rename(today, day1), 0);
    char err[256];
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("next-day", true);
    sp_audit_close();
    const char *paths[] = {today, day1}; /* any order: sorted by date */
    json_t *r = verify_paths(paths, 2, key, NULL);
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);

    char *lines[16];
    size_t n = split_lines(day1, lines, 16);
    write_lines(day1, lines, 5); /* keep lines 1-5: up to the first checkpoint */
    for (size_t j = 0; j < n; j++)
        free(lines[j]);
    assert_break(verify_paths(paths, 2, key, NULL), today + strlen(f->dir) + 1, 1, "cut");
}

/* With no later file, the checkpoints sent to syslog show the cut. */
static void test_verify_cut_seen_in_syslog(void **state)
{
    fixture *f = *state;
    char key[256], path[512], syslog_path[512];
    write_key(f, key, sizeof(key));
    write_trail(f, key);
    today_path(f, path, sizeof(path));
    char *lines[16];
    size_t n = split_lines(path, lines, 16);
    snprintf(syslog_path, sizeof(syslog_path), "%s/auth.log", f->dir);
    FILE *fp = fopen(syslog_path, "w");
    fprintf(fp, "Jan  1 00:00:00 host sallyport[1]: sallyport-audit-checkpoint %s\n", lines[4]);
    fprintf(fp, "Jan  1 00:05:00 host sallyport[1]: sallyport-audit-checkpoint %s\n", lines[7]);
    fclose(fp);
    const char *paths[] = {path};
    json_t *r = verify_paths(paths, 1, key, syslog_path);
    assert_true(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    write_lines(path, lines, 5);
    for (size_t j = 0; j < n; j++)
        free(lines[j]);
    r = verify_paths(paths, 1, key, NULL);
    assert_true(json_is_true(json_object_get(r, "ok"))); /* alone, the cut cannot be seen */
    assert_true(json_array_size(json_object_get(r, "notes")) == 0);
    json_decref(r);
    assert_break(verify_paths(paths, 1, key, syslog_path), "audit-", 5, "cut");
}

/* Every activity of the table: the OCSF fields agree with each other. */
static void test_ocsf_fields_of_every_activity(void **state)
{
    (void)state;
    for (int a = 0; a < SP_AUDIT_N_ACTIVITIES; a++) {
        const sp_audit_activity_info *info = sp_audit_activity_lookup((enum sp_audit_activity)a);
        assert_non_null(info);
        json_t *e = sp_audit_new((enum sp_audit_activity)a, "test-code", true, "alice");
        json_int_t cls = json_integer_value(json_object_get(e, "class_uid"));
        json_int_t act = json_integer_value(json_object_get(e, "activity_id"));
        assert_int_equal(cls, info->class_uid);
        assert_int_equal(act, info->activity_id);
        assert_int_equal(json_integer_value(json_object_get(e, "type_uid")), cls * 100 + act);
        assert_int_equal(json_integer_value(json_object_get(e, "category_uid")), cls / 1000);
        assert_string_equal(json_string_value(json_object_get(e, "activity_name")),
                            info->activity_name);
        assert_non_null(json_string_value(json_object_get(e, "category_name")));
        assert_non_null(json_string_value(json_object_get(e, "class_name")));
        assert_int_equal(json_integer_value(json_object_get(e, "severity_id")), 1);
        json_t *meta = json_object_get(e, "metadata");
        assert_string_equal(json_string_value(json_object_get(meta, "event_code")), "test-code");
        assert_string_equal(json_string_value(json_object_get(meta, "version")), "1.8.0");
        if (cls == SP_AUDIT_APPLICATION_LIFECYCLE)
            assert_non_null(json_object_get(e, "app"));
        json_decref(e);
    }
    const struct {
        enum sp_audit_activity a;
        int cls, id;
        const char *name;
    } known[] = {
        {SP_AUDIT_ACCOUNT_CREATE, 3001, 1, "Create"},
        {SP_AUDIT_ACCOUNT_DISABLE, 3001, 5, "Disable"},
        {SP_AUDIT_AUTH_LOGON, 3002, 1, "Logon"},
        {SP_AUDIT_AUTH_LOGOFF, 3002, 2, "Logoff"},
        {SP_AUDIT_SESSION_ASSIGN_PRIVILEGES, 3003, 1, "Assign Privileges"},
        {SP_AUDIT_ACCESS_REVOKE_PRIVILEGES, 3005, 2, "Revoke Privileges"},
        {SP_AUDIT_SSH_OPEN, 4007, 1, "Open"},
        {SP_AUDIT_DATASTORE_CONNECT, 6005, 3, "Connect"},
        {SP_AUDIT_CHECKPOINT, 0, 99, "Checkpoint"},
    };
    for (size_t i = 0; i < SP_ARRAY_LEN(known); i++) {
        const sp_audit_activity_info *info = sp_audit_activity_lookup(known[i].a);
        assert_int_equal(info->class_uid, known[i].cls);
        assert_int_equal(info->activity_id, known[i].id);
        assert_string_equal(info->activity_name, known[i].name);
    }
    json_t *e = sp_audit_new(SP_AUDIT_AUTH_LOGON, "select * from patients", true, "x");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(e, "metadata"), "event_code")),
        "invalid-code");
    json_decref(e);
    assert_null(sp_audit_activity_lookup(SP_AUDIT_N_ACTIVITIES));
}

/* Statement text never reaches the trail, whatever a caller puts in an event. */
static void test_phi_fields_are_removed(void **state)
{
    fixture *f = *state;
    char err[256], path[512];
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    json_t *e = sp_audit_new(SP_AUDIT_DATASTORE_CONNECT, "session-start", true, "alice");
    json_object_set_new(e, "query_info", json_pack("{s:s}", "query", "select ssn-4471"));
    sp_audit_set_unmapped(e, "statement", json_string("update patients set dx-4471"));
    sp_audit_set_unmapped(e, "role", json_string("reader"));
    sp_audit_emit(e);
    sp_audit_close();
    today_path(f, path, sizeof(path));
    char *text = slurp(path);
    assert_null(strstr(text, "4471"));
    assert_non_null(strstr(text, "\"phi_fields_removed\":2"));
    assert_non_null(strstr(text, "\"role\":\"reader\""));
    free(text);
}

static void test_batch_fsync_and_seq(void **state)
{
    fixture *f = *state;
    char err[256], path[512], last[65];
    sp_audit_options opt = {.fsync_batch = true, .batch_us = 50000};
    assert_int_equal(sp_audit_open(f->dir, &opt, err, sizeof(err)), 0);
    emit_logon("a", true);
    emit_logon("b", true);
    sp_audit_close();
    assert_int_equal(sp_audit_open(f->dir, NULL, err, sizeof(err)), 0);
    emit_logon("c", true);
    sp_audit_close();
    today_path(f, path, sizeof(path));
    json_t *lines = NULL;
    assert_int_equal(verify_chain(path, ZERO_HASH, last, &lines), 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(json_integer_value(json_object_get(json_array_get(lines, i), "seq")),
                         i + 1);
    json_decref(lines);
    opt.batch_us = 0;
    assert_int_equal(sp_audit_open(f->dir, &opt, err, sizeof(err)), -1);
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
        cmocka_unit_test_setup_teardown(test_verify_intact_trail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_finds_tampering, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_cut_after_checkpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify_cut_seen_in_syslog, setup, teardown),
        cmocka_unit_test(test_ocsf_fields_of_every_activity),
        cmocka_unit_test_setup_teardown(test_phi_fields_are_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_fsync_and_seq, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
