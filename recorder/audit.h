/* The audit trail: one JSON object per line, one process-wide writer.
 *
 * Files audit_dir/audit-HOST-YYYY-MM-DD.jsonl (UTC). Each line carries "prev": the SHA-256
 * (hex) of the previous line as written, across files and across processes (the CLI and the
 * gateway append to the same file under flock, reading the last line to chain). Events are
 * queued and written by one thread, so sp_audit_emit() never blocks a loop thread; each line
 * is fsync'd before the next is taken.
 *
 * Never put PHI (statement text, parameters, terminal data) or secrets (tokens, keys) into an
 * event: those belong in recordings only. */
#ifndef SP_RECORDER_AUDIT_H
#define SP_RECORDER_AUDIT_H

#include <jansson.h>
#include <stdbool.h>

/* OCSF-style classes used in "class_uid". */
enum sp_audit_class {
    SP_AUDIT_ACCOUNT_CHANGE = 3001,
    SP_AUDIT_AUTHENTICATION = 3002,
    SP_AUDIT_AUTHORIZE_SESSION = 3003,
    SP_AUDIT_USER_ACCESS = 3005,
    SP_AUDIT_SSH_ACTIVITY = 4007,
    SP_AUDIT_DATASTORE_ACTIVITY = 6005,
};

int sp_audit_open(const char *dir, char *err, size_t errlen);
/* Drains the queue, then stops the writer. */
void sp_audit_close(void);

/* A new event: {"time": <ms>, "time_dt": "...Z", "class_uid": c, "class_name", "category_uid",
 * "activity_name": activity, "status": "Success"|"Failure", "status_id": 1|2, "severity_id",
 * "actor": {"user": {"name": actor}}, "metadata": {"product": {...}, "version": "1.8.0"}}.
 * actor is who acted (identity, or "local-admin" for the CLI on the gateway host). */
json_t *sp_audit_new(enum sp_audit_class cls, const char *activity, bool success,
                     const char *actor);
/* Queue it (steals the reference). Never blocks on I/O. If the trail cannot be written the
 * error is logged once per failure and the line kept in the queue (bounded); see audit.c. */
void sp_audit_emit(json_t *event);

/* The user block in OCSF shape, {"name": n, "type": "human"|"service", "type_id": 1|4}. */
json_t *sp_audit_user(const char *name, const char *kind);

#endif
