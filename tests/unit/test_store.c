/* The store against a real SQLite file in a temporary directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth/store.h"

#include <sqlite3.h>

#define S(us) ((int64_t)(us)*1000000)

typedef struct fixture {
    char dir[64];
    char path[128];
    sp_store *s;
    char err[256];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp_store_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->path, sizeof(f->path), "%s/state.db", f->dir);
    assert_int_equal(sp_store_open(f->path, &f->s, f->err, sizeof(f->err)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[160];
    sp_store_close(f->s);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void add_identity(fixture *f, const char *name)
{
    assert_int_equal(
        sp_store_identity_add(f->s, name, "human", "dba-team", "on-call", f->err, sizeof(f->err)),
        0);
}

static int64_t add_binding(fixture *f, const char *identity, const char *role, int64_t expires)
{
    int64_t id = 0;
    assert_int_equal(sp_store_binding_add(f->s, identity, role, expires, "ticket 42", "local-admin",
                                          &id, f->err, sizeof(f->err)),
                     0);
    assert_true(id > 0);
    return id;
}

static void add_token(fixture *f, const char *id, const char *identity, int64_t expires)
{
    uint8_t k1[SP_SCRAM_KEY_LEN], k2[SP_SCRAM_KEY_LEN];
    memset(k1, 0x11, sizeof(k1));
    memset(k2, 0x22, sizeof(k2));
    assert_int_equal(
        sp_store_cred_add(f->s, id, identity, "token", k1, k2, expires, f->err, sizeof(f->err)), 0);
}

static void start_session(fixture *f, const char *id, const char *identity, const char *cred,
                          int64_t binding, int pid, int64_t started)
{
    sp_session_row r = {.binding_id = binding, .gateway_pid = pid, .started_at = started};
    snprintf(r.id, sizeof(r.id), "%s", id);
    snprintf(r.identity, sizeof(r.identity), "%s", identity);
    snprintf(r.kind, sizeof(r.kind), "postgres");
    snprintf(r.target, sizeof(r.target), "main");
    snprintf(r.database, sizeof(r.database), "app");
    snprintf(r.role, sizeof(r.role), "reader");
    snprintf(r.cred_id, sizeof(r.cred_id), "%s", cred);
    snprintf(r.client_addr, sizeof(r.client_addr), "127.0.0.1:5555");
    snprintf(r.recording_path, sizeof(r.recording_path), "/rec/%s.spr", id);
    assert_int_equal(sp_store_session_start(f->s, &r, f->err, sizeof(f->err)), 0);
}

static void test_reopen_keeps_schema_and_data(void **state)
{
    fixture *f = *state;
    add_identity(f, "alice");
    sp_store_close(f->s);
    assert_int_equal(sp_store_open(f->path, &f->s, f->err, sizeof(f->err)), 0);
    sp_identity id;
    assert_int_equal(sp_store_identity_get(f->s, "alice", &id, f->err, sizeof(f->err)), 0);
    sqlite3 *db = sp_store_lock(f->s);
    sqlite3_stmt *st;
    assert_int_equal(
        sqlite3_prepare_v2(db, "SELECT count(*), max(version) FROM schema_version", -1, &st, NULL),
        SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 1);
    assert_int_equal(sqlite3_column_int(st, 1), 1);
    sqlite3_finalize(st);
    sp_store_unlock(f->s);
}

static void test_open_refuses_newer_schema(void **state)
{
    fixture *f = *state;
    sqlite3 *db = sp_store_lock(f->s);
    assert_int_equal(sqlite3_exec(db, "INSERT INTO schema_version VALUES (99)", NULL, NULL, NULL),
                     SQLITE_OK);
    sp_store_unlock(f->s);
    sp_store_close(f->s);
    f->s = NULL;
    assert_int_equal(sp_store_open(f->path, &f->s, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "newer"));
    sqlite3 *raw;
    assert_int_equal(sqlite3_open(f->path, &raw), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(raw, "DELETE FROM schema_version WHERE version = 99", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(raw);
    assert_int_equal(sp_store_open(f->path, &f->s, f->err, sizeof(f->err)), 0);
}

static void test_name_valid(void **state)
{
    (void)state;
    assert_true(sp_name_valid("alice@example.org"));
    assert_true(sp_name_valid("etl-job_1.prod"));
    assert_false(sp_name_valid(""));
    assert_false(sp_name_valid("bob smith"));
    assert_false(sp_name_valid("x'; DROP TABLE identities; --"));
    char long_name[SP_NAME_MAX + 1];
    memset(long_name, 'a', SP_NAME_MAX);
    long_name[SP_NAME_MAX] = '\0';
    assert_false(sp_name_valid(long_name));
    long_name[SP_NAME_MAX - 1] = '\0';
    assert_true(sp_name_valid(long_name));
}

static void test_identity_add_get(void **state)
{
    fixture *f = *state;
    assert_int_equal(sp_store_identity_add(f->s, "etl", "service", "data-team", "nightly ETL",
                                           f->err, sizeof(f->err)),
                     0);
    sp_identity id;
    assert_int_equal(sp_store_identity_get(f->s, "etl", &id, f->err, sizeof(f->err)), 0);
    assert_string_equal(id.name, "etl");
    assert_string_equal(id.kind, "service");
    assert_string_equal(id.owner, "data-team");
    assert_string_equal(id.purpose, "nightly ETL");
    assert_false(id.disabled);
    assert_int_equal(id.iterations, 4096);
    assert_true(id.created_at > 0);
    static const uint8_t zero[SP_SCRAM_SALT_LEN];
    assert_memory_not_equal(id.salt, zero, sizeof(zero));

    /* each identity gets its own salt */
    add_identity(f, "alice");
    sp_identity other;
    assert_int_equal(sp_store_identity_get(f->s, "alice", &other, f->err, sizeof(f->err)), 0);
    assert_memory_not_equal(id.salt, other.salt, sizeof(id.salt));
}

