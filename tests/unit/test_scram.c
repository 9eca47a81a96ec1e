/* SCRAM-SHA-256: RFC 7677 vectors on both ends, client/server round trips (with and without
 * channel binding), refusals, certificate end-point hashes, and against a real PostgreSQL 15
 * when one is installed (tests/unit/pg_scram_verifier.sh): the verifier text logs psql in,
 * and the SCRAM client logs in with precomputed keys over the wire. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth/scram.h"
#include "auth/scram_internal.h"
#include "common/buf.h"
#include "common/util.h"
#include "proxy/pgproto.h"

#define RFC_SALT "W22ZaJ0SNY7soEsUEjb6gQ=="
#define RFC_CLIENT_NONCE "rOprNGfwEbeRWgbNEkqO"
#define RFC_SERVER_NONCE "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
#define RFC_CLIENT_FIRST "n,,n=user,r=" RFC_CLIENT_NONCE
#define RFC_SERVER_FIRST "r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",s=" RFC_SALT ",i=4096"
#define RFC_CLIENT_FINAL                                                                           \
    "c=biws,r=" RFC_CLIENT_NONCE RFC_SERVER_NONCE ",p=dHzbZapWIk4jUhN+"                            \
    "Ute9ytag9zjfMHgsqmmiz7AndVQ="
#define RFC_SERVER_FINAL "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

typedef struct keys {
    uint8_t salt[SP_SCRAM_SALTLEN];
    uint8_t client[SP_SCRAM_KEYLEN], stored[SP_SCRAM_KEYLEN], server[SP_SCRAM_KEYLEN];
} keys;

static void derive(const char *password, const char *salt64, keys *k)
{
    assert_int_equal(sp_base64_decode(salt64, strlen(salt64), k->salt, sizeof(k->salt)),
                     SP_SCRAM_SALTLEN);
    assert_int_equal(sp_scram_derive(password, strlen(password), k->salt, sizeof(k->salt), 4096,
                                     k->client, k->stored, k->server),
                     0);
}

static const uint8_t *u8(const char *s)
{
    return (const uint8_t *)s;
}

static void assert_buf_str(sp_buf *b, const char *want)
{
    assert_int_equal(b->len, strlen(want));
    assert_memory_equal(b->data, want, b->len);
}

static void rfc7677_server(void **state)
{
    (void)state;
    keys k;
    derive("pencil", RFC_SALT, &k);
    sp_scram_server s;
    sp_buf out;
    char err[256];
    sp_buf_init(&out, 4096);
    sp_scram_server_init(&s, false, NULL, 0);
    assert_int_equal(sp_scram_server_first_with_nonce_for_test(
                         &s, SP_SCRAM_MECH, u8(RFC_CLIENT_FIRST), strlen(RFC_CLIENT_FIRST), k.salt,
                         sizeof(k.salt), 4096, RFC_SERVER_NONCE, &out, err, sizeof(err)),
                     0);
    assert_buf_str(&out, RFC_SERVER_FIRST);
    assert_int_equal(sp_scram_server_final_parse(&s, u8(RFC_CLIENT_FINAL), strlen(RFC_CLIENT_FINAL),
                                                 err, sizeof(err)),
                     0);
    assert_true(sp_scram_server_check(&s, k.stored));
    keys wrong;
    derive("pencil2", RFC_SALT, &wrong);
    assert_false(sp_scram_server_check(&s, wrong.stored));
    sp_buf_reset(&out);
    assert_int_equal(sp_scram_server_final_message(&s, k.server, &out), 0);
    assert_buf_str(&out, RFC_SERVER_FINAL);
    sp_buf_free(&out);
}

static void rfc7677_client(const char *password, const keys *k)
{
    sp_scram_client c;
    sp_buf out;
    char err[256];
    sp_buf_init(&out, 4096);
    sp_scram_client_init(&c, password, k ? k->salt : NULL, 4096, k ? k->client : NULL,
                         k ? k->server : NULL);
    assert_int_equal(sp_scram_client_first_with_nonce_for_test(&c, "user", RFC_CLIENT_NONCE, &out),
                     0);
    assert_buf_str(&out, RFC_CLIENT_FIRST);
    sp_buf_reset(&out);
    assert_int_equal(sp_scram_client_final(&c, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &out,
                                           err, sizeof(err)),
                     0);
    assert_buf_str(&out, RFC_CLIENT_FINAL);
    assert_int_equal(sp_scram_client_verify(&c, u8(RFC_SERVER_FINAL), strlen(RFC_SERVER_FINAL), err,
                                            sizeof(err)),
                     0);
    sp_buf_free(&out);
}

static void rfc7677_client_with_password(void **state)
{
    (void)state;
    rfc7677_client("pencil", NULL);
}

static void rfc7677_client_with_precomputed_keys(void **state)
{
    (void)state;
    keys k;
    derive("pencil", RFC_SALT, &k);
    rfc7677_client(NULL, &k);
}

static void client_without_password_refuses_other_salt(void **state)
{
    (void)state;
    keys k;
    derive("pencil", "AAAAAAAAAAAAAAAAAAAAAA==", &k);
    sp_scram_client c;
    sp_buf out;
    char err[256] = "";
    sp_buf_init(&out, 4096);
    sp_scram_client_init(&c, NULL, k.salt, 4096, k.client, k.server);
    assert_int_equal(sp_scram_client_first_with_nonce_for_test(&c, "user", RFC_CLIENT_NONCE, &out),
                     0);
    sp_buf_reset(&out);
    assert_int_equal(sp_scram_client_final(&c, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &out,
                                           err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "no password"));
    assert_int_equal(out.len, 0);
    sp_buf_free(&out);
}

/* ---- round trips ---- */

