/* sallyport identity add | list | show | disable | enable */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "common/util.h"

static const char *status_text(const sp_identity *id)
{
    return id->disabled ? "disabled" : "enabled";
}

static json_t *identity_json(const sp_identity *id)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:b, s:o}", "name", id->name, "kind", id->kind, "owner",
                     id->owner, "purpose", id->purpose, "disabled", id->disabled, "created_at",
                     cli_time_json(id->created_at));
}

static void emit_account_change(enum sp_audit_activity activity, const char *code,
                                const sp_identity *id, const char *reason)
{
    json_t *ev = cli_audit_event(activity, code, true);
    json_object_set_new(ev, "user", sp_audit_user(id->name, id->kind));
    json_t *extra = json_pack("{s:s, s:s}", "owner", id->owner, "purpose", id->purpose);
    if (reason && *reason)
        json_object_set_new(extra, "reason", json_string(reason));
    json_object_set_new(ev, "unmapped", extra);
    sp_audit_emit(ev);
}

int cmd_identity_add(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    int rc = cli_need_args(ctx, a, 1, "NAME");
    if (rc != CLI_OK)
        return rc;
    const char *name = a->pos[0];
    const char *kind = cli_opt_value(a, "kind");
    const char *owner = cli_opt_value(a, "owner");
    const char *purpose = cli_opt_value(a, "purpose");
    if (!kind || !owner || !purpose)
        return cli_usage(ctx, "--kind, --owner and --purpose are all required");
    if (strcmp(kind, "human") != 0 && strcmp(kind, "service") != 0)
        return cli_usage(ctx, "--kind must be human or service, not \"%s\"", kind);
    if (!sp_name_valid(name))
        return cli_usage(ctx,
                         "\"%s\" is not a valid identity name: use 1 to %d of A-Z a-z 0-9 _ . @ -",
                         name, SP_NAME_MAX - 1);
    if (sp_store_identity_add(ctx->store, name, kind, owner, purpose, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    sp_identity id;
    if (sp_store_identity_get(ctx->store, name, &id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    emit_account_change(SP_AUDIT_ACCOUNT_CREATE, "identity-add", &id, NULL);
    printf("identity %s added (%s, owner %s)\n", id.name, id.kind, id.owner);
    return CLI_OK;
}

typedef struct list_ctx {
    json_t *array; /* NULL for a table */
    size_t count;
} list_ctx;

static void print_identity_row(const sp_identity *id, void *arg)
{
    list_ctx *l = arg;
    l->count++;
    if (l->array) {
        json_array_append_new(l->array, identity_json(id));
        return;
    }
    char created[32];
    cli_time_short(id->created_at, created, sizeof(created));
    printf("%-24s %-8s %-9s %-20s %-20s %s\n", id->name, id->kind, status_text(id), id->owner,
           created, id->purpose);
}

int cmd_identity_list(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    list_ctx l = {.array = cli_flag(a, "json") ? json_array() : NULL};
    if (!l.array)
        printf("%-24s %-8s %-9s %-20s %-20s %s\n", "NAME", "KIND", "STATUS", "OWNER", "CREATED",
               "PURPOSE");
    if (sp_store_identities_list(ctx->store, print_identity_row, &l, err, sizeof(err)) < 0) {
        json_decref(l.array);
        return cli_fail(ctx, "%s", err);
    }
    return l.array ? cli_print_json(ctx, l.array) : CLI_OK;
}

typedef struct show_ctx {
    json_t *grants;
    json_t *creds;
    int64_t now;
} show_ctx;

static void collect_grant(const sp_binding *b, void *arg)
{
    show_ctx *s = arg;
    json_array_append_new(s->grants,
                          json_pack("{s:I, s:s, s:o, s:o, s:s, s:s}", "id", (json_int_t)b->id,
                                    "role", b->role, "granted_at", cli_time_json(b->created_at),
                                    "expires_at", cli_time_json(b->expires_at), "granted_by",
                                    b->granted_by, "reason", b->reason));
}

static void collect_live_cred(const sp_credential *c, void *arg)
{
    show_ctx *s = arg;
    if (c->revoked_at || (c->expires_at && c->expires_at <= s->now))
        return;
    json_array_append_new(s->creds, json_pack("{s:s, s:s, s:o}", "id", c->id, "kind", c->kind,
                                              "expires_at", cli_time_json(c->expires_at)));
}

/* "2026-12-03T14:17:15.123456Z" from the JSON form -> "2026-12-03T14:17:15Z"; null -> never. */
static void short_time_of(json_t *v, char *out, size_t outlen)
{
    if (!json_is_string(v)) {
        snprintf(out, outlen, "never");
        return;
    }
    const char *text = json_string_value(v);
    const char *dot = strchr(text, '.');
    snprintf(out, outlen, "%.*sZ", dot ? (int)(dot - text) : (int)strlen(text) - 1, text);
}

static void print_identity_details(const sp_identity *id, const show_ctx *s)
{
    char created[32], t1[32], t2[32];
    size_t i;
    json_t *v;
    cli_time_short(id->created_at, created, sizeof(created));
    printf("name:     %s\nkind:     %s\nstatus:   %s\nowner:    %s\npurpose:  %s\n"
           "created:  %s\n",
           id->name, id->kind, status_text(id), id->owner, id->purpose, created);
    printf("grants:   %s\n", json_array_size(s->grants) ? "" : "none");
    json_array_foreach(s->grants, i, v)
    {
        short_time_of(json_object_get(v, "granted_at"), t1, sizeof(t1));
        short_time_of(json_object_get(v, "expires_at"), t2, sizeof(t2));
        printf("  #%lld %s, granted %s, expires %s, by %s: %s\n",
               (long long)json_integer_value(json_object_get(v, "id")),
               json_string_value(json_object_get(v, "role")), t1, t2,
               json_string_value(json_object_get(v, "granted_by")),
               json_string_value(json_object_get(v, "reason")));
    }
    printf("live credentials: %s\n", json_array_size(s->creds) ? "" : "none");
    json_array_foreach(s->creds, i, v)
    {
        short_time_of(json_object_get(v, "expires_at"), t2, sizeof(t2));
        printf("  %s (%s), expires %s\n", json_string_value(json_object_get(v, "id")),
               json_string_value(json_object_get(v, "kind")), t2);
    }
}

int cmd_identity_show(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    sp_identity id;
    int rc = cli_need_args(ctx, a, 1, "NAME");
    if (rc != CLI_OK)
        return rc;
    rc = sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err));
    if (rc != 0)
        return cli_fail(ctx, "%s", err);
    show_ctx s = {.grants = json_array(), .creds = json_array(), .now = sp_now_us()};
    if (sp_store_bindings_list_live(ctx->store, id.name, s.now, collect_grant, &s, err,
                                    sizeof(err)) < 0 ||
        sp_store_creds_list(ctx->store, id.name, collect_live_cred, &s, err, sizeof(err)) < 0) {
        json_decref(s.grants);
        json_decref(s.creds);
        return cli_fail(ctx, "%s", err);
    }
    if (cli_flag(a, "json")) {
        json_t *doc = identity_json(&id);
        json_object_set_new(doc, "grants", s.grants);
        json_object_set_new(doc, "live_credentials", s.creds);
        return cli_print_json(ctx, doc);
    }
    print_identity_details(&id, &s);
    json_decref(s.grants);
    json_decref(s.creds);
    return CLI_OK;
}

static int set_disabled(cli_ctx *ctx, cli_args *a, bool disabled)
{
    char err[512];
    const char *reason;
    sp_identity id;
    int rc = cli_need_args(ctx, a, 1, "NAME");
    if (rc == CLI_OK)
        rc = cli_reason_opt(ctx, a, disabled, &reason);
    if (rc != CLI_OK)
        return rc;
    rc = sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err));
    if (rc != 0)
        return cli_fail(ctx, "%s", err);
    if (id.disabled == disabled) {
        printf("identity %s is already %s\n", id.name, status_text(&id));
        return CLI_OK;
    }
    if (sp_store_identity_set_disabled(ctx->store, id.name, disabled, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    id.disabled = disabled;
    emit_account_change(disabled ? SP_AUDIT_ACCOUNT_DISABLE : SP_AUDIT_ACCOUNT_ENABLE,
                        disabled ? "identity-disable" : "identity-enable", &id, reason);
    if (disabled)
        printf("identity %s disabled; its live sessions end within a few seconds\n", id.name);
    else
        printf("identity %s enabled\n", id.name);
    return CLI_OK;
}

int cmd_identity_disable(cli_ctx *ctx, cli_args *a)
{
    return set_disabled(ctx, a, true);
}

int cmd_identity_enable(cli_ctx *ctx, cli_args *a)
{
    return set_disabled(ctx, a, false);
}
