/* Checking an audit trail written by recorder/audit.c: every "prev" link across lines and
 * files, every line's "seq", and every checkpoint (its line count, its head, its Ed25519
 * signature). Reports the first break with the file, the line and why: edited, deleted,
 * reordered, cut, malformed, bad-signature.
 *
 * Files are grouped by host (audit-HOST-YYYY-MM-DD.jsonl) and taken in date order; each
 * host's files form one chain. A chain's first line may link to a file not given (archived):
 * that is a note, not a break. What can and cannot be detected is in docs/operations.md. */
#ifndef SP_RECORDER_AUDIT_VERIFY_H
#define SP_RECORDER_AUDIT_VERIFY_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define SP_AUDIT_PUBKEY_LEN 32

typedef struct sp_audit_verify_opts {
    const char *const *paths; /* the files; sorted by host and date here */
    size_t n_paths;
    const uint8_t *public_key; /* raw Ed25519 key; NULL: signatures are not checked */
    const char *syslog_path;   /* optional: a log holding the checkpoints sent to syslog */
} sp_audit_verify_opts;

/* The report: {"ok": bool, "files": [{"path", "lines", "checkpoints"}], "lines",
 * "checkpoints", "signatures": "checked"|"not checked", "break": null | {"file", "line",
 * "kind", "reason"}, "notes": [text]}. NULL (err filled) only when a file cannot be read. */
json_t *sp_audit_verify(const sp_audit_verify_opts *o, char *err, size_t errlen);
/* The same over one file held in memory (the fuzz target, tests). */
json_t *sp_audit_verify_mem(const char *name, const uint8_t *data, size_t len,
                            const uint8_t *public_key);

/* Every audit-*.jsonl file in dir, as malloc'd paths (free each and the array). */
int sp_audit_list_files(const char *dir, char ***paths, size_t *n, char *err, size_t errlen);
/* The raw public key from a PEM file holding an Ed25519 public key, or a private key (the
 * gateway's signing_key_file), whose public half is taken. */
int sp_audit_load_public_key(const char *path, uint8_t out[SP_AUDIT_PUBKEY_LEN], char *err,
                             size_t errlen);

#endif