/* A -PLUS client built here, independently of scram.c's client (which never binds). */
static void plus_client_final(const char *client_first_bare, const char *server_first,
                              const uint8_t *cbind, size_t cbind_len, const keys *k, char *out,
                              size_t outlen)
{
    uint8_t cb[128], stored[32], sig[32], proof[32];
    static const char gs2[] = "p=tls-server-end-point,,";
    char cb64[256], proof64[64], auth[4096], without[1024];
    memcpy(cb, gs2, strlen(gs2));
    memcpy(cb + strlen(gs2), cbind, cbind_len);
    sp_base64_encode(cb, strlen(gs2) + cbind_len, cb64);
    const char *nonce = strstr(server_first, "r=") + 2;
    int nlen = (int)strcspn(nonce, ",");
    snprintf(without, sizeof(without), "c=%s,r=%.*s", cb64, nlen, nonce);
    int alen = snprintf(auth, sizeof(auth), "%s,%s,%s", client_first_bare, server_first, without);
    SHA256(k->client, 32, stored);
    unsigned int sl = 32;
    HMAC(EVP_sha256(), stored, 32, u8(auth), (size_t)alen, sig, &sl);
    for (int i = 0; i < 32; i++)
        proof[i] = k->client[i] ^ sig[i];
    sp_base64_encode(proof, 32, proof64);
    assert_true(strlen(without) + 3 + strlen(proof64) < outlen);
    strcpy(out, without);
    strcat(out, ",p=");
    strcat(out, proof64);
}

typedef struct exchange {
    sp_scram_server server;
    keys k;
    sp_buf out;
    char err[256];
    char client_first_bare[256];
    char server_first[512];
} exchange;

static const uint8_t test_cbind[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};

static void plus_start(exchange *x, const char *password)
{
    derive(password, "c2FsbHlwb3J0LXNhbHQtMQ==", &x->k);
    sp_buf_init(&x->out, 4096);
    sp_scram_server_init(&x->server, true, test_cbind, sizeof(test_cbind));
    strcpy(x->client_first_bare, "n=,r=plusclientnonce");
    char first[300];
    snprintf(first, sizeof(first), "p=tls-server-end-point,,%s", x->client_first_bare);
    assert_int_equal(sp_scram_server_first(&x->server, SP_SCRAM_MECH_PLUS, u8(first), strlen(first),
                                           x->k.salt, sizeof(x->k.salt), 4096, &x->out, x->err,
                                           sizeof(x->err)),
                     0);
    assert_true(x->out.len < sizeof(x->server_first));
    memcpy(x->server_first, x->out.data, x->out.len);
    x->server_first[x->out.len] = '\0';
    sp_buf_reset(&x->out);
}

