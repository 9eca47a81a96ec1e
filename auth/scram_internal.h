/* Test hooks for the SCRAM exchanges: the public functions draw their nonces from the RNG,
 * these take them from the caller so tests can replay published vectors (RFC 7677).
 * Only tests include this header; production code uses auth/scram.h. */
#ifndef SP_AUTH_SCRAM_INTERNAL_H
#define SP_AUTH_SCRAM_INTERNAL_H

#include "auth/scram.h"

/* sp_scram_server_first with a fixed server nonce (printable, no ','). */
int sp_scram_server_first_with_nonce_for_test(sp_scram_server *s, const char *mechanism,
                                              const uint8_t *msg, size_t len, const uint8_t *salt,
                                              size_t saltlen, int iterations,
                                              const char *server_nonce, sp_buf *out, char *err,
                                              size_t errlen);
/* sp_scram_client_first with a fixed nonce and user name ("" in production). */
int sp_scram_client_first_with_nonce_for_test(sp_scram_client *c, const char *username,
                                              const char *nonce, sp_buf *out);

#endif
