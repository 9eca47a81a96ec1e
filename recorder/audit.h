/* The audit trail: one JSON object per line, one process-wide writer.
 *
 * Files audit_dir/audit-HOST-YYYY-MM-DD.jsonl (UTC). Each line carries "prev": the SHA-256
 * (hex) of the previous line as written, across files and across processes (the CLI and the
 * gateway append to the same file under flock, reading the last line to chain), and "seq": its
 * line number in its file (1 = first), so a deleted or reordered line is named, not guessed.
 * Events are queued and written by one thread, so sp_audit_emit() never blocks a loop thread;
 * each line is fsync'd before the next is taken, or, in batch mode, within the batch interval.
 *
 * Checkpoints (a gateway, not the CLI): every checkpoint interval and at close, a line holding
 * the chain head (hash of the line before it), the number of lines before it in its file, and
 * an Ed25519 signature over both by the gateway's signing key; the line also goes to syslog
 * (LOG_AUTHPRIV) so the chain head leaves the host. recorder/audit_verify.h checks all this.
 *
 * Events are OCSF 1.8.0: a caller names one (class, activity) pair of the table below and a
 * sallyport event code ("logon", "session-end"), kept in metadata.event_code.
 * Never put PHI (statement text, parameters, terminal data) or secrets (tokens, keys) into an
 * event: those belong in recordings only. sp_audit_emit() strips fields that could carry them
 * (see SP_AUDIT_FORBIDDEN_FIELDS in audit.c) and says so in the line. */
#ifndef SP_RECORDER_AUDIT_H
#define SP_RECORDER_AUDIT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* OCSF classes used in "class_uid". */
enum sp_audit_class {
    SP_AUDIT_BASE_EVENT = 0,
    SP_AUDIT_ACCOUNT_CHANGE = 3001,
    SP_AUDIT_AUTHENTICATION = 3002,
    SP_AUDIT_AUTHORIZE_SESSION = 3003,
    SP_AUDIT_USER_ACCESS = 3005,
    SP_AUDIT_SSH_ACTIVITY = 4007,
    SP_AUDIT_APPLICATION_LIFECYCLE = 6002,
    SP_AUDIT_DATASTORE_ACTIVITY = 6005,
};

/* One OCSF (class, activity_id) pair each; the comment gives class / id / activity_name.
 * An id of 99 is OCSF's "Other": activity_name then names sallyport's own activity. */
enum sp_audit_activity {
    SP_AUDIT_ACCOUNT_CREATE,            /* 3001 / 1 Create */
    SP_AUDIT_ACCOUNT_ENABLE,            /* 3001 / 2 Enable */
    SP_AUDIT_ACCOUNT_PASSWORD_CHANGE,   /* 3001 / 3 Password Change */
    SP_AUDIT_ACCOUNT_DISABLE,           /* 3001 / 5 Disable */
    SP_AUDIT_ACCOUNT_DELETE,            /* 3001 / 6 Delete */
    SP_AUDIT_ACCOUNT_ISSUE_CREDENTIAL,  /* 3001 / 99 Issue Credential */
    SP_AUDIT_ACCOUNT_REVOKE_CREDENTIAL, /* 3001 / 99 Revoke Credential */
    SP_AUDIT_AUTH_LOGON,                /* 3002 / 1 Logon */
    SP_AUDIT_AUTH_LOGOFF,               /* 3002 / 2 Logoff */
    SP_AUDIT_SESSION_ASSIGN_PRIVILEGES, /* 3003 / 1 Assign Privileges */
    SP_AUDIT_SESSION_ASSIGN_GROUPS,     /* 3003 / 2 Assign Groups */
    SP_AUDIT_ACCESS_ASSIGN_PRIVILEGES,  /* 3005 / 1 Assign Privileges */
    SP_AUDIT_ACCESS_REVOKE_PRIVILEGES,  /* 3005 / 2 Revoke Privileges */
    SP_AUDIT_SSH_OPEN,                  /* 4007 / 1 Open */
    SP_AUDIT_SSH_CLOSE,                 /* 4007 / 2 Close */
    SP_AUDIT_SSH_RESET,                 /* 4007 / 3 Reset */
    SP_AUDIT_SSH_FAIL,                  /* 4007 / 4 Fail */
    SP_AUDIT_SSH_REFUSE,                /* 4007 / 5 Refuse */
    SP_AUDIT_SSH_RECORDING_GAP,         /* 4007 / 99 Recording Gap */
    SP_AUDIT_APP_START,                 /* 6002 / 3 Start */
    SP_AUDIT_APP_STOP,                  /* 6002 / 4 Stop */
    SP_AUDIT_APP_RELOAD,                /* 6002 / 99 Reload Configuration */
    SP_AUDIT_APP_CREATE_KEY,            /* 6002 / 99 Create Key (CA and recording keys) */
    SP_AUDIT_APP_RECORDING_SEAL,        /* 6002 / 99 Seal Recording (after a crash) */
    SP_AUDIT_APP_STORE_OUTAGE,          /* 6002 / 99 Store Outage (began, grace exceeded, ended) */
    SP_AUDIT_DATASTORE_READ,            /* 6005 / 1 Read */
    SP_AUDIT_DATASTORE_CONNECT,         /* 6005 / 3 Connect */
    SP_AUDIT_DATASTORE_RECORDING_GAP,   /* 6005 / 99 Recording Gap */
    SP_AUDIT_DATASTORE_EXPORT,          /* 6005 / 99 Export (a recording written out) */
    SP_AUDIT_CHECKPOINT,                /* 0 / 99 Checkpoint (written by the writer only) */
    SP_AUDIT_N_ACTIVITIES
};

