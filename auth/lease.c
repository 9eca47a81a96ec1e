/* Leases: ephemeral upstream PostgreSQL roles (see auth/lease.h).
 *
 * State lives in two places on purpose: the `leases` table in the store says which roles
 * exist and why (it survives restarts and is shared with the CLI); the secret keys of each
 * role live only in this process's memory. A row without keys here is re-keyed with a fresh
 * verifier before it is handed out. */
#include "auth/lease.h"

#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/scram.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"

#define LEASE_ROLES_MAX 1024   /* db_roles of one lease, comma-joined */
#define LEASE_IDENT_PART 24    /* identity characters kept in a role name */
#define LEASE_SQL_MAX 65536    /* one administrative statement */
#define LEASE_DSN_MAX 8192     /* admin DSN file */
#define LEASE_BINDINGS_MAX 256 /* live bindings examined per identity */
#define LEASE_COMMENT_PREFIX "sallyport lease "
/* An administrative call runs on a thread-pool thread; a lock held by some other session on
 * the target must not park that thread forever. */
#define ADMIN_STATEMENT_TIMEOUT_MS 30000
#define ADMIN_LOCK_TIMEOUT_MS 10000
#define TERMINATE_WAIT_MS "5000" /* pasted into SQL */
#define SQLSTATE_UNDEFINED_OBJECT "42704"

typedef struct lease_keys {
    int64_t id;
    uint8_t salt[SP_SCRAM_SALTLEN];
    int iterations;
    uint8_t client_key[SP_SCRAM_KEYLEN];
    uint8_t server_key[SP_SCRAM_KEYLEN];
    struct lease_keys *next;
} lease_keys;

/* One cached administrative connection per target, used by one thread at a time. */
typedef struct admin_conn {
    char *target;
    char *settings; /* host, port, database, DSN file: reconnect when they change */
    PGconn *conn;
    pthread_mutex_t mu;
    struct admin_conn *next;
} admin_conn;

typedef struct lease_row {
    int64_t id;
    char identity[SP_NAME_MAX];
    char target[SP_NAME_MAX];
    char db_roles[LEASE_ROLES_MAX];
    char role_name[64];
    int64_t valid_until;
    int64_t last_used;
    int64_t active_sessions;
} lease_row;

struct sp_lease_mgr {
    sp_store *store;
    pthread_mutex_t keys_mu;
    lease_keys *keys;
    pthread_mutex_t admins_mu;
    admin_conn *admins;
};

/* libpq messages span lines; the operator log is one line per event. */
static void one_line(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
}

/* ------------------------------------------------------------------ store (leases table) */

static const char LEASES_SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS leases ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " identity TEXT NOT NULL,"
    " target TEXT NOT NULL,"
    " db_roles TEXT NOT NULL,"
    " role_name TEXT NOT NULL UNIQUE,"
    " created_at INTEGER NOT NULL,"
    " valid_until INTEGER NOT NULL,"
    " last_used INTEGER NOT NULL,"
    " active_sessions INTEGER NOT NULL DEFAULT 0,"
    " dropped_at INTEGER,"
    " drop_reason TEXT);"
    "CREATE INDEX IF NOT EXISTS leases_live ON leases(identity, target, db_roles)"
    " WHERE dropped_at IS NULL;";

static const char LEASE_COLUMNS[] =
    "id, identity, target, db_roles, role_name, valid_until, last_used, active_sessions";

static void copy_text(char *dst, size_t dstlen, const unsigned char *src)
{
    snprintf(dst, dstlen, "%s", src ? (const char *)src : "");
}

static void row_from_stmt(sqlite3_stmt *st, lease_row *r)
{
    r->id = sqlite3_column_int64(st, 0);
    copy_text(r->identity, sizeof(r->identity), sqlite3_column_text(st, 1));
    copy_text(r->target, sizeof(r->target), sqlite3_column_text(st, 2));
    copy_text(r->db_roles, sizeof(r->db_roles), sqlite3_column_text(st, 3));
    copy_text(r->role_name, sizeof(r->role_name), sqlite3_column_text(st, 4));
    r->valid_until = sqlite3_column_int64(st, 5);
    r->last_used = sqlite3_column_int64(st, 6);
    r->active_sessions = sqlite3_column_int64(st, 7);
}

static int store_fail(sqlite3 *db, const char *what, char *err, size_t errlen)
{
    snprintf(err, errlen, "store: %s: %s", what, sqlite3_errmsg(db));
    return -1;
}

/* Runs one statement whose parameters are (text | int64) as described by `types`
 * ('t' or 'i'), expecting no rows back. */
static int store_exec(sp_lease_mgr *m, const char *sql, const char *what, const char *types,
                      const void *const *args, char *err, size_t errlen)
{
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, what, err, errlen);
        goto out;
    }
    for (int i = 0; types[i]; i++) {
        if (types[i] == 't')
            sqlite3_bind_text(st, i + 1, args[i], -1, SQLITE_TRANSIENT);
        else
            sqlite3_bind_int64(st, i + 1, *(const int64_t *)args[i]);
    }
    if (sqlite3_step(st) != SQLITE_DONE) {
        store_fail(db, what, err, errlen);
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    return rc;
}

static int store_find_live(sp_lease_mgr *m, const char *identity, const char *target,
                           const char *roles_key, int64_t now, lease_row *out, char *err,
                           size_t errlen)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT %s FROM leases WHERE identity = ?1 AND target = ?2 AND db_roles = ?3"
             " AND dropped_at IS NULL AND valid_until > ?4 ORDER BY id DESC LIMIT 1",
             LEASE_COLUMNS);
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, "looking up a lease", err, errlen);
        goto out;
    }
    sqlite3_bind_text(st, 1, identity, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, target, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, roles_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 4, now);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        row_from_stmt(st, out);
        rc = 0;
    } else if (step == SQLITE_DONE) {
        rc = SP_STORE_NOT_FOUND;
    } else {
        store_fail(db, "looking up a lease", err, errlen);
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    return rc;
}

