/* Recording keys and the crypto the recording format uses (AES-256-GCM, SHA-256, Ed25519). */
#include "recorder/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "recorder/rec_format.h"

#define MASTER_KEYS_MAX 256
#define KEY_FILE_MAX (64 * 1024)
#define MASTER_FILE_HEADER                                                                         \
    "# sallyport recording master keys (recorder/FORMAT.md). One key per line: ID BASE64.\n"       \
    "# The last key is current; older keys unwrap older recordings: never delete a line.\n"

typedef struct master_key {
    char id[SP_KEY_ID_MAX];
    uint8_t key[SP_MASTER_KEY_LEN];
} master_key;

/* Set once before recordings are written or read, then only read: see keys.h. */
static struct {
    master_key *masters;
    size_t n_masters;
    EVP_PKEY *signer;   /* private key: can sign and verify */
    EVP_PKEY *verifier; /* public key for checking (the signer's, or --public-key) */
    uint8_t verifier_id[REC_SIGNER_ID_LEN];
} keys;

/* ---- crypto primitives ---- */

void rec_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[REC_HASH_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(md, a, alen) != 1 || (b && EVP_DigestUpdate(md, b, blen) != 1) ||
        EVP_DigestFinal_ex(md, out, &len) != 1)
        memset(out, 0, REC_HASH_LEN); /* cannot happen with the default provider; never matches */
    EVP_MD_CTX_free(md);
}

void rec_chunk_nonce(uint64_t seq, uint8_t nonce[REC_NONCE_LEN])
{
    memset(nonce, 0, 4);
    sp_put_be32(nonce + 4, (uint32_t)(seq >> 32));
    sp_put_be32(nonce + 8, (uint32_t)seq);
}

static int gcm_run(bool seal, const uint8_t *key, const uint8_t *nonce, const uint8_t *aad,
                   size_t aadlen, uint8_t *buf, size_t len, uint8_t *tag)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int rc = -1, n = 0;
    if (!c || len > INT32_MAX || aadlen > INT32_MAX)
        goto out;
    if (EVP_CipherInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL, seal ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, REC_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(c, NULL, NULL, key, nonce, -1) != 1)
        goto out;
    if (aadlen && EVP_CipherUpdate(c, NULL, &n, aad, (int)aadlen) != 1)
        goto out;
    if (len && EVP_CipherUpdate(c, buf, &n, buf, (int)len) != 1)
        goto out;
    if (!seal && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, REC_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_CipherFinal_ex(c, buf + len, &n) != 1)
        goto out;
    if (seal && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, REC_TAG_LEN, tag) != 1)
        goto out;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(c);
    return rc;
}

