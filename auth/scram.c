/* SCRAM-SHA-256 exchanges (RFC 5802, RFC 7677) as PostgreSQL speaks them.
 *
 * Every peer message is copied into a bounded NUL-terminated buffer (after refusing NUL bytes
 * and anything longer than SP_SCRAM_MSG_MAX) and then read as a list of "x=value" attributes.
 * PostgreSQL ignores the SCRAM user name (the startup packet names the user), so any saslname
 * is accepted and the client sends an empty one. Passwords are used as given, without
 * SASLprep: the gateway's tokens and lease secrets are ASCII. */
#include "auth/scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/scram_internal.h"
#include "common/util.h"

enum { SCRAM_START = 0, SCRAM_FIRST_DONE, SCRAM_FINAL_DONE, SCRAM_COMPLETE, SCRAM_FAILED };

#define SCRAM_RAW_NONCE_LEN 18
#define SCRAM_MAX_ITERATIONS 1000000
#define SCRAM_SALT_MAX 64
#define SCRAM_STR_(x) #x
#define SCRAM_STR(x) SCRAM_STR_(x)
/* client-first-bare "," server-first "," client-final-without-proof */
#define SCRAM_AUTH_MAX (3 * (SP_SCRAM_MSG_MAX + 1))

static int fail(int *state, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int *state, char *err, size_t errlen, const char *fmt, ...)
{
    *state = SCRAM_FAILED;
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void hmac_sha256(const uint8_t key[SP_SCRAM_KEYLEN], const void *msg, size_t len,
                        uint8_t out[SP_SCRAM_KEYLEN])
{
    unsigned int outlen = SP_SCRAM_KEYLEN;
    HMAC(EVP_sha256(), key, SP_SCRAM_KEYLEN, msg, len, out, &outlen);
}

/* Copies a peer message into buf as a C string; NULL on success or the reason it was refused. */
static const char *copy_message(const uint8_t *msg, size_t len, char buf[SP_SCRAM_MSG_MAX + 1])
{
    if (!msg || len == 0)
        return "is empty";
    if (len > SP_SCRAM_MSG_MAX)
        return "is longer than " SCRAM_STR(SP_SCRAM_MSG_MAX) " bytes";
    if (memchr(msg, 0, len))
        return "contains a NUL byte";
    memcpy(buf, msg, len);
    buf[len] = '\0';
    return NULL;
}

/* Reads one "x=value" attribute at *pos. Leaves *pos after the following ',' (or at the end of
 * the string). A trailing ',' with nothing after it is malformed. */
static int next_attr(const char **pos, char *name, const char **value, size_t *vlen)
{
    const char *p = *pos;
    if (!((p[0] >= 'a' && p[0] <= 'z') || (p[0] >= 'A' && p[0] <= 'Z')) || p[1] != '=')
        return -1;
    *name = p[0];
    *value = p + 2;
    *vlen = strcspn(p + 2, ",");
    p += 2 + *vlen;
    if (*p == ',') {
        if (p[1] == '\0')
            return -1;
        p++;
    }
    *pos = p;
    return 0;
}

/* Reads the attribute named `want` at *pos. */
static int expect_attr(const char **pos, char want, const char **value, size_t *vlen)
{
    char name;
    if (next_attr(pos, &name, value, vlen) < 0 || name != want)
        return -1;
    return 0;
}

/* Skips optional extensions up to the end of the message. */
static int skip_extensions(const char *pos)
{
    while (*pos) {
        char name;
        const char *value;
        size_t vlen;
        if (next_attr(&pos, &name, &value, &vlen) < 0)
            return -1;
    }
    return 0;
}

/* RFC 5802 c-nonce: printable ASCII except ','. */
static bool nonce_valid(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x21 || s[i] > 0x7e || s[i] == ',')
            return false;
    return true;
}

static int random_nonce(char out[SP_SCRAM_NONCE_MAX + 1])
{
    uint8_t raw[SCRAM_RAW_NONCE_LEN];
    if (sp_random_bytes(raw, sizeof(raw)) < 0)
        return -1;
    sp_base64_encode(raw, sizeof(raw), out);
    return 0;
}