static int store_insert(sp_lease_mgr *m, const char *identity, const char *target,
                        const char *roles_key, const char *role_name, int64_t now,
                        int64_t valid_until, int64_t *id_out, char *err, size_t errlen)
{
    static const char sql[] =
        "INSERT INTO leases (identity, target, db_roles, role_name, created_at, valid_until,"
        " last_used, active_sessions) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5, 0)";
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, "recording a new lease", err, errlen);
        goto out;
    }
    sqlite3_bind_text(st, 1, identity, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, target, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, roles_key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, role_name, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 5, now);
    sqlite3_bind_int64(st, 6, valid_until);
    if (sqlite3_step(st) != SQLITE_DONE) {
        store_fail(db, "recording a new lease", err, errlen);
        goto out;
    }
    *id_out = sqlite3_last_insert_rowid(db);
    rc = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    return rc;
}

static int store_delete(sp_lease_mgr *m, int64_t id, char *err, size_t errlen)
{
    const void *args[] = {&id};
    return store_exec(m, "DELETE FROM leases WHERE id = ?1", "forgetting a lease never created",
                      "i", args, err, errlen);
}

static int store_set_valid_until(sp_lease_mgr *m, int64_t id, int64_t valid_until, char *err,
                                 size_t errlen)
{
    const void *args[] = {&valid_until, &id};
    return store_exec(m, "UPDATE leases SET valid_until = ?1 WHERE id = ?2", "extending a lease",
                      "ii", args, err, errlen);
}

static int store_count_session(sp_lease_mgr *m, int64_t id, int64_t delta, int64_t now, char *err,
                               size_t errlen)
{
    const void *args[] = {&delta, &now, &id};
    return store_exec(m,
                      "UPDATE leases SET active_sessions = MAX(0, active_sessions + ?1),"
                      " last_used = ?2 WHERE id = ?3",
                      "counting a session on a lease", "iii", args, err, errlen);
}

static int store_mark_dropped(sp_lease_mgr *m, int64_t id, int64_t now, const char *reason,
                              char *err, size_t errlen)
{
    const void *args[] = {&now, reason, &id};
    return store_exec(m,
                      "UPDATE leases SET dropped_at = ?1, drop_reason = ?2, active_sessions = 0"
                      " WHERE id = ?3",
                      "marking a lease dropped", "iti", args, err, errlen);
}

static int store_reset_sessions(sp_lease_mgr *m, char *err, size_t errlen)
{
    const void *args[] = {NULL};
    return store_exec(m, "UPDATE leases SET active_sessions = 0 WHERE dropped_at IS NULL",
                      "resetting session counts", "", args, err, errlen);
}

/* Every live row, copied out so that no network call happens with the store locked. */
static int store_live_rows(sp_lease_mgr *m, lease_row **out, size_t *n, char *err, size_t errlen)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT %s FROM leases WHERE dropped_at IS NULL ORDER BY id",
             LEASE_COLUMNS);
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    lease_row *rows = NULL;
    size_t count = 0, cap = 0;
    int rc = -1, step;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, "listing leases", err, errlen);
        goto out;
    }
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            lease_row *nrows = realloc(rows, ncap * sizeof(*rows));
            if (!nrows) {
                snprintf(err, errlen, "out of memory listing leases");
                goto out;
            }
            rows = nrows;
            cap = ncap;
        }
        row_from_stmt(st, &rows[count++]);
    }
    if (step != SQLITE_DONE) {
        store_fail(db, "listing leases", err, errlen);
        goto out;
    }
    rc = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    if (rc == 0) {
        *out = rows;
        *n = count;
    } else {
        free(rows);
    }
    return rc;
}

static int store_get_live_row(sp_lease_mgr *m, int64_t id, lease_row *out, char *err, size_t errlen)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT %s FROM leases WHERE id = ?1 AND dropped_at IS NULL",
             LEASE_COLUMNS);
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, "reading a lease", err, errlen);
        goto out;
    }
    sqlite3_bind_int64(st, 1, id);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        row_from_stmt(st, out);
        rc = 0;
    } else if (step == SQLITE_DONE) {
        rc = SP_STORE_NOT_FOUND;
    } else {
        store_fail(db, "reading a lease", err, errlen);
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    return rc;
}

/* 1 when a live row names this role, 0 when none does, -1 on error. */
static int store_role_is_live(sp_lease_mgr *m, const char *role_name, char *err, size_t errlen)
{
    sqlite3 *db = sp_store_lock(m->store);
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM leases WHERE role_name = ?1 AND dropped_at IS NULL",
                           -1, &st, NULL) != SQLITE_OK) {
        store_fail(db, "looking up a role", err, errlen);
        goto out;
    }
    sqlite3_bind_text(st, 1, role_name, -1, SQLITE_TRANSIENT);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        rc = 1;
    else if (step == SQLITE_DONE)
        rc = 0;
    else
        store_fail(db, "looking up a role", err, errlen);
out:
    sqlite3_finalize(st);
    sp_store_unlock(m->store);
    return rc;
}

/* ------------------------------------------------------------------ keys (memory only) */

static bool keys_get(sp_lease_mgr *m, int64_t id, lease_keys *out)
{
    bool found = false;
    pthread_mutex_lock(&m->keys_mu);
    for (lease_keys *k = m->keys; k; k = k->next) {
        if (k->id == id) {
            *out = *k;
            out->next = NULL;
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&m->keys_mu);
    return found;
}

static void keys_forget(sp_lease_mgr *m, int64_t id)
{
    pthread_mutex_lock(&m->keys_mu);
    for (lease_keys **p = &m->keys; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            lease_keys *k = *p;
            *p = k->next;
            OPENSSL_cleanse(k, sizeof(*k));
            free(k);
            break;
        }
    }
    pthread_mutex_unlock(&m->keys_mu);
}

static int keys_put(sp_lease_mgr *m, const lease_keys *keys, char *err, size_t errlen)
{
    keys_forget(m, keys->id);
    lease_keys *k = malloc(sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory keeping lease keys");
        return -1;
    }
    *k = *keys;
    pthread_mutex_lock(&m->keys_mu);
    k->next = m->keys;
    m->keys = k;
    pthread_mutex_unlock(&m->keys_mu);
    return 0;
}

/* New random secret for lease `id`: keeps ClientKey/ServerKey and writes PostgreSQL's
 * verifier text. The password exists only inside this function. */
