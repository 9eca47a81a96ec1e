/* Layout constants of the recording file format (recorder/FORMAT.md), shared by the writer
 * and the reader in rec.c. Private to recorder/. */
#ifndef SP_RECORDER_REC_FORMAT_H
#define SP_RECORDER_REC_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define REC_VERSION_1 1 /* compressed, CRC32C; read for replay, never verifies ok */
#define REC_VERSION 2   /* encrypted, hash-chained, signed: what the writer produces */
#define REC_MAGIC_LEN 7
/* magic, u16 version, u16 flags, u32 meta length */
#define REC_HEADER_FIXED (REC_MAGIC_LEN + 2 + 2 + 4)
#define REC_META_MAX (64 * 1024)

/* Header metadata tags (TLV: u8 tag, u16 length, value). Never reuse a number. */
enum rec_meta_tag {
    REC_META_SESSION_ID = 1,
    REC_META_KIND = 2,
    REC_META_IDENTITY = 3,
    REC_META_TARGET = 4,
    REC_META_DATABASE = 5,
    REC_META_DB_USER = 6,
    REC_META_CLIENT_ADDR = 7,
    REC_META_STARTED_AT = 8,     /* i64 us */
    REC_META_MAX_TEXT = 9,       /* u32 */
    REC_META_MASTER_KEY_ID = 10, /* v2: text, the master key that wrapped the data key */
    REC_META_WRAPPED_KEY = 11,   /* v2: nonce(12) || AES-256-GCM(data key)(32) || tag(16) */
    REC_META_END_REASON = 20,    /* v2 trailer summary only: text */
};

#define REC_HASH_LEN 32
#define REC_KEY_LEN 32
#define REC_NONCE_LEN 12
#define REC_TAG_LEN 16
#define REC_WRAPPED_KEY_LEN (REC_NONCE_LEN + REC_KEY_LEN + REC_TAG_LEN)
#define REC_SIG_LEN 64
#define REC_SIGNER_ID_LEN 8
/* Associated data of the wrapped data key: this label, then the session id. */
#define REC_WRAP_LABEL "sallyport recording data key v2"

#define REC_CHUNK_MAGIC "SPCK"
/* magic, u32 seq, u32 stored, u32 raw, u32 events, i64 first ts, u32 payload crc, u32 header
 * crc */
#define REC_CHUNK_HEADER_V1 36
/* v2: magic, u32 seq, u32 stored, u32 raw, u32 events, i64 first ts, prev hash (32), u32 header
 * crc. stored = zstd frame length + REC_TAG_LEN; the payload is the AES-256-GCM ciphertext of
 * the frame followed by its tag; the associated data is the 60 header bytes before the crc. */
#define REC_CHUNK_HEADER 64
#define REC_CHUNK_AAD 60

#define REC_TRAILER_MAGIC "SPTR"
/* u64 chunks, u64 events, u64 raw bytes, u64 stored bytes, i64 ended at, u16 reason length */
#define REC_TRAILER_BODY_FIXED 42
#define REC_REASON_MAX 1024

/* v2 trailer: "SPTR", u32 body_len, body, signer id (8), signature (64), footer.
 * body: u64 chunks, events, raw bytes, stored bytes; i64 started_at, ended_at; header hash;
 * chain head; u16 summary length, summary (metadata TLV); u32 index count, entries. */
#define REC_TRAILER2_FIXED (6 * 8 + 2 * REC_HASH_LEN)
#define REC_INDEX_ENTRY 16 /* u64 offset, i64 first ts */
#define REC_TRAILER2_BODY_MAX (80u * 1024 * 1024)
/* footer: u64 offset of the trailer, then this magic; it ends every sealed v2 file */
#define REC_FOOTER_MAGIC "SPTREND\n"
#define REC_FOOTER_LEN 16

/* u8 type, u8 flags, u8 field count, u8 reserved, i64 ts; then per field u32 length, bytes */
#define REC_EVENT_HEADER 12
#define REC_FIELD_HEADER 4

/* Largest max_text a recording may declare; it bounds what a reader allocates for a chunk. */
#define REC_MAX_TEXT_CAP (16u * 1024 * 1024)

uint32_t rec_crc32c(uint32_t crc, const void *data, size_t len);

/* ---- crypto (keys.c) ---- */

/* The master key with this id, or NULL if it is not loaded. */
const uint8_t *rec_keys_master(const char *id);
/* The current master key id, or NULL when no master key is loaded. */
const char *rec_keys_current_id(void);
/* Ed25519 over msg with the signing key; -1 if there is none. */
int rec_keys_sign(const uint8_t *msg, size_t len, uint8_t sig[REC_SIG_LEN],
                  uint8_t signer[REC_SIGNER_ID_LEN]);
/* 1 = good signature, 0 = bad signature or a different signer, -1 = no public key loaded. */
int rec_keys_verify(const uint8_t *msg, size_t len, const uint8_t sig[REC_SIG_LEN],
                    const uint8_t signer[REC_SIGNER_ID_LEN]);

/* AES-256-GCM in place. open returns -1 when the tag does not authenticate. */
int rec_gcm_seal(const uint8_t key[REC_KEY_LEN], const uint8_t nonce[REC_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                 uint8_t tag[REC_TAG_LEN]);
int rec_gcm_open(const uint8_t key[REC_KEY_LEN], const uint8_t nonce[REC_NONCE_LEN],
                 const uint8_t *aad, size_t aadlen, uint8_t *buf, size_t len,
                 const uint8_t tag[REC_TAG_LEN]);
/* The nonce of chunk seq: 4 zero bytes, then seq as u64. Unique because each data key
 * encrypts exactly one recording. */
void rec_chunk_nonce(uint64_t seq, uint8_t nonce[REC_NONCE_LEN]);
/* SHA-256 of a || b (b may be NULL). */
void rec_sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[REC_HASH_LEN]);

/* ---- shared by the writer (rec.c) and the orphan sealer (seal.c) ---- */

struct sp_buf;
struct sp_rec_meta;

/* The identity metadata entries (session id to client address), as in the header. */
int rec_meta_strings(struct sp_buf *b, const struct sp_rec_meta *meta);

typedef struct rec_trailer_in {
    uint64_t chunks, events, raw, stored;
    int64_t started_at, ended_at;
    const uint8_t *header_hash; /* REC_HASH_LEN */
    const uint8_t *chain_head;  /* REC_HASH_LEN: hash of the last chunk, or header_hash */
    const uint8_t *summary;     /* rec_meta_strings() output */
    size_t summary_len;
    const char *reason;
    const uint8_t *index; /* index_count entries of REC_INDEX_ENTRY bytes */
    size_t index_count;
    uint64_t offset; /* file offset the trailer is written at */
} rec_trailer_in;

/* What the chain walk of an unsealed v2 file found, for sealing it (rec_read.c). */
#include "common/buf.h"
#include "recorder/rec.h"
typedef struct rec_scan {
    enum sp_rec_state state;
    char note[256];
    sp_rec_header header;
    uint8_t header_hash[REC_HASH_LEN];
    uint8_t chain[REC_HASH_LEN];
    uint64_t chunks, events, raw, stored;
    uint64_t end_offset; /* just after the last whole chunk */
    sp_buf index;        /* the caller frees it */
} rec_scan;
int rec_scan_file(const char *path, rec_scan *out, char *err, size_t errlen);

/* Trailer, signature and footer, appended to out. -1 (why in err) without a signing key. */
int rec_build_trailer(struct sp_buf *out, const rec_trailer_in *in, char *err, size_t errlen);

#endif