static void round_trip_plus(void **state)
{
    (void)state;
    exchange x;
    char final[1024];
    plus_start(&x, "spt_abc_secret");
    plus_client_final(x.client_first_bare, x.server_first, test_cbind, sizeof(test_cbind), &x.k,
                      final, sizeof(final));
    assert_int_equal(
        sp_scram_server_final_parse(&x.server, u8(final), strlen(final), x.err, sizeof(x.err)), 0);
    assert_true(x.server.plus);
    assert_true(sp_scram_server_check(&x.server, x.k.stored));
    sp_buf_free(&x.out);
}

static void tampered_channel_binding(void **state)
{
    (void)state;
    exchange x;
    char final[1024];
    uint8_t other[32] = {9};
    plus_start(&x, "spt_abc_secret");
    plus_client_final(x.client_first_bare, x.server_first, other, sizeof(other), &x.k, final,
                      sizeof(final));
    assert_int_equal(
        sp_scram_server_final_parse(&x.server, u8(final), strlen(final), x.err, sizeof(x.err)), -1);
    assert_non_null(strstr(x.err, "channel binding mismatch"));
    assert_false(sp_scram_server_check(&x.server, x.k.stored));
    sp_buf_free(&x.out);
}

/* scram.c's client against scram.c's server, over a plain (unbound) channel. */
static int plain_round_trip(const char *client_password, const char *server_password,
                            bool plus_offered, bool tamper_proof)
{
    keys k;
    derive(server_password, "c2FsbHlwb3J0LXNhbHQtMg==", &k);
    sp_scram_server s;
    sp_scram_client c;
    sp_buf cf, sf, cfin, sfin;
    char err[256];
    sp_buf_init(&cf, 4096);
    sp_buf_init(&sf, 4096);
    sp_buf_init(&cfin, 4096);
    sp_buf_init(&sfin, 4096);
    sp_scram_client_init(&c, client_password, NULL, 0, NULL, NULL);
    sp_scram_server_init(&s, plus_offered, test_cbind, sizeof(test_cbind));
    assert_int_equal(sp_scram_client_first(&c, &cf), 0);
    assert_memory_equal(cf.data, "n,,n=,r=", 8);
    assert_int_equal(sp_scram_server_first(&s, SP_SCRAM_MECH, cf.data, cf.len, k.salt,
                                           sizeof(k.salt), 4096, &sf, err, sizeof(err)),
                     0);
    assert_int_equal(sp_scram_client_final(&c, sf.data, sf.len, &cfin, err, sizeof(err)), 0);
    if (tamper_proof)
        cfin.data[cfin.len - 3] = cfin.data[cfin.len - 3] == 'A' ? 'B' : 'A';
    assert_int_equal(sp_scram_server_final_parse(&s, cfin.data, cfin.len, err, sizeof(err)), 0);
    int ok = sp_scram_server_check(&s, k.stored);
    if (ok) {
        assert_int_equal(sp_scram_server_final_message(&s, k.server, &sfin), 0);
        assert_int_equal(sp_scram_client_verify(&c, sfin.data, sfin.len, err, sizeof(err)), 0);
    }
    sp_buf_free(&cf);
    sp_buf_free(&sf);
    sp_buf_free(&cfin);
    sp_buf_free(&sfin);
    return ok;
}

static void round_trip_plain(void **state)
{
    (void)state;
    assert_true(plain_round_trip("spt_1_s3cret", "spt_1_s3cret", false, false));
    /* "n,," under an offered -PLUS: a client without channel binding support, allowed */
    assert_true(plain_round_trip("spt_1_s3cret", "spt_1_s3cret", true, false));
}

static void wrong_password(void **state)
{
    (void)state;
    assert_false(plain_round_trip("spt_1_wrong", "spt_1_s3cret", false, false));
}

static void tampered_proof(void **state)
{
    (void)state;
    assert_false(plain_round_trip("spt_1_s3cret", "spt_1_s3cret", false, true));
}

