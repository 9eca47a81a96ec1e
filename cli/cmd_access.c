/* sallyport grant | revoke | grants */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"

static void emit_access_change(enum sp_audit_activity activity, const char *code,
                               const sp_identity *id, const char *role, const char *reason,
                               json_t *extra)
{
    json_t *ev = cli_audit_event(activity, code, true);
    json_object_set_new(ev, "user", sp_audit_user(id->name, id->kind));
    json_object_set_new(ev, "privileges", json_pack("[s]", role));
    json_object_set_new(extra, "reason", json_string(reason));
    json_object_set_new(ev, "unmapped", extra);
    sp_audit_emit(ev);
}

/* The grant's lifetime: the role's max_ttl unless a shorter --ttl is asked for. */
static int grant_ttl(cli_ctx *ctx, cli_args *a, const sp_role *role, int64_t *ttl)
{
    bool given = false;
    int rc = cli_duration_opt(ctx, a, "ttl", ttl, &given);
    if (rc != CLI_OK)
        return rc;
    if (!given) {
        *ttl = role->max_ttl;
        return CLI_OK;
    }
    if (role->max_ttl > 0 && *ttl > role->max_ttl) {
        char asked[32], max[32];
        sp_format_duration(*ttl, asked, sizeof(asked));
        sp_format_duration(role->max_ttl, max, sizeof(max));
        fprintf(stderr, "sallyport: %s: note: --ttl %s is above role %s's max_ttl; granting %s\n",
                ctx->command, asked, role->name, max);
        *ttl = role->max_ttl;
    }
    return CLI_OK;
}

int cmd_grant(cli_ctx *ctx, cli_args *a)
{
    char err[512], ttl_text[32], expires_text[40];
    const char *reason;
    sp_identity id;
    int64_t ttl = 0, binding_id = 0;
    int rc = cli_need_args(ctx, a, 2, "IDENTITY and ROLE");
    if (rc == CLI_OK)
        rc = cli_reason_opt(ctx, a, true, &reason);
    if (rc != CLI_OK)
        return rc;
    const sp_role *role = sp_config_role(ctx->cfg, a->pos[1]);
    if (!role)
        return cli_fail(ctx, "no role %s in %s (roles are declared as [role NAME] sections)",
                        a->pos[1], ctx->cfg->path);
    rc = grant_ttl(ctx, a, role, &ttl);
    if (rc != CLI_OK)
        return rc;
    if (sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    int64_t now = sp_now_us();
    int64_t expires_at = ttl > 0 ? now + ttl : 0;
    if (sp_store_binding_add(ctx->store, id.name, role->name, expires_at, reason, CLI_ACTOR,
                             &binding_id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    sp_format_duration(ttl, ttl_text, sizeof(ttl_text));
    emit_access_change(SP_AUDIT_ACCESS_ASSIGN_PRIVILEGES, "grant", &id, role->name, reason,
                       json_pack("{s:I, s:s, s:o}", "binding_id", (json_int_t)binding_id, "ttl",
                                 ttl > 0 ? ttl_text : "none", "expires_at",
                                 cli_time_json(expires_at)));
    cli_time_short(expires_at, expires_text, sizeof(expires_text));
    if (expires_at)
        printf("granted %s to %s: binding %lld, expires %s (%s)\n", role->name, id.name,
               (long long)binding_id, expires_text, ttl_text);
    else
        printf("granted %s to %s: binding %lld, until revoked\n", role->name, id.name,
               (long long)binding_id);
    if (id.disabled)
        fprintf(stderr, "sallyport: %s: note: %s is disabled; the grant applies once enabled\n",
                ctx->command, id.name);
    return CLI_OK;
}

int cmd_revoke(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    const char *reason;
    sp_identity id;
    int rc = cli_need_args(ctx, a, 2, "IDENTITY and ROLE");
    if (rc == CLI_OK)
        rc = cli_reason_opt(ctx, a, true, &reason);
    if (rc != CLI_OK)
        return rc;
    if (sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    rc = sp_store_binding_revoke(ctx->store, id.name, a->pos[1], sp_now_us(), err, sizeof(err));
    if (rc != 0)
        return cli_fail(ctx, "%s", err);
    emit_access_change(SP_AUDIT_ACCESS_REVOKE_PRIVILEGES, "revoke", &id, a->pos[1], reason,
                       json_object());
    printf("revoked %s from %s; sessions it allowed end within a few seconds\n", a->pos[1],
           id.name);
    return CLI_OK;
}

typedef struct grants_ctx {
    const sp_config *cfg;
    json_t *array; /* NULL for a table */
} grants_ctx;

static void print_grant_row(const sp_binding *b, void *arg)
{
    grants_ctx *g = arg;
    bool role_known = sp_config_role(g->cfg, b->role) != NULL;
    if (g->array) {
        json_array_append_new(
            g->array, json_pack("{s:I, s:s, s:s, s:b, s:o, s:o, s:s, s:s}", "id", (json_int_t)b->id,
                                "identity", b->identity, "role", b->role, "role_in_config",
                                role_known, "granted_at", cli_time_json(b->created_at),
                                "expires_at", cli_time_json(b->expires_at), "granted_by",
                                b->granted_by, "reason", b->reason));
        return;
    }
    char granted[32], expires[32];
    cli_time_short(b->created_at, granted, sizeof(granted));
    if (b->expires_at)
        cli_time_short(b->expires_at, expires, sizeof(expires));
    else
        snprintf(expires, sizeof(expires), "never");
    printf("%-6lld %-24s %-16s %-20s %-20s %-12s %s%s\n", (long long)b->id, b->identity, b->role,
           granted, expires, b->granted_by, b->reason,
           role_known ? "" : " [role not in configuration: grants nothing]");
}

int cmd_grants(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    if (a->npos > 1)
        return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[1]);
    grants_ctx g = {.cfg = ctx->cfg, .array = cli_flag(a, "json") ? json_array() : NULL};
    if (!g.array)
        printf("%-6s %-24s %-16s %-20s %-20s %-12s %s\n", "ID", "IDENTITY", "ROLE", "GRANTED",
               "EXPIRES", "BY", "REASON");
    if (sp_store_bindings_list_live(ctx->store, a->npos ? a->pos[0] : NULL, sp_now_us(),
                                    print_grant_row, &g, err, sizeof(err)) < 0) {
        json_decref(g.array);
        return cli_fail(ctx, "%s", err);
    }
    return g.array ? cli_print_json(ctx, g.array) : CLI_OK;
}