int rec_gcm_seal(const uint8_t key[REC_KEY_LEN], const uint8_t nonce[REC_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                 uint8_t tag[REC_TAG_LEN])
{
    return gcm_run(true, key, nonce, aad, aadlen, buf, len, tag);
}

int rec_gcm_open(const uint8_t key[REC_KEY_LEN], const uint8_t nonce[REC_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                 const uint8_t tag[REC_TAG_LEN])
{
    uint8_t t[REC_TAG_LEN];
    memcpy(t, tag, sizeof(t));
    return gcm_run(false, key, nonce, aad, aadlen, buf, len, t);
}

static int signer_id_of(EVP_PKEY *pk, uint8_t id[REC_SIGNER_ID_LEN])
{
    uint8_t raw[32];
    size_t len = sizeof(raw);
    if (EVP_PKEY_get_raw_public_key(pk, raw, &len) != 1 || len != sizeof(raw))
        return -1;
    uint8_t h[REC_HASH_LEN];
    rec_sha256(raw, len, NULL, 0, h);
    memcpy(id, h, REC_SIGNER_ID_LEN);
    return 0;
}

int rec_keys_sign(const uint8_t *msg, size_t len, uint8_t sig[REC_SIG_LEN],
                  uint8_t signer[REC_SIGNER_ID_LEN])
{
    if (!keys.signer || signer_id_of(keys.signer, signer) < 0)
        return -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t siglen = REC_SIG_LEN;
    int ok = md && EVP_DigestSignInit(md, NULL, NULL, NULL, keys.signer) == 1 &&
             EVP_DigestSign(md, sig, &siglen, msg, len) == 1 && siglen == REC_SIG_LEN;
    EVP_MD_CTX_free(md);
    return ok ? 0 : -1;
}

int rec_keys_verify(const uint8_t *msg, size_t len, const uint8_t sig[REC_SIG_LEN],
                    const uint8_t signer[REC_SIGNER_ID_LEN])
{
    if (!keys.verifier)
        return -1;
    if (memcmp(signer, keys.verifier_id, REC_SIGNER_ID_LEN) != 0)
        return 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, keys.verifier) == 1 &&
             EVP_DigestVerify(md, sig, REC_SIG_LEN, msg, len) == 1;
    EVP_MD_CTX_free(md);
    return ok ? 1 : 0;
}

/* ---- the loaded context ---- */

const uint8_t *rec_keys_master(const char *id)
{
    for (size_t i = 0; i < keys.n_masters; i++)
        if (strcmp(keys.masters[i].id, id) == 0)
            return keys.masters[i].key;
    return NULL;
}

const char *rec_keys_current_id(void)
{
    return keys.n_masters ? keys.masters[keys.n_masters - 1].id : NULL;
}

bool sp_rec_keys_can_write(void)
{
    return keys.n_masters > 0 && keys.signer != NULL;
}

bool sp_rec_keys_can_verify(void)
{
    return keys.verifier != NULL;
}

void sp_rec_keys_clear(void)
{
    if (keys.masters) {
        OPENSSL_cleanse(keys.masters, keys.n_masters * sizeof(master_key));
        free(keys.masters);
    }
    EVP_PKEY_free(keys.signer);
    EVP_PKEY_free(keys.verifier);
    memset(&keys, 0, sizeof(keys));
}

static bool key_id_valid(const char *id, size_t len)
{
    if (len == 0 || len >= SP_KEY_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

/* One "ID BASE64" line into k. */
static int parse_master_line(const char *line, size_t len, size_t line_no, master_key *k, char *err,
                             size_t errlen)
{
    const char *sp = memchr(line, ' ', len);
    if (!sp || !key_id_valid(line, (size_t)(sp - line))) {
        snprintf(err, errlen, "master key file line %zu: expected \"ID BASE64\"", line_no);
        return -1;
    }
    memcpy(k->id, line, (size_t)(sp - line));
    k->id[sp - line] = '\0';
    const char *b64 = sp + 1;
    size_t b64len = len - (size_t)(b64 - line);
    while (b64len && (b64[b64len - 1] == '\r' || b64[b64len - 1] == ' '))
        b64len--;
    uint8_t raw[64];
    long n = sp_base64_decode(b64, b64len, raw, sizeof(raw));
    if (n != SP_MASTER_KEY_LEN) {
        snprintf(err, errlen, "master key file line %zu (key %s): not 32 bytes of base64", line_no,
                 k->id);
        OPENSSL_cleanse(raw, sizeof(raw));
        return -1;
    }
    memcpy(k->key, raw, SP_MASTER_KEY_LEN);
    OPENSSL_cleanse(raw, sizeof(raw));
    return 0;
}

static int parse_master_text(const char *text, master_key **out, size_t *count, char *err,
                             size_t errlen)
{
    master_key *list = calloc(MASTER_KEYS_MAX, sizeof(*list));
    size_t n = 0, line_no = 0;
    if (!list) {
        snprintf(err, errlen, "out of memory reading master keys");
        return -1;
    }
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        line_no++;
        if (len > 0 && p[0] != '#') {
            if (n == MASTER_KEYS_MAX) {
                snprintf(err, errlen, "master key file holds more than %d keys", MASTER_KEYS_MAX);
                goto fail;
            }
            if (parse_master_line(p, len, line_no, &list[n], err, errlen) < 0)
                goto fail;
            for (size_t i = 0; i < n; i++)
                if (strcmp(list[i].id, list[n].id) == 0) {
                    snprintf(err, errlen, "master key file: key id %s appears twice", list[n].id);
                    goto fail;
                }
            n++;
        }
        p += len + (nl ? 1 : 0);
    }
    if (n == 0) {
        snprintf(err, errlen, "master key file holds no key");
        goto fail;
    }
    *out = list;
    *count = n;
    return 0;
fail:
    OPENSSL_cleanse(list, MASTER_KEYS_MAX * sizeof(*list));
    free(list);
    return -1;
}

static EVP_PKEY *pem_key(const char *pem, bool private_key, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pk = NULL;
    if (bio)
        pk = private_key ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)
                         : PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (!pk) {
        snprintf(err, errlen, "not a PEM %s key", private_key ? "private" : "public");
        return NULL;
    }
    if (EVP_PKEY_get_id(pk) != EVP_PKEY_ED25519) {
        snprintf(err, errlen, "the key is not an Ed25519 key");
        EVP_PKEY_free(pk);
        return NULL;
    }
    return pk;
}

static int set_verifier(EVP_PKEY *pk, char *err, size_t errlen)
{
    if (signer_id_of(pk, keys.verifier_id) < 0) {
        snprintf(err, errlen, "cannot read the Ed25519 public key");
        return -1;
    }
    if (!EVP_PKEY_up_ref(pk)) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    EVP_PKEY_free(keys.verifier);
    keys.verifier = pk;
    return 0;
}

int sp_rec_keys_load_text(const char *master_text, const char *signing_pem, char *err,
                          size_t errlen)
{
    char why[256];
    if (master_text) {
        master_key *list;
        size_t n;
        if (parse_master_text(master_text, &list, &n, err, errlen) < 0)
            return -1;
        if (keys.masters) {
            OPENSSL_cleanse(keys.masters, keys.n_masters * sizeof(master_key));
            free(keys.masters);
        }
        keys.masters = list;
        keys.n_masters = n;
    }
    if (signing_pem) {
        EVP_PKEY *pk = pem_key(signing_pem, true, why, sizeof(why));
        if (!pk) {
            snprintf(err, errlen, "signing key: %s", why);
            return -1;
        }
        EVP_PKEY_free(keys.signer);
        keys.signer = pk;
        if (set_verifier(pk, err, errlen) < 0)
            return -1;
    }
    return 0;
}

/* Reads an owner-only key file; with optional, a missing file is not an error (*text NULL). */
static int read_key_file(const char *what, const char *path, bool optional, char **text, char *err,
                         size_t errlen)
{
    char why[512];
    size_t len;
    *text = NULL;
    if (optional && access(path, F_OK) < 0 && errno == ENOENT)
        return 0;
    *text = sp_read_file(path, KEY_FILE_MAX, true, &len, why, sizeof(why));
    if (!*text) {
        snprintf(err, errlen, "%s: %s", what, why);
        return -1;
    }
    return 0;
}

static void free_key_text(char *text)
{
    if (text) {
        OPENSSL_cleanse(text, strlen(text));
        free(text);
    }
}

static int load_files(const sp_config *cfg, bool optional, char *err, size_t errlen)
{
    char *master = NULL, *signing = NULL;
    int rc = -1;
    if (cfg->master_key_file &&
        read_key_file("master_key_file", cfg->master_key_file, optional, &master, err, errlen) < 0)
        goto out;
    if (cfg->signing_key_file && read_key_file("signing_key_file", cfg->signing_key_file, optional,
                                               &signing, err, errlen) < 0)
        goto out;
    char why[512];
    if (sp_rec_keys_load_text(master, signing, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: %s", master && !signing ? cfg->master_key_file : cfg->path, why);
        goto out;
    }
    rc = 0;
out:
    free_key_text(master);
    free_key_text(signing);
    return rc;
}

int sp_rec_keys_init(const sp_config *cfg, char *err, size_t errlen)
{
    if (!cfg->master_key_file || !cfg->signing_key_file) {
        snprintf(err, errlen,
                 "[sallyport] master_key_file and signing_key_file are required: recordings "
                 "are always encrypted and signed (create both with `sallyport keys init`)");
        return -1;
    }
    sp_rec_keys_clear();
    return load_files(cfg, false, err, errlen);
}

int sp_rec_keys_init_readonly(const sp_config *cfg, const char *public_key_pem, char *err,
                              size_t errlen)
{
    sp_rec_keys_clear();
    if (cfg && load_files(cfg, true, err, errlen) < 0)
        return -1;
    if (!public_key_pem)
        return 0;
    char *text = NULL, why[256];
    size_t len;
    text = sp_read_file(public_key_pem, KEY_FILE_MAX, false, &len, why, sizeof(why));
    if (!text) {
        snprintf(err, errlen, "public key: %s", why);
        return -1;
    }
    EVP_PKEY *pk = pem_key(text, false, why, sizeof(why));
    free(text);
    if (!pk) {
        snprintf(err, errlen, "public key %s: %s", public_key_pem, why);
        return -1;
    }
    int rc = set_verifier(pk, err, errlen);
    EVP_PKEY_free(pk);
    return rc;
}

/* ---- key files ---- */

static int write_new_file(const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "create %s: %s", path, strerror(errno));
        return -1;
    }
    if (sp_write_all(fd, text, len) < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "write %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    close(fd);
    return 0;
}

/* "mk-YYYYMMDD-" + 8 hex of randomness, and the key's base64 line. */
static int new_master_line(char *line, size_t linelen, char *id, size_t idlen, char *err,
                           size_t errlen)
{
    uint8_t rnd[4], key[SP_MASTER_KEY_LEN];
    if (sp_random_bytes(rnd, sizeof(rnd)) < 0 || sp_random_bytes(key, sizeof(key)) < 0) {
        snprintf(err, errlen, "the random number generator failed");
        return -1;
    }
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char hex[9], b64[48];
    sp_hex_encode(rnd, sizeof(rnd), hex);
    snprintf(id, idlen, "mk-%04d%02d%02d-%s", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, hex);
    sp_base64_encode(key, sizeof(key), b64);
    snprintf(line, linelen, "%s %s\n", id, b64);
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(b64, sizeof(b64));
    return 0;
}

static int make_signing_file(const char *path, char *err, size_t errlen)
{
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *bio = BIO_new(BIO_s_mem());
    int rc = -1;
    if (!pk || !bio || PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL) != 1) {
        snprintf(err, errlen, "cannot generate an Ed25519 signing key");
        goto out;
    }
    char *pem;
    long len = BIO_get_mem_data(bio, &pem);
    rc = write_new_file(path, pem, (size_t)len, err, errlen);
out:
    BIO_free(bio); /* BIO_s_mem clears nothing: the key bytes are freed with it */
    EVP_PKEY_free(pk);
    return rc;
}

