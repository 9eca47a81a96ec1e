/* libFuzzer: the OpenSSH certificate parser and checker on arbitrary blobs.
 * A blob that parses is checked against the CA key it names (so the checks past the signer
 * are reached) and rendered as a certificate line; every pointer the parser hands out is read
 * so ASan checks it stays inside the blob. Seeds in tests/fuzz/corpus/fuzz_sshcert/ are real
 * certificates (raw blobs) signed by sallyport and by ssh-keygen, for Ed25519, ECDSA and RSA
 * subject keys, with and without critical options, plus one signed by an RSA CA. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/sshcert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512], line[4 * SP_SSH_CERT_MAX / 3 + 256];
    sp_ssh_cert c;
    if (sp_ssh_cert_parse(data, size, &c, err, sizeof(err)) != 0) {
        if (!memchr(err, '\0', sizeof(err)))
            abort();
        return 0;
    }
    static volatile uint8_t sink;
    for (size_t i = 0; i < c.pubkey_len; i++)
        sink = sink ^ c.pubkey[i];
    for (size_t i = 0; i < c.signature_key_len; i++)
        sink = sink ^ c.signature_key[i];
    if (c.n_principals > SP_SSH_CERT_MAX_PRINCIPALS || c.n_critical > SP_SSH_CERT_MAX_OPTIONS)
        abort();
    const char *principal = c.n_principals ? c.principals[0] : "alice";
    uint64_t now = c.valid_after + (c.valid_before - c.valid_after) / 2;
    int rc = sp_ssh_cert_check(&c, c.signature_key, c.signature_key_len, principal, now, err,
                               sizeof(err));
    /* a pass needs everything the contract lists */
    if (rc == 0 && (!c.signature_ok || c.type != 1 || c.n_critical != 0 || c.n_principals == 0))
        abort();
    (void)sp_ssh_cert_line(data, size, c.key_id, line, sizeof(line));
    return 0;
}