static int keys_mint(int64_t id, lease_keys *out, char *verifier, size_t verifierlen, char *err,
                     size_t errlen)
{
    uint8_t secret[32], stored_key[SP_SCRAM_KEYLEN];
    char password[2 * sizeof(secret) + 1];
    int rc = -1;
    memset(out, 0, sizeof(*out));
    out->id = id;
    out->iterations = SP_SCRAM_ITERATIONS;
    if (sp_random_bytes(secret, sizeof(secret)) < 0 ||
        sp_random_bytes(out->salt, sizeof(out->salt)) < 0) {
        snprintf(err, errlen, "the random number generator failed minting a lease secret");
        goto out;
    }
    /* Hex keeps the password ASCII, so SASLprep leaves it unchanged on either end. */
    sp_hex_encode(secret, sizeof(secret), password);
    if (sp_scram_derive(password, strlen(password), out->salt, sizeof(out->salt), out->iterations,
                        out->client_key, stored_key, out->server_key) < 0 ||
        sp_scram_verifier_text(out->salt, sizeof(out->salt), out->iterations, stored_key,
                               out->server_key, verifier, verifierlen) < 0) {
        snprintf(err, errlen, "cannot derive SCRAM keys for a lease");
        goto out;
    }
    rc = 0;
out:
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(password, sizeof(password));
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    return rc;
}

/* ------------------------------------------------------------------ admin connections */

static void admin_settings_text(const sp_target *t, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s|%d|%s|%s|%d|%s", t->host ? t->host : "", t->port,
             t->database ? t->database : "", t->admin_dsn_file ? t->admin_dsn_file : "",
             (int)t->upstream_tls, t->upstream_ca ? t->upstream_ca : "");
}

/* The cached connection slot of a target, returned locked. */
static admin_conn *admin_acquire(sp_lease_mgr *m, const sp_target *t, char *err, size_t errlen)
{
    admin_conn *ac;
    pthread_mutex_lock(&m->admins_mu);
    for (ac = m->admins; ac; ac = ac->next)
        if (!strcmp(ac->target, t->name))
            break;
    if (!ac) {
        ac = calloc(1, sizeof(*ac));
        if (ac && !(ac->target = strdup(t->name))) {
            free(ac);
            ac = NULL;
        }
        if (ac) {
            pthread_mutex_init(&ac->mu, NULL);
            ac->next = m->admins;
            m->admins = ac;
        }
    }
    pthread_mutex_unlock(&m->admins_mu);
    if (!ac) {
        snprintf(err, errlen, "out of memory for the admin connection of target %s", t->name);
        return NULL;
    }
    pthread_mutex_lock(&ac->mu);
    return ac;
}

static void admin_release(admin_conn *ac)
{
    pthread_mutex_unlock(&ac->mu);
}

static void admin_close(admin_conn *ac)
{
    if (ac->conn)
        PQfinish(ac->conn);
    ac->conn = NULL;
    free(ac->settings);
    ac->settings = NULL;
}

static const char *sslmode_name(enum sp_upstream_tls mode)
{
    switch (mode) {
    case SP_UTLS_VERIFY_CA:
        return "verify-ca";
    case SP_UTLS_REQUIRE:
        return "require";
    case SP_UTLS_DISABLE:
        return "disable";
    case SP_UTLS_VERIFY_FULL:
    default:
        return "verify-full";
    }
}

/* Reads the DSN (owner-only file) with trailing whitespace removed. */
static char *admin_read_dsn(const sp_target *t, char *err, size_t errlen)
{
    char ferr[512];
    size_t len = 0;
    char *dsn = sp_read_file(t->admin_dsn_file, LEASE_DSN_MAX, true, &len, ferr, sizeof(ferr));
    if (!dsn) {
        snprintf(err, errlen, "target %s: admin_dsn_file: %s", t->name, ferr);
        return NULL;
    }
    while (len > 0 && (dsn[len - 1] == '\n' || dsn[len - 1] == '\r' || dsn[len - 1] == ' ' ||
                       dsn[len - 1] == '\t'))
        dsn[--len] = '\0';
    return dsn;
}

/* The target's address and TLS settings come first so the DSN may override them; the
 * database and timeouts come after it, because REASSIGN/DROP OWNED act on the connected
 * database, which must be the target's default one. */
static PGconn *admin_open(const sp_target *t, char *err, size_t errlen)
{
    char *dsn = admin_read_dsn(t, err, errlen);
    if (!dsn)
        return NULL;
    char port[16], timeout[16], options[128];
    snprintf(port, sizeof(port), "%d", t->port);
    int64_t secs = (t->connect_timeout + 999999) / 1000000;
    snprintf(timeout, sizeof(timeout), "%lld", (long long)(secs < 2 ? 2 : secs));
    snprintf(options, sizeof(options), "-c statement_timeout=%d -c lock_timeout=%d",
             ADMIN_STATEMENT_TIMEOUT_MS, ADMIN_LOCK_TIMEOUT_MS);
    const char *keys[12], *vals[12];
    int n = 0;
    keys[n] = "host", vals[n++] = t->host;
    keys[n] = "port", vals[n++] = port;
    keys[n] = "sslmode", vals[n++] = sslmode_name(t->upstream_tls);
    if (t->upstream_ca)
        keys[n] = "sslrootcert", vals[n++] = t->upstream_ca;
    keys[n] = "dbname", vals[n++] = dsn;
    keys[n] = "dbname", vals[n++] = t->database;
    keys[n] = "connect_timeout", vals[n++] = timeout;
    keys[n] = "options", vals[n++] = options;
    keys[n] = "application_name", vals[n++] = "sallyport-lease-admin";
    keys[n] = NULL, vals[n] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    OPENSSL_cleanse(dsn, strlen(dsn));
    free(dsn);
    if (!c) {
        snprintf(err, errlen, "target %s: out of memory connecting as admin", t->name);
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        /* libpq's message names host and reason, never the password. */
        snprintf(err, errlen, "target %s: cannot connect as admin (admin_dsn_file %s): %s", t->name,
                 t->admin_dsn_file, PQerrorMessage(c));
        one_line(err);
        PQfinish(c);
        return NULL;
    }
    return c;
}

