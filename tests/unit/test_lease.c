/* Leases against a real PostgreSQL started by this test (initdb + pg_ctl in a temp dir, on
 * loopback, as an unprivileged user when run as root). Skips with exit status 0 when the
 * PostgreSQL server binaries are not installed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <openssl/sha.h>
#include <pwd.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/lease.h"
#include "auth/scram.h"
#include "auth/store.h"
#include "common/config.h"
#include "common/util.h"

#define SEC 1000000LL
#define HOUR (3600 * SEC)

static const char *const PG_BIN_CANDIDATES[] = {
    "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"};

typedef struct fixture {
    char pg_bin[256];
    char dir[256];
    char as_user[64]; /* "runuser -u nobody -- " when root, else "" */
    int port;
    bool started;
    PGconn *su; /* superuser connection (trust over the unix socket) */
    sp_store *store;
    sp_config *cfg;
    sp_lease_mgr *mgr;
} fixture;

static fixture F;

/* ---------------------------------------------------------------- harness */

static bool find_pg_bin(char *out, size_t outlen)
{
    const char *env = getenv("SP_PG_BIN");
    if (env) {
        snprintf(out, outlen, "%s", env);
        return true;
    }
    for (size_t i = 0; i < SP_ARRAY_LEN(PG_BIN_CANDIDATES); i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/postgres", PG_BIN_CANDIDATES[i]);
        if (access(path, X_OK) == 0) {
            snprintf(out, outlen, "%s", PG_BIN_CANDIDATES[i]);
            return true;
        }
    }
    return false;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "test_lease: command failed (%d): %s\n", rc, cmd);
    return rc;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    fclose(f);
    return chmod(path, mode);
}

static PGresult *su_exec(const char *sql)
{
    PGresult *res = PQexec(F.su, sql);
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        fprintf(stderr, "test_lease: %s: %s\n", sql, PQerrorMessage(F.su));
    return res;
}

static bool su_ok(const char *sql)
{
    PGresult *res = su_exec(sql);
    ExecStatusType s = PQresultStatus(res);
    PQclear(res);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* First column of the first row of a query with one text parameter, or "" when no row. */
static void su_value(const char *sql, const char *param, char *out, size_t outlen)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(F.su, sql, 1, NULL, params, NULL, NULL, 0);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    snprintf(out, outlen, "%s", PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
}

static bool role_exists(const char *role)
{
    char v[8];
    su_value("SELECT 1 FROM pg_roles WHERE rolname = $1", role, v, sizeof(v));
    return v[0] == '1';
}

static const char SETUP_SQL[] =
    "CREATE ROLE sallyport_admin LOGIN PASSWORD 'admin-test-pw' CREATEROLE"
    " IN ROLE pg_signal_backend;"
    "CREATE ROLE sallyport_managed NOLOGIN;"
    "CREATE ROLE phi_read NOLOGIN;"
    "CREATE TABLE patients (id int, name text);"
    "GRANT SELECT ON patients TO phi_read;"
    "GRANT CREATE ON SCHEMA public TO phi_read;"
    "REVOKE CONNECT, TEMP ON DATABASE app FROM PUBLIC;"
    "GRANT CONNECT ON DATABASE app TO sallyport_admin, phi_read;";

static const char HBA[] = "local all postgres trust\n"
                          "host app sallyport_admin 127.0.0.1/32 scram-sha-256\n"
                          "host app +sallyport_managed 127.0.0.1/32 scram-sha-256\n"
                          "host all all 0.0.0.0/0 reject\n";

static int start_postgres(void)
{
    char path[512];
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || chown(F.dir, pw->pw_uid, pw->pw_gid) < 0)
            return -1;
        snprintf(F.as_user, sizeof(F.as_user), "runuser -u nobody -- ");
    }
    if (run("cd %s && %s%s/initdb -D %s/data -U postgres -A trust -E UTF8 --no-sync "
            ">%s/initdb.log 2>&1",
            F.dir, F.as_user, F.pg_bin, F.dir, F.dir) != 0)
        return -1;
    snprintf(path, sizeof(path), "%s/data/pg_hba.conf", F.dir);
    if (write_file(path, HBA, 0600) < 0)
        return -1;
    F.port = free_port();
    if (F.port < 0)
        return -1;
    if (run("cd %s && %s%s/pg_ctl -D %s/data -l %s/postgres.log -w -s -o "
            "\"-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories=%s "
            "-c password_encryption=scram-sha-256 -c fsync=off\" start",
            F.dir, F.as_user, F.pg_bin, F.dir, F.dir, F.port, F.dir) != 0)
        return -1;
    F.started = true;
    return 0;
}

