/* libFuzzer: both SCRAM state machines on arbitrary peer messages.
 *
 * Input: one flags byte, then two peer messages separated by '\n'.
 *   flags bit 0: 0 = drive the server (messages: client-first, client-final),
 *                1 = drive the client (messages: server-first, server-final);
 *   bit 1: server advertises -PLUS; bit 2: the client chose SCRAM-SHA-256-PLUS.
 * Nonces are fixed (auth/scram_internal.h) so seeds can carry complete valid exchanges:
 * client nonce "fuzzclientnonce", server nonce "fuzzservernonce", password "pencil",
 * salt FUZZ_SALT, 4096 iterations, channel binding 32 bytes of 0x5a. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/scram.h"
#include "auth/scram_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_salt[SP_SCRAM_SALTLEN] = "sallyport-fuzz!";
static uint8_t client_key[SP_SCRAM_KEYLEN], stored_key[SP_SCRAM_KEYLEN],
    server_key[SP_SCRAM_KEYLEN], cbind[32];

static void keys_once(void)
{
    static bool done;
    if (done)
        return;
    if (sp_scram_derive("pencil", 6, fuzz_salt, sizeof(fuzz_salt), 4096, client_key, stored_key,
                        server_key) != 0)
        abort();
    memset(cbind, 0x5a, sizeof(cbind));
    done = true;
}

static void drive_server(uint8_t flags, const uint8_t *m1, size_t n1, const uint8_t *m2, size_t n2)
{
    sp_scram_server s;
    sp_buf out;
    char err[256];
    sp_buf_init(&out, 4096);
    sp_scram_server_init(&s, flags & 2, cbind, sizeof(cbind));
    const char *mech = flags & 4 ? SP_SCRAM_MECH_PLUS : SP_SCRAM_MECH;
    if (sp_scram_server_first_with_nonce_for_test(&s, mech, m1, n1, fuzz_salt, sizeof(fuzz_salt),
                                                  4096, "fuzzservernonce", &out, err,
                                                  sizeof(err)) == 0 &&
        sp_scram_server_final_parse(&s, m2, n2, err, sizeof(err)) == 0) {
        if (sp_scram_server_check(&s, stored_key)) {
            sp_buf_reset(&out);
            if (sp_scram_server_final_message(&s, server_key, &out) != 0)
                abort();
        }
    }
    /* a finished or failed exchange accepts nothing more */
    if (sp_scram_server_final_parse(&s, m2, n2, err, sizeof(err)) == 0)
        abort();
    sp_buf_free(&out);
}

static void drive_client(const uint8_t *m1, size_t n1, const uint8_t *m2, size_t n2)
{
    sp_scram_client c;
    sp_buf out;
    char err[256];
    sp_buf_init(&out, 4096);
    /* keys only: a password would let the input pick a 1e6-iteration PBKDF2 */
    sp_scram_client_init(&c, NULL, fuzz_salt, 4096, client_key, server_key);
    if (sp_scram_client_first_with_nonce_for_test(&c, "", "fuzzclientnonce", &out) != 0)
        abort();
    sp_buf_reset(&out);
    if (sp_scram_client_final(&c, m1, n1, &out, err, sizeof(err)) == 0)
        (void)sp_scram_client_verify(&c, m2, n2, err, sizeof(err));
    if (sp_scram_client_verify(&c, m2, n2, err, sizeof(err)) == 0)
        abort();
    sp_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    keys_once();
    uint8_t flags = data[0];
    /* heap copies of exactly the message lengths, so over-reads hit ASan's redzones */
    const uint8_t *rest = data + 1;
    size_t rest_len = size - 1;
    const uint8_t *nl = memchr(rest, '\n', rest_len);
    size_t n1 = nl ? (size_t)(nl - rest) : rest_len;
    size_t n2 = nl ? rest_len - n1 - 1 : 0;
    uint8_t *m1 = malloc(n1 ? n1 : 1), *m2 = malloc(n2 ? n2 : 1);
    if (!m1 || !m2)
        abort();
    memcpy(m1, rest, n1);
    if (n2)
        memcpy(m2, nl + 1, n2);
    if (flags & 1)
        drive_client(m1, n1, m2, n2);
    else
        drive_server(flags, m1, n1, m2, n2);
    free(m1);
    free(m2);
    return 0;
}
