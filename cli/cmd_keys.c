/* sallyport keys init | rotate | show, and sallyport verify */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "recorder/keys.h"
#include "replay/replay.h"

static int need_key_paths(const cli_ctx *ctx)
{
    if (!ctx->cfg->master_key_file || !ctx->cfg->signing_key_file)
        return cli_fail(ctx, "%s: [sallyport] master_key_file and signing_key_file must be set",
                        ctx->cfg->path);
    return CLI_OK;
}

static void audit_keys(const char *code, const char *key_id)
{
    json_t *ev = cli_audit_event(SP_AUDIT_APP_CREATE_KEY, code, true);
    if (key_id)
        json_object_set_new(ev, "unmapped", json_pack("{s:s}", "key_id", key_id));
    sp_audit_emit(ev);
}

int cmd_keys_init(cli_ctx *ctx, cli_args *a)
{
    char err[1024];
    bool made_master, made_signing;
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc == CLI_OK)
        rc = need_key_paths(ctx);
    if (rc != CLI_OK)
        return rc;
    if (sp_keys_init_files(ctx->cfg->master_key_file, ctx->cfg->signing_key_file, &made_master,
                           &made_signing, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    printf("%s %s\n", made_master ? "created" : "kept", ctx->cfg->master_key_file);
    printf("%s %s\n", made_signing ? "created" : "kept", ctx->cfg->signing_key_file);
    if (made_master || made_signing)
        audit_keys("recording-keys-create", NULL);
    return CLI_OK;
}

int cmd_keys_rotate(cli_ctx *ctx, cli_args *a)
{
    char err[1024], id[SP_KEY_ID_MAX];
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc == CLI_OK)
        rc = need_key_paths(ctx);
    if (rc != CLI_OK)
        return rc;
    if (sp_keys_rotate(ctx->cfg->master_key_file, id, sizeof(id), err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    audit_keys("master-key-rotate", id);
    printf("master key %s is now current; restart the gateway to use it for new recordings\n", id);
    return CLI_OK;
}

typedef struct key_ids {
    json_t *array; /* --json */
} key_ids;

static void print_master_id(const char *id, bool current, void *arg)
{
    key_ids *k = arg;
    if (k->array)
        json_array_append_new(k->array, json_pack("{s:s, s:b}", "id", id, "current", current));
    else
        printf("master key %s%s\n", id, current ? " (current)" : "");
}

int cmd_keys_show(cli_ctx *ctx, cli_args *a)
{
    char err[1024], pem[1024], id[32];
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc == CLI_OK)
        rc = need_key_paths(ctx);
    if (rc != CLI_OK)
        return rc;
    if (sp_keys_public(ctx->cfg->signing_key_file, pem, sizeof(pem), id, sizeof(id), err,
                       sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    key_ids k = {.array = cli_flag(a, "json") ? json_array() : NULL};
    if (!k.array)
        printf("signing key %s (Ed25519); give this public key to auditors:\n%s", id, pem);
    if (sp_keys_list_master(ctx->cfg->master_key_file, print_master_id, &k, err, sizeof(err)) < 0) {
        json_decref(k.array);
        return cli_fail(ctx, "%s", err);
    }
    if (!k.array)
        return CLI_OK;
    return cli_print_json(ctx, json_pack("{s:s, s:s, s:o}", "signing_key_id", id,
                                         "signing_public_key", pem, "master_keys", k.array));
}

/* ---- verify ---- */

typedef struct verify_run {
    json_t *array; /* --json */
    int bad;       /* recordings not ok */
    int total;
} verify_run;

static void audit_verify(const sp_session_row *r, const char *status)
{
    /* Verify reads recordings, which hold PHI: every check is a viewing. */
    json_t *ev = cli_audit_event(SP_AUDIT_DATASTORE_READ, "verify-recording", true);
    json_object_set_new(ev, "user", sp_audit_user(r->identity, NULL));
    json_object_set_new(ev, "session", json_pack("{s:s}", "uid", r->id));
    json_object_set_new(ev, "unmapped",
                        json_pack("{s:s, s:s, s:s}", "target", r->target, "database", r->database,
                                  "result", status));
    sp_audit_emit(ev);
}

static void verify_one(const sp_session_row *r, void *arg)
{
    verify_run *v = arg;
    if (!r->recording_path[0])
        return; /* refused before recording started: nothing to verify */
    sp_verify_expect expect = {
        .chunk_count = r->chunk_count, .ended = r->ended_at != 0, .end_reason = r->end_reason};
    sp_verify_result res;
    sp_verify_recording(r->recording_path, &expect, &res);
    const char *status = sp_verify_status_name(res.status);
    audit_verify(r, status);
    v->total++;
    if (res.status != SP_VERIFY_SEALED_OK && res.status != SP_VERIFY_UNSEALED_INTACT)
        v->bad++;
    if (v->array) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:b, s:s}", "session", r->id, "path",
                              r->recording_path, "status", status, "chunks", (json_int_t)res.chunks,
                              "content_checked", res.content_checked, "detail", res.detail);
        json_object_set_new(o, "end_reason", json_string(res.end_reason));
        json_object_set_new(o, "bad_chunk",
                            res.has_bad_chunk ? json_integer((json_int_t)res.bad_chunk)
                                              : json_null());
        json_array_append_new(v->array, o);
        return;
    }
    char where[40] = "";
    if (res.has_bad_chunk)
        snprintf(where, sizeof(where), " at chunk %llu", (unsigned long long)res.bad_chunk);
    printf("%-36s %-15s%s: %s\n", r->id, status, where, res.detail);
}

static int load_verify_keys(cli_ctx *ctx, const cli_args *a)
{
    char err[1024];
    if (sp_rec_keys_init_readonly(ctx->cfg, cli_opt_value(a, "public-key"), err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    if (!sp_rec_keys_can_verify())
        return cli_fail(ctx,
                        "verify needs the gateway's public key: signing_key_file (%s) is "
                        "not there; give --public-key FILE (from `sallyport keys show`)",
                        ctx->cfg->signing_key_file ? ctx->cfg->signing_key_file : "not set");
    return CLI_OK;
}

int cmd_verify(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    bool all = cli_flag(a, "all");
    if (all == (a->npos > 0))
        return cli_usage(ctx, "give SESSION ids, or --all");
    int rc = load_verify_keys(ctx, a);
    if (rc != CLI_OK)
        return rc;
    verify_run v = {.array = cli_flag(a, "json") ? json_array() : NULL};
    if (all) {
        if (sp_store_sessions_list(ctx->store, false, 0, verify_one, &v, err, sizeof(err)) < 0) {
            json_decref(v.array);
            return cli_fail(ctx, "%s", err);
        }
    }
    for (int i = 0; i < a->npos; i++) {
        sp_session_row r;
        if (sp_store_session_find(ctx->store, a->pos[i], &r, err, sizeof(err)) != 0) {
            json_decref(v.array);
            return cli_fail(ctx, "%s", err);
        }
        if (!r.recording_path[0]) {
            json_decref(v.array);
            return cli_fail(ctx, "session %s has no recording", r.id);
        }
        verify_one(&r, &v);
    }
    if (v.array && cli_print_json(ctx, v.array) != CLI_OK)
        return CLI_FAIL;
    if (v.bad) {
        fprintf(stderr, "sallyport: verify: %d of %d recordings are not intact\n", v.bad, v.total);
        return CLI_FAIL;
    }
    return CLI_OK;
}