static long auth_message(const char *client_first_bare, const char *server_first,
                         const char *client_final_without_proof, char out[SCRAM_AUTH_MAX])
{
    int n = snprintf(out, SCRAM_AUTH_MAX, "%s,%s,%s", client_first_bare, server_first,
                     client_final_without_proof);
    return n < 0 || n >= SCRAM_AUTH_MAX ? -1 : n;
}

/* ---- server ---- */

void sp_scram_server_init(sp_scram_server *s, bool plus_offered, const uint8_t *cbind,
                          size_t cbind_len)
{
    memset(s, 0, sizeof(*s));
    s->plus_offered = plus_offered;
    if (cbind && cbind_len <= sizeof(s->cbind)) {
        memcpy(s->cbind, cbind, cbind_len);
        s->cbind_len = cbind_len;
    }
    s->state = SCRAM_START;
}

/* GS2 header: channel-binding flag, then an empty authzid. Leaves *pos at client-first-bare. */
static int parse_gs2_header(sp_scram_server *s, bool plus, const char **pos, char *err,
                            size_t errlen)
{
    static const char endpoint[] = "p=tls-server-end-point";
    const char *p = *pos;
    switch (*p) {
    case 'n':
    case 'y':
        if (plus)
            return fail(&s->state, err, errlen,
                        "client chose SCRAM-SHA-256-PLUS but its first message asks for no "
                        "channel binding");
        if (*p == 'y' && s->plus_offered)
            return fail(&s->state, err, errlen,
                        "channel binding downgrade: the client supports channel binding but "
                        "believes the gateway does not (something between them may have "
                        "altered the offer)");
        p++;
        break;
    case 'p':
        if (!plus)
            return fail(&s->state, err, errlen,
                        "client requested channel binding but chose SCRAM-SHA-256; it must use "
                        "SCRAM-SHA-256-PLUS");
        if (strncmp(p, endpoint, sizeof(endpoint) - 1) != 0 || p[sizeof(endpoint) - 1] != ',')
            return fail(&s->state, err, errlen,
                        "unsupported channel binding type (only tls-server-end-point)");
        p += sizeof(endpoint) - 1;
        break;
    default:
        return fail(&s->state, err, errlen, "malformed SCRAM client-first-message (GS2 header)");
    }
    if (*p != ',')
        return fail(&s->state, err, errlen, "malformed SCRAM client-first-message (GS2 header)");
    p++;
    if (p[0] == 'a' && p[1] == '=')
        return fail(&s->state, err, errlen,
                    "SCRAM authorization identity (a=) is not supported; connect as the user "
                    "itself");
    if (*p != ',')
        return fail(&s->state, err, errlen, "malformed SCRAM client-first-message (GS2 header)");
    p++;
    size_t hlen = (size_t)(p - *pos);
    memcpy(s->gs2_header, *pos, hlen); /* at most sizeof(endpoint) + 2 bytes */
    s->gs2_header[hlen] = '\0';
    *pos = p;
    return 0;
}

/* client-first-bare: [reserved-mext ","] username "," nonce ["," extensions] */
static int parse_client_first_bare(sp_scram_server *s, const char *bare, const char **nonce,
                                   size_t *nonce_len, char *err, size_t errlen)
{
    const char *p = bare, *user;
    size_t user_len;
    if (p[0] == 'm' && p[1] == '=')
        return fail(&s->state, err, errlen, "SCRAM mandatory extensions (m=) are not supported");
    if (expect_attr(&p, 'n', &user, &user_len) < 0)
        return fail(&s->state, err, errlen,
                    "malformed SCRAM client-first-message: expected the user name (n=)");
    if (expect_attr(&p, 'r', nonce, nonce_len) < 0)
        return fail(&s->state, err, errlen,
                    "malformed SCRAM client-first-message: expected the nonce (r=)");
    if (!nonce_valid(*nonce, *nonce_len) || *nonce_len > SP_SCRAM_NONCE_MAX)
        return fail(&s->state, err, errlen,
                    "SCRAM client nonce is empty, too long or not printable ASCII");
    if (skip_extensions(p) < 0)
        return fail(&s->state, err, errlen, "malformed SCRAM client-first-message extensions");
    return 0;
}

