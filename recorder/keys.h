/* Recording keys: the master keys that wrap each recording's data key, and the Ed25519 key that
 * signs recording trailers (recorder/FORMAT.md, "Keys").
 *
 * Files (owner-only, checked whenever they are read):
 *   master_key_file   text, one key per line "ID BASE64(32 bytes)"; '#' lines are comments;
 *                     the last key is current (new recordings), the others unwrap old ones.
 *   signing_key_file  PEM PKCS#8 Ed25519 private key.
 *
 * The process-wide context is set once, before any recording is written or read (serve start,
 * the CLI before replay/verify), and only read afterwards, so loop threads need no lock. */
#ifndef SP_RECORDER_KEYS_H
#define SP_RECORDER_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"

#define SP_KEY_ID_MAX 40
#define SP_MASTER_KEY_LEN 32
#define SP_SIGNER_ID_LEN 8 /* first bytes of SHA-256 of the raw Ed25519 public key */

/* Load master keys and the signing key named by cfg. Both must be configured and readable:
 * without them recordings cannot be written (-1, err says which key and why). */
int sp_rec_keys_init(const sp_config *cfg, char *err, size_t errlen);
/* What readers and verify can get: master keys and signing key if present and readable; a
 * missing file is not an error here (verify works with the public key alone). public_key_pem,
 * if given, is a PEM public key file that replaces the signing key for checking signatures. */
int sp_rec_keys_init_readonly(const sp_config *cfg, const char *public_key_pem, char *err,
                              size_t errlen);
/* The same from memory (tests, fuzzing): master key file text and signing key PEM, either
 * may be NULL. */
int sp_rec_keys_load_text(const char *master_text, const char *signing_pem, char *err,
                          size_t errlen);
void sp_rec_keys_clear(void);

bool sp_rec_keys_can_write(void);
bool sp_rec_keys_can_verify(void);

/* ---- key files (the `sallyport keys` commands) ---- */

/* Create whichever of the two files does not exist (0600). *made_master / *made_signing say
 * what was created. Existing files are checked, never overwritten. */
int sp_keys_init_files(const char *master_path, const char *signing_path, bool *made_master,
                       bool *made_signing, char *err, size_t errlen);
/* Append a new master key and make it current; new_id receives its id. */
int sp_keys_rotate(const char *master_path, char *new_id, size_t idlen, char *err, size_t errlen);
/* The master key ids in the file, oldest first, via fn; the last is current. */
int sp_keys_list_master(const char *master_path,
                        void (*fn)(const char *id, bool current, void *arg), void *arg, char *err,
                        size_t errlen);
/* The signing key's public half as PEM (out NUL-terminated) and its id "sk-" + 16 hex. */
int sp_keys_public(const char *signing_path, char *pem, size_t pemlen, char *id, size_t idlen,
                   char *err, size_t errlen);

#endif
