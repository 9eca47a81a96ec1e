/* sallyport sessions | kill | replay | export */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* more (may be NULL, stolen): fields added to "unmapped". */
static void emit_session_event(enum sp_audit_activity activity, const char *code, bool success,
                               const sp_session_row *r, const char *reason, json_t *more)
{
    json_t *ev = cli_audit_event(activity, code, success);
    json_object_set_new(ev, "user", sp_audit_user(r->identity, NULL));
    json_object_set_new(ev, "session", json_pack("{s:s}", "uid", r->id));
    json_t *extra = json_pack("{s:s, s:s}", "target", r->target, "database", r->database);
    if (reason && *reason)
        json_object_set_new(extra, "reason", json_string(reason));
    if (more)
        json_object_update(extra, more);
    json_decref(more);
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
    emit_session_event(SP_AUDIT_AUTH_LOGOFF, "kill-session", true, &r, reason, NULL);
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

/* The session's recording: its path and the kind in its header ("" when unreadable; the
 * reader then says why). Loads the recording keys to read it. */
static int find_recording(cli_ctx *ctx, cli_args *a, sp_session_row *r, char *kind, size_t kindlen)
{
    char err[512];
    int rc = cli_need_args(ctx, a, 1, "SESSION");
    if (rc != CLI_OK)
        return rc;
    if (sp_rec_keys_init_readonly(ctx->cfg, NULL, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    if (sp_store_session_find(ctx->store, a->pos[0], r, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (!r->recording_path[0])
        return cli_fail(ctx, "session %s has no recording", r->id);
    if (sp_replay_recording_kind(r->recording_path, kind, kindlen, err, sizeof(err)) != 0)
        kind[0] = '\0';
    return CLI_OK;
}

static int positive_number_opt(const cli_ctx *ctx, const cli_args *a, const char *name, double max,
                               double *value)
{
    const char *v = cli_opt_value(a, name);
    if (!v)
        return CLI_OK;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d > 0) || d > max)
        return cli_usage(ctx, "--%s \"%s\" is not a number above 0 and at most %g", name, v, max);
    *value = d;
    return CLI_OK;
}

static int terminal_opts(const cli_ctx *ctx, const cli_args *a, sp_term_opts *opts)
{
    *opts = (sp_term_opts){.speed = 1.0, .no_wait = cli_flag(a, "no-wait")};
    int rc = positive_number_opt(ctx, a, "speed", 1000, &opts->speed);
    if (rc == CLI_OK)
        rc = positive_number_opt(ctx, a, "idle-limit", 86400, &opts->idle_limit_s);
    return rc;
}

int cmd_replay(cli_ctx *ctx, cli_args *a)
{
    sp_session_row r;
    char kind[16];
    sp_term_opts opts;
    int64_t from_us = 0;
    const char *from = cli_opt_value(a, "from");
    if (from && parse_offset(from, &from_us) < 0)
        return cli_usage(ctx, "--from \"%s\" is not an offset like 00:42:00 or 42m", from);
    int rc = find_recording(ctx, a, &r, kind, sizeof(kind));
    if (rc == CLI_OK)
        rc = terminal_opts(ctx, a, &opts);
    if (rc != CLI_OK)
        return rc;
    bool ssh = strcmp(kind, "ssh") == 0;
    bool terminal_opt_given = cli_flag(a, "speed") || cli_flag(a, "idle-limit") || opts.no_wait;
    if (!ssh && terminal_opt_given)
        return cli_usage(ctx,
                         "--speed, --idle-limit and --no-wait play SSH sessions; session %s is "
                         "a PostgreSQL session",
                         r.id);
    if (ssh && from)
        return cli_usage(ctx,
                         "--from seeks in PostgreSQL timelines; session %s is an SSH "
                         "session",
                         r.id);
    /* Recordings hold PHI: the viewing is audited before anything is shown. */
    emit_session_event(SP_AUDIT_DATASTORE_READ, "view-recording", true, &r, NULL, NULL);
    fflush(stdout);
    if (ssh && cli_flag(a, "json"))
        rc = sp_export(r.recording_path, SP_EXPORT_JSON, stdout);
    else if (ssh)
        rc = sp_replay_terminal(r.recording_path, stdout, stderr, &opts);
    else
        rc = sp_replay_timeline_from(r.recording_path, stdout, cli_flag(a, "json"), from_us);
    if (rc != 0)
        return cli_fail(ctx, "cannot replay session %s from %s (see above)", r.id,
                        r.recording_path);
    return CLI_OK;
}

/* The export file holds what the recording holds: owner-only, and never through a link. */
static FILE *open_export_file(const cli_ctx *ctx, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    FILE *fp = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!fp) {
        cli_fail(ctx, "cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    return fp;
}

int cmd_export(cli_ctx *ctx, cli_args *a)
{
    sp_session_row r;
    char kind[16];
    int rc = find_recording(ctx, a, &r, kind, sizeof(kind));
    if (rc != CLI_OK)
        return rc;
    const char *format = cli_opt_value(a, "format");
    enum sp_export_format fmt;
    if (format && strcmp(format, "asciicast") == 0)
        fmt = SP_EXPORT_ASCIICAST;
    else if (format && strcmp(format, "json") == 0)
        fmt = SP_EXPORT_JSON;
    else
        return cli_usage(ctx, "--format asciicast or --format json is required");
    if (fmt == SP_EXPORT_ASCIICAST && kind[0] && strcmp(kind, "ssh") != 0)
        return cli_fail(ctx,
                        "session %s is a %s session; asciicast holds terminal sessions (ssh): "
                        "use --format json",
                        r.id, kind);
    const char *output = cli_opt_value(a, "output");
    if (output && !*output)
        return cli_usage(ctx, "-o needs a file name");
    emit_session_event(
        SP_AUDIT_DATASTORE_EXPORT, "export-recording", true, &r, NULL,
        json_pack("{s:s, s:s}", "format", format, "output", output ? output : "stdout"));
    FILE *out = output ? open_export_file(ctx, output) : stdout;
    if (!out)
        return CLI_FAIL;
    rc = sp_export(r.recording_path, fmt, out);
    if (output && fclose(out) != 0 && rc == 0) {
        cli_fail(ctx, "cannot write %s: %s", output, strerror(errno));
        return CLI_FAIL;
    }
    if (rc != 0)
        return cli_fail(ctx, "cannot export session %s from %s (see above)", r.id,
                        r.recording_path);
    if (output)
        fprintf(stderr, "session %s written to %s (%s)\n", r.id, output, format);
    return CLI_OK;
}
