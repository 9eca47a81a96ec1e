#include "auth/token.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>

#include "auth/scram.h"
#include "common/util.h"

#define TOKEN_MAX_VERIFIERS 64 /* live tokens per identity considered by verify */

static const char ID_ALPHABET[] = "abcdefghijklmnopqrstuvwxyz0123456789";

/* Uniform over the 36-letter alphabet: bytes >= 252 (7 * 36) are drawn again. */
int sp_cred_new_id(char out[SP_CRED_ID_LEN])
{
    size_t filled = 0;
    while (filled < SP_TOKEN_ID_CHARS) {
        uint8_t bytes[32];
        if (sp_random_bytes(bytes, sizeof(bytes)) < 0)
            return -1;
        for (size_t i = 0; i < sizeof(bytes) && filled < SP_TOKEN_ID_CHARS; i++) {
            if (bytes[i] < 252)
                out[filled++] = ID_ALPHABET[bytes[i] % 36];
        }
    }
    out[filled] = '\0';
    return 0;
}

/* base64url without padding (RFC 4648 section 5): the token must survive URLs and DSNs. */
static void base64url_encode(const uint8_t *in, size_t n, char *out)
{
    size_t len = sp_base64_encode(in, n, out);
    while (len > 0 && out[len - 1] == '=')
        out[--len] = '\0';
    for (size_t i = 0; i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
}

static bool is_id_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static bool is_base64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

int sp_token_parse_id(const char *token, char id_out[SP_CRED_ID_LEN])
{
    const size_t prefix = strlen(SP_TOKEN_PREFIX);
    if (!token || strlen(token) != SP_TOKEN_MAX - 1 || strncmp(token, SP_TOKEN_PREFIX, prefix))
        return -1;
    const char *id = token + prefix;
    const char *secret = id + SP_TOKEN_ID_CHARS + 1;
    for (size_t i = 0; i < SP_TOKEN_ID_CHARS; i++) {
        if (!is_id_char(id[i]))
            return -1;
    }
    if (id[SP_TOKEN_ID_CHARS] != '_')
        return -1;
    for (size_t i = 0; i < SP_TOKEN_SECRET_CHARS; i++) {
        if (!is_base64url_char(secret[i]))
            return -1;
    }
    memcpy(id_out, id, SP_TOKEN_ID_CHARS);
    id_out[SP_TOKEN_ID_CHARS] = '\0';
    return 0;
}

static int make_token_text(char token_out[SP_TOKEN_MAX], char id_out[SP_CRED_ID_LEN])
{
    uint8_t secret[SP_TOKEN_SECRET_BYTES];
    char secret_text[4 * ((SP_TOKEN_SECRET_BYTES + 2) / 3) + 1];
    if (sp_cred_new_id(id_out) < 0 || sp_random_bytes(secret, sizeof(secret)) < 0)
        return -1;
    base64url_encode(secret, sizeof(secret), secret_text);
    snprintf(token_out, SP_TOKEN_MAX, SP_TOKEN_PREFIX "%s_%s", id_out, secret_text);
    OPENSSL_cleanse(secret, sizeof(secret));
    OPENSSL_cleanse(secret_text, sizeof(secret_text));
    return 0;
}

int sp_token_issue(sp_store *s, const char *identity, int64_t ttl_us, int64_t now,
                   char token_out[SP_TOKEN_MAX], char id_out[SP_CRED_ID_LEN], char *err,
                   size_t errlen)
{
    sp_identity id;
    uint8_t stored_key[SP_SCRAM_KEY_LEN], server_key[SP_SCRAM_KEY_LEN];
    int ret = -1;
    token_out[0] = '\0';
    id_out[0] = '\0';
    if (ttl_us <= 0) {
        snprintf(err, errlen, "cannot issue a token for %s: its lifetime must be positive",
                 identity);
        return -1;
    }
    int rc = sp_store_identity_get(s, identity, &id, err, errlen);
    if (rc != 0)
        return rc;
    if (id.disabled) {
        snprintf(err, errlen, "cannot issue a token for %s: the identity is disabled", identity);
        return -1;
    }
    if (make_token_text(token_out, id_out) < 0) {
        snprintf(err, errlen, "cannot issue a token for %s: the random generator failed", identity);
        goto out;
    }
    if (sp_scram_derive(token_out, strlen(token_out), id.salt, sizeof(id.salt), id.iterations, NULL,
                        stored_key, server_key) < 0) {
        snprintf(err, errlen, "cannot issue a token for %s: key derivation failed", identity);
        goto out;
    }
    ret = sp_store_cred_add(s, id_out, identity, "token", stored_key, server_key, now + ttl_us, err,
                            errlen);
out:
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    if (ret != 0) {
        OPENSSL_cleanse(token_out, SP_TOKEN_MAX);
        token_out[0] = '\0';
    }
    return ret;
}

int sp_token_verify(sp_store *s, const char *identity, const char *token, int64_t now, char *err,
                    size_t errlen)
{
    sp_identity id;
    sp_token_verifier live[TOKEN_MAX_VERIFIERS];
    char cred_id[SP_CRED_ID_LEN];
    uint8_t stored_key[SP_SCRAM_KEY_LEN];
    size_t n = 0;
    if (sp_token_parse_id(token, cred_id) < 0) {
        snprintf(err, errlen, "not a sallyport token (expected spt_<id>_<secret>)");
        return SP_STORE_NOT_FOUND;
    }
    int rc = sp_store_identity_get(s, identity, &id, err, errlen);
    if (rc != 0)
        return rc;
    if (sp_store_tokens_live(s, identity, now, live, TOKEN_MAX_VERIFIERS, &n, err, errlen) < 0)
        return -1;
    const sp_token_verifier *v = NULL;
    for (size_t i = 0; i < n && !v; i++) {
        if (strcmp(live[i].id, cred_id) == 0)
            v = &live[i];
    }
    if (!v) {
        snprintf(err, errlen, "credential %s is not a live token of %s", cred_id, identity);
        return SP_STORE_NOT_FOUND;
    }
    if (sp_scram_derive(token, strlen(token), id.salt, sizeof(id.salt), id.iterations, NULL,
                        stored_key, NULL) < 0) {
        snprintf(err, errlen, "key derivation failed for credential %s", cred_id);
        return -1;
    }
    bool match = sp_memeq_ct(stored_key, v->stored_key, SP_SCRAM_KEY_LEN);
    OPENSSL_cleanse(stored_key, sizeof(stored_key));
    if (!match) {
        snprintf(err, errlen, "wrong secret for credential %s", cred_id);
        return SP_STORE_NOT_FOUND;
    }
    return 0;
}

typedef struct max_ttl_ctx {
    const sp_config *cfg;
    int64_t max;
} max_ttl_ctx;

static void max_ttl_visit(const sp_binding *b, void *arg)
{
    max_ttl_ctx *ctx = arg;
    const sp_role *role = sp_config_role(ctx->cfg, b->role);
    if (role && role->max_ttl > ctx->max)
        ctx->max = role->max_ttl;
}

int sp_token_max_ttl(sp_store *s, const sp_config *cfg, const char *identity, int64_t now,
                     int64_t *max_out, char *err, size_t errlen)
{
    max_ttl_ctx ctx = {.cfg = cfg, .max = 0};
    if (sp_store_bindings_list_live(s, identity, now, max_ttl_visit, &ctx, err, errlen) < 0)
        return -1;
    *max_out = ctx.max;
    return 0;
}