static void server_refuses_bad_signature(void **state)
{
    (void)state;
    sp_scram_client c;
    sp_buf out;
    char err[256] = "";
    sp_buf_init(&out, 4096);
    sp_scram_client_init(&c, "pencil", NULL, 0, NULL, NULL);
    sp_scram_client_first_with_nonce_for_test(&c, "user", RFC_CLIENT_NONCE, &out);
    assert_int_equal(sp_scram_client_final(&c, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &out,
                                           err, sizeof(err)),
                     0);
    const char *forged = "v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    assert_int_equal(sp_scram_client_verify(&c, u8(forged), strlen(forged), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "signature"));
    sp_buf_free(&out);
}

static void client_reports_server_error(void **state)
{
    (void)state;
    sp_scram_client c;
    sp_buf out;
    char err[256] = "";
    sp_buf_init(&out, 4096);
    sp_scram_client_init(&c, "pencil", NULL, 0, NULL, NULL);
    sp_scram_client_first_with_nonce_for_test(&c, "user", RFC_CLIENT_NONCE, &out);
    sp_scram_client_final(&c, u8(RFC_SERVER_FIRST), strlen(RFC_SERVER_FIRST), &out, err,
                          sizeof(err));
    const char *e = "e=invalid-proof";
    assert_int_equal(sp_scram_client_verify(&c, u8(e), strlen(e), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "invalid-proof"));
    sp_buf_free(&out);
}

/* ---- refusals, one row per case ---- */

typedef struct first_case {
    const char *mechanism;
    bool plus_offered;
    const char *msg;
    int rc;
    const char *err; /* substring expected in the error */
} first_case;

static const first_case first_cases[] = {
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=,r=abc", .rc = 0},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=anybody,r=abc,x=ext", .rc = 0},
    {.mechanism = SP_SCRAM_MECH, .msg = "y,,n=,r=abc", .rc = 0},
    {.mechanism = SP_SCRAM_MECH, .plus_offered = true, .msg = "n,,n=,r=abc", .rc = 0},
    {.mechanism = SP_SCRAM_MECH_PLUS,
     .plus_offered = true,
     .msg = "p=tls-server-end-point,,n=,r=abc",
     .rc = 0},
    {.mechanism = SP_SCRAM_MECH,
     .plus_offered = true,
     .msg = "y,,n=,r=abc",
     .rc = -1,
     .err = "downgrade"},
    {.mechanism = SP_SCRAM_MECH,
     .plus_offered = true,
     .msg = "p=tls-server-end-point,,n=,r=abc",
     .rc = -1,
     .err = "SCRAM-SHA-256-PLUS"},
    {.mechanism = SP_SCRAM_MECH_PLUS,
     .plus_offered = true,
     .msg = "n,,n=,r=abc",
     .rc = -1,
     .err = "no channel binding"},
    {.mechanism = SP_SCRAM_MECH_PLUS,
     .plus_offered = true,
     .msg = "y,,n=,r=abc",
     .rc = -1,
     .err = "no channel binding"},
    {.mechanism = SP_SCRAM_MECH_PLUS,
     .plus_offered = true,
     .msg = "p=tls-unique,,n=,r=abc",
     .rc = -1,
     .err = "tls-server-end-point"},
    {.mechanism = SP_SCRAM_MECH_PLUS,
     .msg = "p=tls-server-end-point,,n=,r=abc",
     .rc = -1,
     .err = "did not offer"},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,a=admin,n=,r=abc", .rc = -1, .err = "a="},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,m=ext,n=,r=abc", .rc = -1, .err = "m="},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=", .rc = -1, .err = "nonce"},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=,r=", .rc = -1, .err = "nonce"},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=,r=abc,", .rc = -1, .err = "r="},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,n=,r=abc,x", .rc = -1, .err = "extensions"},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,,r=abc", .rc = -1, .err = "user name"},
    {.mechanism = SP_SCRAM_MECH, .msg = "x,,n=,r=abc", .rc = -1, .err = "GS2"},
    {.mechanism = SP_SCRAM_MECH, .msg = "n,n=,r=abc", .rc = -1, .err = "GS2"},
    {.mechanism = SP_SCRAM_MECH, .msg = "", .rc = -1, .err = "empty"},
    {.mechanism = "SCRAM-SHA-1", .msg = "n,,n=,r=abc", .rc = -1, .err = "unsupported SASL"},
    {.mechanism = NULL, .msg = "n,,n=,r=abc", .rc = -1, .err = "unsupported SASL"},
};