static int admin_connect(admin_conn *ac, const sp_target *t, char *err, size_t errlen)
{
    char settings[2048];
    admin_settings_text(t, settings, sizeof(settings));
    if (ac->conn && PQstatus(ac->conn) == CONNECTION_OK && ac->settings &&
        !strcmp(ac->settings, settings))
        return 0;
    admin_close(ac);
    ac->conn = admin_open(t, err, errlen);
    if (!ac->conn)
        return -1;
    ac->settings = strdup(settings);
    return 0;
}

typedef int (*admin_op)(PGconn *c, const sp_target *t, void *arg, char *err, size_t errlen);

/* Runs op on the target's connection; if the connection turns out to be broken (the server
 * restarted, an idle connection was cut), reconnects once and runs it again. */
static int admin_run(admin_conn *ac, const sp_target *t, admin_op op, void *arg, char *err,
                     size_t errlen)
{
    if (!t->admin_dsn_file) {
        snprintf(err, errlen, "target %s has no admin_dsn_file: sallyport cannot manage its roles",
                 t->name);
        return -1;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (admin_connect(ac, t, err, errlen) < 0)
            return -1;
        int rc = op(ac->conn, t, arg, err, errlen);
        if (rc >= 0 || PQstatus(ac->conn) == CONNECTION_OK)
            return rc;
        sp_warn("target %s: admin connection lost (%s), reconnecting", t->name, err);
        admin_close(ac);
    }
    return -1;
}

/* ------------------------------------------------------------------ SQL helpers */

/* Only the primary message is reported: libpq's full message may quote the statement, and
 * statements here carry verifiers. */
static void pg_failure(PGresult *res, PGconn *c, const char *target, const char *what, char *err,
                       size_t errlen)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!msg)
        msg = PQerrorMessage(c);
    snprintf(err, errlen, "target %s: %s: %s", target, what, msg && *msg ? msg : "no reason");
    one_line(err);
}

static int sql_ident(sp_buf *sql, PGconn *c, const char *name)
{
    char *q = PQescapeIdentifier(c, name, strlen(name));
    if (!q)
        return -1;
    int rc = sp_buf_printf(sql, "%s", q);
    PQfreemem(q);
    return rc;
}

static int sql_literal(sp_buf *sql, PGconn *c, const char *text)
{
    char *q = PQescapeLiteral(c, text, strlen(text));
    if (!q)
        return -1;
    int rc = sp_buf_printf(sql, "%s", q);
    PQfreemem(q);
    return rc;
}

static const char *sql_text(const sp_buf *sql)
{
    return (const char *)sql->data;
}

static bool result_ok(PGresult *res)
{
    ExecStatusType s = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

static bool result_is_sqlstate(PGresult *res, const char *sqlstate)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s && !strcmp(s, sqlstate);
}

/* Runs statements with no result rows wanted. 1 when it failed with `soft_sqlstate`. */
static int pg_exec(PGconn *c, const char *target, const char *sql, const char *what,
                   const char *soft_sqlstate, char *err, size_t errlen)
{
    PGresult *res = PQexec(c, sql);
    int rc = 0;
    if (!result_ok(res)) {
        pg_failure(res, c, target, what, err, errlen);
        rc = soft_sqlstate && result_is_sqlstate(res, soft_sqlstate) ? 1 : -1;
    }
    PQclear(res);
    return rc;
}

static PGresult *pg_query1(PGconn *c, const char *target, const char *sql, const char *param,
                           const char *what, char *err, size_t errlen)
{
    const char *params[1] = {param};
    PGresult *res = PQexecParams(c, sql, param ? 1 : 0, NULL, params, NULL, NULL, 0);
    if (!result_ok(res)) {
        pg_failure(res, c, target, what, err, errlen);
        PQclear(res);
        return NULL;
    }
    return res;
}

/* ------------------------------------------------------------------ naming */

/* Sorted, de-duplicated, comma-joined: the lease key, whatever order the role lists them. */
static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int roles_key(char *const *db_roles, char *out, size_t outlen, char *err, size_t errlen)
{
    size_t n = 0;
    while (db_roles && db_roles[n])
        n++;
    const char **sorted = calloc(n + 1, sizeof(*sorted));
    if (!sorted) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (n > 0)
        memcpy(sorted, db_roles, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_str);
    size_t len = 0;
    out[0] = '\0';
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (i > 0 && !strcmp(sorted[i], sorted[i - 1]))
            continue;
        int w = snprintf(out + len, outlen - len, "%s%s", len ? "," : "", sorted[i]);
        if (w < 0 || (size_t)w >= outlen - len) {
            snprintf(err, errlen, "the db_roles of this lease are longer than %zu characters",
                     outlen - 1);
            rc = -1;
        } else {
            len += (size_t)w;
        }
    }
    free(sorted);
    return rc;
}

/* sp_<identity folded to [a-z0-9_], at most 24 chars>_<8 random hex>: recognisable in
 * pg_stat_activity, unique, and well under PostgreSQL's 63-byte limit. */
static int role_name_new(const char *identity, char out[64], char *err, size_t errlen)
{
    char part[LEASE_IDENT_PART + 1];
    size_t n = 0;
    for (const char *p = identity; *p && n < LEASE_IDENT_PART; p++) {
        char c = *p;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        part[n++] = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ? c : '_';
    }
    part[n] = '\0';
    uint8_t rnd[4];
    char hex[9];
    if (sp_random_bytes(rnd, sizeof(rnd)) < 0) {
        snprintf(err, errlen, "the random number generator failed naming a lease role");
        return -1;
    }
    sp_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(out, 64, "sp_%s_%s", part, hex);
    return 0;
}

/* ------------------------------------------------------------------ upstream operations */

typedef struct create_args {
    const char *role_name;
    const char *verifier;
    const char *valid_until; /* timestamptz text */
    char *const *db_roles;   /* de-duplicated */
    const char *managed_group;
    const char *comment;
} create_args;

/* One simple-query message: PostgreSQL runs its statements as one implicit transaction, so
 * a role never exists without its comment (the sweeper finds roles by it). */