static PGconn *su_connect(const char *db)
{
    char dsn[512];
    snprintf(dsn, sizeof(dsn), "host=%s port=%d user=postgres dbname=%s", F.dir, F.port, db);
    PGconn *c = PQconnectdb(dsn);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "test_lease: superuser connect: %s\n", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int prepare_database(void)
{
    PGconn *c = su_connect("postgres");
    if (!c)
        return -1;
    PGresult *res = PQexec(c, "CREATE DATABASE app");
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    PQfinish(c);
    if (!ok || !(F.su = su_connect("app")))
        return -1;
    return su_ok(SETUP_SQL) ? 0 : -1;
}

static int load_gateway_side(void)
{
    char path[512], text[2048], err[512];
    snprintf(path, sizeof(path), "%s/admin.dsn", F.dir);
    if (write_file(path, "user=sallyport_admin password=admin-test-pw\n", 0600) < 0)
        return -1;
    snprintf(text, sizeof(text),
             "[sallyport]\n"
             "store = sqlite:%s/state.db\n"
             "recordings_dir = %s/rec\n"
             "audit_dir = %s/audit\n"
             "lease_idle = 60s\n"
             "[target pg1]\n"
             "kind = postgres\n"
             "address = 127.0.0.1:%d\n"
             "database = app\n"
             "upstream_tls = disable\n"
             "admin_dsn_file = %s\n"
             "connect_timeout = 5s\n"
             "[role reader]\n"
             "targets = pg1\n"
             "db_roles = phi_read\n",
             F.dir, F.dir, F.dir, F.port, path);
    snprintf(path, sizeof(path), "%s/sallyport.ini", F.dir);
    F.cfg = sp_config_load_string(text, path, err, sizeof(err));
    if (!F.cfg) {
        fprintf(stderr, "test_lease: config: %s\n", err);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/state.db", F.dir);
    if (sp_store_open(path, &F.store, err, sizeof(err)) < 0) {
        fprintf(stderr, "test_lease: store: %s\n", err);
        return -1;
    }
    static const char *const identities[] = {"Alice.Smith@example", "bob", "carol", "dave"};
    for (size_t i = 0; i < SP_ARRAY_LEN(identities); i++) {
        int64_t id;
        if (sp_store_identity_add(F.store, identities[i], "human", "dba-team", "lease test", err,
                                  sizeof(err)) < 0 ||
            sp_store_binding_add(F.store, identities[i], "reader", 0, "lease test", "local-admin",
                                 &id, err, sizeof(err)) < 0) {
            fprintf(stderr, "test_lease: store setup: %s\n", err);
            return -1;
        }
    }
    F.mgr = sp_lease_mgr_new(F.store);
    return F.mgr ? 0 : -1;
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(F.dir, sizeof(F.dir), "/tmp/sp-lease-test-XXXXXX");
    if (!mkdtemp(F.dir))
        return -1;
    if (start_postgres() < 0 || prepare_database() < 0 || load_gateway_side() < 0)
        return -1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    sp_lease_mgr_free(F.mgr);
    sp_store_close(F.store);
    if (F.cfg)
        sp_config_unref(F.cfg);
    if (F.su)
        PQfinish(F.su);
    if (F.started)
        run("cd %s && %s%s/pg_ctl -D %s/data -m immediate -s stop", F.dir, F.as_user, F.pg_bin,
            F.dir);
    if (F.dir[0] && !getenv("SP_KEEP_TEST_DIR"))
        run("rm -rf %s", F.dir);
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static char *const READER_ROLES[] = {"phi_read", NULL};

static const sp_target *pg1(void)
{
    return sp_config_target(F.cfg, "pg1");
}

static void acquire_ok(sp_lease_mgr *m, const char *identity, int64_t valid_until, sp_lease *out)
{
    char err[512] = "";
    int rc = sp_lease_acquire(m, F.cfg, pg1(), identity, READER_ROLES, valid_until, out, err,
                              sizeof(err));
    if (rc != 0)
        fail_msg("acquire for %s: %s", identity, err);
}

/* What the server keeps must be what the keys we hold prove. */
static void assert_verifier_matches(const sp_lease *l)
{
    uint8_t stored_key[SP_SCRAM_KEYLEN];
    char expect[256], got[256];
    SHA256(l->client_key, sizeof(l->client_key), stored_key);
    assert_int_equal(sp_scram_verifier_text(l->salt, sizeof(l->salt), l->iterations, stored_key,
                                            l->server_key, expect, sizeof(expect)),
                     0);
    su_value("SELECT rolpassword FROM pg_authid WHERE rolname = $1", l->role_name, got,
             sizeof(got));
    assert_true(strncmp(got, "SCRAM-SHA-256$4096:", 19) == 0);
    assert_string_equal(got, expect);
}

static int64_t role_valid_until_s(const char *role)
{
    char v[32];
    su_value("SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = $1",
             role, v, sizeof(v));
    return strtoll(v, NULL, 10);
}

static int64_t lease_column(int64_t id, const char *column)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "SELECT %s FROM leases WHERE id = ?1", column);
    sqlite3 *db = sp_store_lock(F.store);
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) == SQLITE_ROW)
            v = sqlite3_column_type(st, 0) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sp_store_unlock(F.store);
    return v;
}