static void server_first_table(void **state)
{
    (void)state;
    uint8_t salt[SP_SCRAM_SALTLEN] = {0};
    for (size_t i = 0; i < SP_ARRAY_LEN(first_cases); i++) {
        const first_case *fc = &first_cases[i];
        sp_scram_server s;
        sp_buf out;
        char err[256] = "";
        sp_buf_init(&out, 4096);
        sp_scram_server_init(&s, fc->plus_offered, test_cbind, sizeof(test_cbind));
        int rc = sp_scram_server_first(&s, fc->mechanism, u8(fc->msg), strlen(fc->msg), salt,
                                       sizeof(salt), 4096, &out, err, sizeof(err));
        if (rc != fc->rc || (fc->err && !strstr(err, fc->err)))
            fail_msg("case %zu (%s): rc %d, err \"%s\"", i, fc->msg, rc, err);
        if (rc == 0)
            assert_memory_equal(out.data, "r=abc", 5);
        sp_buf_free(&out);
    }
}

static void server_first_refuses_nul_and_long(void **state)
{
    (void)state;
    uint8_t salt[SP_SCRAM_SALTLEN] = {0}, msg[SP_SCRAM_MSG_MAX + 1];
    sp_scram_server s;
    sp_buf out;
    char err[256] = "";
    sp_buf_init(&out, 4096);
    sp_scram_server_init(&s, false, NULL, 0);
    assert_int_equal(sp_scram_server_first(&s, SP_SCRAM_MECH, u8("n,,n=\0,r=abc"), 12, salt,
                                           sizeof(salt), 4096, &out, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "NUL"));
    memset(msg, 'a', sizeof(msg));
    memcpy(msg, "n,,n=,r=", 8);
    sp_scram_server_init(&s, false, NULL, 0);
    assert_int_equal(sp_scram_server_first(&s, SP_SCRAM_MECH, msg, sizeof(msg), salt, sizeof(salt),
                                           4096, &out, err, sizeof(err)),
                     -1);
    assert_non_null(strstr(err, "longer"));
    /* after a refusal the exchange stays failed */
    assert_int_equal(sp_scram_server_final_parse(&s, u8(RFC_CLIENT_FINAL), strlen(RFC_CLIENT_FINAL),
                                                 err, sizeof(err)),
                     -1);
    sp_buf_free(&out);
}

typedef struct final_case {
    const char *msg;
    const char *err;
} final_case;