static int op_create_role(PGconn *c, const sp_target *t, void *arg, char *err, size_t errlen)
{
    const create_args *a = arg;
    sp_buf sql;
    sp_buf_init(&sql, LEASE_SQL_MAX);
    int rc = -1;
    bool built =
        sp_buf_printf(&sql, "CREATE ROLE ") == 0 && sql_ident(&sql, c, a->role_name) == 0 &&
        sp_buf_printf(&sql, " LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE"
                            " NOREPLICATION NOBYPASSRLS PASSWORD ") == 0 &&
        sql_literal(&sql, c, a->verifier) == 0 && sp_buf_printf(&sql, " VALID UNTIL ") == 0 &&
        sql_literal(&sql, c, a->valid_until) == 0 && sp_buf_printf(&sql, " IN ROLE ") == 0;
    for (char *const *r = a->db_roles; built && r && *r; r++)
        built = sql_ident(&sql, c, *r) == 0 && sp_buf_printf(&sql, ", ") == 0;
    built = built && sql_ident(&sql, c, a->managed_group) == 0 &&
            sp_buf_printf(&sql, "; COMMENT ON ROLE ") == 0 &&
            sql_ident(&sql, c, a->role_name) == 0 && sp_buf_printf(&sql, " IS ") == 0 &&
            sql_literal(&sql, c, a->comment) == 0;
    if (!built) {
        snprintf(err, errlen, "target %s: cannot build the statement creating role %s", t->name,
                 a->role_name);
        goto out;
    }
    char what[128];
    snprintf(what, sizeof(what), "creating role %s", a->role_name);
    rc = pg_exec(c, t->name, sql_text(&sql), what, NULL, err, errlen);
out:
    sp_buf_free(&sql);
    return rc;
}

typedef struct alter_args {
    const char *role_name;
    const char *verifier;    /* NULL: keep the password */
    const char *valid_until; /* timestamptz text */
} alter_args;

/* 1 when the role is gone upstream. */
static int op_alter_role(PGconn *c, const sp_target *t, void *arg, char *err, size_t errlen)
{
    const alter_args *a = arg;
    sp_buf sql;
    sp_buf_init(&sql, LEASE_SQL_MAX);
    int rc = -1;
    bool built = sp_buf_printf(&sql, "ALTER ROLE ") == 0 && sql_ident(&sql, c, a->role_name) == 0;
    if (built && a->verifier)
        built = sp_buf_printf(&sql, " PASSWORD ") == 0 && sql_literal(&sql, c, a->verifier) == 0;
    built = built && sp_buf_printf(&sql, " VALID UNTIL ") == 0 &&
            sql_literal(&sql, c, a->valid_until) == 0;
    if (!built) {
        snprintf(err, errlen, "target %s: cannot build the statement altering role %s", t->name,
                 a->role_name);
        goto out;
    }
    char what[128];
    snprintf(what, sizeof(what), "renewing role %s", a->role_name);
    rc = pg_exec(c, t->name, sql_text(&sql), what, SQLSTATE_UNDEFINED_OBJECT, err, errlen);
out:
    sp_buf_free(&sql);
    return rc;
}

