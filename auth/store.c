#include "auth/store.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"

/* Bump when the schema changes; sp_store_open refuses a store written by a newer version. */
#define SP_STORE_SCHEMA_VERSION 1

/* Waits this long for a lock another process holds before a statement fails. */
#define STORE_BUSY_MS 5000
/* Session ends the index could not take (store locked or failing), kept for a retry. */
#define PENDING_ENDS_MAX 4096

typedef struct pending_end {
    struct pending_end *next;
    char id[40];
    char reason[64];
    int64_t ended_at;
    int64_t chunk_count;
} pending_end;

struct sp_store {
    sqlite3 *db;
    pthread_mutex_t mu;
    char path[512];
    /* The file opened, so a store removed or replaced under a running gateway is noticed. */
    dev_t dev;
    ino_t ino;
    pending_end *pending;
    size_t n_pending;
};

static const char SCHEMA_SQL[] =
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS identities ("
    " name TEXT PRIMARY KEY,"
    " kind TEXT NOT NULL CHECK (kind IN ('human', 'service')),"
    " owner TEXT NOT NULL,"
    " purpose TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " disabled INTEGER NOT NULL DEFAULT 0,"
    " scram_salt BLOB NOT NULL,"
    " scram_iterations INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS bindings ("
    " id INTEGER PRIMARY KEY,"
    " identity TEXT NOT NULL REFERENCES identities(name),"
    " role TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL DEFAULT 0,"
    " revoked_at INTEGER NOT NULL DEFAULT 0,"
    " reason TEXT NOT NULL,"
    " granted_by TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS bindings_by_identity ON bindings (identity, revoked_at);"
    "CREATE TABLE IF NOT EXISTS credentials ("
    " id TEXT PRIMARY KEY,"
    " identity TEXT NOT NULL REFERENCES identities(name),"
    " kind TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " revoked_at INTEGER NOT NULL DEFAULT 0,"
    " stored_key BLOB NOT NULL,"
    " server_key BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS credentials_by_identity ON credentials (identity, revoked_at);"
    "CREATE TABLE IF NOT EXISTS sessions ("
    " id TEXT PRIMARY KEY,"
    " identity TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " target TEXT NOT NULL,"
    " database TEXT NOT NULL,"
    " role TEXT NOT NULL,"
    " cred_id TEXT NOT NULL,"
    " binding_id INTEGER NOT NULL,"
    " client_addr TEXT NOT NULL,"
    " recording_path TEXT NOT NULL,"
    " started_at INTEGER NOT NULL,"
    " ended_at INTEGER NOT NULL DEFAULT 0,"
    " end_reason TEXT NOT NULL DEFAULT '',"
    " chunk_count INTEGER NOT NULL DEFAULT 0,"
    " gateway_pid INTEGER NOT NULL,"
    " kill_requested_at INTEGER NOT NULL DEFAULT 0,"
    " kill_reason TEXT NOT NULL DEFAULT '',"
    " kill_by TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX IF NOT EXISTS sessions_live ON sessions (ended_at, gateway_pid);"
    "CREATE INDEX IF NOT EXISTS sessions_by_start ON sessions (started_at);";

/* ---- small helpers ---- */

static void db_error(sp_store *s, char *err, size_t errlen, const char *what)
{
    snprintf(err, errlen, "store %s: %s: %s", s->path, what, sqlite3_errmsg(s->db));
}

static int prepare(sp_store *s, const char *sql, sqlite3_stmt **st, char *err, size_t errlen)
{
    if (sqlite3_prepare_v2(s->db, sql, -1, st, NULL) != SQLITE_OK) {
        db_error(s, err, errlen, "cannot prepare a statement");
        return -1;
    }
    return 0;
}

static void bind_text(sqlite3_stmt *st, int idx, const char *v)
{
    sqlite3_bind_text(st, idx, v ? v : "", -1, SQLITE_TRANSIENT);
}

static void column_text(sqlite3_stmt *st, int col, char *out, size_t outlen)
{
    const unsigned char *v = sqlite3_column_text(st, col);
    snprintf(out, outlen, "%s", v ? (const char *)v : "");
}

static void column_blob(sqlite3_stmt *st, int col, uint8_t *out, size_t outlen)
{
    const void *v = sqlite3_column_blob(st, col);
    size_t n = (size_t)sqlite3_column_bytes(st, col);
    memset(out, 0, outlen);
    if (v)
        memcpy(out, v, n < outlen ? n : outlen);
}

/* Runs a statement that returns no rows; *changes (if given) gets the rows it touched. */
static int step_done(sp_store *s, sqlite3_stmt *st, int *changes, char *err, size_t errlen,
                     const char *what)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, what);
        return -1;
    }
    if (changes)
        *changes = sqlite3_changes(s->db);
    return 0;
}

