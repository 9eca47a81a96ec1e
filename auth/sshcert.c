#include "auth/sshcert.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

#define ED25519_NAME "ssh-ed25519"
#define ED25519_KEY_LEN 32
#define ED25519_SIG_LEN 64
#define CERT_NONCE_LEN 32
#define CERT_TYPE_USER 1
#define CERT_TYPE_HOST 2
#define CA_PEM_MAX 16384
/* RSA moduli OpenSSH accepts: 1024 to 16384 bits (plus the sign byte of the mpint). */
#define RSA_MODULUS_MIN_BYTES 128
#define RSA_MODULUS_MAX_BYTES 2048
#define RSA_EXPONENT_MAX_BYTES 16
#define EXTENSION_NAME_MAX 128

struct sp_ssh_ca {
    EVP_PKEY *key;
    uint8_t pub[ED25519_KEY_LEN];
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ---- wire format (RFC 4251: uint32, uint64, string) ---- */

typedef struct wire {
    const uint8_t *p;
    size_t len, off;
} wire;

static wire wire_of(const uint8_t *p, size_t len)
{
    return (wire){.p = p, .len = len, .off = 0};
}

static bool wire_done(const wire *w)
{
    return w->off == w->len;
}

static int wire_u32(wire *w, uint32_t *v)
{
    if (w->len - w->off < 4)
        return -1;
    *v = sp_get_be32(w->p + w->off);
    w->off += 4;
    return 0;
}

static int wire_u64(wire *w, uint64_t *v)
{
    if (w->len - w->off < 8)
        return -1;
    *v = sp_get_be64(w->p + w->off);
    w->off += 8;
    return 0;
}

static int wire_string(wire *w, const uint8_t **s, size_t *n)
{
    uint32_t len;
    if (wire_u32(w, &len) < 0 || len > w->len - w->off)
        return -1;
    *s = w->p + w->off;
    *n = len;
    w->off += len;
    return 0;
}

/* A string that must be text: no NUL inside (it would cut the C string short and make two
 * different names compare equal) and short enough for out, never truncated. */
static int wire_cstring(wire *w, char *out, size_t outlen)
{
    const uint8_t *s;
    size_t n;
    if (wire_string(w, &s, &n) < 0 || n >= outlen || memchr(s, '\0', n))
        return -1;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

static bool wire_string_is(const uint8_t *s, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(s, want, n) == 0;
}

static int put_string(sp_buf *b, const void *p, size_t n)
{
    if (n > UINT32_MAX || sp_buf_append_be32(b, (uint32_t)n) < 0)
        return -1;
    return sp_buf_append(b, p, n);
}

static int put_cstring(sp_buf *b, const char *s)
{
    return put_string(b, s, strlen(s));
}

/* Untrusted names go into error messages (and from there into logs): keep them printable. */
static const char *printable(const char *s, char *out, size_t outlen)
{
    size_t i = 0;
    for (; s[i] && i + 1 < outlen; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    out[i] = '\0';
    return out;
}

/* ---- subject key types ----
 * A certificate carries the subject key's public fields exactly as the plain key's wire form
 * does after its type name, so one reader per type serves both parsing and signing. */

typedef struct key_kind {
    const char *plain;
    const char *cert;
    const char *curve; /* ecdsa: the curve name field */
    size_t point_len;  /* ecdsa: uncompressed point length */
    int (*read_fields)(wire *w, const struct key_kind *k);
} key_kind;

static int read_ed25519(wire *w, const key_kind *k)
{
    const uint8_t *pk;
    size_t n;
    return wire_string(w, &pk, &n) == 0 && n == ED25519_KEY_LEN ? 0 : -1;
}

static int read_ecdsa(wire *w, const key_kind *k)
{
    const uint8_t *curve, *point;
    size_t curve_len, point_len;
    if (wire_string(w, &curve, &curve_len) < 0 || !wire_string_is(curve, curve_len, k->curve))
        return -1;
    if (wire_string(w, &point, &point_len) < 0 || point_len != k->point_len)
        return -1;
    return point[0] == 0x04 ? 0 : -1; /* uncompressed form, as OpenSSH writes it */
}

/* A positive mpint with `min`..`max` significant bytes. */
static int read_mpint(wire *w, size_t min, size_t max)
{
    const uint8_t *m;
    size_t n;
    if (wire_string(w, &m, &n) < 0 || n == 0 || (m[0] & 0x80))
        return -1;
    if (m[0] == 0) { /* a leading zero only where the next byte needs it */
        if (n < 2 || !(m[1] & 0x80))
            return -1;
        m++;
        n--;
    }
    return n >= min && n <= max ? 0 : -1;
}

static int read_rsa(wire *w, const key_kind *k)
{
    if (read_mpint(w, 1, RSA_EXPONENT_MAX_BYTES) < 0)
        return -1;
    return read_mpint(w, RSA_MODULUS_MIN_BYTES, RSA_MODULUS_MAX_BYTES);
}

static const key_kind KEY_KINDS[] = {
    {.plain = "ssh-ed25519",
     .cert = "ssh-ed25519-cert-v01@openssh.com",
     .read_fields = read_ed25519},
    {.plain = "ecdsa-sha2-nistp256",
     .cert = "ecdsa-sha2-nistp256-cert-v01@openssh.com",
     .curve = "nistp256",
     .point_len = 65,
     .read_fields = read_ecdsa},
    {.plain = "ecdsa-sha2-nistp384",
     .cert = "ecdsa-sha2-nistp384-cert-v01@openssh.com",
     .curve = "nistp384",
     .point_len = 97,
     .read_fields = read_ecdsa},
    {.plain = "ecdsa-sha2-nistp521",
     .cert = "ecdsa-sha2-nistp521-cert-v01@openssh.com",
     .curve = "nistp521",
     .point_len = 133,
     .read_fields = read_ecdsa},
    {.plain = "ssh-rsa", .cert = "ssh-rsa-cert-v01@openssh.com", .read_fields = read_rsa},
};

static const key_kind *kind_by_plain(const uint8_t *name, size_t n)
{
    for (size_t i = 0; i < SP_ARRAY_LEN(KEY_KINDS); i++) {
        if (wire_string_is(name, n, KEY_KINDS[i].plain))
            return &KEY_KINDS[i];
    }
    return NULL;
}

static const key_kind *kind_by_cert(const char *name)
{
    for (size_t i = 0; i < SP_ARRAY_LEN(KEY_KINDS); i++) {
        if (strcmp(name, KEY_KINDS[i].cert) == 0)
            return &KEY_KINDS[i];
    }
    return NULL;
}

/* ---- Ed25519 with OpenSSL ---- */

static int ed25519_sign(EVP_PKEY *key, const uint8_t *msg, size_t n, uint8_t sig[ED25519_SIG_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t siglen = ED25519_SIG_LEN;
    int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, key) == 1 &&
             EVP_DigestSign(ctx, sig, &siglen, msg, n) == 1 && siglen == ED25519_SIG_LEN;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : -1;
}

static bool ed25519_verify(const uint8_t pub[ED25519_KEY_LEN], const uint8_t *sig,
                           const uint8_t *msg, size_t n)
{
    EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, ED25519_KEY_LEN);
    EVP_MD_CTX *ctx = key ? EVP_MD_CTX_new() : NULL;
    bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
              EVP_DigestVerify(ctx, sig, ED25519_SIG_LEN, msg, n) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
    return ok;
}

/* The raw key of an Ed25519 public key blob; -1 for any other key type. */
static int ed25519_blob_key(const uint8_t *blob, size_t len, const uint8_t **key)
{
    wire w = wire_of(blob, len);
    const uint8_t *name;
    size_t name_len, key_len;
    if (wire_string(&w, &name, &name_len) < 0 || !wire_string_is(name, name_len, ED25519_NAME))
        return -1;
    if (wire_string(&w, key, &key_len) < 0 || key_len != ED25519_KEY_LEN || !wire_done(&w))
        return -1;
    return 0;
}

/* ---- CA keys ---- */

sp_ssh_ca *sp_ssh_ca_load(const char *pem_path, char *err, size_t errlen)
{
    size_t len = 0;
    char *pem = sp_read_file(pem_path, CA_PEM_MAX, true, &len, err, errlen);
    if (!pem)
        return NULL;
    sp_ssh_ca *ca = calloc(1, sizeof(*ca));
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    size_t pub_len = ED25519_KEY_LEN;
    if (!ca || !bio) {
        fail(err, errlen, "out of memory loading the CA key %s", pem_path);
        goto bad;
    }
    ca->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    if (!ca->key) {
        fail(err, errlen, "%s is not a PEM private key (create one with sallyport ca init)",
             pem_path);
        goto bad;
    }
    if (EVP_PKEY_get_id(ca->key) != EVP_PKEY_ED25519) {
        fail(err, errlen, "%s is a %s key; SSH CA keys must be Ed25519", pem_path,
             OBJ_nid2sn(EVP_PKEY_get_id(ca->key)));
        goto bad;
    }
    if (EVP_PKEY_get_raw_public_key(ca->key, ca->pub, &pub_len) != 1 ||
        pub_len != ED25519_KEY_LEN) {
        fail(err, errlen, "cannot read the public half of %s", pem_path);
        goto bad;
    }
    BIO_free(bio);
    OPENSSL_clear_free(pem, len);
    return ca;
bad:
    BIO_free(bio);
    OPENSSL_clear_free(pem, len);
    sp_ssh_ca_free(ca);
    return NULL;
}

void sp_ssh_ca_free(sp_ssh_ca *ca)
{
    if (!ca)
        return;
    EVP_PKEY_free(ca->key);
    free(ca);
}

int sp_ssh_ca_public_blob(const sp_ssh_ca *ca, sp_buf *out)
{
    if (put_cstring(out, ED25519_NAME) < 0)
        return -1;
    return put_string(out, ca->pub, sizeof(ca->pub));
}

/* "TYPE BASE64[ COMMENT]" for a wire blob; -1 when out is too small. */
static int key_line(const char *type, const uint8_t *blob, size_t len, const char *comment,
                    char *out, size_t outlen)
{
    char *b64 = malloc(4 * ((len + 2) / 3) + 1);
    if (!b64)
        return -1;
    sp_base64_encode(blob, len, b64);
    bool has_comment = comment && *comment;
    int n = snprintf(out, outlen, "%s %s%s%s", type, b64, has_comment ? " " : "",
                     has_comment ? comment : "");
    free(b64);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int sp_ssh_ca_public_line(const sp_ssh_ca *ca, const char *comment, char *out, size_t outlen)
{
    sp_buf blob;
    sp_buf_init(&blob, 256);
    int rc = sp_ssh_ca_public_blob(ca, &blob) < 0
                 ? -1
                 : key_line(ED25519_NAME, blob.data, blob.len, comment, out, outlen);
    sp_buf_free(&blob);
    return rc;
}

int sp_ssh_ca_generate(const char *pem_path, char *err, size_t errlen)
{
    EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    int fd = -1, ret = -1;
    if (!key || !bio || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1) {
        fail(err, errlen, "cannot generate an Ed25519 key for %s (OpenSSL failed)", pem_path);
        goto out;
    }
    long len = BIO_get_mem_data(bio, &pem);
    fd = open(pem_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        fail(err, errlen, "cannot create %s: %s%s", pem_path, strerror(errno),
             errno == EEXIST ? " (an existing key is never overwritten)" : "");
        goto out;
    }
    if (sp_write_all(fd, pem, (size_t)len) < 0 || fsync(fd) < 0) {
        fail(err, errlen, "cannot write %s: %s", pem_path, strerror(errno));
        unlink(pem_path);
        goto out;
    }
    ret = 0;
out:
    if (fd >= 0)
        close(fd);
    if (pem)
        OPENSSL_cleanse(pem, strlen(pem));
    BIO_free(bio);
    EVP_PKEY_free(key);
    return ret;
}

/* ---- signing ---- */

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Extensions sorted by name, as OpenSSH requires; duplicates refused. */
static int put_extensions(sp_buf *b, const sp_ssh_cert_req *req, char *err, size_t errlen)
{
    const char *sorted[SP_SSH_CERT_MAX_OPTIONS];
    if (req->n_extensions > SP_SSH_CERT_MAX_OPTIONS)
        return fail(err, errlen, "too many certificate extensions (%zu, at most %d)",
                    req->n_extensions, SP_SSH_CERT_MAX_OPTIONS);
    if (req->n_extensions)
        memcpy(sorted, req->extensions, req->n_extensions * sizeof(sorted[0]));
    qsort(sorted, req->n_extensions, sizeof(sorted[0]), cmp_names);
    sp_buf packed;
    sp_buf_init(&packed, SP_SSH_CERT_MAX);
    int ret = 0;
    for (size_t i = 0; i < req->n_extensions && ret == 0; i++) {
        if (!*sorted[i] || strlen(sorted[i]) >= EXTENSION_NAME_MAX)
            ret = fail(err, errlen, "invalid certificate extension name \"%s\"", sorted[i]);
        else if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0)
            ret = fail(err, errlen, "certificate extension %s given twice", sorted[i]);
        else if (put_cstring(&packed, sorted[i]) < 0 || put_string(&packed, "", 0) < 0)
            ret = fail(err, errlen, "certificate extensions too large");
    }
    if (ret == 0 && put_string(b, packed.data, packed.len) < 0)
        ret = fail(err, errlen, "certificate too large");
    sp_buf_free(&packed);
    return ret;
}

static int put_principals(sp_buf *b, const sp_ssh_cert_req *req, char *err, size_t errlen)
{
    if (req->n_principals == 0 || req->n_principals > SP_SSH_CERT_MAX_PRINCIPALS)
        return fail(err, errlen, "a certificate needs 1 to %d principals, not %zu",
                    SP_SSH_CERT_MAX_PRINCIPALS, req->n_principals);
    sp_buf packed;
    sp_buf_init(&packed, SP_SSH_CERT_MAX);
    int ret = 0;
    for (size_t i = 0; i < req->n_principals && ret == 0; i++) {
        const char *p = req->principals[i];
        if (!p || !*p || strlen(p) >= sizeof(((sp_ssh_cert *)NULL)->principals[0]))
            ret = fail(err, errlen, "invalid certificate principal \"%s\"", p ? p : "");
        else if (put_cstring(&packed, p) < 0)
            ret = fail(err, errlen, "certificate principals too large");
    }
    if (ret == 0 && put_string(b, packed.data, packed.len) < 0)
        ret = fail(err, errlen, "certificate too large");
    sp_buf_free(&packed);
    return ret;
}

/* force-command is the only critical option the gateway sets; its data is a string holding
 * the command string. */
static int put_critical(sp_buf *b, const sp_ssh_cert_req *req)
{
    sp_buf packed, data;
    sp_buf_init(&packed, SP_SSH_CERT_MAX);
    sp_buf_init(&data, SP_SSH_CERT_MAX);
    int bad = 0;
    if (req->force_command) {
        bad |= put_cstring(&data, req->force_command);
        bad |= put_cstring(&packed, "force-command");
        bad |= put_string(&packed, data.data, data.len);
    }
    bad |= put_string(b, packed.data, packed.len);
    sp_buf_free(&packed);
    sp_buf_free(&data);
    return bad ? -1 : 0;
}

/* The subject key's type and the span of its public fields in req->pubkey_blob. */
static const key_kind *subject_fields(const sp_ssh_cert_req *req, const uint8_t **fields,
                                      size_t *fields_len, char *err, size_t errlen)
{
    wire w = wire_of(req->pubkey_blob, req->pubkey_len);
    const uint8_t *name;
    size_t name_len;
    if (!req->pubkey_blob || wire_string(&w, &name, &name_len) < 0) {
        fail(err, errlen, "the subject public key is not an SSH public key blob");
        return NULL;
    }
    const key_kind *k = kind_by_plain(name, name_len);
    if (!k) {
        fail(err, errlen,
             "unsupported subject key type (use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or "
             "ssh-rsa)");
        return NULL;
    }
    size_t start = w.off;
    if (k->read_fields(&w, k) < 0 || !wire_done(&w)) {
        fail(err, errlen, "the subject %s public key is malformed", k->plain);
        return NULL;
    }
    *fields = req->pubkey_blob + start;
    *fields_len = w.off - start;
    return k;
}

static int check_request(const sp_ssh_cert_req *req, char *err, size_t errlen)
{
    if (!req->key_id || strlen(req->key_id) >= sizeof(((sp_ssh_cert *)NULL)->key_id))
        return fail(err, errlen, "the certificate key id is missing or longer than %zu bytes",
                    sizeof(((sp_ssh_cert *)NULL)->key_id) - 1);
    if (req->valid_after >= req->valid_before)
        return fail(err, errlen, "the certificate validity window is empty (%llu..%llu)",
                    (unsigned long long)req->valid_after, (unsigned long long)req->valid_before);
    return 0;
}

int sp_ssh_cert_sign(const sp_ssh_ca *ca, const sp_ssh_cert_req *req, sp_buf *blob, char *err,
                     size_t errlen)
{
    const uint8_t *fields;
    size_t fields_len;
    uint8_t nonce[CERT_NONCE_LEN], sig[ED25519_SIG_LEN];
    if (check_request(req, err, errlen) < 0)
        return -1;
    const key_kind *k = subject_fields(req, &fields, &fields_len, err, errlen);
    if (!k)
        return -1;
    if (sp_random_bytes(nonce, sizeof(nonce)) < 0)
        return fail(err, errlen, "cannot sign a certificate: the random generator failed");
    sp_buf_reset(blob);
    int bad = 0;
    bad |= put_cstring(blob, k->cert);
    bad |= put_string(blob, nonce, sizeof(nonce));
    bad |= sp_buf_append(blob, fields, fields_len);
    bad |= sp_buf_append_be64(blob, req->serial);
    bad |= sp_buf_append_be32(blob, CERT_TYPE_USER);
    bad |= put_cstring(blob, req->key_id);
    if (bad)
        return fail(err, errlen, "certificate too large");
    if (put_principals(blob, req, err, errlen) < 0)
        return -1;
    bad |= sp_buf_append_be64(blob, req->valid_after);
    bad |= sp_buf_append_be64(blob, req->valid_before);
    bad |= put_critical(blob, req);
    if (bad)
        return fail(err, errlen, "certificate too large");
    if (put_extensions(blob, req, err, errlen) < 0)
        return -1;
    sp_buf ca_blob;
    sp_buf_init(&ca_blob, 256);
    bad |= put_string(blob, "", 0); /* reserved */
    bad |= sp_ssh_ca_public_blob(ca, &ca_blob);
    bad |= put_string(blob, ca_blob.data, ca_blob.len);
    sp_buf_free(&ca_blob);
    if (bad)
        return fail(err, errlen, "certificate too large");
    if (ed25519_sign(ca->key, blob->data, blob->len, sig) < 0)
        return fail(err, errlen, "signing the certificate failed (OpenSSL)");
    sp_buf signature;
    sp_buf_init(&signature, 256);
    bad |= put_cstring(&signature, ED25519_NAME);
    bad |= put_string(&signature, sig, sizeof(sig));
    bad |= put_string(blob, signature.data, signature.len);
    sp_buf_free(&signature);
    if (bad || blob->len > SP_SSH_CERT_MAX)
        return fail(err, errlen, "certificate larger than %d bytes", SP_SSH_CERT_MAX);
    return 0;
}

int sp_ssh_cert_line(const uint8_t *blob, size_t len, const char *comment, char *out, size_t outlen)
{
    char type[64];
    wire w = wire_of(blob, len);
    if (wire_cstring(&w, type, sizeof(type)) < 0 || !kind_by_cert(type))
        return -1;
    return key_line(type, blob, len, comment, out, outlen);
}

/* ---- parsing ---- */

static int parse_principals(const uint8_t *p, size_t n, sp_ssh_cert *out, char *err, size_t errlen)
{
    wire w = wire_of(p, n);
    while (!wire_done(&w)) {
        if (out->n_principals == SP_SSH_CERT_MAX_PRINCIPALS)
            return fail(err, errlen, "certificate names more than %d principals",
                        SP_SSH_CERT_MAX_PRINCIPALS);
        if (wire_cstring(&w, out->principals[out->n_principals], sizeof(out->principals[0])) < 0)
            return fail(err, errlen,
                        "certificate principal %zu is malformed, holds a NUL or is longer than "
                        "%zu bytes",
                        out->n_principals + 1, sizeof(out->principals[0]) - 1);
        out->n_principals++;
    }
    return 0;
}

/* name/data pairs; names kept when `names` is given (critical options), else only checked. */
static int parse_options(const uint8_t *p, size_t n, const char *what, char (*names)[64],
                         size_t *count, char *err, size_t errlen)
{
    wire w = wire_of(p, n);
    size_t seen = 0;
    while (!wire_done(&w)) {
        const uint8_t *data;
        size_t data_len;
        char name[EXTENSION_NAME_MAX];
        if (seen == SP_SSH_CERT_MAX_OPTIONS)
            return fail(err, errlen, "certificate has more than %d %s", SP_SSH_CERT_MAX_OPTIONS,
                        what);
        if (wire_cstring(&w, name, names ? 64 : sizeof(name)) < 0 ||
            wire_string(&w, &data, &data_len) < 0)
            return fail(err, errlen, "certificate %s are malformed", what);
        if (names)
            memcpy(names[seen], name, strlen(name) + 1);
        seen++;
    }
    if (count)
        *count = seen;
    return 0;
}

static int parse_subject(wire *w, sp_ssh_cert *out, char *err, size_t errlen)
{
    char shown[64];
    const uint8_t *nonce;
    size_t nonce_len;
    if (wire_cstring(w, out->key_type, sizeof(out->key_type)) < 0)
        return fail(err, errlen, "not an SSH certificate (no key type)");
    const key_kind *k = kind_by_cert(out->key_type);
    if (!k)
        return fail(err, errlen, "unsupported certificate type %s",
                    printable(out->key_type, shown, sizeof(shown)));
    if (wire_string(w, &nonce, &nonce_len) < 0)
        return fail(err, errlen, "certificate truncated in its nonce");
    size_t start = w->off;
    if (k->read_fields(w, k) < 0)
        return fail(err, errlen, "the %s subject key in the certificate is malformed", k->plain);
    out->pubkey = w->p + start;
    out->pubkey_len = w->off - start;
    return 0;
}

/* Everything between the subject key and the signature key. */
static int parse_body(wire *w, sp_ssh_cert *out, char *err, size_t errlen)
{
    const uint8_t *principals, *critical, *extensions, *reserved;
    size_t principals_len, critical_len, extensions_len, reserved_len;
    if (wire_u64(w, &out->serial) < 0 || wire_u32(w, &out->type) < 0)
        return fail(err, errlen, "certificate truncated in its serial or type");
    if (wire_cstring(w, out->key_id, sizeof(out->key_id)) < 0)
        return fail(err, errlen, "certificate key id is malformed or longer than %zu bytes",
                    sizeof(out->key_id) - 1);
    if (wire_string(w, &principals, &principals_len) < 0)
        return fail(err, errlen, "certificate truncated in its principals");
    if (parse_principals(principals, principals_len, out, err, errlen) < 0)
        return -1;
    if (wire_u64(w, &out->valid_after) < 0 || wire_u64(w, &out->valid_before) < 0)
        return fail(err, errlen, "certificate truncated in its validity window");
    if (wire_string(w, &critical, &critical_len) < 0 ||
        wire_string(w, &extensions, &extensions_len) < 0 ||
        wire_string(w, &reserved, &reserved_len) < 0)
        return fail(err, errlen, "certificate truncated in its options");
    if (parse_options(critical, critical_len, "critical options", out->critical, &out->n_critical,
                      err, errlen) < 0 ||
        parse_options(extensions, extensions_len, "extensions", NULL, NULL, err, errlen) < 0)
        return -1;
    return 0;
}

/* Does the signature field verify over the first signed_len bytes with the signature key?
 * False too for a CA key or signature that is not Ed25519: the gateway verifies no other. */
static bool signature_verifies(const sp_ssh_cert *c, const uint8_t *sig_field, size_t sig_len,
                               const uint8_t *blob, size_t signed_len)
{
    const uint8_t *ca_key, *alg, *sig;
    size_t alg_len, raw_len;
    if (ed25519_blob_key(c->signature_key, c->signature_key_len, &ca_key) < 0)
        return false;
    wire w = wire_of(sig_field, sig_len);
    if (wire_string(&w, &alg, &alg_len) < 0 || !wire_string_is(alg, alg_len, ED25519_NAME) ||
        wire_string(&w, &sig, &raw_len) < 0 || raw_len != ED25519_SIG_LEN || !wire_done(&w))
        return false;
    return ed25519_verify(ca_key, sig, blob, signed_len);
}

int sp_ssh_cert_parse(const uint8_t *blob, size_t len, sp_ssh_cert *out, char *err, size_t errlen)
{
    const uint8_t *sig;
    size_t sig_len;
    memset(out, 0, sizeof(*out));
    if (len > SP_SSH_CERT_MAX)
        return fail(err, errlen, "certificate of %zu bytes is larger than the %d accepted", len,
                    SP_SSH_CERT_MAX);
    wire w = wire_of(blob, len);
    if (parse_subject(&w, out, err, errlen) < 0 || parse_body(&w, out, err, errlen) < 0)
        return -1;
    if (wire_string(&w, &out->signature_key, &out->signature_key_len) < 0)
        return fail(err, errlen, "certificate truncated in its signature key");
    size_t signed_len = w.off;
    if (wire_string(&w, &sig, &sig_len) < 0)
        return fail(err, errlen, "certificate truncated in its signature");
    if (!wire_done(&w))
        return fail(err, errlen, "certificate has %zu bytes after its signature", w.len - w.off);
    out->signature_ok = signature_verifies(out, sig, sig_len, blob, signed_len);
    return 0;
}

/* ---- checking ---- */

static void format_cert_time(uint64_t secs, char *out, size_t outlen)
{
    if (secs > (uint64_t)INT64_MAX / 1000000)
        snprintf(out, outlen, "forever");
    else
        sp_format_time((int64_t)secs * 1000000, out, outlen);
}

/* "SHA256:..." as ssh-keygen -l prints it, so an operator can tell which key signed. */
static void key_fingerprint(const uint8_t *blob, size_t len, char *out, size_t outlen)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    char b64[4 * ((SHA256_DIGEST_LENGTH + 2) / 3) + 1];
    SHA256(blob, len, digest);
    size_t n = sp_base64_encode(digest, sizeof(digest), b64);
    while (n > 0 && b64[n - 1] == '=')
        b64[--n] = '\0';
    snprintf(out, outlen, "SHA256:%s", b64);
}

static void key_type_name(const uint8_t *blob, size_t len, char *out, size_t outlen)
{
    wire w = wire_of(blob, len);
    char name[64];
    if (wire_cstring(&w, name, sizeof(name)) < 0)
        snprintf(out, outlen, "malformed");
    else
        printable(name, out, outlen);
}

static int check_signer(const sp_ssh_cert *c, const uint8_t *trusted_ca, size_t trusted_len,
                        char *err, size_t errlen)
{
    char type[64], fp[64];
    key_type_name(c->signature_key, c->signature_key_len, type, sizeof(type));
    key_fingerprint(c->signature_key, c->signature_key_len, fp, sizeof(fp));
    if (c->signature_key_len != trusted_len ||
        !sp_memeq_ct(c->signature_key, trusted_ca, trusted_len))
        return fail(err, errlen,
                    "certificate is signed by %s CA key %s, not by this gateway's user CA", type,
                    fp);
    if (!c->signature_ok)
        return fail(err, errlen,
                    strcmp(type, ED25519_NAME) == 0
                        ? "certificate signature does not verify with CA key %s (altered or "
                          "corrupt)"
                        : "certificate is signed with a CA key (%s) of a type this gateway "
                          "cannot verify",
                    fp);
    return 0;
}

int sp_ssh_cert_check(const sp_ssh_cert *c, const uint8_t *trusted_ca, size_t trusted_len,
                      const char *principal, uint64_t now, char *err, size_t errlen)
{
    char when[40], shown[64];
    if (c->type != CERT_TYPE_USER)
        return fail(err, errlen,
                    "certificate is a %s certificate (type %u), not a user certificate",
                    c->type == CERT_TYPE_HOST ? "host" : "unknown", (unsigned)c->type);
    if (check_signer(c, trusted_ca, trusted_len, err, errlen) < 0)
        return -1;
    if (now < c->valid_after) {
        format_cert_time(c->valid_after, when, sizeof(when));
        return fail(err, errlen, "certificate is not valid until %s", when);
    }
    if (now >= c->valid_before) {
        format_cert_time(c->valid_before, when, sizeof(when));
        return fail(err, errlen, "certificate expired at %s", when);
    }
    if (c->n_principals == 0)
        return fail(err, errlen, "certificate names no principal");
    bool listed = false;
    for (size_t i = 0; i < c->n_principals && !listed; i++)
        listed = strcmp(c->principals[i], principal) == 0;
    if (!listed)
        return fail(err, errlen, "certificate is for principal %s%s, not for %s",
                    printable(c->principals[0], shown, sizeof(shown)),
                    c->n_principals > 1 ? " and others" : "", principal);
    if (c->n_critical > 0)
        return fail(err, errlen,
                    "certificate carries critical option %s, which this gateway does not enforce",
                    printable(c->critical[0], shown, sizeof(shown)));
    return 0;
}
