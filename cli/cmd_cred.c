/* sallyport cred issue | revoke | list */
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/sshcert.h"
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

/* The audit event of a credential change; the caller may add to "unmapped", then emits. */
static json_t *cred_event(const char *activity, const char *identity, const char *kind,
                          const char *cred_id, const char *cred_kind, int64_t expires_at,
                          const char *reason)
{
    json_t *ev = cli_audit_event(SP_AUDIT_ACCOUNT_CHANGE, activity, true);
    json_object_set_new(ev, "user", sp_audit_user(identity, kind));
    json_t *extra = json_pack("{s:s, s:s}", "credential_id", cred_id, "credential_kind", cred_kind);
    if (expires_at)
        json_object_set_new(extra, "expires_at", cli_time_json(expires_at));
    if (reason && *reason)
        json_object_set_new(extra, "reason", json_string(reason));
    json_object_set_new(ev, "unmapped", extra);
    return ev;
}

/* ---- cred issue --ssh-key ---- */

#define SSH_PUBKEY_FILE_MAX 65536
#define SSH_CERT_LINE_MAX (SP_SSH_CERT_MAX * 4 / 3 + 512)
#define SSH_CERT_BACKDATE 60 /* seconds: tolerate clocks a little behind the gateway's */

/* The key blob of the first key line of an OpenSSH public key file ("TYPE BASE64 COMMENT"). */
static int read_ssh_public_key(cli_ctx *ctx, const char *path, sp_buf *blob)
{
    char err[512];
    size_t len = 0;
    char *text = sp_read_file(path, SSH_PUBKEY_FILE_MAX, false, &len, err, sizeof(err));
    if (!text)
        return cli_fail(ctx, "%s", err);
    int rc = CLI_FAIL;
    char *save = NULL, *line = strtok_r(text, "\n", &save);
    while (line && (line[strspn(line, " \t\r")] == '\0' || line[strspn(line, " \t")] == '#'))
        line = strtok_r(NULL, "\n", &save);
    char *type = line ? strtok_r(line, " \t\r", &save) : NULL;
    char *b64 = type ? strtok_r(NULL, " \t\r", &save) : NULL;
    if (!b64) {
        cli_fail(ctx, "%s holds no OpenSSH public key line (TYPE BASE64 COMMENT)", path);
        goto out;
    }
    if (strstr(type, "-cert-v01@openssh.com")) {
        cli_fail(ctx, "%s is already a certificate; give the public key it was made for", path);
        goto out;
    }
    size_t b64_len = strlen(b64);
    if (sp_buf_reserve(blob, b64_len) < 0) {
        cli_fail(ctx, "the key in %s is too large", path);
        goto out;
    }
    long n = sp_base64_decode(b64, b64_len, blob->data, blob->cap);
    if (n < 4 || sp_get_be32(blob->data) != strlen(type) || (size_t)n < 4 + strlen(type) ||
        memcmp(blob->data + 4, type, strlen(type)) != 0) {
        cli_fail(ctx, "the %s key in %s is malformed (its base64 does not decode to a %s key)",
                 type, path, type);
        goto out;
    }
    blob->len = (size_t)n;
    rc = CLI_OK;
out:
    free(text);
    return rc;
}

/* ssh looks for KEY-cert.pub beside the private key KEY, whose public half is KEY.pub. */
static int cert_path_for(cli_ctx *ctx, const char *pubkey_path, char *out, size_t outlen)
{
    size_t n = strlen(pubkey_path);
    if (n > 4 && strcmp(pubkey_path + n - 4, ".pub") == 0)
        n -= 4;
    int w = snprintf(out, outlen, "%.*s-cert.pub", (int)n, pubkey_path);
    if (w < 0 || (size_t)w >= outlen)
        return cli_fail(ctx, "the path %s is too long", pubkey_path);
    return CLI_OK;
}

typedef struct forwarding_ctx {
    const sp_config *cfg;
    bool local, agent;
} forwarding_ctx;

static void forwarding_visit(const sp_binding *b, void *arg)
{
    forwarding_ctx *f = arg;
    const sp_role *r = sp_config_role(f->cfg, b->role);
    if (!r)
        return;
    f->local = f->local || r->forwarding == SP_FWD_LOCAL;
    f->agent = f->agent || r->forwarding == SP_FWD_AGENT;
}

/* permit-pty always; forwarding only where a live role of the identity allows it (the gateway
 * enforces the role again per request: the extensions tell the client what to expect). */
