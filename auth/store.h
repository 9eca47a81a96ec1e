/* The store: identities, bindings (grants), credentials, sessions index (SQLite).
 *
 * One sp_store per process, shared by all threads; every function takes the store's mutex,
 * so calls are safe from any thread. Calls block (disk, SQLite locks): in the gateway they
 * run only on the libuv thread pool, never on a loop thread. The CLI and every gateway open
 * the same file (WAL mode, busy timeout), so a revocation made by the CLI is seen by the
 * gateway's next poll.
 *
 * Return convention: 0 ok, SP_STORE_NOT_FOUND when the thing does not exist,
 * -1 on error with errbuf ("what and why") filled.
 *
 * Listing functions call fn for each row with the store locked (the mutex is recursive, so fn
 * may call store functions from the same thread); fn must not block for long. */
#ifndef SP_AUTH_STORE_H
#define SP_AUTH_STORE_H

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SP_STORE_NOT_FOUND 1
#define SP_NAME_MAX 64    /* identity, role and target names: [A-Za-z0-9_.@-], 1..63 chars */
#define SP_CRED_ID_LEN 16 /* credential ids: 12 lowercase alphanumerics + NUL, padded */
#define SP_SCRAM_KEY_LEN 32
#define SP_SCRAM_SALT_LEN 16

typedef struct sp_store sp_store;

int sp_store_open(const char *path, sp_store **out, char *err, size_t errlen);
void sp_store_close(sp_store *s);
/* Direct access for parts that keep their own tables (leases). Holds the store mutex from
 * lock to unlock; never keep it across a network call. */
sqlite3 *sp_store_lock(sp_store *s);
void sp_store_unlock(sp_store *s);

bool sp_name_valid(const char *name);

/* ---- identities ---- */
typedef struct sp_identity {
    char name[SP_NAME_MAX];
    char kind[16]; /* "human" | "service" */
    char owner[128];
    char purpose[256];
    bool disabled;
    uint8_t salt[SP_SCRAM_SALT_LEN]; /* shared by all tokens of this identity */
    int iterations;
    int64_t created_at; /* us */
} sp_identity;

int sp_store_identity_add(sp_store *s, const char *name, const char *kind, const char *owner,
                          const char *purpose, char *err, size_t errlen);
int sp_store_identity_get(sp_store *s, const char *name, sp_identity *out, char *err,
                          size_t errlen);
int sp_store_identity_set_disabled(sp_store *s, const char *name, bool disabled, char *err,
                                   size_t errlen);
/* Every identity, by name. */
int sp_store_identities_list(sp_store *s, void (*fn)(const sp_identity *id, void *arg), void *arg,
                             char *err, size_t errlen);

/* ---- bindings (identity -> role) ---- */
typedef struct sp_binding {
    int64_t id;
    char identity[SP_NAME_MAX];
    char role[SP_NAME_MAX];
    int64_t created_at;
    int64_t expires_at; /* 0 = until revoked */
    int64_t revoked_at; /* 0 = live */
    char reason[256];
    char granted_by[SP_NAME_MAX];
} sp_binding;

int sp_store_binding_add(sp_store *s, const char *identity, const char *role, int64_t expires_at,
                         const char *reason, const char *granted_by, int64_t *id_out, char *err,
                         size_t errlen);
/* Live bindings of an identity at `now` (not revoked, not expired). Fills up to max. */
int sp_store_bindings_live(sp_store *s, const char *identity, int64_t now, sp_binding *out,
                           size_t max, size_t *n, char *err, size_t errlen);
/* Revokes every live binding of identity to role; SP_STORE_NOT_FOUND when there was none. */
int sp_store_binding_revoke(sp_store *s, const char *identity, const char *role, int64_t now,
                            char *err, size_t errlen);
/* Live bindings at `now` of one identity, or of every identity when identity is NULL,
 * by identity then id. */
int sp_store_bindings_list_live(sp_store *s, const char *identity, int64_t now,
                                void (*fn)(const sp_binding *b, void *arg), void *arg, char *err,
                                size_t errlen);

/* ---- credentials (tokens: only SCRAM keys are kept, never the token) ---- */
typedef struct sp_token_verifier {
    char id[SP_CRED_ID_LEN];
    uint8_t stored_key[SP_SCRAM_KEY_LEN];
    uint8_t server_key[SP_SCRAM_KEY_LEN];
    int64_t expires_at;
} sp_token_verifier;

int sp_store_cred_add(sp_store *s, const char *id, const char *identity, const char *kind,
                      const uint8_t stored_key[SP_SCRAM_KEY_LEN],
                      const uint8_t server_key[SP_SCRAM_KEY_LEN], int64_t expires_at, char *err,
                      size_t errlen);
/* Tokens of an identity that may start a session at `now`: not revoked, not expired. */
int sp_store_tokens_live(sp_store *s, const char *identity, int64_t now, sp_token_verifier *out,
                         size_t max, size_t *n, char *err, size_t errlen);
/* Revoking a revoked credential changes nothing and returns 0. */
int sp_store_cred_revoke(sp_store *s, const char *id, int64_t now, char *err, size_t errlen);