typedef struct drops {
    int n;
    char role[8][64];
    char why[8][64];
    char identity[8][64];
} drops;

static void on_drop(const char *identity, const char *target, const char *role_name,
                    const char *why, void *arg)
{
    drops *d = arg;
    assert_string_equal(target, "pg1");
    if (d->n < 8) {
        snprintf(d->role[d->n], sizeof(d->role[0]), "%s", role_name);
        snprintf(d->why[d->n], sizeof(d->why[0]), "%s", why);
        snprintf(d->identity[d->n], sizeof(d->identity[0]), "%s", identity);
    }
    d->n++;
}

static int sweep(int64_t now, bool at_start, drops *d)
{
    char err[512] = "";
    memset(d, 0, sizeof(*d));
    int n = sp_lease_sweep(F.mgr, F.cfg, now, at_start, on_drop, d, err, sizeof(err));
    if (n < 0)
        fail_msg("sweep: %s", err);
    return n;
}

static sp_lease ALICE; /* kept across the tests below, which run in order */

/* ---------------------------------------------------------------- tests */

static void test_acquire_creates_role(void **state)
{
    (void)state;
    int64_t until = sp_now_us() + HOUR;
    acquire_ok(F.mgr, "Alice.Smith@example", until, &ALICE);

    regex_t re;
    assert_int_equal(regcomp(&re, "^sp_alice_smith_example_[0-9a-f]{8}$", REG_EXTENDED), 0);
    assert_int_equal(regexec(&re, ALICE.role_name, 0, NULL, 0), 0);
    regfree(&re);
    assert_true(role_exists(ALICE.role_name));
    assert_int_equal(ALICE.iterations, SP_SCRAM_ITERATIONS);
    assert_int_equal(ALICE.valid_until, until);
    assert_true(llabs(role_valid_until_s(ALICE.role_name) - until / SEC) <= 1);

    char v[256];
    su_value("SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m"
             " JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid"
             " WHERE r.rolname = $1",
             ALICE.role_name, v, sizeof(v));
    assert_string_equal(v, "phi_read,sallyport_managed");
    su_value("SELECT rolcanlogin::text || rolinherit::text || rolcreaterole::text"
             " FROM pg_roles WHERE rolname = $1",
             ALICE.role_name, v, sizeof(v));
    assert_string_equal(v, "truetruefalse");

    char expect[256];
    snprintf(expect, sizeof(expect), "sallyport lease %lld identity=Alice.Smith@example target=pg1",
             (long long)ALICE.id);
    su_value("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
             ALICE.role_name, v, sizeof(v));
    assert_string_equal(v, expect);
    assert_verifier_matches(&ALICE);
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 1);
}

