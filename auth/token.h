/* Tokens: the short-lived credentials sallyport issues for PostgreSQL (SCRAM) logins.
 *
 * Text form spt_<id>_<secret>: the "spt_" prefix lets secret scanners find leaked tokens, <id>
 * (12 of a-z 0-9) names the credential in `cred list/revoke` and the audit trail, <secret> is 32
 * random bytes in base64url without padding (43 chars). The whole text is the SCRAM password:
 * the store keeps only StoredKey and ServerKey, derived with the identity's salt and iteration
 * count, never the token. Issuing and verifying block (store, PBKDF2): thread pool only in the
 * gateway. */
#ifndef SP_AUTH_TOKEN_H
#define SP_AUTH_TOKEN_H

#include <stdint.h>

#include "auth/store.h"
#include "common/config.h"

#define SP_TOKEN_PREFIX "spt_"
#define SP_TOKEN_ID_CHARS 12
#define SP_TOKEN_SECRET_BYTES 32
#define SP_TOKEN_SECRET_CHARS 43
/* "spt_" + id + "_" + secret + NUL */
#define SP_TOKEN_MAX (4 + SP_TOKEN_ID_CHARS + 1 + SP_TOKEN_SECRET_CHARS + 1)

/* Mint a token for an existing, enabled identity, valid from `now` for ttl_us (> 0), and store
 * its verifier. token_out receives the text (shown once, never stored or logged), id_out the
 * credential id. Returns 0, SP_STORE_NOT_FOUND for an unknown identity, -1 with err. */
int sp_token_issue(sp_store *s, const char *identity, int64_t ttl_us, int64_t now,
                   char token_out[SP_TOKEN_MAX], char id_out[SP_CRED_ID_LEN], char *err,
                   size_t errlen);

/* A fresh random credential id (SP_TOKEN_ID_CHARS of a-z 0-9), for tokens and SSH
 * certificates alike. 0, or -1 if the random generator failed. */
int sp_cred_new_id(char out[SP_CRED_ID_LEN]);

/* The credential id of a token, checking only its shape (prefix, id and secret alphabets and
 * lengths). 0, or -1 when it is not shaped like a sallyport token. */
int sp_token_parse_id(const char *token, char id_out[SP_CRED_ID_LEN]);

/* Is `token` a live token of `identity` at `now`? Derives its keys and compares them (in
 * constant time) with the stored ones. 0 = valid, SP_STORE_NOT_FOUND = not a live token of
 * this identity (err says which way it failed, for the audit trail only), -1 = store error. */
int sp_token_verify(sp_store *s, const char *identity, const char *token, int64_t now, char *err,
                    size_t errlen);

/* The longest TTL a new credential of `identity` may have at `now`: the largest max_ttl among
 * the roles (present in cfg) of its live bindings. *max_out = 0 when it holds no such binding. */
int sp_token_max_ttl(sp_store *s, const sp_config *cfg, const char *identity, int64_t now,
                     int64_t *max_out, char *err, size_t errlen);

#endif