typedef struct sp_audit_activity_info {
    enum sp_audit_class class_uid;
    int activity_id;
    const char *activity_name;
} sp_audit_activity_info;

/* The table row of an activity; NULL for a value outside the enum. */
const sp_audit_activity_info *sp_audit_activity_lookup(enum sp_audit_activity activity);

typedef struct sp_audit_options {
    bool fsync_batch;               /* false: fsync every line before the next one */
    int64_t batch_us;               /* batch mode: a line is fsync'd within this long */
    int64_t checkpoint_interval_us; /* 0: no checkpoints (the CLI) */
    const char *signing_key_file;   /* Ed25519 PEM private key, owner-only; NULL: unsigned */
    bool checkpoints_to_syslog;     /* also send each checkpoint line to syslog */
} sp_audit_options;

/* opt NULL: fsync every line, no checkpoints. With checkpoints, a checkpoint is written at
 * close too. Fails (and says why) if the directory or the signing key is unusable. */
int sp_audit_open(const char *dir, const sp_audit_options *opt, char *err, size_t errlen);
/* Drains the queue, writes the closing checkpoint (when checkpoints are on), stops. */
void sp_audit_close(void);

/* A new event: time (ms), time_dt, class_uid/class_name, category_uid/category_name,
 * activity_id/activity_name, type_uid (class_uid * 100 + activity_id)/type_name, status,
 * status_id (1 success, 2 failure), severity_id/severity, actor.user.name = actor,
 * metadata {product, version "1.8.0", event_code = code}. code is sallyport's name for the
 * event (lower-case letters, digits and '-'; anything else is replaced by "invalid-code").
 * actor is who acted (identity, or "local-admin" for the CLI on the gateway host). */
json_t *sp_audit_new(enum sp_audit_activity activity, const char *code, bool success,
                     const char *actor);
/* Queue it (steals the reference). Never blocks on I/O. If the trail cannot be written the
 * error is logged once per failure and the line kept in the queue (bounded); see audit.c. */
void sp_audit_emit(json_t *event);
/* Ask the writer for a checkpoint after the events queued so far (tests, operators). */
void sp_audit_request_checkpoint(void);

/* Sets unmapped.key = value (steals value): fields OCSF has no attribute for. */
void sp_audit_set_unmapped(json_t *event, const char *key, json_t *value);

/* The user block in OCSF shape: {"name": n, "type": "User"|"Service"|"Unknown",
 * "type_id": 1|4|0}; kind is the identity's kind ("human", "service"), or NULL/other. */
json_t *sp_audit_user(const char *name, const char *kind);

/* Removes from event every field that could carry PHI (statement or query text, parameters,
 * terminal data), at any depth; returns how many were removed. sp_audit_emit calls it. */
size_t sp_audit_strip_phi(json_t *event);

/* ---- checkpoints, shared by the writer and the verifier ---- */

#define SP_AUDIT_HASH_HEX 65 /* 64 hex digits + NUL */

/* The bytes a checkpoint signature covers. Returns the length, or -1 if out is too small. */
int sp_audit_checkpoint_message(const char *file, int64_t lines, const char *head, int64_t time_ms,
                                const char *reason, char *out, size_t outlen);

#endif
