/* Layout constants of the recording file format (recorder/FORMAT.md), shared by the writer
 * and the reader in rec.c. Private to recorder/. */
#ifndef SP_RECORDER_REC_FORMAT_H
#define SP_RECORDER_REC_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#define REC_VERSION 1
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
    REC_META_STARTED_AT = 8, /* i64 us */
    REC_META_MAX_TEXT = 9,   /* u32 */
};

#define REC_CHUNK_MAGIC "SPCK"
/* magic, u32 seq, u32 stored, u32 raw, u32 events, i64 first ts, u32 payload crc, u32 header
 * crc */
#define REC_CHUNK_HEADER 36

#define REC_TRAILER_MAGIC "SPTR"
/* u64 chunks, u64 events, u64 raw bytes, u64 stored bytes, i64 ended at, u16 reason length */
#define REC_TRAILER_BODY_FIXED 42
#define REC_REASON_MAX 1024

/* u8 type, u8 flags, u8 field count, u8 reserved, i64 ts; then per field u32 length, bytes */
#define REC_EVENT_HEADER 12
#define REC_FIELD_HEADER 4

/* Largest max_text a recording may declare; it bounds what a reader allocates for a chunk. */
#define REC_MAX_TEXT_CAP (16u * 1024 * 1024)

uint32_t rec_crc32c(uint32_t crc, const void *data, size_t len);

#endif