static int drop_terminate_backends(PGconn *c, const sp_target *t, const char *role_name, char *err,
                                   size_t errlen)
{
    /* Since PostgreSQL 14 the call can wait for the backend to be gone, so the objects it
     * holds locks on are free for DROP OWNED. */
    const char *sql =
        PQserverVersion(c) >= 140000
            ? "SELECT pg_terminate_backend(pid, " TERMINATE_WAIT_MS
              ") FROM pg_stat_activity WHERE usename = $1"
            : "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1";
    PGresult *res =
        pg_query1(c, t->name, sql, role_name, "ending the sessions of a lease role", err, errlen);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

/* Backends first (VALID UNTIL ends no live session), with the role locked out so a client
 * cannot log in again in between; then its objects, then the role. The admin makes itself a
 * member because REASSIGN/DROP OWNED need the privileges of the role they act on. Objects in
 * databases other than the connected one are not reached: DROP ROLE then fails and says so,
 * and the lease stays live for the operator to clean. */
static int op_drop_role(PGconn *c, const sp_target *t, void *arg, char *err, size_t errlen)
{
    const char *role_name = arg;
    sp_buf sql;
    sp_buf_init(&sql, LEASE_SQL_MAX);
    int rc = -1;
    PGresult *res = pg_query1(c, t->name, "SELECT 1 FROM pg_roles WHERE rolname = $1", role_name,
                              "looking up a lease role", err, errlen);
    if (!res)
        goto out;
    bool exists = PQntuples(res) > 0;
    PQclear(res);
    if (!exists) {
        rc = 0;
        goto out;
    }
    if (sp_buf_printf(&sql, "ALTER ROLE ") < 0 || sql_ident(&sql, c, role_name) < 0 ||
        sp_buf_printf(&sql, " NOLOGIN") < 0)
        goto build_failed;
    if (pg_exec(c, t->name, sql_text(&sql), "locking out a lease role", NULL, err, errlen) < 0 ||
        drop_terminate_backends(c, t, role_name, err, errlen) < 0)
        goto out;
    sp_buf_reset(&sql);
    bool built = sp_buf_printf(&sql, "GRANT ") == 0 && sql_ident(&sql, c, role_name) == 0 &&
                 sp_buf_printf(&sql, " TO CURRENT_USER; REASSIGN OWNED BY ") == 0 &&
                 sql_ident(&sql, c, role_name) == 0 && sp_buf_printf(&sql, " TO ") == 0;
    if (built && t->reassign_owner)
        built = sql_ident(&sql, c, t->reassign_owner) == 0;
    else if (built)
        built = sp_buf_printf(&sql, "CURRENT_USER") == 0;
    built = built && sp_buf_printf(&sql, "; DROP OWNED BY ") == 0 &&
            sql_ident(&sql, c, role_name) == 0 && sp_buf_printf(&sql, "; DROP ROLE ") == 0 &&
            sql_ident(&sql, c, role_name) == 0;
    if (!built)
        goto build_failed;
    char what[128];
    snprintf(what, sizeof(what), "dropping role %s", role_name);
    rc = pg_exec(c, t->name, sql_text(&sql), what, NULL, err, errlen);
    goto out;
build_failed:
    snprintf(err, errlen, "target %s: cannot build the statement dropping role %s", t->name,
             role_name);
out:
    sp_buf_free(&sql);
    return rc;
}

/* ------------------------------------------------------------------ manager */

sp_lease_mgr *sp_lease_mgr_new(sp_store *store)
{
    sp_lease_mgr *m = calloc(1, sizeof(*m));
    if (!m) {
        sp_error("leases: out of memory");
        return NULL;
    }
    m->store = store;
    pthread_mutex_init(&m->keys_mu, NULL);
    pthread_mutex_init(&m->admins_mu, NULL);
    sqlite3 *db = sp_store_lock(store);
    char *msg = NULL;
    int rc = sqlite3_exec(db, LEASES_SCHEMA, NULL, NULL, &msg);
    sp_store_unlock(store);
    if (rc != SQLITE_OK) {
        sp_error("leases: cannot create the leases table in the store: %s", msg ? msg : "?");
        sqlite3_free(msg);
        sp_lease_mgr_free(m);
        return NULL;
    }
    return m;
}

void sp_lease_mgr_free(sp_lease_mgr *m)
{
    if (!m)
        return;
    while (m->keys) {
        lease_keys *k = m->keys;
        m->keys = k->next;
        OPENSSL_cleanse(k, sizeof(*k));
        free(k);
    }
    while (m->admins) {
        admin_conn *ac = m->admins;
        m->admins = ac->next;
        admin_close(ac);
        pthread_mutex_destroy(&ac->mu);
        free(ac->target);
        free(ac);
    }
    pthread_mutex_destroy(&m->keys_mu);
    pthread_mutex_destroy(&m->admins_mu);
    free(m);
}

static void lease_out(const lease_row *row, const lease_keys *k, sp_lease *out)
{
    memset(out, 0, sizeof(*out));
    out->id = row->id;
    snprintf(out->role_name, sizeof(out->role_name), "%s", row->role_name);
    memcpy(out->salt, k->salt, sizeof(out->salt));
    out->iterations = k->iterations;
    memcpy(out->client_key, k->client_key, sizeof(out->client_key));
    memcpy(out->server_key, k->server_key, sizeof(out->server_key));
    out->valid_until = row->valid_until;
}

/* Makes an existing row usable: keys in memory, VALID UNTIL at least valid_until.
 * 0 ok, 1 the role is gone upstream (the row is then marked dropped), -1 error. */
static int lease_refresh(sp_lease_mgr *m, admin_conn *ac, const sp_target *t, lease_row *row,
                         int64_t valid_until, lease_keys *keys, char *err, size_t errlen)
{
    bool have_keys = keys_get(m, row->id, keys);
    int64_t until = valid_until > row->valid_until ? valid_until : row->valid_until;
    if (have_keys && until == row->valid_until)
        return 0;
    char verifier[256], until_text[40];
    if (!have_keys && keys_mint(row->id, keys, verifier, sizeof(verifier), err, errlen) < 0)
        return -1;
    sp_format_time(until, until_text, sizeof(until_text));
    alter_args a = {.role_name = row->role_name,
                    .verifier = have_keys ? NULL : verifier,
                    .valid_until = until_text};
    int rc = admin_run(ac, t, op_alter_role, &a, err, errlen);
    if (rc == 1) {
        sp_warn("target %s: lease role %s vanished upstream; creating a new one", t->name,
                row->role_name);
        OPENSSL_cleanse(keys, sizeof(*keys));
        return store_mark_dropped(m, row->id, sp_now_us(), "role missing upstream", err, errlen) < 0
                   ? -1
                   : 1;
    }
    if (rc < 0 || store_set_valid_until(m, row->id, until, err, errlen) < 0 ||
        (!have_keys && keys_put(m, keys, err, errlen) < 0)) {
        OPENSSL_cleanse(keys, sizeof(*keys));
        return -1;
    }
    row->valid_until = until;
    return 0;
}

static int lease_create(sp_lease_mgr *m, admin_conn *ac, const sp_config *cfg, const sp_target *t,
                        const char *identity, const char *key, int64_t valid_until, int64_t now,
                        lease_row *row, lease_keys *keys, char *err, size_t errlen)
{
    memset(row, 0, sizeof(*row));
    if (role_name_new(identity, row->role_name, err, errlen) < 0 ||
        store_insert(m, identity, t->name, key, row->role_name, now, valid_until, &row->id, err,
                     errlen) < 0)
        return -1;
    snprintf(row->identity, sizeof(row->identity), "%s", identity);
    snprintf(row->target, sizeof(row->target), "%s", t->name);
    snprintf(row->db_roles, sizeof(row->db_roles), "%s", key);
    row->valid_until = valid_until;
    row->last_used = now;

    char verifier[256], until_text[40], comment[512];
    char **db_roles = sp_split_list(key, NULL);
    if (!db_roles) {
        snprintf(err, errlen, "out of memory");
        goto undo;
    }
    if (keys_mint(row->id, keys, verifier, sizeof(verifier), err, errlen) < 0)
        goto undo;
    sp_format_time(valid_until, until_text, sizeof(until_text));
    snprintf(comment, sizeof(comment), LEASE_COMMENT_PREFIX "%lld identity=%s target=%s",
             (long long)row->id, identity, t->name);
    create_args a = {.role_name = row->role_name,
                     .verifier = verifier,
                     .valid_until = until_text,
                     .db_roles = db_roles,
                     .managed_group = cfg->managed_group,
                     .comment = comment};
    if (admin_run(ac, t, op_create_role, &a, err, errlen) < 0)
        goto undo;
    free(db_roles);
    if (keys_put(m, keys, err, errlen) < 0) {
        /* The role exists upstream: the row stays, unused, for the sweeper to drop. */
        OPENSSL_cleanse(keys, sizeof(*keys));
        return -1;
    }
    sp_info("target %s: created lease role %s for %s (lease %lld)", t->name, row->role_name,
            identity, (long long)row->id);
    return 0;
undo:
    free(db_roles);
    OPENSSL_cleanse(keys, sizeof(*keys));
    {
        char derr[256];
        if (store_delete(m, row->id, derr, sizeof(derr)) < 0)
            sp_warn("leases: %s", derr);
    }
    return -1;
}

int sp_lease_acquire(sp_lease_mgr *m, const sp_config *cfg, const sp_target *t,
                     const char *identity, char *const *db_roles, int64_t valid_until,
                     sp_lease *out, char *err, size_t errlen)
{
    char key[LEASE_ROLES_MAX];
    if (t->kind != SP_TARGET_POSTGRES) {
        snprintf(err, errlen, "target %s is not a PostgreSQL target: it has no leases", t->name);
        return -1;
    }
    if (roles_key(db_roles, key, sizeof(key), err, errlen) < 0)
        return -1;
    /* Holding the target's admin slot across lookup and creation makes two sessions starting
     * together share one lease instead of minting two roles. */
    admin_conn *ac = admin_acquire(m, t, err, errlen);
    if (!ac)
        return -1;
    lease_row row;
    lease_keys keys;
    int64_t now = sp_now_us();
    int rc = store_find_live(m, identity, t->name, key, now, &row, err, errlen);
    if (rc == 0)
        rc = lease_refresh(m, ac, t, &row, valid_until, &keys, err, errlen);
    if (rc == SP_STORE_NOT_FOUND || rc == 1)
        rc = lease_create(m, ac, cfg, t, identity, key, valid_until, now, &row, &keys, err, errlen);
    if (rc == 0)
        rc = store_count_session(m, row.id, 1, now, err, errlen);
    if (rc == 0)
        lease_out(&row, &keys, out);
    OPENSSL_cleanse(&keys, sizeof(keys));
    admin_release(ac);
    return rc == 0 ? 0 : -1;
}

void sp_lease_invalidate(sp_lease_mgr *m, int64_t lease_id)
{
    keys_forget(m, lease_id);
}

void sp_lease_release(sp_lease_mgr *m, int64_t lease_id, int64_t now)
{
    char err[256];
    if (store_count_session(m, lease_id, -1, now, err, sizeof(err)) < 0)
        sp_warn("leases: lease %lld: %s", (long long)lease_id, err);
}

/* ------------------------------------------------------------------ sweep */

typedef void (*drop_fn)(const char *identity, const char *target, const char *role_name,
                        const char *why, void *arg);

static bool role_grants_lease(const sp_role *r, const lease_row *row)
{
    char key[LEASE_ROLES_MAX], kerr[128];
    if (!sp_list_contains(r->targets, row->target))
        return false;
    if (roles_key(r->db_roles, key, sizeof(key), kerr, sizeof(kerr)) < 0)
        return false;
    return !strcmp(key, row->db_roles);
}

/* Why the access behind a lease ended, or NULL when it still holds. `*failed` is set when the
 * store could not answer (the lease is then kept: never drop on a guess). */
static const char *lease_access_ended(sp_lease_mgr *m, const sp_config *cfg, const lease_row *row,
                                      int64_t now, bool *failed, char *err, size_t errlen)
{
    *failed = false;
    const sp_target *t = sp_config_target(cfg, row->target);
    if (!t || t->kind != SP_TARGET_POSTGRES)
        return "target-removed";
    sp_identity ident;
    int rc = sp_store_identity_get(m->store, row->identity, &ident, err, errlen);
    if (rc == SP_STORE_NOT_FOUND)
        return "identity-removed";
    if (rc < 0) {
        *failed = true;
        return NULL;
    }
    if (ident.disabled)
        return "identity-disabled";
    sp_binding *b = calloc(LEASE_BINDINGS_MAX, sizeof(*b));
    size_t n = 0;
    if (!b) {
        snprintf(err, errlen, "out of memory checking bindings of %s", row->identity);
        *failed = true;
        return NULL;
    }
    const char *why = "grant-ended";
    if (sp_store_bindings_live(m->store, row->identity, now, b, LEASE_BINDINGS_MAX, &n, err,
                               errlen) < 0) {
        *failed = true;
        why = NULL;
    }
    for (size_t i = 0; why && i < n; i++) {
        const sp_role *r = sp_config_role(cfg, b[i].role);
        if (r && role_grants_lease(r, row))
            why = NULL;
    }
    free(b);
    return why;
}

static const char *lease_end_reason(sp_lease_mgr *m, const sp_config *cfg, const lease_row *row,
                                    int64_t now, bool *failed, char *err, size_t errlen)
{
    const char *why = lease_access_ended(m, cfg, row, now, failed, err, errlen);
    if (why || *failed)
        return why;
    if (row->valid_until <= now)
        return "expired";
    if (row->active_sessions <= 0 && now - row->last_used >= cfg->lease_idle)
        return "idle";
    return NULL;
}

static int sweep_mark_dropped(sp_lease_mgr *m, const lease_row *row, const char *reason,
                              int64_t now, char *err, size_t errlen)
{
    keys_forget(m, row->id);
    if (store_mark_dropped(m, row->id, now, reason, err, errlen) < 0)
        return -1;
    sp_info("target %s: dropped lease role %s of %s (%s)", row->target, row->role_name,
            row->identity, reason);
    return 0;
}

/* A lease whose target left the configuration: nothing to connect with, so the row ends here
 * and the log tells the operator the role is left on the server (the hardening guide's query
 * finds it). */
static int sweep_forget_unreachable(sp_lease_mgr *m, const lease_row *row, const char *why,
                                    int64_t now, char *err, size_t errlen)
{
    char reason[256];
    sp_warn("leases: target %s is no longer configured for leases; role %s of %s is left on it "
            "and must be dropped by hand",
            row->target, row->role_name, row->identity);
    snprintf(reason, sizeof(reason), "%s (role left upstream: no admin connection)", why);
    return sweep_mark_dropped(m, row, reason, now, err, errlen);
}

/* Decides again under the target's admin slot, which sp_lease_acquire holds from lookup to
 * counting the session: a session that took the lease since the list was read keeps it.
 * 1 dropped (*why_out set), 0 kept, -1 error. */
static int sweep_one(sp_lease_mgr *m, const sp_config *cfg, const lease_row *listed, int64_t now,
                     const char **why_out, char *err, size_t errlen)
{
    bool failed;
    const char *why = lease_end_reason(m, cfg, listed, now, &failed, err, errlen);
    if (failed)
        return -1;
    if (!why)
        return 0;
    const sp_target *t = sp_config_target(cfg, listed->target);
    if (!t || t->kind != SP_TARGET_POSTGRES || !t->admin_dsn_file) {
        *why_out = why;
        return sweep_forget_unreachable(m, listed, why, now, err, errlen) < 0 ? -1 : 1;
    }
    admin_conn *ac = admin_acquire(m, t, err, errlen);
    if (!ac)
        return -1;
    lease_row row;
    int rc = store_get_live_row(m, listed->id, &row, err, errlen);
    if (rc == SP_STORE_NOT_FOUND) {
        rc = 0;
        goto out;
    }
    if (rc < 0)
        goto out;
    why = lease_end_reason(m, cfg, &row, now, &failed, err, errlen);
    if (failed || !why) {
        rc = failed ? -1 : 0;
        goto out;
    }
    if (admin_run(ac, t, op_drop_role, (void *)row.role_name, err, errlen) < 0 ||
        sweep_mark_dropped(m, &row, why, now, err, errlen) < 0) {
        rc = -1;
        goto out;
    }
    *why_out = why;
    rc = 1;
out:
    admin_release(ac);
    return rc;
}

/* Keeps the first error for the caller; later ones go to the log. */
static void sweep_note_error(char *err, size_t errlen, bool *any, const char *msg)
{
    if (!*any)
        snprintf(err, errlen, "%s", msg);
    else
        sp_warn("leases: %s", msg);
    *any = true;
}

static int sweep_rows(sp_lease_mgr *m, const sp_config *cfg, int64_t now, drop_fn fn, void *arg,
                      bool *any_error, char *err, size_t errlen)
{
    lease_row *rows = NULL;
    size_t n = 0;
    if (store_live_rows(m, &rows, &n, err, errlen) < 0)
        return -1;
    int dropped = 0;
    char rerr[512];
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        int rc = sweep_one(m, cfg, &rows[i], now, &why, rerr, sizeof(rerr));
        if (rc < 0)
            sweep_note_error(err, errlen, any_error, rerr);
        if (rc <= 0)
            continue;
        dropped++;
        if (fn)
            fn(rows[i].identity, rows[i].target, rows[i].role_name, why, arg);
    }
    free(rows);
    return dropped;
}

