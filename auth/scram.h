/* SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, both ends, I/O-free.
 *
 * Server side (clients authenticating to the gateway with a token): the gateway keeps only
 * StoredKey and ServerKey per token. All live tokens of one identity share that identity's
 * salt and iteration count, so one server-first message serves all of them and the proof is
 * checked against each token's StoredKey in turn. SCRAM-SHA-256-PLUS binds to the TLS
 * channel with tls-server-end-point (RFC 5929: hash of the gateway's certificate).
 *
 * Client side (the gateway authenticating upstream as an ephemeral role): uses precomputed
 * ClientKey/ServerKey when the server's salt and iteration count are the ones the gateway
 * minted, so no PBKDF2 runs on a loop thread. */
#ifndef SP_AUTH_SCRAM_H
#define SP_AUTH_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SP_SCRAM_MECH "SCRAM-SHA-256"
#define SP_SCRAM_MECH_PLUS "SCRAM-SHA-256-PLUS"
#define SP_SCRAM_ITERATIONS 4096
#define SP_SCRAM_KEYLEN 32
#define SP_SCRAM_SALTLEN 16
#define SP_SCRAM_NONCE_MAX 128
#define SP_SCRAM_MSG_MAX 1024 /* longest SCRAM message accepted from a peer */

/* SaltedPassword = PBKDF2-HMAC-SHA256(password, salt, iterations); ClientKey, StoredKey,
 * ServerKey derived from it. Any output pointer may be NULL. Costs `iterations` HMACs. */
int sp_scram_derive(const char *password, size_t pwlen, const uint8_t *salt, size_t saltlen,
                    int iterations, uint8_t client_key[SP_SCRAM_KEYLEN],
                    uint8_t stored_key[SP_SCRAM_KEYLEN], uint8_t server_key[SP_SCRAM_KEYLEN]);
/* PostgreSQL's verifier text: SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64> */
int sp_scram_verifier_text(const uint8_t *salt, size_t saltlen, int iterations,
                           const uint8_t stored_key[SP_SCRAM_KEYLEN],
                           const uint8_t server_key[SP_SCRAM_KEYLEN], char *out, size_t outlen);
/* Deterministic salt for an identity that does not exist: HMAC-SHA256(secret, "fake-salt:"
 * || name) truncated, so probing names learns nothing from the salt. */
void sp_scram_fake_salt(const uint8_t *secret, size_t secretlen, const char *name,
                        uint8_t salt[SP_SCRAM_SALTLEN]);
/* tls-server-end-point data for a certificate (DER): the certificate hashed with its
 * signature's digest, MD5 and SHA-1 replaced by SHA-256. Returns length, or -1. */
int sp_scram_cert_endpoint_hash(const uint8_t *der, size_t derlen, uint8_t out[64]);

/* ---- server ---- */
typedef struct sp_scram_server {
    bool plus_offered; /* did we advertise SCRAM-SHA-256-PLUS (TLS with RSA/ECDSA cert)? */
    uint8_t cbind[64]; /* tls-server-end-point data of the gateway's certificate */
    size_t cbind_len;
    bool plus; /* the client chose -PLUS */
    char gs2_header[128];
    char client_first_bare[SP_SCRAM_MSG_MAX + 1];
    char server_first[SP_SCRAM_MSG_MAX + 1];
    char client_final_without_proof[SP_SCRAM_MSG_MAX + 1];
    char nonce[2 * SP_SCRAM_NONCE_MAX + 1]; /* client nonce + server nonce */
    uint8_t proof[SP_SCRAM_KEYLEN];
    int state; /* internal */
} sp_scram_server;

void sp_scram_server_init(sp_scram_server *s, bool plus_offered, const uint8_t *cbind,
                          size_t cbind_len);
/* SASLInitialResponse: mechanism and client-first-message. Writes server-first-message to
 * out. Refuses (returns -1, err says why) a malformed message, an unknown mechanism, a
 * channel-binding flag that does not match the mechanism, or "y" when PLUS was offered
 * (a downgrade). */
int sp_scram_server_first(sp_scram_server *s, const char *mechanism, const uint8_t *msg, size_t len,
                          const uint8_t *salt, size_t saltlen, int iterations, sp_buf *out,
                          char *err, size_t errlen);
/* SASLResponse: client-final-message. Checks nonce and channel binding; keeps the proof.
 * -1 with err on a malformed message or a binding mismatch. */
int sp_scram_server_final_parse(sp_scram_server *s, const uint8_t *msg, size_t len, char *err,
                                size_t errlen);
/* Does the kept proof match this StoredKey? Constant time. */
bool sp_scram_server_check(const sp_scram_server *s, const uint8_t stored_key[SP_SCRAM_KEYLEN]);
/* server-final-message "v=<ServerSignature>" for the matching token's ServerKey. */
int sp_scram_server_final_message(const sp_scram_server *s,
                                  const uint8_t server_key[SP_SCRAM_KEYLEN], sp_buf *out);

/* ---- client ---- */
typedef struct sp_scram_client {
    const char *password; /* used only if the server's salt/iterations differ from below */
    uint8_t salt[SP_SCRAM_SALTLEN];
    int iterations;
    uint8_t client_key[SP_SCRAM_KEYLEN];
    uint8_t server_key[SP_SCRAM_KEYLEN];
    char client_first_bare[SP_SCRAM_MSG_MAX + 1];
    char expected_server_sig[64]; /* base64 */
    char nonce[SP_SCRAM_NONCE_MAX + 1];
    int state;
} sp_scram_client;

/* password may be NULL when keys are given; keys/salt may be NULL when password is given. */
void sp_scram_client_init(sp_scram_client *c, const char *password, const uint8_t *salt,
                          int iterations, const uint8_t *client_key, const uint8_t *server_key);
/* client-first-message ("n,,n=,r=<nonce>") for SASLInitialResponse with SCRAM-SHA-256. */
int sp_scram_client_first(sp_scram_client *c, sp_buf *out);
/* server-first in, client-final out. */
int sp_scram_client_final(sp_scram_client *c, const uint8_t *server_first, size_t len, sp_buf *out,
                          char *err, size_t errlen);
/* server-final in: verifies the server's signature (mutual authentication). */
int sp_scram_client_verify(sp_scram_client *c, const uint8_t *server_final, size_t len, char *err,
                           size_t errlen);

#endif