static int check_existing(const char *what, const char *path, bool master, char *err, size_t errlen)
{
    char *text;
    if (read_key_file(what, path, false, &text, err, errlen) < 0)
        return -1;
    char why[256];
    int rc = 0;
    if (master) {
        master_key *list;
        size_t n;
        rc = parse_master_text(text, &list, &n, why, sizeof(why));
        if (rc == 0) {
            OPENSSL_cleanse(list, MASTER_KEYS_MAX * sizeof(*list));
            free(list);
        }
    } else {
        EVP_PKEY *pk = pem_key(text, true, why, sizeof(why));
        rc = pk ? 0 : -1;
        EVP_PKEY_free(pk);
    }
    if (rc < 0)
        snprintf(err, errlen, "%s %s exists but is not usable: %s", what, path, why);
    free_key_text(text);
    return rc;
}

int sp_keys_init_files(const char *master_path, const char *signing_path, bool *made_master,
                       bool *made_signing, char *err, size_t errlen)
{
    *made_master = *made_signing = false;
    if (access(master_path, F_OK) == 0) {
        if (check_existing("master_key_file", master_path, true, err, errlen) < 0)
            return -1;
    } else {
        char line[128], id[SP_KEY_ID_MAX], text[256];
        if (new_master_line(line, sizeof(line), id, sizeof(id), err, errlen) < 0)
            return -1;
        int n = snprintf(text, sizeof(text), "%s%s", MASTER_FILE_HEADER, line);
        int rc = write_new_file(master_path, text, (size_t)n, err, errlen);
        OPENSSL_cleanse(line, sizeof(line));
        OPENSSL_cleanse(text, sizeof(text));
        if (rc < 0)
            return -1;
        *made_master = true;
    }
    if (access(signing_path, F_OK) == 0)
        return check_existing("signing_key_file", signing_path, false, err, errlen);
    if (make_signing_file(signing_path, err, errlen) < 0)
        return -1;
    *made_signing = true;
    return 0;
}