static void test_acquire_reuses_and_extends(void **state)
{
    (void)state;
    sp_lease again;
    int64_t later = ALICE.valid_until + HOUR;
    acquire_ok(F.mgr, "Alice.Smith@example", later, &again);
    assert_int_equal(again.id, ALICE.id);
    assert_string_equal(again.role_name, ALICE.role_name);
    assert_memory_equal(again.client_key, ALICE.client_key, sizeof(again.client_key));
    assert_int_equal(again.valid_until, later);
    assert_true(llabs(role_valid_until_s(ALICE.role_name) - later / SEC) <= 1);
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 2);

    /* An earlier end does not shorten the role. */
    acquire_ok(F.mgr, "Alice.Smith@example", sp_now_us() + 60 * SEC, &again);
    assert_int_equal(again.valid_until, later);
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 3);
    sp_lease_release(F.mgr, ALICE.id, sp_now_us());
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 2);
    ALICE = again;
}

/* A new process has no keys for the row: it must set a fresh verifier, same role. */
static void test_new_process_rekeys_role(void **state)
{
    (void)state;
    sp_lease_mgr *fresh = sp_lease_mgr_new(F.store);
    assert_non_null(fresh);
    sp_lease l;
    acquire_ok(fresh, "Alice.Smith@example", sp_now_us() + HOUR, &l);
    sp_lease_mgr_free(fresh);
    assert_int_equal(l.id, ALICE.id);
    assert_string_equal(l.role_name, ALICE.role_name);
    assert_memory_not_equal(l.salt, ALICE.salt, sizeof(l.salt));
    assert_verifier_matches(&l);
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 3);
    sp_lease_release(F.mgr, ALICE.id, sp_now_us());
}

static void test_sweep_keeps_leases_in_use(void **state)
{
    (void)state;
    drops d;
    assert_int_equal(sweep(sp_now_us() + 2 * F.cfg->lease_idle, false, &d), 0);
    assert_int_equal(d.n, 0);
    assert_true(role_exists(ALICE.role_name));
}

static void test_sweep_drops_idle_and_reassigns_objects(void **state)
{
    (void)state;
    char sql[512];
    snprintf(sql, sizeof(sql), "SET ROLE \"%s\"; CREATE TABLE lease_scratch (x int); RESET ROLE;",
             ALICE.role_name);
    assert_true(su_ok(sql));
    sp_lease_release(F.mgr, ALICE.id, sp_now_us());
    sp_lease_release(F.mgr, ALICE.id, sp_now_us());
    assert_int_equal(lease_column(ALICE.id, "active_sessions"), 0);

    drops d;
    assert_int_equal(sweep(sp_now_us() + F.cfg->lease_idle / 2, false, &d), 0);
    assert_int_equal(sweep(sp_now_us() + F.cfg->lease_idle + SEC, false, &d), 1);
    assert_string_equal(d.role[0], ALICE.role_name);
    assert_string_equal(d.why[0], "idle");
    assert_string_equal(d.identity[0], "Alice.Smith@example");
    assert_false(role_exists(ALICE.role_name));
    char owner[64];
    su_value("SELECT tableowner FROM pg_tables WHERE tablename = $1", "lease_scratch", owner,
             sizeof(owner));
    assert_string_equal(owner, "sallyport_admin");
    assert_true(lease_column(ALICE.id, "dropped_at") > 0);

    /* The next acquire mints a new role. */
    sp_lease l;
    acquire_ok(F.mgr, "Alice.Smith@example", sp_now_us() + HOUR, &l);
    assert_true(l.id != ALICE.id);
    assert_string_not_equal(l.role_name, ALICE.role_name);
    assert_verifier_matches(&l);
    ALICE = l;
}

