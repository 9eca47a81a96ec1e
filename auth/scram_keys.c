/* Key derivation shared by token issuing, leases and the SCRAM exchanges. */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <string.h>

#include "auth/scram.h"
#include "common/util.h"

static void hmac256(const uint8_t *key, size_t keylen, const void *msg, size_t len,
                    uint8_t out[SP_SCRAM_KEYLEN])
{
    unsigned int outlen = SP_SCRAM_KEYLEN;
    HMAC(EVP_sha256(), key, (int)keylen, msg, len, out, &outlen);
}

int sp_scram_derive(const char *password, size_t pwlen, const uint8_t *salt, size_t saltlen,
                    int iterations, uint8_t client_key[SP_SCRAM_KEYLEN],
                    uint8_t stored_key[SP_SCRAM_KEYLEN], uint8_t server_key[SP_SCRAM_KEYLEN])
{
    uint8_t salted[SP_SCRAM_KEYLEN], ck[SP_SCRAM_KEYLEN];
    if (iterations < 1 || PKCS5_PBKDF2_HMAC(password, (int)pwlen, salt, (int)saltlen, iterations,
                                            EVP_sha256(), SP_SCRAM_KEYLEN, salted) != 1)
        return -1;
    hmac256(salted, sizeof(salted), "Client Key", 10, ck);
    if (client_key)
        memcpy(client_key, ck, SP_SCRAM_KEYLEN);
    if (stored_key)
        SHA256(ck, sizeof(ck), stored_key);
    if (server_key)
        hmac256(salted, sizeof(salted), "Server Key", 10, server_key);
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(ck, sizeof(ck));
    return 0;
}

int sp_scram_verifier_text(const uint8_t *salt, size_t saltlen, int iterations,
                           const uint8_t stored_key[SP_SCRAM_KEYLEN],
                           const uint8_t server_key[SP_SCRAM_KEYLEN], char *out, size_t outlen)
{
    char s64[4 * ((SP_SCRAM_SALTLEN * 4 + 2) / 3) + 4], k1[48], k2[48];
    if (saltlen > SP_SCRAM_SALTLEN * 4)
        return -1;
    sp_base64_encode(salt, saltlen, s64);
    sp_base64_encode(stored_key, SP_SCRAM_KEYLEN, k1);
    sp_base64_encode(server_key, SP_SCRAM_KEYLEN, k2);
    int n = snprintf(out, outlen, "SCRAM-SHA-256$%d:%s$%s:%s", iterations, s64, k1, k2);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

void sp_scram_fake_salt(const uint8_t *secret, size_t secretlen, const char *name,
                        uint8_t salt[SP_SCRAM_SALTLEN])
{
    uint8_t mac[SP_SCRAM_KEYLEN];
    char msg[16 + 256];
    int n = snprintf(msg, sizeof(msg), "fake-salt:%s", name);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(msg))
        n = sizeof(msg) - 1;
    hmac256(secret, secretlen, msg, (size_t)n, mac);
    memcpy(salt, mac, SP_SCRAM_SALTLEN);
}
