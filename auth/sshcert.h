/* OpenSSH certificates (PROTOCOL.certkeys), I/O-free: parse and check the user certificates
 * clients present, and mint the short-lived ones the gateway presents to targets.
 *
 * CA keys are Ed25519 in PEM (PKCS#8, `sallyport ca init` or `openssl genpkey -algorithm
 * ed25519`), read owner-only. Certificates the gateway signs use Ed25519; certificates it
 * checks must be signed by its own user CA. Times are seconds since the epoch, as in the
 * format. Every parser is bounds-checked and fuzzed (tests/fuzz/fuzz_sshcert.c). */
#ifndef SP_AUTH_SSHCERT_H
#define SP_AUTH_SSHCERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SP_SSH_CERT_MAX_PRINCIPALS 32
#define SP_SSH_CERT_MAX_OPTIONS 16
#define SP_SSH_CERT_MAX 16384 /* largest certificate blob accepted */

typedef struct sp_ssh_ca sp_ssh_ca;

sp_ssh_ca *sp_ssh_ca_load(const char *pem_path, char *err, size_t errlen);
void sp_ssh_ca_free(sp_ssh_ca *ca);
/* The CA's public key blob (SSH wire format: string "ssh-ed25519", string key). */
int sp_ssh_ca_public_blob(const sp_ssh_ca *ca, sp_buf *out);
/* "ssh-ed25519 AAAA... COMMENT": the line for sshd's TrustedUserCAKeys. */
int sp_ssh_ca_public_line(const sp_ssh_ca *ca, const char *comment, char *out, size_t outlen);
/* Write a new Ed25519 CA key (PEM, mode 0600, refuses to overwrite). */
int sp_ssh_ca_generate(const char *pem_path, char *err, size_t errlen);

typedef struct sp_ssh_cert_req {
    const uint8_t *pubkey_blob; /* the subject's public key, SSH wire format */
    size_t pubkey_len;
    uint64_t serial;
    const char *key_id;
    const char *const *principals;
    size_t n_principals;
    uint64_t valid_after, valid_before;
    const char *const *extensions; /* names, e.g. "permit-pty"; values empty */
    size_t n_extensions;
    const char *force_command; /* critical option, or NULL */
} sp_ssh_cert_req;

/* A user certificate for req, signed by ca: the certificate blob (wire format). */
int sp_ssh_cert_sign(const sp_ssh_ca *ca, const sp_ssh_cert_req *req, sp_buf *blob, char *err,
                     size_t errlen);
/* "ssh-ed25519-cert-v01@openssh.com BASE64 COMMENT" */
int sp_ssh_cert_line(const uint8_t *blob, size_t len, const char *comment, char *out,
                     size_t outlen);

typedef struct sp_ssh_cert {
    char key_type[64]; /* e.g. "ssh-ed25519-cert-v01@openssh.com" */
    uint64_t serial;
    uint32_t type; /* 1 user, 2 host */
    char key_id[256];
    char principals[SP_SSH_CERT_MAX_PRINCIPALS][64];
    size_t n_principals;
    uint64_t valid_after, valid_before;
    char critical[SP_SSH_CERT_MAX_OPTIONS][64]; /* critical option names */
    size_t n_critical;
    /* the subject key's public fields (into the blob): what its plain wire blob holds after
     * the type name, e.g. string pk (Ed25519), string curve + string Q (ECDSA), mpint e +
     * mpint n (RSA); the plain type is key_type without "-cert-v01@openssh.com" */
    const uint8_t *pubkey;
    size_t pubkey_len;
    const uint8_t *signature_key; /* the CA key that signed (wire format, into the blob) */
    size_t signature_key_len;
    bool signature_ok; /* the signature verifies with signature_key */
} sp_ssh_cert;

/* Parse a certificate blob and verify its signature with the key it names. -1 with err on a
 * malformed blob; a bad signature parses with signature_ok = false. */
int sp_ssh_cert_parse(const uint8_t *blob, size_t len, sp_ssh_cert *out, char *err, size_t errlen);
/* May this certificate log in as principal now? Signed by trusted_ca (blob), signature ok, a
 * user certificate, within its validity window, principal listed, no critical option this
 * gateway does not understand (force-command and source-address are refused too: the gateway
 * would not enforce them). 0 ok, -1 with err saying exactly why. */
int sp_ssh_cert_check(const sp_ssh_cert *c, const uint8_t *trusted_ca, size_t trusted_len,
                      const char *principal, uint64_t now, char *err, size_t errlen);

#endif