#define RFC_NONCE RFC_CLIENT_NONCE RFC_SERVER_NONCE
#define RFC_PROOF "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
static const final_case final_cases[] = {
    {"c=biws,r=" RFC_NONCE "," RFC_PROOF, NULL},
    {"c=biws,r=" RFC_NONCE ",x=ext," RFC_PROOF, NULL},
    {"c=eSws,r=" RFC_NONCE "," RFC_PROOF, "GS2 header"},
    {"c=biwsAAAA,r=" RFC_NONCE "," RFC_PROOF, "channel binding mismatch"},
    {"c=bi,r=" RFC_NONCE "," RFC_PROOF, "base64"},
    {"c=biws,r=" RFC_CLIENT_NONCE "," RFC_PROOF, "nonce"},
    {"c=biws,r=" RFC_NONCE "x," RFC_PROOF, "nonce"},
    {"c=biws,r=" RFC_NONCE, "proof"},
    {"c=biws,r=" RFC_NONCE "," RFC_PROOF ",x=after", "after the proof"},
    {"c=biws,r=" RFC_NONCE ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndQ==", "32 bytes"},
    {"r=" RFC_NONCE ",c=biws," RFC_PROOF, "c="},
};

static void server_final_table(void **state)
{
    (void)state;
    keys k;
    derive("pencil", RFC_SALT, &k);
    for (size_t i = 0; i < SP_ARRAY_LEN(final_cases); i++) {
        const final_case *fc = &final_cases[i];
        sp_scram_server s;
        sp_buf out;
        char err[256] = "";
        sp_buf_init(&out, 4096);
        sp_scram_server_init(&s, false, NULL, 0);
        assert_int_equal(sp_scram_server_first_with_nonce_for_test(
                             &s, SP_SCRAM_MECH, u8(RFC_CLIENT_FIRST), strlen(RFC_CLIENT_FIRST),
                             k.salt, sizeof(k.salt), 4096, RFC_SERVER_NONCE, &out, err,
                             sizeof(err)),
                         0);
        int rc = sp_scram_server_final_parse(&s, u8(fc->msg), strlen(fc->msg), err, sizeof(err));
        if ((rc == 0) != (fc->err == NULL) || (fc->err && !strstr(err, fc->err)))
            fail_msg("case %zu (%s): rc %d, err \"%s\"", i, fc->msg, rc, err);
        /* the RFC proof covers no extension: only the first row verifies */
        assert_int_equal(sp_scram_server_check(&s, k.stored), i == 0);
        sp_buf_free(&out);
    }
}

static const final_case server_first_cases[] = {
    {RFC_SERVER_FIRST, NULL},
    {RFC_SERVER_FIRST ",x=ext", NULL},
    {"r=" RFC_CLIENT_NONCE ",s=" RFC_SALT ",i=4096", "nonce"},
    {"r=other" RFC_SERVER_NONCE ",s=" RFC_SALT ",i=4096", "nonce"},
    {"r=" RFC_NONCE ",s=" RFC_SALT ",i=0", "iteration"},
    {"r=" RFC_NONCE ",s=" RFC_SALT ",i=1000001", "iteration"},
    {"r=" RFC_NONCE ",s=" RFC_SALT ",i=-1", "iteration"},
    {"r=" RFC_NONCE ",s=" RFC_SALT, "iteration count"},
    {"r=" RFC_NONCE ",i=4096", "salt"},
    {"r=" RFC_NONCE ",s=!!!!,i=4096", "salt"},
    {"m=ext,r=" RFC_NONCE ",s=" RFC_SALT ",i=4096", "m="},
    {"", "empty"},
};

static void client_final_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < SP_ARRAY_LEN(server_first_cases); i++) {
        const final_case *fc = &server_first_cases[i];
        sp_scram_client c;
        sp_buf out;
        char err[256] = "";
        sp_buf_init(&out, 4096);
        sp_scram_client_init(&c, "pencil", NULL, 0, NULL, NULL);
        sp_scram_client_first_with_nonce_for_test(&c, "user", RFC_CLIENT_NONCE, &out);
        sp_buf_reset(&out);
        int rc = sp_scram_client_final(&c, u8(fc->msg), strlen(fc->msg), &out, err, sizeof(err));
        if ((rc == 0) != (fc->err == NULL) || (fc->err && !strstr(err, fc->err)))
            fail_msg("case %zu (%s): rc %d, err \"%s\"", i, fc->msg, rc, err);
        sp_buf_free(&out);
    }
}

/* ---- tls-server-end-point ---- */

static int cert_der(EVP_PKEY *key, const EVP_MD *md, uint8_t **der)
{
    X509 *x = X509_new();
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, u8("gateway"), -1, -1, 0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, key, md) > 0);
    *der = NULL;
    int n = i2d_X509(x, der);
    X509_free(x);
    assert_true(n > 0);
    return n;
}

static void check_endpoint(EVP_PKEY *key, const EVP_MD *sign_md, const EVP_MD *want_md)
{
    uint8_t *der, got[64], want[64];
    unsigned int want_len = 0;
    int n = cert_der(key, sign_md, &der);
    int len = sp_scram_cert_endpoint_hash(der, (size_t)n, got);
    if (!want_md) {
        assert_int_equal(len, -1);
    } else {
        EVP_Digest(der, (size_t)n, want, &want_len, want_md, NULL);
        assert_int_equal(len, (int)want_len);
        assert_memory_equal(got, want, want_len);
    }
    /* one trailing byte makes it something other than a certificate */
    uint8_t *longer = malloc((size_t)n + 1);
    memcpy(longer, der, (size_t)n);
    longer[n] = 0;
    assert_int_equal(sp_scram_cert_endpoint_hash(longer, (size_t)n + 1, got), -1);
    free(longer);
    OPENSSL_free(der);
}

