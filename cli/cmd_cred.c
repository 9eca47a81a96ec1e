/* sallyport cred issue | revoke | list */
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "auth/token.h"
#include "cli/cli.h"
#include "common/util.h"

/* The credential's lifetime: default_cred_ttl unless --ttl, never above the longest max_ttl
 * of the roles the identity is bound to (the cap is said on stderr, not refused). */
static int cred_ttl(cli_ctx *ctx, cli_args *a, const char *identity, int64_t now, int64_t *ttl)
{
    char err[512];
    int64_t max = 0;
    bool given = false;
    *ttl = ctx->cfg->default_cred_ttl;
    int rc = cli_duration_opt(ctx, a, "ttl", ttl, &given);
    if (rc != CLI_OK)
        return rc;
    if (sp_token_max_ttl(ctx->store, ctx->cfg, identity, now, &max, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    if (max <= 0)
        return cli_fail(ctx,
                        "%s holds no live grant of a configured role, so a credential would "
                        "open nothing; grant one first (sallyport grant %s ROLE --reason TEXT)",
                        identity, identity);
    if (*ttl > max) {
        char asked[32], capped[32];
        sp_format_duration(*ttl, asked, sizeof(asked));
        sp_format_duration(max, capped, sizeof(capped));
        fprintf(stderr,
                "sallyport: %s: note: %s is above the longest max_ttl of %s's roles; "
                "issuing for %s\n",
                ctx->command, asked, identity, capped);
        *ttl = max;
    }
    return CLI_OK;
}

static void emit_cred_event(enum sp_audit_activity activity, const char *code, const char *identity,
                            const char *kind, const char *cred_id, int64_t expires_at,
                            const char *reason)
{
    json_t *ev = cli_audit_event(activity, code, true);
    json_object_set_new(ev, "user", sp_audit_user(identity, kind));
    json_t *extra = json_pack("{s:s, s:s}", "credential_id", cred_id, "credential_kind", "token");
    if (expires_at)
        json_object_set_new(extra, "expires_at", cli_time_json(expires_at));
    if (reason && *reason)
        json_object_set_new(extra, "reason", json_string(reason));
    json_object_set_new(ev, "unmapped", extra);
    sp_audit_emit(ev);
}

int cmd_cred_issue(cli_ctx *ctx, cli_args *a)
{
    char err[512], token[SP_TOKEN_MAX], cred_id[SP_CRED_ID_LEN], expires[40];
    sp_identity id;
    int64_t ttl = 0, now = sp_now_us();
    int rc = cli_need_args(ctx, a, 1, "IDENTITY");
    if (rc != CLI_OK)
        return rc;
    if (sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (id.disabled)
        return cli_fail(ctx, "%s is disabled; enable it first (sallyport identity enable %s)",
                        id.name, id.name);
    rc = cred_ttl(ctx, a, id.name, now, &ttl);
    if (rc != CLI_OK)
        return rc;
    if (sp_token_issue(ctx->store, id.name, ttl, now, token, cred_id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    emit_cred_event(SP_AUDIT_ACCOUNT_ISSUE_CREDENTIAL, "cred-issue", id.name, id.kind, cred_id,
                    now + ttl, NULL);
    /* Line 1 of stdout is the token alone, so `TOKEN=$(sallyport cred issue ...)` works. */
    printf("%s\n", token);
    fflush(stdout);
    OPENSSL_cleanse(token, sizeof(token));
    cli_time_short(now + ttl, expires, sizeof(expires));
    fprintf(stderr, "credential %s for %s, expires %s; shown once, store it safely\n", cred_id,
            id.name, expires);
    return CLI_OK;
}

int cmd_cred_revoke(cli_ctx *ctx, cli_args *a)
{
    char err[512], cred_id[SP_CRED_ID_LEN], when[40];
    const char *reason;
    sp_credential c;
    sp_identity id;
    int rc = cli_need_args(ctx, a, 1, "credential ID");
    if (rc == CLI_OK)
        rc = cli_reason_opt(ctx, a, false, &reason);
    if (rc != CLI_OK)
        return rc;
    /* A whole token pasted by mistake still names its credential; never echo it back. */
    if (strncmp(a->pos[0], SP_TOKEN_PREFIX, strlen(SP_TOKEN_PREFIX)) == 0) {
        if (sp_token_parse_id(a->pos[0], cred_id) < 0)
            return cli_usage(ctx, "the argument looks like a token but is not one; give the "
                                  "credential id (see sallyport cred list)");
    } else {
        snprintf(cred_id, sizeof(cred_id), "%.*s", SP_CRED_ID_LEN - 1, a->pos[0]);
    }
    if (sp_store_cred_get(ctx->store, cred_id, &c, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (c.revoked_at) {
        cli_time_short(c.revoked_at, when, sizeof(when));
        printf("credential %s was already revoked at %s\n", c.id, when);
        return CLI_OK;
    }
    if (sp_store_cred_revoke(ctx->store, c.id, sp_now_us(), err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    const char *kind = sp_store_identity_get(ctx->store, c.identity, &id, err, sizeof(err)) == 0
                           ? id.kind
                           : "human";
    emit_cred_event(SP_AUDIT_ACCOUNT_REVOKE_CREDENTIAL, "cred-revoke", c.identity, kind, c.id, 0,
                    reason);
    printf("credential %s of %s revoked; sessions it started end within a few seconds\n", c.id,
           c.identity);
    return CLI_OK;
}

typedef struct creds_ctx {
    json_t *array;
    int64_t now;
} creds_ctx;

static const char *cred_status(const sp_credential *c, int64_t now)
{
    if (c->revoked_at)
        return "revoked";
    if (c->expires_at && c->expires_at <= now)
        return "expired";
    return "live";
}

static void print_cred_row(const sp_credential *c, void *arg)
{
    creds_ctx *l = arg;
    if (l->array) {
        json_array_append_new(l->array, json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:o}", "id",
                                                  c->id, "identity", c->identity, "kind", c->kind,
                                                  "status", cred_status(c, l->now), "created_at",
                                                  cli_time_json(c->created_at), "expires_at",
                                                  cli_time_json(c->expires_at), "revoked_at",
                                                  cli_time_json(c->revoked_at)));
        return;
    }
    char created[32], expires[32];
    cli_time_short(c->created_at, created, sizeof(created));
    cli_time_short(c->expires_at, expires, sizeof(expires));
    printf("%-14s %-24s %-6s %-8s %-20s %s\n", c->id, c->identity, c->kind, cred_status(c, l->now),
           created, expires);
}

int cmd_cred_list(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    if (a->npos > 1)
        return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[1]);
    creds_ctx l = {.array = cli_flag(a, "json") ? json_array() : NULL, .now = sp_now_us()};
    if (!l.array)
        printf("%-14s %-24s %-6s %-8s %-20s %s\n", "ID", "IDENTITY", "KIND", "STATUS", "CREATED",
               "EXPIRES");
    if (sp_store_creds_list(ctx->store, a->npos ? a->pos[0] : NULL, print_cred_row, &l, err,
                            sizeof(err)) < 0) {
        json_decref(l.array);
        return cli_fail(ctx, "%s", err);
    }
    return l.array ? cli_print_json(ctx, l.array) : CLI_OK;
}
