/* OpenSSH certificates: what we sign OpenSSH reads (ssh-keygen -L), what ssh-keygen signs we
 * parse, every refusal of sp_ssh_cert_check says why, malformed blobs never parse, CA keys are
 * owner-only Ed25519, and a credential's liveness comes from the store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "auth/sshcert.h"
#include "auth/store.h"
#include "common/util.h"

#define VALID_AFTER 1700000000ULL  /* 2023-11-14T22:13:20Z */
#define VALID_BEFORE 4000000000ULL /* 2096-10-02T07:06:40Z */
#define NOW 1800000000ULL
#define SERIAL 12345678901234567890ULL

typedef struct fixture {
    char dir[64];
    sp_ssh_ca *ca;     /* ours: PEM, made by sp_ssh_ca_generate */
    sp_buf ca_blob;    /* its public blob */
    sp_buf sshca_blob; /* a CA made by ssh-keygen (OpenSSH format, Ed25519) */
    char err[512];
} fixture;

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    if (system(cmd) != 0)
        fail_msg("command failed: %s", cmd);
}

/* A command's output, lines trimmed and joined with '|', so checks do not depend on
 * ssh-keygen's indentation. */
static void capture(char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void capture(char *out, size_t outlen, const char *fmt, ...)
{
    char cmd[2048], line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = 0;
    out[0] = '\0';
    while (fgets(line, sizeof(line), p)) {
        char *s = line + strspn(line, " \t");
        size_t len = strcspn(s, "\r\n");
        while (len > 0 && s[len - 1] == ' ')
            len--;
        n += (size_t)snprintf(out + n, outlen - n, "%.*s|", (int)len, s);
        assert_true(n < outlen);
    }
    if (pclose(p) != 0)
        fail_msg("command failed: %s (output: %s)", cmd, out);
}

/* The blob of the first line of an OpenSSH public key or certificate file. */
static void read_key_blob(const char *path, sp_buf *out)
{
    char err[256], type[128], b64[16384];
    size_t len;
    char *text = sp_read_file(path, 65536, false, &len, err, sizeof(err));
    assert_non_null(text);
    assert_int_equal(sscanf(text, "%127s %16383s", type, b64), 2);
    free(text);
    sp_buf_reset(out);
    assert_int_equal(sp_buf_reserve(out, sizeof(b64)), 0);
    long n = sp_base64_decode(b64, strlen(b64), out->data, out->cap);
    assert_true(n > 0);
    out->len = (size_t)n;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%s\n", text);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char path[128];
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp_sshcert_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(path, sizeof(path), "%s/ca.pem", f->dir);
    assert_int_equal(sp_ssh_ca_generate(path, f->err, sizeof(f->err)), 0);
    f->ca = sp_ssh_ca_load(path, f->err, sizeof(f->err));
    assert_non_null(f->ca);
    sp_buf_init(&f->ca_blob, 4096);
    sp_buf_init(&f->sshca_blob, 65536);
    assert_int_equal(sp_ssh_ca_public_blob(f->ca, &f->ca_blob), 0);
    sh("ssh-keygen -q -t ed25519 -N '' -C sshca -f %s/sshca", f->dir);
    snprintf(path, sizeof(path), "%s/sshca.pub", f->dir);
    read_key_blob(path, &f->sshca_blob);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sp_ssh_ca_free(f->ca);
    sp_buf_free(&f->ca_blob);
    sp_buf_free(&f->sshca_blob);
    sh("rm -rf '%s'", f->dir);
    free(f);
    return 0;
}

/* The subject key types a user may bring: the ssh-keygen arguments and the names. */
typedef struct subject_kind {
    const char *keygen; /* ssh-keygen -t ... */
    const char *plain;
    const char *cert;
} subject_kind;

static const subject_kind SUBJECTS[] = {
    {"ed25519", "ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"},
    {"ecdsa -b 256", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256-cert-v01@openssh.com"},
    {"rsa -b 2048", "ssh-rsa", "ssh-rsa-cert-v01@openssh.com"},
};

static void make_user_key(fixture *f, const subject_kind *k, const char *name, sp_buf *pub)
{
    char path[160];
    sh("ssh-keygen -q -t %s -N '' -C %s -f %s/%s", k->keygen, name, f->dir, name);
    snprintf(path, sizeof(path), "%s/%s.pub", f->dir, name);
    read_key_blob(path, pub);
}

/* The subject key fields the parser points at are the plain key blob after its type name. */
static void assert_subject_is(const sp_ssh_cert *c, const sp_buf *pub, const char *plain)
{
    size_t skip = 4 + strlen(plain);
    assert_int_equal(c->pubkey_len, pub->len - skip);
    assert_memory_equal(c->pubkey, pub->data + skip, c->pubkey_len);
}

static const char *const UNSORTED_EXTENSIONS[] = {
    "permit-user-rc", "permit-pty", "permit-port-forwarding", "permit-agent-forwarding",
    "permit-X11-forwarding"};

static void sign_for(fixture *f, const sp_buf *pub, sp_buf *cert)
{
    const char *principals[] = {"alice", "ops"};
    sp_ssh_cert_req req = {
        .pubkey_blob = pub->data,
        .pubkey_len = pub->len,
        .serial = SERIAL,
        .key_id = "alice cred=abc123",
        .principals = principals,
        .n_principals = 2,
        .valid_after = VALID_AFTER,
        .valid_before = VALID_BEFORE,
        .extensions = UNSORTED_EXTENSIONS,
        .n_extensions = SP_ARRAY_LEN(UNSORTED_EXTENSIONS),
    };
    assert_int_equal(sp_ssh_cert_sign(f->ca, &req, cert, f->err, sizeof(f->err)), 0);
}

static void test_signed_certs_read_by_ssh_keygen(void **state)
{
    fixture *f = *state;
    char path[160], line[24576], out[8192], ca_fp[512], want[256];
    sp_buf pub, cert;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    assert_int_equal(sp_ssh_ca_public_line(f->ca, "test-ca", line, sizeof(line)), 0);
    snprintf(path, sizeof(path), "%s/ca.pub", f->dir);
    write_text(path, line);
    capture(ca_fp, sizeof(ca_fp), "ssh-keygen -l -f %s | cut -d' ' -f2", path);
    for (size_t i = 0; i < SP_ARRAY_LEN(SUBJECTS); i++) {
        const subject_kind *k = &SUBJECTS[i];
        make_user_key(f, k, k->plain, &pub);
        sign_for(f, &pub, &cert);
        assert_int_equal(sp_ssh_cert_line(cert.data, cert.len, "alice", line, sizeof(line)), 0);
        assert_int_equal(strncmp(line, k->cert, strlen(k->cert)), 0);
        snprintf(path, sizeof(path), "%s/%s-cert.pub", f->dir, k->plain);
        write_text(path, line);
        /* ssh-keygen verifies the CA signature when it loads a certificate */
        capture(out, sizeof(out), "TZ=UTC ssh-keygen -L -f %s", path);
        snprintf(want, sizeof(want), "Type: %s user certificate|", k->cert);
        assert_non_null(strstr(out, want));
        snprintf(want, sizeof(want), "Signing CA: ED25519 %.*s (using ssh-ed25519)|",
                 (int)strcspn(ca_fp, "|"), ca_fp);
        assert_non_null(strstr(out, want));
        assert_non_null(strstr(out, "Key ID: \"alice cred=abc123\"|"));
        assert_non_null(strstr(out, "Serial: 12345678901234567890|"));
        assert_non_null(strstr(out, "Valid: from 2023-11-14T22:13:20 to 2096-10-02T07:06:40|"));
        assert_non_null(strstr(out, "Principals:|alice|ops|Critical Options: (none)|"));
        assert_non_null(strstr(out, "Extensions:|permit-X11-forwarding|permit-agent-forwarding|"
                                    "permit-port-forwarding|permit-pty|permit-user-rc|"));

        sp_ssh_cert c;
        assert_int_equal(sp_ssh_cert_parse(cert.data, cert.len, &c, f->err, sizeof(f->err)), 0);
        assert_string_equal(c.key_type, k->cert);
        assert_true(c.signature_ok);
        assert_true(c.serial == SERIAL);
        assert_int_equal(c.type, 1);
        assert_string_equal(c.key_id, "alice cred=abc123");
        assert_int_equal(c.n_principals, 2);
        assert_string_equal(c.principals[1], "ops");
        assert_true(c.valid_after == VALID_AFTER && c.valid_before == VALID_BEFORE);
        assert_int_equal(c.n_critical, 0);
        assert_subject_is(&c, &pub, k->plain);
        assert_int_equal(c.signature_key_len, f->ca_blob.len);
        assert_memory_equal(c.signature_key, f->ca_blob.data, f->ca_blob.len);
        assert_int_equal(sp_ssh_cert_check(&c, f->ca_blob.data, f->ca_blob.len, "ops", NOW, f->err,
                                           sizeof(f->err)),
                         0);
    }
    sp_buf_free(&pub);
    sp_buf_free(&cert);
}

/* ssh-keygen cannot load a PKCS#8 Ed25519 CA (OpenSSH 9.2), so these use its own CA. */
static void test_parses_ssh_keygen_certs(void **state)
{
    fixture *f = *state;
    char path[160];
    sp_buf pub, cert;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    for (size_t i = 0; i < SP_ARRAY_LEN(SUBJECTS); i++) {
        const subject_kind *k = &SUBJECTS[i];
        char name[64];
        snprintf(name, sizeof(name), "kg-%s", k->plain);
        make_user_key(f, k, name, &pub);
        sh("ssh-keygen -q -s %s/sshca -I 'id-alice' -n alice,ops -V +5m -z 42 %s/%s.pub", f->dir,
           f->dir, name);
        snprintf(path, sizeof(path), "%s/%s-cert.pub", f->dir, name);
        read_key_blob(path, &cert);
        sp_ssh_cert c;
        assert_int_equal(sp_ssh_cert_parse(cert.data, cert.len, &c, f->err, sizeof(f->err)), 0);
        assert_string_equal(c.key_type, k->cert);
        assert_true(c.signature_ok);
        assert_true(c.serial == 42);
        assert_int_equal(c.type, 1);
        assert_string_equal(c.key_id, "id-alice");
        assert_int_equal(c.n_principals, 2);
        assert_string_equal(c.principals[0], "alice");
        assert_string_equal(c.principals[1], "ops");
        assert_int_equal(c.n_critical, 0);
        assert_subject_is(&c, &pub, k->plain);
        uint64_t now = (uint64_t)(sp_now_us() / 1000000);
        /* -V +5m: from a minute ago (ssh-keygen backdates) to five minutes from now */
        assert_true(c.valid_after <= now && c.valid_after + 120 > now);
        assert_true(c.valid_before > now + 240 && c.valid_before <= now + 300);
        assert_int_equal(sp_ssh_cert_check(&c, f->sshca_blob.data, f->sshca_blob.len, "alice", now,
                                           f->err, sizeof(f->err)),
                         0);
    }
    sp_buf_free(&pub);
    sp_buf_free(&cert);
}

/* ---- refusals ---- */

/* The first byte of the key id in our Ed25519 certificates: type, nonce, key, serial, type. */
#define KEY_ID_OFFSET (4 + 32 + 4 + 32 + 4 + 32 + 8 + 4 + 4)

enum flip { FLIP_NONE, FLIP_KEY_ID, FLIP_SIGNATURE };

typedef struct refusal {
    const char *name;
    const char *keygen_args; /* signed by ssh-keygen -s sshca ARGS; NULL: by our CA */
    bool trust_sshca;        /* trust the ssh-keygen CA instead of ours */
    const char *principal;
    uint64_t now; /* our certificates; ssh-keygen's are checked at the current time */
    enum flip flip;
    const char *force_command;
    const char *expect; /* in the error */
} refusal;

static const refusal REFUSALS[] = {
    {.name = "wrong CA",
     .trust_sshca = true,
     .principal = "alice",
     .now = NOW,
     .expect = "not by this gateway's user CA"},
    {.name = "expired",
     .principal = "alice",
     .now = VALID_BEFORE,
     .expect = "expired at 2096-10-02T07:06:40"},
    {.name = "not yet valid",
     .principal = "alice",
     .now = VALID_AFTER - 1,
     .expect = "not valid until 2023-11-14T22:13:20"},
    {.name = "wrong principal",
     .principal = "mallory",
     .now = NOW,
     .expect = "is for principal alice and others, not for mallory"},
    {.name = "force-command",
     .principal = "alice",
     .now = NOW,
     .force_command = "/bin/true",
     .expect = "critical option force-command"},
    {.name = "bad signature",
     .principal = "alice",
     .now = NOW,
     .flip = FLIP_SIGNATURE,
     .expect = "signature does not verify"},
    {.name = "altered key id",
     .principal = "alice",
     .now = NOW,
     .flip = FLIP_KEY_ID,
     .expect = "signature does not verify"},
    {.name = "host cert",
     .keygen_args = "-h -I host -n alice -V +5m",
     .trust_sshca = true,
     .principal = "alice",
     .expect = "host certificate"},
    {.name = "unknown critical option",
     .keygen_args = "-I x -n alice -O critical:frobnicate=1",
     .trust_sshca = true,
     .principal = "alice",
     .expect = "critical option frobnicate"},
    {.name = "source-address",
     .keygen_args = "-I x -n alice -O source-address=127.0.0.1/32",
     .trust_sshca = true,
     .principal = "alice",
     .expect = "critical option source-address"},
};

static void refused_cert(fixture *f, const refusal *r, const sp_buf *pub, sp_buf *cert)
{
    char path[160];
    if (r->keygen_args) {
        sh("ssh-keygen -q -s %s/sshca %s %s/user.pub", f->dir, r->keygen_args, f->dir);
        snprintf(path, sizeof(path), "%s/user-cert.pub", f->dir);
        read_key_blob(path, cert);
        return;
    }
    const char *principals[] = {"alice", "ops"};
    sp_ssh_cert_req req = {.pubkey_blob = pub->data,
                           .pubkey_len = pub->len,
                           .serial = 7,
                           .key_id = "alice cred=abc123",
                           .principals = principals,
                           .n_principals = 2,
                           .valid_after = VALID_AFTER,
                           .valid_before = VALID_BEFORE,
                           .force_command = r->force_command};
    assert_int_equal(sp_ssh_cert_sign(f->ca, &req, cert, f->err, sizeof(f->err)), 0);
}

static void test_check_refusals(void **state)
{
    fixture *f = *state;
    sp_buf pub, cert;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    make_user_key(f, &SUBJECTS[0], "user", &pub);
    for (size_t i = 0; i < SP_ARRAY_LEN(REFUSALS); i++) {
        const refusal *r = &REFUSALS[i];
        refused_cert(f, r, &pub, &cert);
        if (r->flip == FLIP_KEY_ID)
            cert.data[KEY_ID_OFFSET] ^= 0x01;
        if (r->flip == FLIP_SIGNATURE)
            cert.data[cert.len - 1] ^= 0x01;
        sp_ssh_cert c;
        assert_int_equal(sp_ssh_cert_parse(cert.data, cert.len, &c, f->err, sizeof(f->err)), 0);
        const sp_buf *trusted = r->trust_sshca ? &f->sshca_blob : &f->ca_blob;
        uint64_t now = r->keygen_args ? (uint64_t)(sp_now_us() / 1000000) : r->now;
        f->err[0] = '\0';
        int rc = sp_ssh_cert_check(&c, trusted->data, trusted->len, r->principal, now, f->err,
                                   sizeof(f->err));
        if (rc != -1 || !strstr(f->err, r->expect))
            fail_msg("%s: rc %d, error \"%s\", expected \"%s\"", r->name, rc, f->err, r->expect);
    }
    sp_buf_free(&pub);
    sp_buf_free(&cert);
}

/* A CA of another key type: parsed, signature_ok false, and check says why. */
static void test_rsa_ca_reported(void **state)
{
    fixture *f = *state;
    char path[160];
    sp_buf pub, cert, rsa_ca;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    sp_buf_init(&rsa_ca, 65536);
    make_user_key(f, &SUBJECTS[0], "rsa-signed", &pub);
    sh("ssh-keygen -q -t rsa -b 2048 -N '' -f %s/rsaca", f->dir);
    sh("ssh-keygen -q -s %s/rsaca -I x -n alice %s/rsa-signed.pub", f->dir, f->dir);
    snprintf(path, sizeof(path), "%s/rsa-signed-cert.pub", f->dir);
    read_key_blob(path, &cert);
    snprintf(path, sizeof(path), "%s/rsaca.pub", f->dir);
    read_key_blob(path, &rsa_ca);
    sp_ssh_cert c;
    assert_int_equal(sp_ssh_cert_parse(cert.data, cert.len, &c, f->err, sizeof(f->err)), 0);
    assert_false(c.signature_ok);
    uint64_t now = (uint64_t)(sp_now_us() / 1000000);
    assert_int_equal(
        sp_ssh_cert_check(&c, rsa_ca.data, rsa_ca.len, "alice", now, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "of a type this gateway cannot verify"));
    assert_int_equal(sp_ssh_cert_check(&c, f->ca_blob.data, f->ca_blob.len, "alice", now, f->err,
                                       sizeof(f->err)),
                     -1);
    assert_non_null(strstr(f->err, "signed by ssh-rsa CA key SHA256:"));
    sp_buf_free(&pub);
    sp_buf_free(&cert);
    sp_buf_free(&rsa_ca);
}

/* Every prefix of a valid certificate, and one with a byte too many, is refused. */
static void test_malformed_refused(void **state)
{
    fixture *f = *state;
    sp_buf pub, cert;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    for (size_t k = 0; k < SP_ARRAY_LEN(SUBJECTS); k++) {
        char name[64];
        snprintf(name, sizeof(name), "trunc-%zu", k);
        make_user_key(f, &SUBJECTS[k], name, &pub);
        sign_for(f, &pub, &cert);
        sp_ssh_cert c;
        for (size_t n = 0; n < cert.len; n++) {
            uint8_t *copy = malloc(n ? n : 1); /* exact size: ASan catches over-reads */
            memcpy(copy, cert.data, n);
            if (sp_ssh_cert_parse(copy, n, &c, f->err, sizeof(f->err)) != -1)
                fail_msg("a %zu-byte prefix of a %zu-byte certificate parsed", n, cert.len);
            free(copy);
        }
        assert_int_equal(sp_buf_append_u8(&cert, 0), 0);
        assert_int_equal(sp_ssh_cert_parse(cert.data, cert.len, &c, f->err, sizeof(f->err)), -1);
        assert_non_null(strstr(f->err, "after its signature"));
    }
    /* a plain public key is not a certificate */
    assert_int_equal(
        sp_ssh_cert_parse(pub.data, pub.len, &(sp_ssh_cert){0}, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "unsupported certificate type ssh-rsa"));
    sp_buf_free(&pub);
    sp_buf_free(&cert);
}

static void test_sign_rejects_bad_requests(void **state)
{
    fixture *f = *state;
    sp_buf pub, cert;
    sp_buf_init(&pub, 65536);
    sp_buf_init(&cert, SP_SSH_CERT_MAX);
    make_user_key(f, &SUBJECTS[0], "req", &pub);
    const char *principals[] = {"alice"};
    const char *dup[] = {"permit-pty", "permit-pty"};
    sp_ssh_cert_req base = {.pubkey_blob = pub.data,
                            .pubkey_len = pub.len,
                            .key_id = "k",
                            .principals = principals,
                            .n_principals = 1,
                            .valid_after = 10,
                            .valid_before = 20};
    sp_ssh_cert_req r = base;
    r.n_principals = 0;
    assert_int_equal(sp_ssh_cert_sign(f->ca, &r, &cert, f->err, sizeof(f->err)), -1);
    r = base;
    r.valid_before = 10;
    assert_int_equal(sp_ssh_cert_sign(f->ca, &r, &cert, f->err, sizeof(f->err)), -1);
    r = base;
    r.extensions = dup;
    r.n_extensions = 2;
    assert_int_equal(sp_ssh_cert_sign(f->ca, &r, &cert, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "given twice"));
    r = base;
    r.pubkey_len = pub.len - 1;
    assert_int_equal(sp_ssh_cert_sign(f->ca, &r, &cert, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "malformed"));
    sp_buf_free(&pub);
    sp_buf_free(&cert);
}

static void test_ca_keys(void **state)
{
    fixture *f = *state;
    char path[160];
    struct stat st;
    snprintf(path, sizeof(path), "%s/ca.pem", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(sp_ssh_ca_generate(path, f->err, sizeof(f->err)), -1);
    assert_non_null(strstr(f->err, "never overwritten"));
    /* owner-only */
    assert_int_equal(chmod(path, 0640), 0);
    assert_null(sp_ssh_ca_load(path, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "chmod 600"));
    assert_int_equal(chmod(path, 0600), 0);
    /* Ed25519 only */
    snprintf(path, sizeof(path), "%s/p256.pem", f->dir);
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s 2>/dev/null && "
       "chmod 600 %s",
       path, path);
    assert_null(sp_ssh_ca_load(path, f->err, sizeof(f->err)));
    assert_non_null(strstr(f->err, "must be Ed25519"));
    /* a key made by openssl genpkey is a CA too, and its public line is what ssh-keygen
     * derives from the same key */
    snprintf(path, sizeof(path), "%s/genpkey.pem", f->dir);
    sh("openssl genpkey -algorithm ed25519 -out %s && chmod 600 %s", path, path);
    sp_ssh_ca *ca = sp_ssh_ca_load(path, f->err, sizeof(f->err));
    assert_non_null(ca);
    char line[256], expect[512];
    assert_int_equal(sp_ssh_ca_public_line(ca, NULL, line, sizeof(line)), 0);
    capture(expect, sizeof(expect),
            "openssl pkey -in %s -pubout -outform DER 2>/dev/null | tail -c 32 | "
            "(printf '\\000\\000\\000\\013ssh-ed25519\\000\\000\\000\\040'; cat) | base64 -w0",
            path);
    assert_int_equal(strncmp(line, "ssh-ed25519 ", 12), 0);
    assert_int_equal(strncmp(line + 12, expect, strlen(line + 12)), 0);
    assert_int_equal(sp_ssh_ca_public_line(ca, "c", line, 20), -1);
    sp_ssh_ca_free(ca);
}

/* The store side of an "ssh-cert" credential: live until revoked or expired, bound to the
 * identity and to the certificate it was issued for. */
static void test_store_cred_live(void **state)
{
    fixture *f = *state;
    char path[160];
    sp_store *s;
    uint8_t hash[SP_SCRAM_KEY_LEN], other[SP_SCRAM_KEY_LEN], zeros[SP_SCRAM_KEY_LEN] = {0};
    memset(hash, 0xab, sizeof(hash));
    memset(other, 0xcd, sizeof(other));
    snprintf(path, sizeof(path), "%s/state.db", f->dir);
    assert_int_equal(sp_store_open(path, &s, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_identity_add(s, "alice", "human", "ops", "t", f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_identity_add(s, "bob", "human", "ops", "t", f->err, sizeof(f->err)),
                     0);
    int64_t now = 5000000000LL, expires = now + 900000000LL;
    assert_int_equal(sp_store_cred_add(s, "c1", "alice", "ssh-cert", hash, zeros, expires, f->err,
                                       sizeof(f->err)),
                     0);
    assert_int_equal(sp_store_cred_live(s, "c1", "alice", now, hash, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_cred_live(s, "c1", "alice", now, NULL, f->err, sizeof(f->err)), 0);
    static const struct {
        const char *id, *identity;
        int64_t at;
        bool other_cert;
        const char *expect;
    } refused[] = {
        {"zz9", "alice", 0, false, "no credential with id zz9"},
        {"c1", "bob", 0, false, "belongs to alice, not to bob"},
        {"c1", "alice", 900000000LL, false, "has expired"},
        {"c1", "alice", 0, true, "issued for another certificate"},
    };
    for (size_t i = 0; i < SP_ARRAY_LEN(refused); i++) {
        int rc = sp_store_cred_live(s, refused[i].id, refused[i].identity, now + refused[i].at,
                                    refused[i].other_cert ? other : hash, f->err, sizeof(f->err));
        assert_int_equal(rc, SP_STORE_NOT_FOUND);
        assert_non_null(strstr(f->err, refused[i].expect));
    }
    assert_int_equal(sp_store_cred_revoke(s, "c1", now + 1, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_cred_live(s, "c1", "alice", now + 2, hash, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_non_null(strstr(f->err, "is revoked"));
    sp_store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_signed_certs_read_by_ssh_keygen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_parses_ssh_keygen_certs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rsa_ca_reported, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sign_rejects_bad_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ca_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_cred_live, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