static int mechanism_is_plus(sp_scram_server *s, const char *mechanism, bool *plus, char *err,
                             size_t errlen)
{
    if (mechanism && strcmp(mechanism, SP_SCRAM_MECH) == 0) {
        *plus = false;
        return 0;
    }
    if (mechanism && strcmp(mechanism, SP_SCRAM_MECH_PLUS) == 0) {
        if (!s->plus_offered || s->cbind_len == 0)
            return fail(&s->state, err, errlen,
                        "client chose SCRAM-SHA-256-PLUS, which the gateway did not offer");
        *plus = true;
        return 0;
    }
    return fail(&s->state, err, errlen,
                "unsupported SASL mechanism (the gateway speaks SCRAM-SHA-256 and "
                "SCRAM-SHA-256-PLUS)");
}

int sp_scram_server_first_with_nonce_for_test(sp_scram_server *s, const char *mechanism,
                                              const uint8_t *msg, size_t len, const uint8_t *salt,
                                              size_t saltlen, int iterations,
                                              const char *server_nonce, sp_buf *out, char *err,
                                              size_t errlen)
{
    char buf[SP_SCRAM_MSG_MAX + 1], salt64[4 * (SCRAM_SALT_MAX / 3 + 1) + 1];
    const char *why, *pos = buf, *cnonce = NULL;
    size_t cnonce_len = 0, snonce_len = strlen(server_nonce);
    bool plus = false;
    if (s->state != SCRAM_START)
        return fail(&s->state, err, errlen, "SCRAM client-first-message arrived out of order");
    if (!salt || saltlen == 0 || saltlen > SCRAM_SALT_MAX || iterations < 1)
        return fail(&s->state, err, errlen, "SCRAM salt or iteration count is invalid");
    if (!nonce_valid(server_nonce, snonce_len) || snonce_len > SP_SCRAM_NONCE_MAX)
        return fail(&s->state, err, errlen, "SCRAM server nonce is invalid");
    if (mechanism_is_plus(s, mechanism, &plus, err, errlen) < 0)
        return -1;
    if ((why = copy_message(msg, len, buf)) != NULL)
        return fail(&s->state, err, errlen, "SCRAM client-first-message %s", why);
    if (parse_gs2_header(s, plus, &pos, err, errlen) < 0)
        return -1;
    strcpy(s->client_first_bare, pos); /* a suffix of buf: fits */
    pos = s->client_first_bare;
    if (parse_client_first_bare(s, pos, &cnonce, &cnonce_len, err, errlen) < 0)
        return -1;
    memcpy(s->nonce, cnonce, cnonce_len);
    memcpy(s->nonce + cnonce_len, server_nonce, snonce_len + 1);
    sp_base64_encode(salt, saltlen, salt64);
    int n = snprintf(s->server_first, sizeof(s->server_first), "r=%s,s=%s,i=%d", s->nonce, salt64,
                     iterations);
    if (n < 0 || (size_t)n >= sizeof(s->server_first))
        return fail(&s->state, err, errlen, "SCRAM server-first-message would be too long");
    if (sp_buf_append(out, s->server_first, (size_t)n) < 0)
        return fail(&s->state, err, errlen, "output buffer limit reached");
    s->plus = plus;
    s->state = SCRAM_FIRST_DONE;
    return 0;
}

int sp_scram_server_first(sp_scram_server *s, const char *mechanism, const uint8_t *msg, size_t len,
                          const uint8_t *salt, size_t saltlen, int iterations, sp_buf *out,
                          char *err, size_t errlen)
{
    char server_nonce[SP_SCRAM_NONCE_MAX + 1];
    if (random_nonce(server_nonce) < 0)
        return fail(&s->state, err, errlen, "random number generator failed");
    return sp_scram_server_first_with_nonce_for_test(s, mechanism, msg, len, salt, saltlen,
                                                     iterations, server_nonce, out, err, errlen);
}