static void test_sweep_drops_when_grant_revoked(void **state)
{
    (void)state;
    char err[512];
    sp_lease bob;
    acquire_ok(F.mgr, "bob", sp_now_us() + HOUR, &bob);
    assert_int_equal(
        sp_store_binding_revoke(F.store, "bob", "reader", sp_now_us(), err, sizeof(err)), 0);
    drops d;
    assert_int_equal(sweep(sp_now_us(), false, &d), 1);
    assert_string_equal(d.role[0], bob.role_name);
    assert_string_equal(d.why[0], "grant-ended");
    assert_false(role_exists(bob.role_name));
    assert_true(role_exists(ALICE.role_name));
}

static void test_sweep_drops_expired(void **state)
{
    (void)state;
    sp_lease dave;
    acquire_ok(F.mgr, "dave", sp_now_us() + 30 * SEC, &dave);
    drops d;
    assert_int_equal(sweep(sp_now_us() + 31 * SEC, false, &d), 1);
    assert_string_equal(d.role[0], dave.role_name);
    assert_string_equal(d.why[0], "expired");
    assert_false(role_exists(dave.role_name));
}

static void test_sweep_at_start_drops_orphans(void **state)
{
    (void)state;
    assert_true(su_ok("CREATE ROLE sp_ghost_deadbeef LOGIN IN ROLE sallyport_managed;"
                      "COMMENT ON ROLE sp_ghost_deadbeef IS"
                      " 'sallyport lease 999 identity=ghost target=pg1';"
                      "CREATE ROLE hand_made NOLOGIN IN ROLE sallyport_managed;"
                      "COMMENT ON ROLE hand_made IS 'made by a DBA';"));
    sp_lease carol;
    acquire_ok(F.mgr, "carol", sp_now_us() + HOUR, &carol);
    assert_int_equal(lease_column(carol.id, "active_sessions"), 1);

    drops d;
    assert_int_equal(sweep(sp_now_us(), true, &d), 1);
    assert_string_equal(d.role[0], "sp_ghost_deadbeef");
    assert_string_equal(d.why[0], "orphan");
    assert_string_equal(d.identity[0], "ghost");
    assert_false(role_exists("sp_ghost_deadbeef"));
    assert_true(role_exists("hand_made"));
    assert_true(role_exists(carol.role_name));
    assert_true(role_exists(ALICE.role_name));
    /* No session survives a restart. */
    assert_int_equal(lease_column(carol.id, "active_sessions"), 0);
}

/* The lease key is the set of db_roles: order and repeats do not matter, and a lease with
 * other roles than a live grant gives is not covered by it. */
static void test_db_roles_are_a_set(void **state)
{
    (void)state;
    char err[512] = "";
    char *const twice[] = {"phi_read", "phi_read", NULL};
    char *const none[] = {NULL};
    sp_lease same, bare;
    assert_int_equal(sp_lease_acquire(F.mgr, F.cfg, pg1(), "Alice.Smith@example", twice,
                                      sp_now_us() + HOUR, &same, err, sizeof(err)),
                     0);
    assert_int_equal(same.id, ALICE.id);
    sp_lease_release(F.mgr, same.id, sp_now_us());
    assert_int_equal(sp_lease_acquire(F.mgr, F.cfg, pg1(), "Alice.Smith@example", none,
                                      sp_now_us() + HOUR, &bare, err, sizeof(err)),
                     0);
    assert_true(bare.id != ALICE.id);
    char v[256];
    su_value("SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m"
             " JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid"
             " WHERE r.rolname = $1",
             bare.role_name, v, sizeof(v));
    assert_string_equal(v, "sallyport_managed");
    drops d;
    assert_int_equal(sweep(sp_now_us(), false, &d), 1);
    assert_string_equal(d.role[0], bare.role_name);
    assert_string_equal(d.why[0], "grant-ended");
    assert_true(role_exists(ALICE.role_name));
}

