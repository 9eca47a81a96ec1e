/* sallyport sessions | kill | replay */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"
#include "recorder/keys.h"
#include "replay/replay.h"

#define SESSIONS_DEFAULT_LIMIT 50

typedef struct sessions_ctx {
    json_t *array;
} sessions_ctx;

static json_t *session_json(const sp_session_row *r)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:o, s:s, s:I, s:i, s:s}", "id",
                     r->id, "identity", r->identity, "kind", r->kind, "target", r->target,
                     "database", r->database, "role", r->role, "credential_id", r->cred_id,
                     "client_addr", r->client_addr, "started_at", cli_time_json(r->started_at),
                     "ended_at", cli_time_json(r->ended_at), "end_reason", r->end_reason,
                     "chunk_count", (json_int_t)r->chunk_count, "gateway_pid", r->gateway_pid,
                     "recording_path", r->recording_path);
}

static void print_session_row(const sp_session_row *r, void *arg)
{
    sessions_ctx *l = arg;
    if (l->array) {
        json_array_append_new(l->array, session_json(r));
        return;
    }
    char where[2 * SP_NAME_MAX + 2], started[32], ended[32];
    snprintf(where, sizeof(where), "%s/%s", r->target, r->database);
    cli_time_short(r->started_at, started, sizeof(started));
    if (r->ended_at)
        cli_time_short(r->ended_at, ended, sizeof(ended));
    else
        snprintf(ended, sizeof(ended), "live");
    printf("%-36s %-20s %-24s %-20s %-20s %-20s %lld\n", r->id, r->identity, where, started, ended,
           r->end_reason[0] ? r->end_reason : "-", (long long)r->chunk_count);
}

int cmd_sessions(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    size_t limit = SESSIONS_DEFAULT_LIMIT;
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    const char *limit_text = cli_opt_value(a, "limit");
    if (limit_text) {
        char *end;
        errno = 0;
        long long v = strtoll(limit_text, &end, 10);
        if (errno || *end || end == limit_text || v < 0)
            return cli_usage(ctx, "--limit \"%s\" is not a count (0 shows all)", limit_text);
        limit = (size_t)v;
    }
    sessions_ctx l = {.array = cli_flag(a, "json") ? json_array() : NULL};
    if (!l.array)
        printf("%-36s %-20s %-24s %-20s %-20s %-20s %s\n", "ID", "IDENTITY", "TARGET/DATABASE",
               "STARTED", "ENDED", "END REASON", "CHUNKS");
    if (sp_store_sessions_list(ctx->store, cli_flag(a, "live"), limit, print_session_row, &l, err,
                               sizeof(err)) < 0) {
        json_decref(l.array);
        return cli_fail(ctx, "%s", err);
    }
    return l.array ? cli_print_json(ctx, l.array) : CLI_OK;
}

static void emit_session_event(enum sp_audit_class cls, const char *activity, bool success,
                               const sp_session_row *r, const char *reason)
{
    json_t *ev = cli_audit_event(cls, activity, success);
    json_object_set_new(ev, "user", sp_audit_user(r->identity, NULL));
    json_object_set_new(ev, "session", json_pack("{s:s}", "uid", r->id));
    json_t *extra = json_pack("{s:s, s:s}", "target", r->target, "database", r->database);
    if (reason && *reason)
        json_object_set_new(extra, "reason", json_string(reason));
    json_object_set_new(ev, "unmapped", extra);
    sp_audit_emit(ev);
}

int cmd_kill(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    const char *reason;
    sp_session_row r;
    int rc = cli_need_args(ctx, a, 1, "SESSION");
    if (rc == CLI_OK)
        rc = cli_reason_opt(ctx, a, true, &reason);
    if (rc != CLI_OK)
        return rc;
    if (sp_store_session_find(ctx->store, a->pos[0], &r, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (r.ended_at)
        return cli_fail(ctx, "session %s is not live: it ended (%s)", r.id, r.end_reason);
    if (sp_store_session_request_kill(ctx->store, r.id, reason, CLI_ACTOR, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    emit_session_event(SP_AUDIT_AUTHORIZE_SESSION, "Kill Session", true, &r, reason);
    printf("session %s of %s asked to end; its gateway (pid %d) ends it within a second\n", r.id,
           r.identity, r.gateway_pid);
    return CLI_OK;
}

/* --from: "HH:MM:SS[.mmm]" as replay prints offsets, or a duration ("42m"). */
static int parse_offset(const char *s, int64_t *us)
{
    unsigned h, m;
    double sec;
    char tail;
    if (sscanf(s, "%u:%u:%lf%c", &h, &m, &sec, &tail) == 3 && m < 60 && sec >= 0 && sec < 60) {
        *us = ((int64_t)h * 3600 + m * 60) * 1000000 + (int64_t)(sec * 1e6);
        return 0;
    }
    return sp_parse_duration(s, us);
}

int cmd_replay(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    sp_session_row r;
    int64_t from_us = 0;
    int rc = cli_need_args(ctx, a, 1, "SESSION");
    if (rc != CLI_OK)
        return rc;
    const char *from = cli_opt_value(a, "from");
    if (from && parse_offset(from, &from_us) < 0)
        return cli_usage(ctx, "--from \"%s\" is not an offset like 00:42:00 or 42m", from);
    if (sp_rec_keys_init_readonly(ctx->cfg, NULL, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    if (sp_store_session_find(ctx->store, a->pos[0], &r, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (!r.recording_path[0])
        return cli_fail(ctx, "session %s has no recording", r.id);
    /* Recordings hold PHI: the viewing is audited before anything is shown. */
    emit_session_event(SP_AUDIT_DATASTORE_ACTIVITY, "View Recording", true, &r, NULL);
    fflush(stdout);
    if (sp_replay_timeline_from(r.recording_path, stdout, cli_flag(a, "json"), from_us) != 0)
        return cli_fail(ctx, "cannot replay session %s from %s (see above)", r.id,
                        r.recording_path);
    return CLI_OK;
}