static int cert_extensions(cli_ctx *ctx, const char *identity, int64_t now, const char **ext,
                           size_t *n)
{
    char err[512];
    forwarding_ctx f = {.cfg = ctx->cfg};
    if (sp_store_bindings_list_live(ctx->store, identity, now, forwarding_visit, &f, err,
                                    sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    *n = 0;
    ext[(*n)++] = "permit-pty";
    if (f.local)
        ext[(*n)++] = "permit-port-forwarding";
    if (f.agent)
        ext[(*n)++] = "permit-agent-forwarding";
    return CLI_OK;
}

/* Created before the credential is stored, so a path we cannot write leaves nothing behind. */
static int open_cert_file(cli_ctx *ctx, const char *path, bool force)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (force ? O_TRUNC : O_EXCL), 0644);
    if (fd < 0) {
        if (errno == EEXIST)
            cli_fail(ctx, "%s exists; give --force to replace it", path);
        else
            cli_fail(ctx, "cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    /* a certificate is public: readable like the .pub beside it, whatever the umask */
    if (fchmod(fd, 0644) < 0) {
        cli_fail(ctx, "cannot chmod %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    return fd;
}

typedef struct ssh_issue {
    const sp_identity *id;
    int64_t now, ttl;
    char cred_id[SP_CRED_ID_LEN];
    char key_id[SP_NAME_MAX + 32];
    uint64_t serial;
    sp_buf cert;
} ssh_issue;

static int sign_ssh_cert(cli_ctx *ctx, const sp_buf *pubkey, ssh_issue *is)
{
    char err[512];
    const char *ext[4];
    size_t n_ext = 0;
    if (!ctx->cfg->ssh_user_ca_key)
        return cli_fail(ctx, "ssh_user_ca_key is not set in %s; set it, then run sallyport ca init",
                        ctx->cfg->path);
    if (cert_extensions(ctx, is->id->name, is->now, ext, &n_ext) != CLI_OK)
        return CLI_FAIL;
    if (sp_cred_new_id(is->cred_id) < 0 || sp_random_bytes(&is->serial, sizeof(is->serial)) < 0)
        return cli_fail(ctx, "the random generator failed");
    snprintf(is->key_id, sizeof(is->key_id), "%s cred=%s", is->id->name, is->cred_id);
    sp_ssh_ca *ca = sp_ssh_ca_load(ctx->cfg->ssh_user_ca_key, err, sizeof(err));
    if (!ca)
        return cli_fail(ctx, "user CA: %s", err);
    const char *principals[] = {is->id->name};
    int64_t now_s = is->now / 1000000;
    sp_ssh_cert_req req = {
        .pubkey_blob = pubkey->data,
        .pubkey_len = pubkey->len,
        .serial = is->serial,
        .key_id = is->key_id,
        .principals = principals,
        .n_principals = 1,
        .valid_after = (uint64_t)(now_s - SSH_CERT_BACKDATE),
        .valid_before = (uint64_t)((is->now + is->ttl) / 1000000),
        .extensions = ext,
        .n_extensions = n_ext,
    };
    int rc = sp_ssh_cert_sign(ca, &req, &is->cert, err, sizeof(err));
    sp_ssh_ca_free(ca);
    return rc == 0 ? CLI_OK : cli_fail(ctx, "%s", err);
}

static int store_ssh_cred(cli_ctx *ctx, const ssh_issue *is)
{
    char err[512];
    uint8_t digest[SP_SCRAM_KEY_LEN], zeros[SP_SCRAM_KEY_LEN] = {0};
    SHA256(is->cert.data, is->cert.len, digest);
    if (sp_store_cred_add(ctx->store, is->cred_id, is->id->name, "ssh-cert", digest, zeros,
                          is->now + is->ttl, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    return CLI_OK;
}

static int write_cert_line(cli_ctx *ctx, int fd, const char *path, const ssh_issue *is)
{
    static char line[SSH_CERT_LINE_MAX];
    if (sp_ssh_cert_line(is->cert.data, is->cert.len, is->key_id, line, sizeof(line) - 1) < 0)
        return cli_fail(ctx, "the certificate line does not fit in %zu bytes", sizeof(line));
    size_t n = strlen(line);
    line[n++] = '\n';
    if (sp_write_all(fd, line, n) < 0 || fsync(fd) < 0)
        return cli_fail(ctx, "cannot write %s: %s", path, strerror(errno));
    return CLI_OK;
}

static int issue_ssh_cert(cli_ctx *ctx, const char *pubkey_path, bool force, ssh_issue *is)
{
    char path[4096], expires[40];
    sp_buf pubkey;
    int fd = -1, rc;
    sp_buf_init(&pubkey, SSH_PUBKEY_FILE_MAX);
    sp_buf_init(&is->cert, SP_SSH_CERT_MAX);
    rc = read_ssh_public_key(ctx, pubkey_path, &pubkey);
    if (rc == CLI_OK)
        rc = cert_path_for(ctx, pubkey_path, path, sizeof(path));
    if (rc == CLI_OK)
        rc = sign_ssh_cert(ctx, &pubkey, is);
    if (rc == CLI_OK && (fd = open_cert_file(ctx, path, force)) < 0)
        rc = CLI_FAIL;
    if (rc == CLI_OK)
        rc = store_ssh_cred(ctx, is);
    if (rc == CLI_OK)
        rc = write_cert_line(ctx, fd, path, is);
    if (fd >= 0) {
        close(fd);
        if (rc != CLI_OK)
            unlink(path);
    }
    if (rc == CLI_OK) {
        json_t *ev = cred_event("Issue Credential", is->id->name, is->id->kind, is->cred_id,
                                "ssh-cert", is->now + is->ttl, NULL);
        json_object_set_new(json_object_get(ev, "unmapped"), "ssh_cert_serial",
                            json_sprintf("%llu", (unsigned long long)is->serial));
        json_object_set_new(json_object_get(ev, "unmapped"), "ssh_cert_key_id",
                            json_string(is->key_id));
        sp_audit_emit(ev);
        printf("%s\n", path);
        cli_time_short(is->now + is->ttl, expires, sizeof(expires));
        fprintf(stderr,
                "credential %s for %s: SSH certificate serial %llu, expires %s\n"
                "revoke it with: sallyport cred revoke %s\n",
                is->cred_id, is->id->name, (unsigned long long)is->serial, expires, is->cred_id);
    }
    sp_buf_free(&pubkey);
    sp_buf_free(&is->cert);
    return rc;
}

int cmd_cred_issue(cli_ctx *ctx, cli_args *a)
{
    char err[512], token[SP_TOKEN_MAX], cred_id[SP_CRED_ID_LEN], expires[40];
    sp_identity id;
    int64_t ttl = 0, now = sp_now_us();
    int rc = cli_need_args(ctx, a, 1, "IDENTITY");
    if (rc != CLI_OK)
        return rc;
    const char *ssh_key = cli_opt_value(a, "ssh-key");
    if (cli_flag(a, "force") && !ssh_key)
        return cli_usage(ctx, "--force applies to --ssh-key only");
    if (ssh_key && !*ssh_key)
        return cli_usage(ctx, "--ssh-key needs the path of a public key (FILE.pub)");
    if (sp_store_identity_get(ctx->store, a->pos[0], &id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    if (id.disabled)
        return cli_fail(ctx, "%s is disabled; enable it first (sallyport identity enable %s)",
                        id.name, id.name);
    rc = cred_ttl(ctx, a, id.name, now, &ttl);
    if (rc != CLI_OK)
        return rc;
    if (ssh_key) {
        ssh_issue is = {.id = &id, .now = now, .ttl = ttl};
        return issue_ssh_cert(ctx, ssh_key, cli_flag(a, "force"), &is);
    }
    if (sp_token_issue(ctx->store, id.name, ttl, now, token, cred_id, err, sizeof(err)) != 0)
        return cli_fail(ctx, "%s", err);
    sp_audit_emit(
        cred_event("Issue Credential", id.name, id.kind, cred_id, "token", now + ttl, NULL));
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
    sp_audit_emit(cred_event("Revoke Credential", c.identity, kind, c.id, c.kind, 0, reason));
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
    printf("%-14s %-24s %-8s %-8s %-20s %s\n", c->id, c->identity, c->kind, cred_status(c, l->now),
           created, expires);
}

int cmd_cred_list(cli_ctx *ctx, cli_args *a)
{
    char err[512];
    if (a->npos > 1)
        return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[1]);
    creds_ctx l = {.array = cli_flag(a, "json") ? json_array() : NULL, .now = sp_now_us()};
    if (!l.array)
        printf("%-14s %-24s %-8s %-8s %-20s %s\n", "ID", "IDENTITY", "KIND", "STATUS", "CREATED",
               "EXPIRES");
    if (sp_store_creds_list(ctx->store, a->npos ? a->pos[0] : NULL, print_cred_row, &l, err,
                            sizeof(err)) < 0) {
        json_decref(l.array);
        return cli_fail(ctx, "%s", err);
    }
    return l.array ? cli_print_json(ctx, l.array) : CLI_OK;
}
