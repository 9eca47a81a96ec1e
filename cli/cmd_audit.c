/* sallyport audit verify */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "recorder/audit_verify.h"

/* The public key: --public-key FILE, else the public half of signing_key_file. */
static int verify_key(cli_ctx *ctx, const cli_args *a, const sp_config *cfg,
                      uint8_t key[SP_AUDIT_PUBKEY_LEN], bool *have)
{
    char err[768];
    const char *path = cli_opt_value(a, "public-key");
    if (!path && cfg)
        path = cfg->signing_key_file;
    *have = false;
    if (!path)
        return CLI_OK;
    if (sp_audit_load_public_key(path, key, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    *have = true;
    return CLI_OK;
}

static void print_text(const json_t *r)
{
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(r, "files"), i, v)
    {
        printf("%s: %lld lines, %lld checkpoints\n", json_string_value(json_object_get(v, "path")),
               (long long)json_integer_value(json_object_get(v, "lines")),
               (long long)json_integer_value(json_object_get(v, "checkpoints")));
    }
    json_array_foreach(json_object_get(r, "notes"), i, v)
        printf("note: %s\n", json_string_value(v));
    json_t *b = json_object_get(r, "break");
    if (json_is_object(b)) {
        printf("BROKEN: %s line %lld (%s): %s\n", json_string_value(json_object_get(b, "file")),
               (long long)json_integer_value(json_object_get(b, "line")),
               json_string_value(json_object_get(b, "kind")),
               json_string_value(json_object_get(b, "reason")));
        return;
    }
    printf("ok: %zu files, %lld lines, %lld checkpoints (signatures %s); the chain is intact\n",
           json_array_size(json_object_get(r, "files")),
           (long long)json_integer_value(json_object_get(r, "lines")),
           (long long)json_integer_value(json_object_get(r, "checkpoints")),
           json_string_value(json_object_get(r, "signatures")));
}

static void free_paths(char **paths, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
}

int cmd_audit_verify(cli_ctx *ctx, cli_args *a)
{
    char err[768];
    uint8_t key[SP_AUDIT_PUBKEY_LEN];
    bool have_key = false;
    char **listed = NULL;
    size_t n_listed = 0;
    int rc = CLI_FAIL;
    /* The configuration is needed for the directory or the key, not when both are given. */
    bool need_cfg = a->npos == 0 || !cli_opt_value(a, "public-key");
    sp_config *cfg = NULL;
    if (need_cfg) {
        cfg = sp_config_load(a->config_path, err, sizeof(err));
        if (!cfg && a->npos == 0)
            return cli_fail(ctx, "%s", err);
    }
    if (verify_key(ctx, a, cfg, key, &have_key) != CLI_OK)
        goto out;
    sp_audit_verify_opts o = {.public_key = have_key ? key : NULL,
                              .syslog_path = cli_opt_value(a, "checkpoints")};
    if (a->npos > 0) {
        o.paths = a->pos;
        o.n_paths = (size_t)a->npos;
    } else {
        if (sp_audit_list_files(cfg->audit_dir, &listed, &n_listed, err, sizeof(err)) < 0) {
            cli_fail(ctx, "%s", err);
            goto out;
        }
        o.paths = (const char *const *)listed;
        o.n_paths = n_listed;
    }
    json_t *report = sp_audit_verify(&o, err, sizeof(err));
    if (!report) {
        cli_fail(ctx, "%s", err);
        goto out;
    }
    bool ok = json_is_true(json_object_get(report, "ok"));
    if (cli_flag(a, "json")) {
        if (cli_print_json(ctx, report) != CLI_OK)
            goto out;
    } else {
        print_text(report);
        json_decref(report);
    }
    rc = ok ? CLI_OK : CLI_FAIL;
out:
    free_paths(listed, n_listed);
    if (cfg)
        sp_config_unref(cfg);
    return rc;
}