/* c=: base64 of the GS2 header, followed by the certificate hash under -PLUS. */
static int check_channel_binding(sp_scram_server *s, const char *c64, size_t c64_len, char *err,
                                 size_t errlen)
{
    uint8_t got[sizeof(s->gs2_header) + sizeof(s->cbind)];
    size_t hlen = strlen(s->gs2_header);
    long n = sp_base64_decode(c64, c64_len, got, sizeof(got));
    if (n < 0)
        return fail(&s->state, err, errlen, "SCRAM channel binding (c=) is not valid base64");
    if ((size_t)n < hlen || memcmp(got, s->gs2_header, hlen) != 0)
        return fail(&s->state, err, errlen,
                    "SCRAM channel binding (c=) does not repeat the client's GS2 header");
    size_t want_len = s->plus ? s->cbind_len : 0;
    if ((size_t)n - hlen != want_len || memcmp(got + hlen, s->cbind, want_len) != 0)
        return fail(&s->state, err, errlen,
                    "SCRAM channel binding mismatch: the client saw a different certificate "
                    "than the gateway's (a TLS interception proxy may be in the path)");
    return 0;
}

int sp_scram_server_final_parse(sp_scram_server *s, const uint8_t *msg, size_t len, char *err,
                                size_t errlen)
{
    char buf[SP_SCRAM_MSG_MAX + 1];
    const char *why, *pos = buf, *value;
    size_t vlen;
    if (s->state != SCRAM_FIRST_DONE)
        return fail(&s->state, err, errlen, "SCRAM client-final-message arrived out of order");
    if ((why = copy_message(msg, len, buf)) != NULL)
        return fail(&s->state, err, errlen, "SCRAM client-final-message %s", why);
    if (expect_attr(&pos, 'c', &value, &vlen) < 0)
        return fail(&s->state, err, errlen,
                    "malformed SCRAM client-final-message: expected channel binding (c=)");
    if (check_channel_binding(s, value, vlen, err, errlen) < 0)
        return -1;
    if (expect_attr(&pos, 'r', &value, &vlen) < 0)
        return fail(&s->state, err, errlen,
                    "malformed SCRAM client-final-message: expected the nonce (r=)");
    if (vlen != strlen(s->nonce) || memcmp(value, s->nonce, vlen) != 0)
        return fail(&s->state, err, errlen, "SCRAM nonce in client-final-message does not match");
    for (;;) {
        const char *attr_start = pos;
        char name;
        if (*pos == '\0' || next_attr(&pos, &name, &value, &vlen) < 0)
            return fail(&s->state, err, errlen,
                        "malformed SCRAM client-final-message: expected the proof (p=)");
        if (name != 'p')
            continue; /* an extension */
        if (*pos != '\0')
            return fail(&s->state, err, errlen,
                        "malformed SCRAM client-final-message: data after the proof");
        if (vlen != 44 ||
            sp_base64_decode(value, vlen, s->proof, sizeof(s->proof)) != (long)sizeof(s->proof))
            return fail(&s->state, err, errlen, "SCRAM proof is not 32 bytes of base64");
        size_t without_proof = (size_t)(attr_start - buf) - 1; /* drop the ',' */
        memcpy(s->client_final_without_proof, buf, without_proof);
        s->client_final_without_proof[without_proof] = '\0';
        break;
    }
    s->state = SCRAM_FINAL_DONE;
    return 0;
}

bool sp_scram_server_check(const sp_scram_server *s, const uint8_t stored_key[SP_SCRAM_KEYLEN])
{
    char auth[SCRAM_AUTH_MAX];
    uint8_t signature[SP_SCRAM_KEYLEN], client_key[SP_SCRAM_KEYLEN], derived[SP_SCRAM_KEYLEN];
    if (s->state != SCRAM_FINAL_DONE)
        return false;
    long n =
        auth_message(s->client_first_bare, s->server_first, s->client_final_without_proof, auth);
    if (n < 0)
        return false;
    hmac_sha256(stored_key, auth, (size_t)n, signature);
    for (size_t i = 0; i < SP_SCRAM_KEYLEN; i++)
        client_key[i] = s->proof[i] ^ signature[i];
    SHA256(client_key, sizeof(client_key), derived);
    bool ok = CRYPTO_memcmp(derived, stored_key, SP_SCRAM_KEYLEN) == 0;
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return ok;
}