/* "sallyport lease 12 identity=alice target=pg1" -> "alice". */
static void comment_identity(const char *comment, char *out, size_t outlen)
{
    const char *p = strstr(comment, " identity=");
    out[0] = '\0';
    if (!p)
        return;
    p += strlen(" identity=");
    size_t n = strcspn(p, " ");
    snprintf(out, outlen, "%.*s", (int)(n < outlen ? n : outlen - 1), p);
}

typedef struct managed_roles {
    const char *group;
    PGresult *res; /* rolname, comment */
} managed_roles;

static int op_list_managed(PGconn *c, const sp_target *t, void *arg, char *err, size_t errlen)
{
    managed_roles *l = arg;
    static const char sql[] =
        "SELECT r.rolname, shobj_description(r.oid, 'pg_authid')"
        " FROM pg_roles r JOIN pg_auth_members am ON am.member = r.oid"
        " JOIN pg_roles g ON g.oid = am.roleid"
        " WHERE g.rolname = $1"
        " AND shobj_description(r.oid, 'pg_authid') LIKE '" LEASE_COMMENT_PREFIX "%'"
        " ORDER BY r.rolname";
    l->res =
        pg_query1(c, t->name, sql, l->group, "listing the roles of the managed group", err, errlen);
    return l->res ? 0 : -1;
}