static void cert_endpoint_hash(void **state)
{
    (void)state;
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    EVP_PKEY *rsa = EVP_RSA_gen(2048);
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ec);
    assert_non_null(rsa);
    assert_non_null(ed);
    check_endpoint(ec, EVP_sha256(), EVP_sha256());
    check_endpoint(ec, EVP_sha384(), EVP_sha384());
    check_endpoint(rsa, EVP_sha512(), EVP_sha512());
    check_endpoint(rsa, EVP_sha1(), EVP_sha256());
    check_endpoint(ed, NULL, NULL);
    uint8_t out[64];
    assert_int_equal(sp_scram_cert_endpoint_hash(u8("not a certificate"), 17, out), -1);
    assert_int_equal(sp_scram_cert_endpoint_hash(NULL, 0, out), -1);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
}

/* ---- the verifier text and the client in a real PostgreSQL ---- */

static int pg_script(const char *mode, const char *dir, const char *arg)
{
    char script[1024], cmd[2048];
    snprintf(script, sizeof(script), "%s", __FILE__);
    snprintf(cmd, sizeof(cmd), "sh '%s/pg_scram_verifier.sh' %s '%s' '%s'", dirname(script), mode,
             dir, arg);
    int rc = system(cmd);
    assert_true(rc != -1 && WIFEXITED(rc));
    return WEXITSTATUS(rc);
}

typedef struct pg_conn {
    int fd;
    sp_buf in;
    size_t last; /* bytes of the message handed out last, consumed on the next read */
} pg_conn;

/* Reads one whole backend message; the bytes after it stay buffered for the next call. */
static void pg_read(pg_conn *pc, sp_pg_msg *m)
{
    const char *why;
    sp_buf_consume(&pc->in, pc->last);
    for (;;) {
        long rc = sp_pg_read_msg(sp_buf_rptr(&pc->in), sp_buf_unread(&pc->in), 8192, m, &why);
        assert_true(rc != SP_PG_BAD);
        if (rc > 0) {
            pc->last = (size_t)rc;
            return;
        }
        assert_int_equal(sp_buf_reserve(&pc->in, 4096), 0);
        ssize_t n = read(pc->fd, pc->in.data + pc->in.len, 4096);
        assert_true(n > 0);
        pc->in.len += (size_t)n;
    }
}

/* Expects an Authentication message of this subtype, returning the data after the subtype. */
static void pg_expect_auth(pg_conn *pc, uint32_t want_subtype, const uint8_t **data, size_t *len)
{
    sp_pg_msg m;
    uint32_t subtype;
    pg_read(pc, &m);
    if (m.type == 'E') {
        sp_pg_error_fields f;
        if (sp_pg_parse_error(m.body, m.len, &f) == 0)
            fail_msg("PostgreSQL refused: %s", f.message);
    }
    assert_int_equal(m.type, 'R');
    assert_int_equal(sp_pg_parse_auth(m.body, m.len, &subtype, data, len), 0);
    assert_int_equal(subtype, want_subtype);
}

static void pg_send(pg_conn *pc, sp_buf *out)
{
    assert_int_equal(write(pc->fd, out->data, out->len), (ssize_t)out->len);
    sp_buf_reset(out);
}

/* The gateway's upstream path: the SCRAM client with precomputed keys (no password) logs in
 * as the role whose verifier it set. */