/* May credential `id` of `identity` start a session at `now`: it exists, belongs to identity,
 * is not revoked and not expired? For an "ssh-cert" credential (whose stored_key column holds
 * the SHA-256 of the certificate blob, server_key zeros) pass cert_sha256 to check also that
 * the credential was issued for exactly this certificate; NULL skips that. The SSH engine calls
 * it with the id from the certificate's key id "IDENTITY cred=<id>", so a revoked certificate
 * is refused before it expires. 0 live; SP_STORE_NOT_FOUND with err saying why not (unknown,
 * another identity's, revoked, expired, another certificate); -1 on a store error. */
int sp_store_cred_live(sp_store *s, const char *id, const char *identity, int64_t now,
                       const uint8_t cert_sha256[SP_SCRAM_KEY_LEN], char *err, size_t errlen);

/* What `cred list` shows: never keys. */
typedef struct sp_credential {
    char id[SP_CRED_ID_LEN];
    char identity[SP_NAME_MAX];
    char kind[16]; /* "token" | "ssh-cert" */
    int64_t created_at;
    int64_t expires_at;
    int64_t revoked_at; /* 0 = not revoked */
} sp_credential;

int sp_store_cred_get(sp_store *s, const char *id, sp_credential *out, char *err, size_t errlen);
/* Credentials of one identity, or of all when identity is NULL, newest first. */
int sp_store_creds_list(sp_store *s, const char *identity,
                        void (*fn)(const sp_credential *c, void *arg), void *arg, char *err,
                        size_t errlen);

/* ---- sessions index ---- */
typedef struct sp_session_row {
    char id[40];
    char identity[SP_NAME_MAX];
    char kind[16]; /* "postgres" */
    char target[SP_NAME_MAX];
    char database[SP_NAME_MAX];
    char role[SP_NAME_MAX];
    char cred_id[SP_CRED_ID_LEN];
    int64_t binding_id;
    char client_addr[64];
    char recording_path[512];
    int64_t started_at;
    int64_t ended_at; /* 0 = live */
    char end_reason[64];
    int64_t chunk_count;
    int gateway_pid;
} sp_session_row;

int sp_store_session_start(sp_store *s, const sp_session_row *row, char *err, size_t errlen);
int sp_store_session_progress(sp_store *s, const char *id, int64_t chunk_count, char *err,
                              size_t errlen);
/* When the store refuses the update (locked, failing), the end is kept in memory and -1 is
 * returned; sp_store_retry_pending writes it once the store answers again. */
int sp_store_session_end(sp_store *s, const char *id, int64_t ended_at, const char *reason,
                         int64_t chunk_count, char *err, size_t errlen);
/* Writes the session ends kept by sp_store_session_end; -1 (the rest kept) if it still fails. */
int sp_store_retry_pending(sp_store *s, char *err, size_t errlen);
/* Can this process use the store now? The file at the opened path is still the one opened,
 * the write lock can be had within wait_ms (another process holding it longer blocks every
 * session start, end and kill), and a table reads. 0, or -1 with err saying why. */
int sp_store_probe(sp_store *s, int wait_ms, char *err, size_t errlen);
int sp_store_session_get(sp_store *s, const char *id, sp_session_row *out, char *err,
                         size_t errlen);
/* A session by full id, or by a start or an end of it (for people typing ids). Text matching
 * several sessions is an error (-1, err says so). */
int sp_store_session_find(sp_store *s, const char *id_or_prefix, sp_session_row *out, char *err,
                          size_t errlen);
/* Most recent first; live_only limits to ended_at = 0; limit 0 = all. Calls fn for each row. */
int sp_store_sessions_list(sp_store *s, bool live_only, size_t limit,
                           void (*fn)(const sp_session_row *row, void *arg), void *arg, char *err,
                           size_t errlen);
/* Ask a live session to end (sallyport kill); the owning gateway ends it within a second.
 * SP_STORE_NOT_FOUND if there is no such session; -1 if it has already ended. */
int sp_store_session_request_kill(sp_store *s, const char *id, const char *reason, const char *by,
                                  char *err, size_t errlen);
/* For the live sessions of this gateway process (gateway_pid), those that must end now and
 * why: kill requested ("killed: <reason>"), credential revoked ("credential-revoked"),
 * binding revoked or expired ("grant-revoked", "grant-expired"), identity disabled
 * ("identity-disabled"); checked in that order, the first that applies is the reason.
 * A credential past its TTL does not end a session (the TTL bounds starting sessions only).
 * Calls fn(session_id, reason) for each, after the store is unlocked. */
int sp_store_sessions_to_end(sp_store *s, int gateway_pid, int64_t now,
                             void (*fn)(const char *session_id, const char *reason, void *arg),
                             void *arg, char *err, size_t errlen);
/* Sessions left live by a gateway that is gone (crash): mark them ended with `reason`.
 * Calls fn for each so the caller can audit it. Call it once at gateway start, before
 * accepting: a live session is an orphan when its gateway_pid names no running process, or
 * names my_pid (an earlier process that had the same pid, as in a container where the
 * gateway is always pid 1). fn runs after the store is unlocked. */
int sp_store_sessions_close_orphans(sp_store *s, int my_pid, int64_t now, const char *reason,
                                    void (*fn)(const sp_session_row *row, void *arg), void *arg,
                                    char *err, size_t errlen);

#endif