/* Roles a previous run created and this store does not know as live: a crash between
 * CREATE ROLE and recording it, or a store restored from backup. */
static int sweep_orphans_on(sp_lease_mgr *m, const sp_config *cfg, const sp_target *t, drop_fn fn,
                            void *arg, bool *any_error, char *err, size_t errlen)
{
    char rerr[512];
    admin_conn *ac = admin_acquire(m, t, rerr, sizeof(rerr));
    if (!ac) {
        sweep_note_error(err, errlen, any_error, rerr);
        return 0;
    }
    managed_roles l = {.group = cfg->managed_group};
    int dropped = 0;
    if (admin_run(ac, t, op_list_managed, &l, rerr, sizeof(rerr)) < 0) {
        sweep_note_error(err, errlen, any_error, rerr);
        goto out;
    }
    for (int i = 0; i < PQntuples(l.res); i++) {
        const char *role_name = PQgetvalue(l.res, i, 0);
        int live = store_role_is_live(m, role_name, rerr, sizeof(rerr));
        if (live != 0) {
            if (live < 0)
                sweep_note_error(err, errlen, any_error, rerr);
            continue;
        }
        if (admin_run(ac, t, op_drop_role, (void *)role_name, rerr, sizeof(rerr)) < 0) {
            sweep_note_error(err, errlen, any_error, rerr);
            continue;
        }
        char identity[SP_NAME_MAX];
        comment_identity(PQgetvalue(l.res, i, 1), identity, sizeof(identity));
        sp_info("target %s: dropped orphaned lease role %s", t->name, role_name);
        dropped++;
        if (fn)
            fn(identity, t->name, role_name, "orphan", arg);
    }
out:
    PQclear(l.res);
    admin_release(ac);
    return dropped;
}

int sp_lease_sweep(sp_lease_mgr *m, const sp_config *cfg, int64_t now, bool at_start,
                   void (*fn)(const char *identity, const char *target, const char *role_name,
                              const char *why, void *arg),
                   void *arg, char *err, size_t errlen)
{
    bool any_error = false;
    /* No session survives a restart, so counts left by the previous run are stale. */
    if (at_start && store_reset_sessions(m, err, errlen) < 0)
        return -1;
    int dropped = sweep_rows(m, cfg, now, fn, arg, &any_error, err, errlen);
    if (dropped < 0)
        return -1;
    for (size_t i = 0; at_start && i < cfg->n_targets; i++) {
        const sp_target *t = &cfg->targets[i];
        if (t->kind == SP_TARGET_POSTGRES && t->admin_dsn_file)
            dropped += sweep_orphans_on(m, cfg, t, fn, arg, &any_error, err, errlen);
    }
    return any_error ? -1 : dropped;
}