int sp_scram_server_final_message(const sp_scram_server *s,
                                  const uint8_t server_key[SP_SCRAM_KEYLEN], sp_buf *out)
{
    char auth[SCRAM_AUTH_MAX], msg[2 + 4 * ((SP_SCRAM_KEYLEN + 2) / 3) + 1];
    uint8_t signature[SP_SCRAM_KEYLEN];
    if (s->state != SCRAM_FINAL_DONE)
        return -1;
    long n =
        auth_message(s->client_first_bare, s->server_first, s->client_final_without_proof, auth);
    if (n < 0)
        return -1;
    hmac_sha256(server_key, auth, (size_t)n, signature);
    memcpy(msg, "v=", 2);
    size_t sig_len = sp_base64_encode(signature, sizeof(signature), msg + 2);
    return sp_buf_append(out, msg, 2 + sig_len);
}

/* ---- client ---- */

void sp_scram_client_init(sp_scram_client *c, const char *password, const uint8_t *salt,
                          int iterations, const uint8_t *client_key, const uint8_t *server_key)
{
    memset(c, 0, sizeof(*c));
    c->password = password;
    /* iterations > 0 marks usable precomputed keys */
    if (salt && client_key && server_key && iterations > 0) {
        memcpy(c->salt, salt, SP_SCRAM_SALTLEN);
        memcpy(c->client_key, client_key, SP_SCRAM_KEYLEN);
        memcpy(c->server_key, server_key, SP_SCRAM_KEYLEN);
        c->iterations = iterations;
    }
    c->state = SCRAM_START;
}

int sp_scram_client_first_with_nonce_for_test(sp_scram_client *c, const char *username,
                                              const char *nonce, sp_buf *out)
{
    size_t nlen = strlen(nonce);
    if (c->state != SCRAM_START || !nonce_valid(nonce, nlen) || nlen > SP_SCRAM_NONCE_MAX ||
        strpbrk(username, ",="))
        return fail(&c->state, NULL, 0, "invalid client-first input");
    int n =
        snprintf(c->client_first_bare, sizeof(c->client_first_bare), "n=%s,r=%s", username, nonce);
    if (n < 0 || (size_t)n >= sizeof(c->client_first_bare))
        return fail(&c->state, NULL, 0, "client-first-message too long");
    memcpy(c->nonce, nonce, nlen + 1);
    size_t start = out->len;
    if (sp_buf_append(out, "n,,", 3) < 0 ||
        sp_buf_append(out, c->client_first_bare, (size_t)n) < 0) {
        out->len = start;
        return fail(&c->state, NULL, 0, "output buffer limit reached");
    }
    c->state = SCRAM_FIRST_DONE;
    return 0;
}

int sp_scram_client_first(sp_scram_client *c, sp_buf *out)
{
    char nonce[SP_SCRAM_NONCE_MAX + 1];
    if (random_nonce(nonce) < 0)
        return fail(&c->state, NULL, 0, "random number generator failed");
    return sp_scram_client_first_with_nonce_for_test(c, "", nonce, out);
}

typedef struct server_first_fields {
    const char *nonce;
    size_t nonce_len;
    uint8_t salt[SCRAM_SALT_MAX];
    size_t salt_len;
    int iterations;
} server_first_fields;

