/* sallyport ca init | show: the gateway's two SSH certificate authorities.
 * The user CA signs the certificates `cred issue --ssh-key` hands to people; the target CA
 * signs the per-session certificates the gateway presents to targets, which trust it through
 * TrustedUserCAKeys. Keeping them apart means a target never trusts a user's certificate. */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "auth/sshcert.h"
#include "cli/cli.h"
#include "common/util.h"

#define CA_LINE_MAX 256

typedef struct ca_slot {
    const char *what;    /* "user CA" */
    const char *key;     /* configuration key naming its file */
    const char *comment; /* comment on the public line */
    const char *path;    /* from the configuration; NULL when not set */
} ca_slot;

static void ca_slots(const sp_config *cfg, ca_slot out[2])
{
    out[0] = (ca_slot){.what = "user CA",
                       .key = "ssh_user_ca_key",
                       .comment = "sallyport-user-ca",
                       .path = cfg->ssh_user_ca_key};
    out[1] = (ca_slot){.what = "target CA",
                       .key = "ssh_target_ca_key",
                       .comment = "sallyport-target-ca",
                       .path = cfg->ssh_target_ca_key};
}

/* The configuration alone: showing a public key needs no store. */
static int load_config(cli_ctx *ctx, const cli_args *a)
{
    char err[512];
    ctx->cfg = sp_config_load(a->config_path, err, sizeof(err));
    return ctx->cfg ? CLI_OK : cli_fail(ctx, "%s", err);
}

static int public_line(cli_ctx *ctx, const ca_slot *slot, char *line, size_t linelen)
{
    char err[512];
    sp_ssh_ca *ca = sp_ssh_ca_load(slot->path, err, sizeof(err));
    if (!ca)
        return cli_fail(ctx, "%s: %s", slot->what, err);
    int rc = sp_ssh_ca_public_line(ca, slot->comment, line, linelen);
    sp_ssh_ca_free(ca);
    return rc == 0 ? CLI_OK : cli_fail(ctx, "%s: public key line too long", slot->what);
}

static void audit_ca_created(const ca_slot *slot, const char *line)
{
    json_t *ev = cli_audit_event(SP_AUDIT_ACCOUNT_CHANGE, "Create SSH CA Key", true);
    /* the public line only: the private key never leaves its file */
    json_object_set_new(
        ev, "unmapped",
        json_pack("{s:s, s:s, s:s}", "ca", slot->key, "path", slot->path, "public_key", line));
    sp_audit_emit(ev);
}

/* The key file's directory, created owner-only when missing. */
static int ensure_key_dir(cli_ctx *ctx, const ca_slot *slot)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", slot->path);
    if (sp_mkdirs(dirname(dir), 0700) < 0)
        return cli_fail(ctx, "%s: cannot create the directory of %s: %s", slot->what, slot->path,
                        strerror(errno));
    return CLI_OK;
}

static int init_one(cli_ctx *ctx, const ca_slot *slot)
{
    char err[512], line[CA_LINE_MAX];
    if (!slot->path) {
        printf("%s: %s is not set in %s; skipped\n", slot->what, slot->key, ctx->cfg->path);
        return CLI_OK;
    }
    bool exists = access(slot->path, F_OK) == 0;
    if (!exists) {
        if (ensure_key_dir(ctx, slot) != CLI_OK)
            return CLI_FAIL;
        if (sp_ssh_ca_generate(slot->path, err, sizeof(err)) < 0)
            return cli_fail(ctx, "%s: %s", slot->what, err);
    }
    if (public_line(ctx, slot, line, sizeof(line)) != CLI_OK)
        return CLI_FAIL;
    if (!exists)
        audit_ca_created(slot, line);
    printf("%s (%s = %s): %s\n%s\n", slot->what, slot->key, slot->path,
           exists ? "exists, kept (never overwritten)" : "created", line);
    return CLI_OK;
}

int cmd_ca_init(cli_ctx *ctx, cli_args *a)
{
    ca_slot slots[2];
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    ca_slots(ctx->cfg, slots);
    if (!slots[0].path && !slots[1].path)
        return cli_fail(ctx,
                        "%s names no CA key; set ssh_user_ca_key and ssh_target_ca_key in "
                        "[sallyport] (e.g. ssh_user_ca_key = keys/user_ca.pem)",
                        ctx->cfg->path);
    for (size_t i = 0; i < SP_ARRAY_LEN(slots); i++) {
        rc = init_one(ctx, &slots[i]);
        if (rc != CLI_OK)
            return rc;
    }
    if (slots[1].path)
        printf("\nTargets trust the gateway with the target CA line above in sshd's\n"
               "TrustedUserCAKeys file (sallyport ca show --target-ca prints it again).\n");
    return CLI_OK;
}

int cmd_ca_show(cli_ctx *ctx, cli_args *a)
{
    char line[CA_LINE_MAX];
    ca_slot slots[2];
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    bool user = cli_flag(a, "user-ca"), target = cli_flag(a, "target-ca");
    if (user == target)
        return cli_usage(ctx, "give exactly one of --target-ca or --user-ca");
    if (load_config(ctx, a) != CLI_OK)
        return CLI_FAIL;
    ca_slots(ctx->cfg, slots);
    const ca_slot *slot = user ? &slots[0] : &slots[1];
    if (!slot->path)
        return cli_fail(ctx, "%s is not set in %s; set it, then run sallyport ca init", slot->key,
                        ctx->cfg->path);
    if (access(slot->path, F_OK) != 0)
        return cli_fail(ctx, "the %s key %s does not exist yet; create it with sallyport ca init",
                        slot->what, slot->path);
    if (public_line(ctx, slot, line, sizeof(line)) != CLI_OK)
        return CLI_FAIL;
    printf("%s\n", line);
    return CLI_OK;
}