static void test_identity_add_refusals(void **state)
{
    fixture *f = *state;
    add_identity(f, "alice");
    assert_int_equal(
        sp_store_identity_add(f->s, "alice", "human", "o", "p", f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "already exists"));
    assert_int_equal(
        sp_store_identity_add(f->s, "bad name", "human", "o", "p", f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "invalid identity name"));
    assert_int_equal(
        sp_store_identity_add(f->s, "robot", "robot", "o", "p", f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "human or service"));
    assert_int_equal(
        sp_store_identity_add(f->s, "nobody", "human", "", "p", f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "owner"));
    assert_int_equal(
        sp_store_identity_add(f->s, "nobody", "human", "o", "", f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "purpose"));
}

static void test_identity_get_missing(void **state)
{
    fixture *f = *state;
    sp_identity id;
    assert_int_equal(sp_store_identity_get(f->s, "ghost", &id, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
}

static void test_identity_disable_enable(void **state)
{
    fixture *f = *state;
    sp_identity id;
    add_identity(f, "alice");
    assert_int_equal(sp_store_identity_set_disabled(f->s, "alice", true, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_identity_get(f->s, "alice", &id, f->err, sizeof(f->err)), 0);
    assert_true(id.disabled);
    assert_int_equal(sp_store_identity_set_disabled(f->s, "alice", false, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_identity_get(f->s, "alice", &id, f->err, sizeof(f->err)), 0);
    assert_false(id.disabled);
    assert_int_equal(sp_store_identity_set_disabled(f->s, "ghost", true, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
}

static void collect_names(const sp_identity *id, void *arg)
{
    strcat(arg, id->name);
    strcat(arg, ",");
}

static void test_identities_list(void **state)
{
    fixture *f = *state;
    char names[128] = "";
    add_identity(f, "carol");
    add_identity(f, "alice");
    add_identity(f, "bob");
    assert_int_equal(sp_store_identities_list(f->s, collect_names, names, f->err, sizeof(f->err)),
                     0);
    assert_string_equal(names, "alice,bob,carol,");
}

static void test_bindings_live_revoke_expire(void **state)
{
    fixture *f = *state;
    const int64_t now = S(1000);
    sp_binding b[8];
    size_t n = 0;
    add_identity(f, "alice");
    int64_t forever = add_binding(f, "alice", "reader", 0);
    int64_t soon = add_binding(f, "alice", "writer", now + S(60));
    add_binding(f, "alice", "old", now - S(1));

    assert_int_equal(sp_store_bindings_live(f->s, "alice", now, b, 8, &n, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(n, 2);
    assert_int_equal(b[0].id, forever);
    assert_string_equal(b[0].role, "reader");
    assert_string_equal(b[0].reason, "ticket 42");
    assert_string_equal(b[0].granted_by, "local-admin");
    assert_int_equal(b[1].id, soon);

    /* bounded by max */
    assert_int_equal(sp_store_bindings_live(f->s, "alice", now, b, 1, &n, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(n, 1);

    /* expired at exactly expires_at */
    assert_int_equal(
        sp_store_bindings_live(f->s, "alice", now + S(60), b, 8, &n, f->err, sizeof(f->err)), 0);
    assert_int_equal(n, 1);

    assert_int_equal(sp_store_binding_revoke(f->s, "alice", "reader", now, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_binding_revoke(f->s, "alice", "reader", now, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_binding_revoke(f->s, "alice", "old", now, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_bindings_live(f->s, "alice", now, b, 8, &n, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(n, 1);
    assert_string_equal(b[0].role, "writer");
}

static void test_binding_add_refusals(void **state)
{
    fixture *f = *state;
    int64_t id;
    assert_int_equal(sp_store_binding_add(f->s, "ghost", "reader", 0, "why", "local-admin", &id,
                                          f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    add_identity(f, "alice");
    assert_int_equal(sp_store_binding_add(f->s, "alice", "reader", 0, "", "local-admin", &id,
                                          f->err, sizeof(f->err)),
                     -1);
    assert_non_null(strstr(f->err, "reason"));
    assert_int_equal(sp_store_binding_add(f->s, "alice", "no such", 0, "why", "local-admin", &id,
                                          f->err, sizeof(f->err)),
                     -1);
}

static void collect_binding_ids(const sp_binding *b, void *arg)
{
    char *out = arg;
    size_t len = strlen(out);
    snprintf(out + len, 128 - len, "%s:%s,", b->identity, b->role);
}

static void test_bindings_list_live(void **state)
{
    fixture *f = *state;
    const int64_t now = S(1000);
    char all[128] = "", bobs[128] = "";
    add_identity(f, "alice");
    add_identity(f, "bob");
    add_binding(f, "bob", "reader", 0);
    add_binding(f, "alice", "writer", 0);
    add_binding(f, "alice", "old", now - 1);
    assert_int_equal(sp_store_bindings_list_live(f->s, NULL, now, collect_binding_ids, all, f->err,
                                                 sizeof(f->err)),
                     0);
    assert_string_equal(all, "alice:writer,bob:reader,");
    assert_int_equal(sp_store_bindings_list_live(f->s, "bob", now, collect_binding_ids, bobs,
                                                 f->err, sizeof(f->err)),
                     0);
    assert_string_equal(bobs, "bob:reader,");
}

static void test_credentials(void **state)
{
    fixture *f = *state;
    const int64_t now = S(1000);
    sp_token_verifier v[4];
    size_t n = 0;
    sp_credential c;
    add_identity(f, "alice");
    add_token(f, "aaaaaaaaaaaa", "alice", now + S(900));
    add_token(f, "bbbbbbbbbbbb", "alice", now - S(1));

    assert_int_equal(sp_store_tokens_live(f->s, "alice", now, v, 4, &n, f->err, sizeof(f->err)), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, "aaaaaaaaaaaa");
    assert_int_equal(v[0].stored_key[0], 0x11);
    assert_int_equal(v[0].server_key[31], 0x22);
    assert_int_equal(v[0].expires_at, now + S(900));

    assert_int_equal(sp_store_cred_get(f->s, "aaaaaaaaaaaa", &c, f->err, sizeof(f->err)), 0);
    assert_string_equal(c.identity, "alice");
    assert_string_equal(c.kind, "token");
    assert_int_equal(c.revoked_at, 0);

    assert_int_equal(sp_store_cred_revoke(f->s, "aaaaaaaaaaaa", now, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_cred_revoke(f->s, "aaaaaaaaaaaa", now + 5, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_cred_get(f->s, "aaaaaaaaaaaa", &c, f->err, sizeof(f->err)), 0);
    assert_int_equal(c.revoked_at, now);
    assert_int_equal(sp_store_tokens_live(f->s, "alice", now, v, 4, &n, f->err, sizeof(f->err)), 0);
    assert_int_equal(n, 0);
    assert_int_equal(sp_store_cred_revoke(f->s, "zzzzzzzzzzzz", now, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_cred_get(f->s, "zzzzzzzzzzzz", &c, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
}

static void test_cred_add_refusals(void **state)
{
    fixture *f = *state;
    uint8_t k[SP_SCRAM_KEY_LEN] = {0};
    assert_int_equal(
        sp_store_cred_add(f->s, "aaaaaaaaaaaa", "ghost", "token", k, k, 1, f->err, sizeof(f->err)),
        SP_STORE_NOT_FOUND);
    add_identity(f, "alice");
    assert_int_equal(
        sp_store_cred_add(f->s, "Bad-Id", "alice", "token", k, k, 1, f->err, sizeof(f->err)), -1);
    add_token(f, "aaaaaaaaaaaa", "alice", 1);
    assert_int_equal(
        sp_store_cred_add(f->s, "aaaaaaaaaaaa", "alice", "token", k, k, 1, f->err, sizeof(f->err)),
        -1);
}

static void count_creds(const sp_credential *c, void *arg)
{
    (void)c;
    (*(int *)arg)++;
}

static void test_creds_list(void **state)
{
    fixture *f = *state;
    int all = 0, bobs = 0;
    add_identity(f, "alice");
    add_identity(f, "bob");
    add_token(f, "aaaaaaaaaaaa", "alice", 1);
    add_token(f, "bbbbbbbbbbbb", "bob", 1);
    add_token(f, "cccccccccccc", "bob", 1);
    assert_int_equal(sp_store_creds_list(f->s, NULL, count_creds, &all, f->err, sizeof(f->err)), 0);
    assert_int_equal(all, 3);
    assert_int_equal(sp_store_creds_list(f->s, "bob", count_creds, &bobs, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(bobs, 2);
}

static void test_session_lifecycle(void **state)
{
    fixture *f = *state;
    sp_session_row r;
    add_identity(f, "alice");
    start_session(f, "0190aaaa-0000-7000-8000-000000000001", "alice", "aaaaaaaaaaaa", 7, 123,
                  S(100));
    assert_int_equal(sp_store_session_progress(f->s, "0190aaaa-0000-7000-8000-000000000001", 5,
                                               f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_session_get(f->s, "0190aaaa-0000-7000-8000-000000000001", &r, f->err,
                                          sizeof(f->err)),
                     0);
    assert_int_equal(r.chunk_count, 5);
    assert_int_equal(r.ended_at, 0);
    assert_int_equal(r.binding_id, 7);
    assert_int_equal(r.gateway_pid, 123);
    assert_string_equal(r.cred_id, "aaaaaaaaaaaa");
    assert_string_equal(r.recording_path, "/rec/0190aaaa-0000-7000-8000-000000000001.spr");

    assert_int_equal(sp_store_session_end(f->s, "0190aaaa-0000-7000-8000-000000000001", S(200),
                                          "client-closed", 9, f->err, sizeof(f->err)),
                     0);
    /* the first end wins */
    assert_int_equal(sp_store_session_end(f->s, "0190aaaa-0000-7000-8000-000000000001", S(300),
                                          "other", 10, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_session_get(f->s, "0190aaaa-0000-7000-8000-000000000001", &r, f->err,
                                          sizeof(f->err)),
                     0);
    assert_int_equal(r.ended_at, S(200));
    assert_string_equal(r.end_reason, "client-closed");
    assert_int_equal(r.chunk_count, 9);

    assert_int_equal(sp_store_session_progress(f->s, "nope", 1, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_session_end(f->s, "nope", 1, "x", 1, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_session_get(f->s, "nope", &r, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
}

static void test_session_find_prefix(void **state)
{
    fixture *f = *state;
    sp_session_row r;
    start_session(f, "0190aaaa-1111", "alice", "", 1, 1, S(1));
    start_session(f, "0190aaaa-2222", "alice", "", 1, 1, S(2));
    assert_int_equal(sp_store_session_find(f->s, "0190aaaa-2", &r, f->err, sizeof(f->err)), 0);
    assert_string_equal(r.id, "0190aaaa-2222");
    assert_int_equal(sp_store_session_find(f->s, "0190aaaa-1111", &r, f->err, sizeof(f->err)), 0);
    assert_string_equal(r.id, "0190aaaa-1111");
    assert_int_equal(sp_store_session_find(f->s, "0190", &r, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "several"));
    assert_int_equal(sp_store_session_find(f->s, "0190%", &r, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_store_session_find(f->s, "ffff", &r, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    /* The end of an id works too: time-ordered ids share their start. */
    assert_int_equal(sp_store_session_find(f->s, "2222", &r, f->err, sizeof(f->err)), 0);
    assert_string_equal(r.id, "0190aaaa-2222");
    assert_int_equal(sp_store_session_find(f->s, "-1111", &r, f->err, sizeof(f->err)), 0);
    assert_string_equal(r.id, "0190aaaa-1111");
}

static void collect_session_ids(const sp_session_row *row, void *arg)
{
    strcat(arg, row->id);
    strcat(arg, ",");
}

static void test_sessions_list(void **state)
{
    fixture *f = *state;
    char all[128] = "", live[128] = "", limited[128] = "";
    start_session(f, "s1", "alice", "", 1, 1, S(1));
    start_session(f, "s2", "alice", "", 1, 1, S(2));
    start_session(f, "s3", "alice", "", 1, 1, S(3));
    assert_int_equal(sp_store_session_end(f->s, "s2", S(5), "done", 0, f->err, sizeof(f->err)), 0);
    assert_int_equal(
        sp_store_sessions_list(f->s, false, 0, collect_session_ids, all, f->err, sizeof(f->err)),
        0);
    assert_string_equal(all, "s3,s2,s1,");
    assert_int_equal(
        sp_store_sessions_list(f->s, true, 0, collect_session_ids, live, f->err, sizeof(f->err)),
        0);
    assert_string_equal(live, "s3,s1,");
    assert_int_equal(sp_store_sessions_list(f->s, false, 2, collect_session_ids, limited, f->err,
                                            sizeof(f->err)),
                     0);
    assert_string_equal(limited, "s3,s2,");
}

typedef struct ended {
    char text[512];
} ended;

static void collect_to_end(const char *id, const char *reason, void *arg)
{
    ended *e = arg;
    size_t len = strlen(e->text);
    snprintf(e->text + len, sizeof(e->text) - len, "%s=%s;", id, reason);
}

static void test_request_kill(void **state)
{
    fixture *f = *state;
    ended e = {0};
    start_session(f, "s1", "alice", "", 1, 77, S(1));
    assert_int_equal(sp_store_session_request_kill(f->s, "s1", "left unattended", "local-admin",
                                                   f->err, sizeof(f->err)),
                     0);
    assert_int_equal(
        sp_store_session_request_kill(f->s, "nope", "x", "local-admin", f->err, sizeof(f->err)),
        SP_STORE_NOT_FOUND);
    add_identity(f, "alice");
    assert_int_equal(
        sp_store_sessions_to_end(f->s, 77, S(2), collect_to_end, &e, f->err, sizeof(f->err)), 0);
    assert_string_equal(e.text, "s1=killed: left unattended;");
    assert_int_equal(sp_store_session_end(f->s, "s1", S(3), "killed", 0, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(
        sp_store_session_request_kill(f->s, "s1", "again", "local-admin", f->err, sizeof(f->err)),
        -1);
    assert_non_null(strstr(f->err, "already ended"));
}

/* One live session per reason, plus healthy ones and one of another gateway. */
static void test_sessions_to_end_reasons(void **state)
{
    fixture *f = *state;
    const int64_t now = S(1000);
    const int pid = 4242;
    ended e = {0};
    add_identity(f, "alice");
    add_identity(f, "dora");
    int64_t good = add_binding(f, "alice", "reader", 0);
    int64_t revoked = add_binding(f, "alice", "writer", 0);
    int64_t expired = add_binding(f, "alice", "temp", now - S(1));
    int64_t doras = add_binding(f, "dora", "reader", 0);
    add_token(f, "tokgood00000", "alice", now + S(60));
    add_token(f, "tokrevoked00", "alice", now + S(60));
    add_token(f, "tokttlpassed", "alice", now - S(60));
    add_token(f, "tokdora00000", "dora", now + S(60));
    assert_int_equal(
        sp_store_binding_revoke(f->s, "alice", "writer", now - S(5), f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_cred_revoke(f->s, "tokrevoked00", now - S(5), f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_identity_set_disabled(f->s, "dora", true, f->err, sizeof(f->err)), 0);

    start_session(f, "a-healthy", "alice", "tokgood00000", good, pid, S(1));
    start_session(f, "b-ttl-passed", "alice", "tokttlpassed", good, pid, S(2));
    start_session(f, "c-cred-revoked", "alice", "tokrevoked00", good, pid, S(3));
    start_session(f, "d-grant-revoked", "alice", "tokgood00000", revoked, pid, S(4));
    start_session(f, "e-grant-expired", "alice", "tokgood00000", expired, pid, S(5));
    start_session(f, "f-disabled", "dora", "tokdora00000", doras, pid, S(6));
    start_session(f, "g-other-gateway", "alice", "tokrevoked00", revoked, pid + 1, S(7));
    start_session(f, "h-ended", "alice", "tokrevoked00", revoked, pid, S(8));
    assert_int_equal(sp_store_session_end(f->s, "h-ended", S(9), "done", 0, f->err, sizeof(f->err)),
                     0);

    assert_int_equal(
        sp_store_sessions_to_end(f->s, pid, now, collect_to_end, &e, f->err, sizeof(f->err)), 0);
    /* order is not part of the contract; each must appear exactly as expected */
    assert_non_null(strstr(e.text, "c-cred-revoked=credential-revoked;"));
    assert_non_null(strstr(e.text, "d-grant-revoked=grant-revoked;"));
    assert_non_null(strstr(e.text, "e-grant-expired=grant-expired;"));
    assert_non_null(strstr(e.text, "f-disabled=identity-disabled;"));
    assert_null(strstr(e.text, "a-healthy"));
    assert_null(strstr(e.text, "b-ttl-passed"));
    assert_null(strstr(e.text, "g-other-gateway"));
    assert_null(strstr(e.text, "h-ended"));
}

static void test_sessions_to_end_missing_grant(void **state)
{
    fixture *f = *state;
    ended e = {0};
    add_identity(f, "alice");
    start_session(f, "s1", "alice", "", 999, 5, S(1));
    assert_int_equal(
        sp_store_sessions_to_end(f->s, 5, S(2), collect_to_end, &e, f->err, sizeof(f->err)), 0);
    assert_string_equal(e.text, "s1=grant-revoked;");
}

static void collect_orphans(const sp_session_row *row, void *arg)
{
    collect_session_ids(row, arg);
}

static void test_close_orphans(void **state)
{
    fixture *f = *state;
    char closed[128] = "";
    sp_session_row r;
    int me = (int)getpid();
    int parent = (int)getppid();
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    assert_true(child > 0);
    assert_int_equal(waitpid(child, NULL, 0), child);

    start_session(f, "dead-gateway", "alice", "", 1, (int)child, S(1));
    start_session(f, "live-gateway", "alice", "", 1, parent, S(2));
    start_session(f, "my-old-incarnation", "alice", "", 1, me, S(3));
    start_session(f, "already-ended", "alice", "", 1, (int)child, S(4));
    assert_int_equal(
        sp_store_session_end(f->s, "already-ended", S(5), "done", 3, f->err, sizeof(f->err)), 0);

    assert_int_equal(sp_store_sessions_close_orphans(f->s, me, S(10), "gateway-crashed",
                                                     collect_orphans, closed, f->err,
                                                     sizeof(f->err)),
                     0);
    assert_string_equal(closed, "dead-gateway,my-old-incarnation,");
    assert_int_equal(sp_store_session_get(f->s, "dead-gateway", &r, f->err, sizeof(f->err)), 0);
    assert_int_equal(r.ended_at, S(10));
    assert_string_equal(r.end_reason, "gateway-crashed");
    assert_int_equal(sp_store_session_get(f->s, "live-gateway", &r, f->err, sizeof(f->err)), 0);
    assert_int_equal(r.ended_at, 0);
    assert_int_equal(sp_store_session_get(f->s, "already-ended", &r, f->err, sizeof(f->err)), 0);
    assert_string_equal(r.end_reason, "done");
}

static void test_hostile_text_is_data(void **state)
{
    fixture *f = *state;
    sp_identity id;
    const char *purpose = "x'); DROP TABLE identities; --";
    assert_int_equal(
        sp_store_identity_add(f->s, "mallory", "human", "o", purpose, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_identity_get(f->s, "mallory", &id, f->err, sizeof(f->err)), 0);
    assert_string_equal(id.purpose, purpose);
}

/* Another process's write lock, a removed file and a replaced file are each an outage. */
static void test_probe_sees_lock_removal_and_replacement(void **state)
{
    fixture *f = *state;
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), 0);

    sqlite3 *other = NULL;
    assert_int_equal(sqlite3_open(f->path, &other), SQLITE_OK);
    assert_int_equal(sqlite3_exec(other, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "write lock"));
    assert_int_equal(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), 0);
    /* Nothing was kept, so nothing is pending. */
    assert_int_equal(sp_store_retry_pending(f->s, f->err, sizeof(f->err)), 0);

    char moved[160];
    snprintf(moved, sizeof(moved), "%s/moved.db", f->dir);
    assert_int_equal(rename(f->path, moved), 0);
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "removed"));

    FILE *fp = fopen(f->path, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "replaced"));

    assert_int_equal(unlink(f->path), 0);
    assert_int_equal(rename(moved, f->path), 0);
    assert_int_equal(sp_store_probe(f->s, 100, f->err, sizeof(f->err)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reopen_keeps_schema_and_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_refuses_newer_schema, setup, teardown),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test_setup_teardown(test_identity_add_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_add_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_get_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity_disable_enable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identities_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bindings_live_revoke_expire, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binding_add_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bindings_list_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credentials, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cred_add_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_creds_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_lifecycle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_find_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_kill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_to_end_reasons, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sessions_to_end_missing_grant, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_orphans, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_text_is_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_probe_sees_lock_removal_and_replacement, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