static int parse_iterations(const char *s, size_t n)
{
    if (n == 0 || n > 7)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* server-first-message: [reserved-mext ","] nonce "," salt "," iteration-count ["," ext] */
static int parse_server_first(sp_scram_client *c, const char *msg, server_first_fields *f,
                              char *err, size_t errlen)
{
    const char *pos = msg, *value;
    size_t vlen, own = strlen(c->nonce);
    if (msg[0] == 'm' && msg[1] == '=')
        return fail(&c->state, err, errlen,
                    "upstream SCRAM server requires an extension (m=) the gateway does not "
                    "support");
    if (expect_attr(&pos, 'r', &f->nonce, &f->nonce_len) < 0)
        return fail(&c->state, err, errlen,
                    "malformed SCRAM server-first-message: expected the nonce (r=)");
    if (f->nonce_len <= own || f->nonce_len > 2 * SP_SCRAM_NONCE_MAX ||
        memcmp(f->nonce, c->nonce, own) != 0 || !nonce_valid(f->nonce, f->nonce_len))
        return fail(&c->state, err, errlen,
                    "upstream SCRAM nonce does not extend the gateway's nonce");
    if (expect_attr(&pos, 's', &value, &vlen) < 0)
        return fail(&c->state, err, errlen,
                    "malformed SCRAM server-first-message: expected the salt (s=)");
    long salt_len = sp_base64_decode(value, vlen, f->salt, sizeof(f->salt));
    if (salt_len <= 0)
        return fail(&c->state, err, errlen, "upstream SCRAM salt is empty or not base64");
    f->salt_len = (size_t)salt_len;
    if (expect_attr(&pos, 'i', &value, &vlen) < 0)
        return fail(&c->state, err, errlen,
                    "malformed SCRAM server-first-message: expected the iteration count (i=)");
    f->iterations = parse_iterations(value, vlen);
    if (f->iterations < 1 || f->iterations > SCRAM_MAX_ITERATIONS)
        return fail(&c->state, err, errlen,
                    "upstream SCRAM iteration count is not between 1 and 1000000");
    if (skip_extensions(pos) < 0)
        return fail(&c->state, err, errlen, "malformed SCRAM server-first-message extensions");
    return 0;
}

/* ClientKey and ServerKey: precomputed when the upstream uses the verifier the gateway set,
 * derived from the password otherwise. */
static int client_keys(sp_scram_client *c, const server_first_fields *f,
                       uint8_t client_key[SP_SCRAM_KEYLEN], uint8_t server_key[SP_SCRAM_KEYLEN],
                       char *err, size_t errlen)
{
    if (c->iterations > 0 && f->iterations == c->iterations && f->salt_len == SP_SCRAM_SALTLEN &&
        memcmp(f->salt, c->salt, SP_SCRAM_SALTLEN) == 0) {
        memcpy(client_key, c->client_key, SP_SCRAM_KEYLEN);
        memcpy(server_key, c->server_key, SP_SCRAM_KEYLEN);
        return 0;
    }
    if (!c->password)
        return fail(&c->state, err, errlen,
                    "upstream role's SCRAM salt or iteration count differs from the verifier "
                    "the gateway set, and no password is available to derive keys");
    if (sp_scram_derive(c->password, strlen(c->password), f->salt, f->salt_len, f->iterations,
                        client_key, NULL, server_key) < 0)
        return fail(&c->state, err, errlen, "SCRAM key derivation failed");
    return 0;
}

int sp_scram_client_final(sp_scram_client *c, const uint8_t *server_first, size_t len, sp_buf *out,
                          char *err, size_t errlen)
{
    char sf[SP_SCRAM_MSG_MAX + 1], without_proof[SP_SCRAM_MSG_MAX + 1], auth[SCRAM_AUTH_MAX];
    char proof64[4 * ((SP_SCRAM_KEYLEN + 2) / 3) + 1];
    uint8_t client_key[SP_SCRAM_KEYLEN], server_key[SP_SCRAM_KEYLEN];
    uint8_t stored_key[SP_SCRAM_KEYLEN], signature[SP_SCRAM_KEYLEN], proof[SP_SCRAM_KEYLEN];
    server_first_fields f;
    const char *why;
    int rc = -1;
    if (c->state != SCRAM_FIRST_DONE)
        return fail(&c->state, err, errlen, "SCRAM server-first-message arrived out of order");
    if ((why = copy_message(server_first, len, sf)) != NULL)
        return fail(&c->state, err, errlen, "upstream SCRAM server-first-message %s", why);
    if (parse_server_first(c, sf, &f, err, errlen) < 0)
        return -1;
    if (client_keys(c, &f, client_key, server_key, err, errlen) < 0)
        goto cleanup;
    /* "biws" is base64("n,,"): the gateway does not bind upstream channels */
    int n =
        snprintf(without_proof, sizeof(without_proof), "c=biws,r=%.*s", (int)f.nonce_len, f.nonce);
    long alen = n < 0 || (size_t)n >= sizeof(without_proof)
                    ? -1
                    : auth_message(c->client_first_bare, sf, without_proof, auth);
    if (alen < 0) {
        fail(&c->state, err, errlen, "SCRAM client-final-message would be too long");
        goto cleanup;
    }
    SHA256(client_key, sizeof(client_key), stored_key);
    hmac_sha256(stored_key, auth, (size_t)alen, signature);
    for (size_t i = 0; i < SP_SCRAM_KEYLEN; i++)
        proof[i] = client_key[i] ^ signature[i];
    sp_base64_encode(proof, sizeof(proof), proof64);
    hmac_sha256(server_key, auth, (size_t)alen, signature);
    sp_base64_encode(signature, sizeof(signature), c->expected_server_sig);
    size_t start = out->len;
    if (sp_buf_append(out, without_proof, (size_t)n) < 0 || sp_buf_append(out, ",p=", 3) < 0 ||
        sp_buf_append(out, proof64, strlen(proof64)) < 0) {
        out->len = start;
        fail(&c->state, err, errlen, "output buffer limit reached");
        goto cleanup;
    }
    c->state = SCRAM_FINAL_DONE;
    rc = 0;
cleanup:
    OPENSSL_cleanse(client_key, sizeof(client_key));
    OPENSSL_cleanse(server_key, sizeof(server_key));
    OPENSSL_cleanse(proof, sizeof(proof));
    return rc;
}

/* Keeps only characters safe to show an operator from a server-chosen error value. */
static void printable_copy(const char *in, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < outlen; i++)
        out[o++] = in[i] >= 0x20 && in[i] < 0x7f ? in[i] : '?';
    out[o] = '\0';
}