/* A SELECT by one text key that yields at most one row, read by from_row into out. */
static int get_one(sp_store *s, const char *sql, const char *key,
                   void (*from_row)(sqlite3_stmt *st, void *out), void *out, const char *missing,
                   const char *what, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    sp_store_lock(s);
    if (prepare(s, sql, &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        from_row(st, out);
        ret = 0;
    } else if (rc == SQLITE_DONE) {
        snprintf(err, errlen, "%s %s", missing, key);
        ret = SP_STORE_NOT_FOUND;
    } else {
        db_error(s, err, errlen, what);
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

static bool text_fits(const char *v, size_t cap)
{
    return v && strlen(v) < cap;
}

/* ---- open / close ---- */

bool sp_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= SP_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

static int exec_sql(sp_store *s, const char *sql, char *err, size_t errlen, const char *what)
{
    char *msg = NULL;
    if (sqlite3_exec(s->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "store %s: %s: %s", s->path, what, msg ? msg : "unknown error");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Creates the tables if missing and records or checks the schema version, in one immediate
 * transaction so a CLI and a gateway opening a new store at once do not race. */
static int schema_ensure(sp_store *s, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int version = 0, ret = -1;
    if (exec_sql(s, "BEGIN IMMEDIATE", err, errlen, "cannot start the schema transaction") < 0)
        return -1;
    if (exec_sql(s, SCHEMA_SQL, err, errlen, "cannot create the schema") < 0)
        goto out;
    if (prepare(s, "SELECT max(version) FROM schema_version", &st, err, errlen) < 0)
        goto out;
    if (sqlite3_step(st) != SQLITE_ROW) {
        db_error(s, err, errlen, "cannot read the schema version");
        goto out;
    }
    version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (version > SP_STORE_SCHEMA_VERSION) {
        snprintf(err, errlen,
                 "store %s has schema version %d, newer than this sallyport understands (%d); "
                 "upgrade sallyport",
                 s->path, version, SP_STORE_SCHEMA_VERSION);
        goto out;
    }
    if (version == 0) {
        if (prepare(s, "INSERT INTO schema_version (version) VALUES (?)", &st, err, errlen) < 0)
            goto out;
        sqlite3_bind_int(st, 1, SP_STORE_SCHEMA_VERSION);
        if (step_done(s, st, NULL, err, errlen, "cannot record the schema version") < 0)
            goto out;
    }
    ret = exec_sql(s, "COMMIT", err, errlen, "cannot commit the schema");
out:
    sqlite3_finalize(st);
    if (ret < 0)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return ret;
}

int sp_store_open(const char *path, sp_store **out, char *err, size_t errlen)
{
    sp_store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "cannot open store %s: out of memory", path);
        return -1;
    }
    /* Recursive so that a listing callback may call back into the store. */
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&s->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    snprintf(s->path, sizeof(s->path), "%s", path);
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open store %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        sp_store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    if (exec_sql(s, "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;", err, errlen,
                 "cannot set up WAL mode and foreign keys") < 0 ||
        schema_ensure(s, err, errlen) < 0) {
        sp_store_close(s);
        return -1;
    }
    struct stat sb;
    if (stat(path, &sb) == 0) {
        s->dev = sb.st_dev;
        s->ino = sb.st_ino;
    }
    *out = s;
    return 0;
}

void sp_store_close(sp_store *s)
{
    if (!s)
        return;
    char err[256];
    if (s->n_pending && sp_store_retry_pending(s, err, sizeof(err)) < 0)
        sp_warn("%zu session ends are not in the sessions index (the next start closes them "
                "as gateway-crashed): %s",
                s->n_pending, err);
    while (s->pending) {
        pending_end *next = s->pending->next;
        free(s->pending);
        s->pending = next;
    }
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

sqlite3 *sp_store_lock(sp_store *s)
{
    pthread_mutex_lock(&s->mu);
    return s->db;
}

void sp_store_unlock(sp_store *s)
{
    pthread_mutex_unlock(&s->mu);
}

/* ---- identities ---- */

static int identity_exists(sp_store *s, const char *name, bool *exists, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    if (prepare(s, "SELECT 1 FROM identities WHERE name = ?", &st, err, errlen) < 0)
        return -1;
    bind_text(st, 1, name);
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) {
        *exists = rc == SQLITE_ROW;
    } else {
        db_error(s, err, errlen, "cannot look up an identity");
        ret = -1;
    }
    sqlite3_finalize(st);
    return ret;
}

static int identity_check_fields(const char *name, const char *kind, const char *owner,
                                 const char *purpose, char *err, size_t errlen)
{
    const sp_identity *shape = NULL;
    if (!name || !sp_name_valid(name)) {
        snprintf(err, errlen, "invalid identity name \"%s\": use 1 to %d of A-Z a-z 0-9 _ . @ -",
                 name ? name : "", SP_NAME_MAX - 1);
        return -1;
    }
    if (!kind || (strcmp(kind, "human") != 0 && strcmp(kind, "service") != 0)) {
        snprintf(err, errlen, "invalid identity kind \"%s\": use human or service",
                 kind ? kind : "");
        return -1;
    }
    if (!owner || !*owner || !text_fits(owner, sizeof(shape->owner))) {
        snprintf(err, errlen, "identity %s needs an owner of 1 to %zu characters", name,
                 sizeof(shape->owner) - 1);
        return -1;
    }
    if (!purpose || !*purpose || !text_fits(purpose, sizeof(shape->purpose))) {
        snprintf(err, errlen, "identity %s needs a purpose of 1 to %zu characters", name,
                 sizeof(shape->purpose) - 1);
        return -1;
    }
    return 0;
}

int sp_store_identity_add(sp_store *s, const char *name, const char *kind, const char *owner,
                          const char *purpose, char *err, size_t errlen)
{
    uint8_t salt[SP_SCRAM_SALT_LEN];
    sqlite3_stmt *st = NULL;
    int ret = -1;
    bool exists = false;
    if (identity_check_fields(name, kind, owner, purpose, err, errlen) < 0)
        return -1;
    if (sp_random_bytes(salt, sizeof(salt)) < 0) {
        snprintf(err, errlen, "cannot add identity %s: the random generator failed", name);
        return -1;
    }
    sp_store_lock(s);
    if (identity_exists(s, name, &exists, err, errlen) < 0)
        goto out;
    if (exists) {
        snprintf(err, errlen, "identity %s already exists", name);
        goto out;
    }
    if (prepare(s,
                "INSERT INTO identities (name, kind, owner, purpose, created_at, disabled, "
                "scram_salt, scram_iterations) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, name);
    bind_text(st, 2, kind);
    bind_text(st, 3, owner);
    bind_text(st, 4, purpose);
    sqlite3_bind_int64(st, 5, sp_now_us());
    sqlite3_bind_blob(st, 6, salt, sizeof(salt), SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 7, 4096);
    ret = step_done(s, st, NULL, err, errlen, "cannot add the identity");
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

#define IDENTITY_COLUMNS                                                                           \
    "name, kind, owner, purpose, disabled, scram_salt, scram_iterations, created_at"

static void identity_from_row(sqlite3_stmt *st, void *row)
{
    sp_identity *out = row;
    memset(out, 0, sizeof(*out));
    column_text(st, 0, out->name, sizeof(out->name));
    column_text(st, 1, out->kind, sizeof(out->kind));
    column_text(st, 2, out->owner, sizeof(out->owner));
    column_text(st, 3, out->purpose, sizeof(out->purpose));
    out->disabled = sqlite3_column_int(st, 4) != 0;
    column_blob(st, 5, out->salt, sizeof(out->salt));
    out->iterations = sqlite3_column_int(st, 6);
    out->created_at = sqlite3_column_int64(st, 7);
}

int sp_store_identity_get(sp_store *s, const char *name, sp_identity *out, char *err, size_t errlen)
{
    return get_one(s, "SELECT " IDENTITY_COLUMNS " FROM identities WHERE name = ?", name,
                   identity_from_row, out, "no identity named", "cannot read an identity", err,
                   errlen);
}

int sp_store_identity_set_disabled(sp_store *s, const char *name, bool disabled, char *err,
                                   size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    sp_store_lock(s);
    if (prepare(s, "UPDATE identities SET disabled = ? WHERE name = ?", &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int(st, 1, disabled ? 1 : 0);
    bind_text(st, 2, name);
    if (step_done(s, st, &changes, err, errlen, "cannot change an identity") < 0)
        goto out;
    if (changes == 0) {
        snprintf(err, errlen, "no identity named %s", name);
        ret = SP_STORE_NOT_FOUND;
    } else {
        ret = 0;
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_identities_list(sp_store *s, void (*fn)(const sp_identity *id, void *arg), void *arg,
                             char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s, "SELECT " IDENTITY_COLUMNS " FROM identities ORDER BY name", &st, err, errlen) <
        0)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sp_identity id;
        identity_from_row(st, &id);
        fn(&id, arg);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot list identities");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

/* ---- bindings ---- */

int sp_store_binding_add(sp_store *s, const char *identity, const char *role, int64_t expires_at,
                         const char *reason, const char *granted_by, int64_t *id_out, char *err,
                         size_t errlen)
{
    const sp_binding *shape = NULL;
    sqlite3_stmt *st = NULL;
    int ret = -1;
    bool exists = false;
    if (!role || !sp_name_valid(role)) {
        snprintf(err, errlen, "invalid role name \"%s\"", role ? role : "");
        return -1;
    }
    if (!reason || !*reason || !text_fits(reason, sizeof(shape->reason))) {
        snprintf(err, errlen, "a grant needs a reason of 1 to %zu characters",
                 sizeof(shape->reason) - 1);
        return -1;
    }
    if (!granted_by || !text_fits(granted_by, sizeof(shape->granted_by))) {
        snprintf(err, errlen, "a grant needs a granting actor of at most %zu characters",
                 sizeof(shape->granted_by) - 1);
        return -1;
    }
    sp_store_lock(s);
    if (identity_exists(s, identity, &exists, err, errlen) < 0)
        goto out;
    if (!exists) {
        snprintf(err, errlen, "no identity named %s", identity);
        ret = SP_STORE_NOT_FOUND;
        goto out;
    }
    if (prepare(s,
                "INSERT INTO bindings (identity, role, created_at, expires_at, revoked_at, "
                "reason, granted_by) VALUES (?, ?, ?, ?, 0, ?, ?)",
                &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, identity);
    bind_text(st, 2, role);
    sqlite3_bind_int64(st, 3, sp_now_us());
    sqlite3_bind_int64(st, 4, expires_at);
    bind_text(st, 5, reason);
    bind_text(st, 6, granted_by);
    if (step_done(s, st, NULL, err, errlen, "cannot add the grant") < 0)
        goto out;
    if (id_out)
        *id_out = sqlite3_last_insert_rowid(s->db);
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

#define BINDING_COLUMNS "id, identity, role, created_at, expires_at, revoked_at, reason, granted_by"
#define BINDING_LIVE "revoked_at = 0 AND (expires_at = 0 OR expires_at > ?1)"

static void binding_from_row(sqlite3_stmt *st, sp_binding *out)
{
    memset(out, 0, sizeof(*out));
    out->id = sqlite3_column_int64(st, 0);
    column_text(st, 1, out->identity, sizeof(out->identity));
    column_text(st, 2, out->role, sizeof(out->role));
    out->created_at = sqlite3_column_int64(st, 3);
    out->expires_at = sqlite3_column_int64(st, 4);
    out->revoked_at = sqlite3_column_int64(st, 5);
    column_text(st, 6, out->reason, sizeof(out->reason));
    column_text(st, 7, out->granted_by, sizeof(out->granted_by));
}

int sp_store_bindings_live(sp_store *s, const char *identity, int64_t now, sp_binding *out,
                           size_t max, size_t *n, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc = SQLITE_DONE;
    *n = 0;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT " BINDING_COLUMNS " FROM bindings WHERE identity = ?2 AND " BINDING_LIVE
                " ORDER BY id",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, identity);
    while (*n < max && (rc = sqlite3_step(st)) == SQLITE_ROW)
        binding_from_row(st, &out[(*n)++]);
    if (*n < max && rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot read grants");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_binding_revoke(sp_store *s, const char *identity, const char *role, int64_t now,
                            char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    sp_store_lock(s);
    if (prepare(s,
                "UPDATE bindings SET revoked_at = ?1 WHERE identity = ?2 AND role = ?3 AND "
                "" BINDING_LIVE,
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, identity);
    bind_text(st, 3, role);
    if (step_done(s, st, &changes, err, errlen, "cannot revoke the grant") < 0)
        goto out;
    if (changes == 0) {
        snprintf(err, errlen, "%s holds no live grant of role %s", identity, role);
        ret = SP_STORE_NOT_FOUND;
    } else {
        ret = 0;
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_bindings_list_live(sp_store *s, const char *identity, int64_t now,
                                void (*fn)(const sp_binding *b, void *arg), void *arg, char *err,
                                size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT " BINDING_COLUMNS " FROM bindings WHERE (?2 IS NULL OR identity = ?2) "
                "AND " BINDING_LIVE " ORDER BY identity, id",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, now);
    if (identity)
        bind_text(st, 2, identity);
    else
        sqlite3_bind_null(st, 2);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sp_binding b;
        binding_from_row(st, &b);
        fn(&b, arg);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot list grants");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

/* ---- credentials ---- */

static bool cred_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= SP_CRED_ID_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return false;
    }
    return true;
}

int sp_store_cred_add(sp_store *s, const char *id, const char *identity, const char *kind,
                      const uint8_t stored_key[SP_SCRAM_KEY_LEN],
                      const uint8_t server_key[SP_SCRAM_KEY_LEN], int64_t expires_at, char *err,
                      size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    bool exists = false;
    if (!cred_id_valid(id)) {
        snprintf(err, errlen, "invalid credential id \"%s\": use 1 to %d of a-z 0-9", id ? id : "",
                 SP_CRED_ID_LEN - 1);
        return -1;
    }
    if (!kind || !text_fits(kind, sizeof(((sp_credential *)NULL)->kind)) || !*kind) {
        snprintf(err, errlen, "invalid credential kind");
        return -1;
    }
    sp_store_lock(s);
    if (identity_exists(s, identity, &exists, err, errlen) < 0)
        goto out;
    if (!exists) {
        snprintf(err, errlen, "no identity named %s", identity);
        ret = SP_STORE_NOT_FOUND;
        goto out;
    }
    if (prepare(s,
                "INSERT INTO credentials (id, identity, kind, created_at, expires_at, revoked_at, "
                "stored_key, server_key) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, id);
    bind_text(st, 2, identity);
    bind_text(st, 3, kind);
    sqlite3_bind_int64(st, 4, sp_now_us());
    sqlite3_bind_int64(st, 5, expires_at);
    sqlite3_bind_blob(st, 6, stored_key, SP_SCRAM_KEY_LEN, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 7, server_key, SP_SCRAM_KEY_LEN, SQLITE_TRANSIENT);
    ret = step_done(s, st, NULL, err, errlen, "cannot add the credential");
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_tokens_live(sp_store *s, const char *identity, int64_t now, sp_token_verifier *out,
                         size_t max, size_t *n, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc = SQLITE_DONE;
    *n = 0;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT id, stored_key, server_key, expires_at FROM credentials "
                "WHERE identity = ?2 AND kind = 'token' AND revoked_at = 0 "
                "AND (expires_at = 0 OR expires_at > ?1) ORDER BY created_at DESC, id",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, identity);
    while (*n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        sp_token_verifier *v = &out[(*n)++];
        memset(v, 0, sizeof(*v));
        column_text(st, 0, v->id, sizeof(v->id));
        column_blob(st, 1, v->stored_key, sizeof(v->stored_key));
        column_blob(st, 2, v->server_key, sizeof(v->server_key));
        v->expires_at = sqlite3_column_int64(st, 3);
    }
    if (*n < max && rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot read tokens");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

#define CRED_COLUMNS "id, identity, kind, created_at, expires_at, revoked_at"

static void cred_from_row(sqlite3_stmt *st, void *row)
{
    sp_credential *out = row;
    memset(out, 0, sizeof(*out));
    column_text(st, 0, out->id, sizeof(out->id));
    column_text(st, 1, out->identity, sizeof(out->identity));
    column_text(st, 2, out->kind, sizeof(out->kind));
    out->created_at = sqlite3_column_int64(st, 3);
    out->expires_at = sqlite3_column_int64(st, 4);
    out->revoked_at = sqlite3_column_int64(st, 5);
}

int sp_store_cred_get(sp_store *s, const char *id, sp_credential *out, char *err, size_t errlen)
{
    return get_one(s, "SELECT " CRED_COLUMNS " FROM credentials WHERE id = ?", id, cred_from_row,
                   out, "no credential with id", "cannot read a credential", err, errlen);
}

int sp_store_cred_revoke(sp_store *s, const char *id, int64_t now, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    sp_store_lock(s);
    if (prepare(s, "UPDATE credentials SET revoked_at = ? WHERE id = ? AND revoked_at = 0", &st,
                err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, now);
    bind_text(st, 2, id);
    if (step_done(s, st, &changes, err, errlen, "cannot revoke the credential") < 0)
        goto out;
    if (changes == 0) {
        sp_credential c;
        ret = sp_store_cred_get(s, id, &c, err, errlen);
    } else {
        ret = 0;
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

typedef struct cred_liveness {
    sp_credential c;
    uint8_t stored_key[SP_SCRAM_KEY_LEN];
} cred_liveness;

static void cred_liveness_from_row(sqlite3_stmt *st, void *row)
{
    cred_liveness *out = row;
    cred_from_row(st, &out->c);
    column_blob(st, 6, out->stored_key, sizeof(out->stored_key));
}

int sp_store_cred_live(sp_store *s, const char *id, const char *identity, int64_t now,
                       const uint8_t cert_sha256[SP_SCRAM_KEY_LEN], char *err, size_t errlen)
{
    cred_liveness row;
    int rc = get_one(s, "SELECT " CRED_COLUMNS ", stored_key FROM credentials WHERE id = ?", id,
                     cred_liveness_from_row, &row, "no credential with id",
                     "cannot read a credential", err, errlen);
    if (rc != 0)
        return rc;
    rc = SP_STORE_NOT_FOUND;
    if (strcmp(row.c.identity, identity) != 0)
        snprintf(err, errlen, "credential %s belongs to %s, not to %s", row.c.id, row.c.identity,
                 identity);
    else if (row.c.revoked_at)
        snprintf(err, errlen, "credential %s is revoked", row.c.id);
    else if (row.c.expires_at && row.c.expires_at <= now)
        snprintf(err, errlen, "credential %s has expired", row.c.id);
    else if (cert_sha256 && !sp_memeq_ct(row.stored_key, cert_sha256, SP_SCRAM_KEY_LEN))
        snprintf(err, errlen, "credential %s was issued for another certificate", row.c.id);
    else
        rc = 0;
    return rc;
}

int sp_store_creds_list(sp_store *s, const char *identity,
                        void (*fn)(const sp_credential *c, void *arg), void *arg, char *err,
                        size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT " CRED_COLUMNS " FROM credentials WHERE (?1 IS NULL OR identity = ?1) "
                "ORDER BY created_at DESC, id",
                &st, err, errlen) < 0)
        goto out;
    if (identity)
        bind_text(st, 1, identity);
    else
        sqlite3_bind_null(st, 1);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sp_credential c;
        cred_from_row(st, &c);
        fn(&c, arg);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot list credentials");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

/* ---- sessions ---- */

#define SESSION_COLUMNS                                                                            \
    "id, identity, kind, target, database, role, cred_id, binding_id, client_addr, "               \
    "recording_path, started_at, ended_at, end_reason, chunk_count, gateway_pid"

static void session_from_row(sqlite3_stmt *st, void *row)
{
    sp_session_row *out = row;
    memset(out, 0, sizeof(*out));
    column_text(st, 0, out->id, sizeof(out->id));
    column_text(st, 1, out->identity, sizeof(out->identity));
    column_text(st, 2, out->kind, sizeof(out->kind));
    column_text(st, 3, out->target, sizeof(out->target));
    column_text(st, 4, out->database, sizeof(out->database));
    column_text(st, 5, out->role, sizeof(out->role));
    column_text(st, 6, out->cred_id, sizeof(out->cred_id));
    out->binding_id = sqlite3_column_int64(st, 7);
    column_text(st, 8, out->client_addr, sizeof(out->client_addr));
    column_text(st, 9, out->recording_path, sizeof(out->recording_path));
    out->started_at = sqlite3_column_int64(st, 10);
    out->ended_at = sqlite3_column_int64(st, 11);
    column_text(st, 12, out->end_reason, sizeof(out->end_reason));
    out->chunk_count = sqlite3_column_int64(st, 13);
    out->gateway_pid = sqlite3_column_int(st, 14);
}

int sp_store_session_start(sp_store *s, const sp_session_row *row, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1;
    if (!row->id[0]) {
        snprintf(err, errlen, "cannot index a session without an id");
        return -1;
    }
    sp_store_lock(s);
    if (prepare(s,
                "INSERT INTO sessions (" SESSION_COLUMNS
                ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, row->id);
    bind_text(st, 2, row->identity);
    bind_text(st, 3, row->kind);
    bind_text(st, 4, row->target);
    bind_text(st, 5, row->database);
    bind_text(st, 6, row->role);
    bind_text(st, 7, row->cred_id);
    sqlite3_bind_int64(st, 8, row->binding_id);
    bind_text(st, 9, row->client_addr);
    bind_text(st, 10, row->recording_path);
    sqlite3_bind_int64(st, 11, row->started_at);
    sqlite3_bind_int64(st, 12, row->ended_at);
    bind_text(st, 13, row->end_reason);
    sqlite3_bind_int64(st, 14, row->chunk_count);
    sqlite3_bind_int(st, 15, row->gateway_pid);
    ret = step_done(s, st, NULL, err, errlen, "cannot index the session");
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

/* For updates that touched no row: NOT_FOUND when the session does not exist, else 0. */
static int session_missing_or_ok(sp_store *s, const char *id, char *err, size_t errlen)
{
    sp_session_row row;
    return sp_store_session_get(s, id, &row, err, errlen);
}

int sp_store_session_progress(sp_store *s, const char *id, int64_t chunk_count, char *err,
                              size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    sp_store_lock(s);
    if (prepare(s, "UPDATE sessions SET chunk_count = ? WHERE id = ?", &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, chunk_count);
    bind_text(st, 2, id);
    if (step_done(s, st, &changes, err, errlen, "cannot update the session's progress") < 0)
        goto out;
    ret = changes ? 0 : session_missing_or_ok(s, id, err, errlen);
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

static int session_end_write(sp_store *s, const char *id, int64_t ended_at, const char *reason,
                             int64_t chunk_count, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    /* The first end wins: an orphan sweep must not be overwritten by a late writer. */
    if (prepare(s,
                "UPDATE sessions SET ended_at = ?, end_reason = ?, chunk_count = ? "
                "WHERE id = ? AND ended_at = 0",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, ended_at);
    bind_text(st, 2, reason);
    sqlite3_bind_int64(st, 3, chunk_count);
    bind_text(st, 4, id);
    if (step_done(s, st, &changes, err, errlen, "cannot end the session") < 0)
        goto out;
    ret = changes ? 0 : session_missing_or_ok(s, id, err, errlen);
out:
    sqlite3_finalize(st);
    return ret;
}

/* Keeps an end the store refused, so the index does not show a finished session as live once
 * the store is back. Bounded: past the cap the orphan sweep at the next start closes it. */
static void pending_end_keep(sp_store *s, const char *id, int64_t ended_at, const char *reason,
                             int64_t chunk_count)
{
    if (s->n_pending >= PENDING_ENDS_MAX)
        return;
    pending_end *p = calloc(1, sizeof(*p));
    if (!p)
        return;
    snprintf(p->id, sizeof(p->id), "%s", id);
    snprintf(p->reason, sizeof(p->reason), "%s", reason ? reason : "");
    p->ended_at = ended_at;
    p->chunk_count = chunk_count;
    p->next = s->pending;
    s->pending = p;
    s->n_pending++;
}

int sp_store_session_end(sp_store *s, const char *id, int64_t ended_at, const char *reason,
                         int64_t chunk_count, char *err, size_t errlen)
{
    sp_store_lock(s);
    int ret = session_end_write(s, id, ended_at, reason, chunk_count, err, errlen);
    if (ret == -1) {
        pending_end_keep(s, id, ended_at, reason, chunk_count);
        size_t used = strlen(err);
        if (used < errlen)
            snprintf(err + used, errlen - used, " (kept; written when the store answers again)");
    }
    sp_store_unlock(s);
    return ret;
}

int sp_store_retry_pending(sp_store *s, char *err, size_t errlen)
{
    int ret = 0;
    sp_store_lock(s);
    pending_end **link = &s->pending;
    while (*link) {
        pending_end *p = *link;
        if (session_end_write(s, p->id, p->ended_at, p->reason, p->chunk_count, err, errlen) ==
            -1) {
            ret = -1;
            break;
        }
        *link = p->next;
        free(p);
        s->n_pending--;
    }
    sp_store_unlock(s);
    return ret;
}

/* The write lock, taken and given back at once: a store another process keeps locked past
 * wait_ms cannot index sessions, and a kill or revocation written meanwhile would wait too. */
static int probe_write_lock(sp_store *s, int wait_ms, char *err, size_t errlen)
{
    sqlite3_busy_timeout(s->db, wait_ms);
    int ret = exec_sql(s, "BEGIN IMMEDIATE", err, errlen, "cannot take the write lock");
    if (ret == 0)
        ret = exec_sql(s, "ROLLBACK", err, errlen, "cannot release the write lock");
    else if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_busy_timeout(s->db, STORE_BUSY_MS);
    return ret;
}

int sp_store_probe(sp_store *s, int wait_ms, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(s->path, &sb) < 0) {
        snprintf(err, errlen, "store %s: %s (removed or unreachable since the gateway opened it)",
                 s->path, strerror(errno));
        return -1;
    }
    if (s->ino && (sb.st_dev != s->dev || sb.st_ino != s->ino)) {
        snprintf(err, errlen,
                 "store %s was replaced by another file since the gateway opened it; restart "
                 "the gateway to use the new one",
                 s->path);
        return -1;
    }
    sp_store_lock(s);
    int ret = probe_write_lock(s, wait_ms, err, errlen);
    if (ret == 0) {
        sqlite3_stmt *st = NULL;
        ret = prepare(s, "SELECT count(*) FROM schema_version", &st, err, errlen);
        if (ret == 0 && sqlite3_step(st) != SQLITE_ROW) {
            db_error(s, err, errlen, "cannot read the schema version");
            ret = -1;
        }
        sqlite3_finalize(st);
    }
    sp_store_unlock(s);
    return ret;
}

int sp_store_session_get(sp_store *s, const char *id, sp_session_row *out, char *err, size_t errlen)
{
    return get_one(s, "SELECT " SESSION_COLUMNS " FROM sessions WHERE id = ?", id, session_from_row,
                   out, "no session with id", "cannot read a session", err, errlen);
}

int sp_store_session_find(sp_store *s, const char *id_or_prefix, sp_session_row *out, char *err,
                          size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc, matches = 0;
    if (!id_or_prefix || !*id_or_prefix) {
        snprintf(err, errlen, "an empty session id matches nothing");
        return SP_STORE_NOT_FOUND;
    }
    sp_store_lock(s);
    ret = sp_store_session_get(s, id_or_prefix, out, err, errlen);
    if (ret != SP_STORE_NOT_FOUND)
        goto out;
    ret = -1;
    /* Session ids are time-ordered, so sessions started together share their first digits:
     * the end of an id is as good a handle as its start. substr() rather than LIKE, so the
     * text is compared literally, with no wildcards. */
    if (prepare(s,
                "SELECT " SESSION_COLUMNS " FROM sessions "
                "WHERE substr(id, 1, length(?1)) = ?1 OR substr(id, -length(?1)) = ?1 LIMIT 2",
                &st, err, errlen) < 0)
        goto out;
    bind_text(st, 1, id_or_prefix);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (matches++ == 0)
            session_from_row(st, out);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot look up the session");
    } else if (matches == 0) {
        snprintf(err, errlen, "no session whose id is, starts or ends with %s", id_or_prefix);
        ret = SP_STORE_NOT_FOUND;
    } else if (matches > 1) {
        snprintf(err, errlen, "%s matches several sessions; give more of the id", id_or_prefix);
    } else {
        ret = 0;
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_sessions_list(sp_store *s, bool live_only, size_t limit,
                           void (*fn)(const sp_session_row *row, void *arg), void *arg, char *err,
                           size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT " SESSION_COLUMNS " FROM sessions WHERE (?1 = 0 OR ended_at = 0) "
                "ORDER BY started_at DESC, id DESC LIMIT ?2",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int(st, 1, live_only ? 1 : 0);
    sqlite3_bind_int64(st, 2, limit ? (sqlite3_int64)limit : -1);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sp_session_row row;
        session_from_row(st, &row);
        fn(&row, arg);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot list sessions");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

int sp_store_session_request_kill(sp_store *s, const char *id, const char *reason, const char *by,
                                  char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int ret = -1, changes = 0;
    sp_store_lock(s);
    if (prepare(s,
                "UPDATE sessions SET kill_requested_at = ?, kill_reason = ?, kill_by = ? "
                "WHERE id = ? AND ended_at = 0",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int64(st, 1, sp_now_us());
    bind_text(st, 2, reason);
    bind_text(st, 3, by);
    bind_text(st, 4, id);
    if (step_done(s, st, &changes, err, errlen, "cannot request the session's end") < 0)
        goto out;
    if (changes) {
        ret = 0;
        goto out;
    }
    ret = session_missing_or_ok(s, id, err, errlen);
    if (ret == 0) {
        snprintf(err, errlen, "session %s has already ended", id);
        ret = -1;
    }
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    return ret;
}

/* Sessions to act on, gathered under the lock and handed to callbacks after it. */
typedef struct session_end_item {
    char id[40];
    char reason[64];
} session_end_item;

typedef struct session_end_list {
    session_end_item *items;
    size_t n, cap;
} session_end_list;

static int end_list_push(session_end_list *l, const char *id, const char *reason)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        session_end_item *p = realloc(l->items, cap * sizeof(*p));
        if (!p)
            return -1;
        l->items = p;
        l->cap = cap;
    }
    snprintf(l->items[l->n].id, sizeof(l->items[l->n].id), "%s", id);
    snprintf(l->items[l->n].reason, sizeof(l->items[l->n].reason), "%s", reason);
    l->n++;
    return 0;
}

/* Why a live session must end, from one row of the query in sp_store_sessions_to_end;
 * false when it may go on. A missing binding, credential or identity counts as revoked:
 * access that cannot be shown to exist has ended. */
static bool session_end_reason(sqlite3_stmt *st, int64_t now, char *reason, size_t len)
{
    const char *cred_id = (const char *)sqlite3_column_text(st, 3);
    if (sqlite3_column_int64(st, 1) != 0) {
        const unsigned char *why = sqlite3_column_text(st, 2);
        snprintf(reason, len, "killed: %s", why && *why ? (const char *)why : "no reason given");
        return true;
    }
    if (cred_id && *cred_id &&
        (sqlite3_column_type(st, 4) == SQLITE_NULL || sqlite3_column_int64(st, 4) != 0)) {
        snprintf(reason, len, "credential-revoked");
        return true;
    }
    if (sqlite3_column_type(st, 5) == SQLITE_NULL || sqlite3_column_int64(st, 5) != 0) {
        snprintf(reason, len, "grant-revoked");
        return true;
    }
    int64_t expires_at = sqlite3_column_int64(st, 6);
    if (expires_at != 0 && expires_at <= now) {
        snprintf(reason, len, "grant-expired");
        return true;
    }
    if (sqlite3_column_type(st, 7) == SQLITE_NULL || sqlite3_column_int(st, 7) != 0) {
        snprintf(reason, len, "identity-disabled");
        return true;
    }
    return false;
}

int sp_store_sessions_to_end(sp_store *s, int gateway_pid, int64_t now,
                             void (*fn)(const char *session_id, const char *reason, void *arg),
                             void *arg, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    session_end_list found = {0};
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT s.id, s.kill_requested_at, s.kill_reason, s.cred_id, c.revoked_at, "
                "b.revoked_at, b.expires_at, i.disabled FROM sessions s "
                "LEFT JOIN credentials c ON c.id = s.cred_id "
                "LEFT JOIN bindings b ON b.id = s.binding_id "
                "LEFT JOIN identities i ON i.name = s.identity "
                "WHERE s.ended_at = 0 AND s.gateway_pid = ?",
                &st, err, errlen) < 0)
        goto out;
    sqlite3_bind_int(st, 1, gateway_pid);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char reason[64];
        if (!session_end_reason(st, now, reason, sizeof(reason)))
            continue;
        if (end_list_push(&found, (const char *)sqlite3_column_text(st, 0), reason) < 0) {
            snprintf(err, errlen, "out of memory listing sessions to end");
            goto out;
        }
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot check live sessions");
        goto out;
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    for (size_t i = 0; ret == 0 && i < found.n; i++)
        fn(found.items[i].id, found.items[i].reason, arg);
    free(found.items);
    return ret;
}

static bool process_gone(int pid, int my_pid)
{
    if (pid == my_pid || pid <= 0)
        return true;
    return kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

int sp_store_sessions_close_orphans(sp_store *s, int my_pid, int64_t now, const char *reason,
                                    void (*fn)(const sp_session_row *row, void *arg), void *arg,
                                    char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    sp_session_row *orphans = NULL;
    size_t n = 0, cap = 0;
    int ret = -1, rc;
    sp_store_lock(s);
    if (prepare(s,
                "SELECT " SESSION_COLUMNS " FROM sessions WHERE ended_at = 0 ORDER BY started_at",
                &st, err, errlen) < 0)
        goto out;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (!process_gone(sqlite3_column_int(st, 14), my_pid))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            sp_session_row *p = realloc(orphans, ncap * sizeof(*p));
            if (!p) {
                snprintf(err, errlen, "out of memory listing orphaned sessions");
                goto out;
            }
            orphans = p;
            cap = ncap;
        }
        session_from_row(st, &orphans[n++]);
    }
    if (rc != SQLITE_DONE) {
        db_error(s, err, errlen, "cannot list live sessions");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (sp_store_session_end(s, orphans[i].id, now, reason, orphans[i].chunk_count, err,
                                 errlen) < 0)
            goto out;
        orphans[i].ended_at = now;
        snprintf(orphans[i].end_reason, sizeof(orphans[i].end_reason), "%s", reason);
    }
    ret = 0;
out:
    sqlite3_finalize(st);
    sp_store_unlock(s);
    for (size_t i = 0; ret == 0 && fn && i < n; i++)
        fn(&orphans[i], arg);
    free(orphans);
    return ret;
}