/* A role dropped behind the gateway's back is replaced, not handed out. */
static void test_role_dropped_upstream_is_replaced(void **state)
{
    (void)state;
    char sql[256];
    snprintf(sql, sizeof(sql), "DROP ROLE \"%s\"", ALICE.role_name);
    assert_true(su_ok(sql));
    sp_lease_mgr *fresh = sp_lease_mgr_new(F.store);
    assert_non_null(fresh);
    sp_lease l;
    acquire_ok(fresh, "Alice.Smith@example", sp_now_us() + HOUR, &l);
    sp_lease_mgr_free(fresh);
    assert_true(l.id != ALICE.id);
    assert_true(role_exists(l.role_name));
    assert_verifier_matches(&l);
    assert_true(lease_column(ALICE.id, "dropped_at") > 0);
}

/* The cached admin connection dies (server restart, idle cut): the next call reconnects. */
static void test_admin_connection_lost_is_reopened(void **state)
{
    (void)state;
    sp_lease before, after;
    acquire_ok(F.mgr, "dave", sp_now_us() + HOUR, &before);
    char n[16];
    su_value("SELECT count(pg_terminate_backend(pid, 5000))::text FROM pg_stat_activity"
             " WHERE usename = $1",
             "sallyport_admin", n, sizeof(n));
    assert_string_equal(n, "1");
    acquire_ok(F.mgr, "dave", before.valid_until + HOUR, &after);
    assert_int_equal(after.id, before.id);
    assert_true(llabs(role_valid_until_s(after.role_name) - after.valid_until / SEC) <= 1);
}

static void test_admin_dsn_file_must_be_owner_only(void **state)
{
    (void)state;
    const sp_target *t = pg1();
    assert_int_equal(chmod(t->admin_dsn_file, 0640), 0);
    sp_lease_mgr *fresh = sp_lease_mgr_new(F.store); /* no cached connection */
    assert_non_null(fresh);
    sp_lease l;
    char err[512] = "";
    int rc = sp_lease_acquire(fresh, F.cfg, t, "carol", READER_ROLES, sp_now_us() + HOUR, &l, err,
                              sizeof(err));
    sp_lease_mgr_free(fresh);
    assert_int_equal(chmod(t->admin_dsn_file, 0600), 0);
    assert_int_equal(rc, -1);
    assert_non_null(strstr(err, "chmod 600"));
    assert_null(strstr(err, "admin-test-pw"));
}

int main(void)
{
    if (!find_pg_bin(F.pg_bin, sizeof(F.pg_bin))) {
        printf("test_lease: skipped: PostgreSQL server binaries not found "
               "(looked in /usr/lib/postgresql/{15,16,17}/bin; set SP_PG_BIN)\n");
        return 0;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acquire_creates_role),
        cmocka_unit_test(test_acquire_reuses_and_extends),
        cmocka_unit_test(test_new_process_rekeys_role),
        cmocka_unit_test(test_sweep_keeps_leases_in_use),
        cmocka_unit_test(test_sweep_drops_idle_and_reassigns_objects),
        cmocka_unit_test(test_sweep_drops_when_grant_revoked),
        cmocka_unit_test(test_sweep_drops_expired),
        cmocka_unit_test(test_sweep_at_start_drops_orphans),
        cmocka_unit_test(test_db_roles_are_a_set),
        cmocka_unit_test(test_role_dropped_upstream_is_replaced),
        cmocka_unit_test(test_admin_connection_lost_is_reopened),
        cmocka_unit_test(test_admin_dsn_file_must_be_owner_only),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