int sp_keys_rotate(const char *master_path, char *new_id, size_t idlen, char *err, size_t errlen)
{
    if (check_existing("master_key_file", master_path, true, err, errlen) < 0)
        return -1;
    char line[128];
    if (new_master_line(line, sizeof(line), new_id, idlen, err, errlen) < 0)
        return -1;
    int rc = -1;
    int fd = open(master_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", master_path, strerror(errno));
        goto out;
    }
    /* A file written by hand may lack its last newline: the new key must start a line. */
    struct stat st;
    char last = '\n';
    int rfd = open(master_path, O_RDONLY | O_CLOEXEC);
    if (rfd >= 0 && fstat(rfd, &st) == 0 && st.st_size > 0)
        if (pread(rfd, &last, 1, st.st_size - 1) != 1)
            last = '\n';
    if (rfd >= 0)
        close(rfd);
    if ((last != '\n' && sp_write_all(fd, "\n", 1) < 0) ||
        sp_write_all(fd, line, strlen(line)) < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "append to %s: %s", master_path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    OPENSSL_cleanse(line, sizeof(line));
    return rc;
}

int sp_keys_list_master(const char *master_path,
                        void (*fn)(const char *id, bool current, void *arg), void *arg, char *err,
                        size_t errlen)
{
    char *text;
    if (read_key_file("master_key_file", master_path, false, &text, err, errlen) < 0)
        return -1;
    master_key *list;
    size_t n;
    char why[256];
    int rc = parse_master_text(text, &list, &n, why, sizeof(why));
    free_key_text(text);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", master_path, why);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        fn(list[i].id, i + 1 == n, arg);
    OPENSSL_cleanse(list, MASTER_KEYS_MAX * sizeof(*list));
    free(list);
    return 0;
}

int sp_keys_public(const char *signing_path, char *pem, size_t pemlen, char *id, size_t idlen,
                   char *err, size_t errlen)
{
    char *text, why[256];
    if (read_key_file("signing_key_file", signing_path, false, &text, err, errlen) < 0)
        return -1;
    EVP_PKEY *pk = pem_key(text, true, why, sizeof(why));
    free_key_text(text);
    if (!pk) {
        snprintf(err, errlen, "%s: %s", signing_path, why);
        return -1;
    }
    int rc = -1;
    BIO *bio = BIO_new(BIO_s_mem());
    uint8_t sid[REC_SIGNER_ID_LEN];
    char *data;
    if (!bio || PEM_write_bio_PUBKEY(bio, pk) != 1 || signer_id_of(pk, sid) < 0) {
        snprintf(err, errlen, "%s: cannot derive the public key", signing_path);
        goto out;
    }
    long len = BIO_get_mem_data(bio, &data);
    if (len < 0 || (size_t)len >= pemlen) {
        snprintf(err, errlen, "public key PEM does not fit");
        goto out;
    }
    memcpy(pem, data, (size_t)len);
    pem[len] = '\0';
    char hex[2 * REC_SIGNER_ID_LEN + 1];
    sp_hex_encode(sid, sizeof(sid), hex);
    snprintf(id, idlen, "sk-%s", hex);
    rc = 0;
out:
    BIO_free(bio);
    EVP_PKEY_free(pk);
    return rc;
}