static void client_logs_in(const char *dir, const uint8_t *salt, const uint8_t *client_key,
                           const uint8_t *server_key)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/.s.PGSQL.5432", dir);
    pg_conn pc = {.fd = socket(AF_UNIX, SOCK_STREAM, 0)};
    assert_true(pc.fd >= 0);
    struct timeval patience = {.tv_sec = 20};
    assert_int_equal(setsockopt(pc.fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof(patience)), 0);
    assert_int_equal(connect(pc.fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    sp_buf out, msg;
    sp_buf_init(&pc.in, 65536);
    sp_buf_init(&out, 65536);
    sp_buf_init(&msg, 4096);
    static const sp_pg_kv params[] = {{"user", "sp_verifier_test"}, {"database", "postgres"}};
    assert_int_equal(sp_pg_put_startup(&out, params, 2), 0);
    pg_send(&pc, &out);
    const uint8_t *data;
    size_t len;
    pg_expect_auth(&pc, 10, &data, &len);
    assert_non_null(memmem(data, len, "SCRAM-SHA-256", 14));

    sp_scram_client c;
    char err[256] = "";
    sp_scram_client_init(&c, NULL, salt, SP_SCRAM_ITERATIONS, client_key, server_key);
    assert_int_equal(sp_scram_client_first(&c, &msg), 0);
    assert_int_equal(sp_pg_put_sasl_initial(&out, SP_SCRAM_MECH, msg.data, msg.len), 0);
    pg_send(&pc, &out);
    pg_expect_auth(&pc, 11, &data, &len);
    sp_buf_reset(&msg);
    if (sp_scram_client_final(&c, data, len, &msg, err, sizeof(err)) != 0)
        fail_msg("client-final: %s", err);
    assert_int_equal(sp_pg_put_sasl_response(&out, msg.data, msg.len), 0);
    pg_send(&pc, &out);
    pg_expect_auth(&pc, 12, &data, &len);
    if (sp_scram_client_verify(&c, data, len, err, sizeof(err)) != 0)
        fail_msg("server-final: %s", err);
    pg_expect_auth(&pc, 0, &data, &len);
    assert_int_equal(sp_pg_put_terminate(&out), 0);
    pg_send(&pc, &out);
    close(pc.fd);
    sp_buf_free(&pc.in);
    sp_buf_free(&out);
    sp_buf_free(&msg);
}

/* The server is stopped by the teardown, which also runs when an assertion fails. */
static char pg_dir[64];

static int stop_postgres(void **state)
{
    (void)state;
    if (pg_dir[0])
        pg_script("stop", pg_dir, "");
    pg_dir[0] = '\0';
    return 0;
}

static void verifier_in_postgres(void **state)
{
    (void)state;
    const char *password = "spt_verifier_test_Zk3q";
    uint8_t salt[SP_SCRAM_SALTLEN], client_key[SP_SCRAM_KEYLEN], stored[SP_SCRAM_KEYLEN],
        server[SP_SCRAM_KEYLEN];
    char verifier[256], dir[] = "/tmp/sp-scram-pg.XXXXXX";
    assert_int_equal(sp_random_bytes(salt, sizeof(salt)), 0);
    assert_int_equal(sp_scram_derive(password, strlen(password), salt, sizeof(salt),
                                     SP_SCRAM_ITERATIONS, client_key, stored, server),
                     0);
    assert_int_equal(sp_scram_verifier_text(salt, sizeof(salt), SP_SCRAM_ITERATIONS, stored, server,
                                            verifier, sizeof(verifier)),
                     0);
    assert_non_null(mkdtemp(dir));
    snprintf(pg_dir, sizeof(pg_dir), "%s", dir);
    int rc = pg_script("start", dir, verifier);
    if (rc == 77)
        skip();
    assert_int_equal(rc, 0);
    assert_int_equal(pg_script("login", dir, password), 0);
    client_logs_in(dir, salt, client_key, server);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(rfc7677_server),
        cmocka_unit_test(rfc7677_client_with_password),
        cmocka_unit_test(rfc7677_client_with_precomputed_keys),
        cmocka_unit_test(client_without_password_refuses_other_salt),
        cmocka_unit_test(round_trip_plus),
        cmocka_unit_test(tampered_channel_binding),
        cmocka_unit_test(round_trip_plain),
        cmocka_unit_test(wrong_password),
        cmocka_unit_test(tampered_proof),
        cmocka_unit_test(server_refuses_bad_signature),
        cmocka_unit_test(client_reports_server_error),
        cmocka_unit_test(server_first_table),
        cmocka_unit_test(server_first_refuses_nul_and_long),
        cmocka_unit_test(server_final_table),
        cmocka_unit_test(client_final_table),
        cmocka_unit_test(cert_endpoint_hash),
        cmocka_unit_test_teardown(verifier_in_postgres, stop_postgres),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