int sp_scram_client_verify(sp_scram_client *c, const uint8_t *server_final, size_t len, char *err,
                           size_t errlen)
{
    char buf[SP_SCRAM_MSG_MAX + 1], reason[64];
    const char *why, *pos = buf, *value;
    size_t vlen;
    char name;
    if (c->state != SCRAM_FINAL_DONE)
        return fail(&c->state, err, errlen, "SCRAM server-final-message arrived out of order");
    if ((why = copy_message(server_final, len, buf)) != NULL)
        return fail(&c->state, err, errlen, "upstream SCRAM server-final-message %s", why);
    if (next_attr(&pos, &name, &value, &vlen) < 0 || (name != 'v' && name != 'e'))
        return fail(&c->state, err, errlen,
                    "malformed SCRAM server-final-message: expected v= or e=");
    if (name == 'e') {
        printable_copy(value, vlen, reason, sizeof(reason));
        return fail(&c->state, err, errlen, "upstream server refused SCRAM authentication: %s",
                    reason);
    }
    size_t want = strlen(c->expected_server_sig);
    if (vlen != want || CRYPTO_memcmp(value, c->expected_server_sig, want) != 0)
        return fail(&c->state, err, errlen,
                    "upstream server's SCRAM signature is wrong: it does not know the role's "
                    "verifier (wrong server or tampered exchange)");
    if (skip_extensions(pos) < 0)
        return fail(&c->state, err, errlen, "malformed SCRAM server-final-message extensions");
    c->state = SCRAM_COMPLETE;
    return 0;
}

/* ---- channel binding ---- */

int sp_scram_cert_endpoint_hash(const uint8_t *der, size_t derlen, uint8_t out[64])
{
    const unsigned char *p = der;
    int md_nid = NID_undef, pk_nid = NID_undef, rc = -1;
    unsigned int outlen = 0;
    if (!der || derlen == 0 || derlen > 1024 * 1024)
        return -1;
    X509 *cert = d2i_X509(NULL, &p, (long)derlen);
    if (!cert)
        return -1;
    if (p != der + derlen) /* trailing bytes: not one certificate */
        goto cleanup;
    if (X509_get_signature_info(cert, &md_nid, &pk_nid, NULL, NULL) != 1 &&
        !OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid))
        goto cleanup;
    /* RFC 5929 section 4.1: MD5 and SHA-1 are replaced by SHA-256 */
    if (md_nid == NID_md5 || md_nid == NID_sha1)
        md_nid = NID_sha256;
    const EVP_MD *md = md_nid == NID_undef ? NULL : EVP_get_digestbynid(md_nid);
    if (!md || EVP_MD_get_size(md) > 64) /* Ed25519 and the like have no digest */
        goto cleanup;
    if (EVP_Digest(der, derlen, out, &outlen, md, NULL) != 1)
        goto cleanup;
    rc = (int)outlen;
cleanup:
    X509_free(cert);
    return rc;
}
