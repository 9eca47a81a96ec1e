/* Session recording reader. Every length in the file is checked against what is really there
 * before it is used, and against the limits of FORMAT.md before anything is allocated: the
 * input may be cut short by a crash, damaged on disk, or hostile (it is fuzzed). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "recorder/keys.h"
#include "recorder/rec.h"
#include "recorder/rec_format.h"

enum rec_read_state { READING, AT_SEALED, AT_UNSEALED, AT_DAMAGED };

struct sp_rec_reader {
    /* the source: memory, or a file read with pread */
    const uint8_t *mem;
    int fd;
    uint64_t size;
    uint8_t *scratch; /* file bytes of the current chunk payload */
    size_t scratch_cap;

    sp_rec_header header;
    uint32_t max_text;
    uint64_t pos; /* offset of the next block */

    /* v2 */
    bool decrypt; /* false: check the chain only (needs no master key), return no events */
    char master_key_id[SP_KEY_ID_MAX];
    uint8_t wrapped[REC_WRAPPED_KEY_LEN];
    bool have_wrapped;
    uint8_t data_key[REC_KEY_LEN];
    uint8_t header_hash[REC_HASH_LEN];
    uint8_t chain[REC_HASH_LEN]; /* hash of the last whole block read */
    uint8_t *plain;              /* decrypted zstd frame of the current chunk */
    size_t plain_cap;
    sp_buf index;  /* REC_INDEX_ENTRY per chunk read, compared with the trailer's */
    bool seeked;   /* chunks were skipped: totals cannot be compared with the trailer */
    int signature; /* sealed v2: 1 good, 0 bad, -1 no public key to check it */
    uint64_t bad_chunk;

    ZSTD_DCtx *dctx;
    uint8_t *raw; /* the current chunk's events */
    size_t raw_cap;
    size_t raw_len;
    size_t raw_pos;
    uint32_t chunk_events; /* events declared by the current chunk */
    uint32_t chunk_event_no;

    uint64_t chunks; /* whole chunks read */
    uint64_t events;
    uint64_t raw_total;
    uint64_t stored_total;

    enum rec_read_state state;
    char end_reason[REC_REASON_MAX + 1];
    char note[256]; /* how reading ended, or why it stopped */
};

/* Fuzzing builds accept any checksum so the fuzzer can reach decompression and event
 * decoding behind it; every other check still applies. */
static bool crc_matches(uint32_t stored, const uint8_t *p, size_t len)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)stored;
    (void)p;
    (void)len;
    return true;
#else
    return stored == rec_crc32c(0, p, len);
#endif
}

/* Fuzzing builds also accept a broken chain and an unauthenticated chunk: see crc_matches. */
static bool hash_matches(const uint8_t *a, const uint8_t *b)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)a;
    (void)b;
    return true;
#else
    return memcmp(a, b, REC_HASH_LEN) == 0;
#endif
}

static bool gcm_opened(int rc)
{
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    (void)rc;
    return true;
#else
    return rc == 0;
#endif
}

static uint64_t get_be64(const uint8_t *p)
{
    return sp_get_be64(p);
}

/* Bytes [off, off+len) of the source, or NULL if the source has fewer. The pointer is valid
 * until the next call that needs the scratch buffer. */
static const uint8_t *src_bytes(sp_rec_reader *r, uint64_t off, size_t len)
{
    if (off > r->size || len > r->size - off)
        return NULL;
    if (r->mem)
        return r->mem + off;
    if (len > r->scratch_cap) {
        uint8_t *p = realloc(r->scratch, len);
        if (!p)
            return NULL;
        r->scratch = p;
        r->scratch_cap = len;
    }
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(r->fd, r->scratch + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NULL;
        got += (size_t)n;
    }
    return r->scratch;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int reader_damaged(sp_rec_reader *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int reader_damaged(sp_rec_reader *r, const char *fmt, ...)
{
    if (r->state != AT_DAMAGED)
        r->bad_chunk = r->chunks;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof(r->note), fmt, ap);
    va_end(ap);
    r->state = AT_DAMAGED;
    return -1;
}

static int reader_unsealed(sp_rec_reader *r, const char *why)
{
    snprintf(r->note, sizeof(r->note), "after %llu whole chunks%s%s", (unsigned long long)r->chunks,
             why ? "; " : "", why ? why : "");
    r->state = AT_UNSEALED;
    return 0;
}

/* ---- header ---- */

static void copy_meta_str(char *dst, size_t dstlen, const uint8_t *v, size_t len)
{
    size_t n = 0;
    while (n < len && n + 1 < dstlen && v[n] != '\0') {
        dst[n] = (char)v[n];
        n++;
    }
    dst[n] = '\0';
}

static void apply_meta(sp_rec_reader *r, uint8_t tag, const uint8_t *v, size_t len)
{
    sp_rec_header *h = &r->header;
    switch (tag) {
    case REC_META_SESSION_ID:
        copy_meta_str(h->session_id, sizeof(h->session_id), v, len);
        break;
    case REC_META_KIND:
        copy_meta_str(h->kind, sizeof(h->kind), v, len);
        break;
    case REC_META_IDENTITY:
        copy_meta_str(h->identity, sizeof(h->identity), v, len);
        break;
    case REC_META_TARGET:
        copy_meta_str(h->target, sizeof(h->target), v, len);
        break;
    case REC_META_DATABASE:
        copy_meta_str(h->database, sizeof(h->database), v, len);
        break;
    case REC_META_DB_USER:
        copy_meta_str(h->db_user, sizeof(h->db_user), v, len);
        break;
    case REC_META_CLIENT_ADDR:
        copy_meta_str(h->client_addr, sizeof(h->client_addr), v, len);
        break;
    case REC_META_STARTED_AT:
        if (len == 8)
            h->started_at = (int64_t)get_be64(v);
        break;
    case REC_META_MAX_TEXT:
        if (len == 4)
            r->max_text = sp_get_be32(v);
        break;
    case REC_META_MASTER_KEY_ID:
        copy_meta_str(r->master_key_id, sizeof(r->master_key_id), v, len);
        break;
    case REC_META_WRAPPED_KEY:
        if (len == REC_WRAPPED_KEY_LEN) {
            memcpy(r->wrapped, v, len);
            r->have_wrapped = true;
        }
        break;
    default:
        break; /* a tag from a later minor revision: skipped by design */
    }
}

static int parse_meta(sp_rec_reader *r, const uint8_t *meta, size_t len, char *err, size_t errlen)
{
    size_t off = 0;
    while (off < len) {
        if (len - off < 3) {
            set_err(err, errlen, "recording header: metadata entry cut short at byte %zu", off);
            return -1;
        }
        uint8_t tag = meta[off];
        size_t vlen = sp_get_be16(meta + off + 1);
        off += 3;
        if (vlen > len - off) {
            set_err(err, errlen, "recording header: metadata entry %u longer than the header", tag);
            return -1;
        }
        apply_meta(r, tag, meta + off, vlen);
        off += vlen;
    }
    return 0;
}

static int unwrap_data_key(sp_rec_reader *r, char *err, size_t errlen)
{
    const uint8_t *master = rec_keys_master(r->master_key_id);
    if (!master) {
        set_err(err, errlen,
                "recording is encrypted under master key %s, which is not in the loaded "
                "master_key_file (a rotated-out key, or the wrong key file)",
                r->master_key_id);
        return -1;
    }
    uint8_t aad[sizeof(REC_WRAP_LABEL) + sizeof(r->header.session_id)];
    size_t idlen = strlen(r->header.session_id);
    memcpy(aad, REC_WRAP_LABEL, sizeof(REC_WRAP_LABEL));
    memcpy(aad + sizeof(REC_WRAP_LABEL), r->header.session_id, idlen);
    memcpy(r->data_key, r->wrapped + REC_NONCE_LEN, REC_KEY_LEN);
    int rc = rec_gcm_open(master, r->wrapped, aad, sizeof(REC_WRAP_LABEL) + idlen, r->data_key,
                          REC_KEY_LEN, r->wrapped + REC_NONCE_LEN + REC_KEY_LEN);
    if (!gcm_opened(rc)) {
        OPENSSL_cleanse(r->data_key, sizeof(r->data_key));
        set_err(err, errlen,
                "cannot unwrap the recording's data key with master key %s: the key file holds "
                "a different key under that id, or the header was altered",
                r->master_key_id);
        return -1;
    }
    return 0;
}

static int read_header(sp_rec_reader *r, char *err, size_t errlen)
{
    const uint8_t *p = src_bytes(r, 0, REC_HEADER_FIXED);
    if (!p || memcmp(p, SP_REC_MAGIC, REC_MAGIC_LEN) != 0) {
        set_err(err, errlen, "not a sallyport recording (bad magic)");
        return -1;
    }
    uint16_t version = sp_get_be16(p + REC_MAGIC_LEN);
    uint16_t flags = sp_get_be16(p + REC_MAGIC_LEN + 2);
    uint32_t meta_len = sp_get_be32(p + REC_MAGIC_LEN + 4);
    if (version != REC_VERSION && version != REC_VERSION_1) {
        set_err(err, errlen, "recording format version %u is not supported (this reader: 1, %d)",
                version, REC_VERSION);
        return -1;
    }
    if (flags != 0) {
        set_err(err, errlen, "recording header flags 0x%04x not supported by this reader", flags);
        return -1;
    }
    if (meta_len > REC_META_MAX) {
        set_err(err, errlen, "recording header: metadata length %u over the limit", meta_len);
        return -1;
    }
    size_t total = REC_HEADER_FIXED + meta_len + 4;
    p = src_bytes(r, 0, total);
    if (!p) {
        set_err(err, errlen, "recording header cut short (file has %llu bytes)",
                (unsigned long long)r->size);
        return -1;
    }
    if (!crc_matches(sp_get_be32(p + total - 4), p, total - 4)) {
        set_err(err, errlen, "recording header damaged (checksum mismatch)");
        return -1;
    }
    r->header.version = version;
    r->max_text = REC_MAX_TEXT_CAP;
    /* p may point into scratch, which the metadata parse does not touch */
    if (parse_meta(r, p + REC_HEADER_FIXED, meta_len, err, errlen) < 0)
        return -1;
    if (r->max_text > REC_MAX_TEXT_CAP) {
        set_err(err, errlen, "recording header: max_text %u over the limit", r->max_text);
        return -1;
    }
    if (version == REC_VERSION) {
        rec_sha256(p, total, NULL, 0, r->header_hash);
        memcpy(r->chain, r->header_hash, REC_HASH_LEN);
        if (!r->master_key_id[0] || !r->have_wrapped) {
            set_err(err, errlen, "recording header: no master key id or wrapped data key");
            return -1;
        }
        if (r->decrypt && unwrap_data_key(r, err, errlen) < 0)
            return -1;
    }
    r->pos = total;
    return 0;
}

/* ---- open/close ---- */

static sp_rec_reader *reader_new(bool decrypt)
{
    sp_rec_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
    r->decrypt = decrypt;
    r->signature = -1;
    sp_buf_init(&r->index, REC_TRAILER2_BODY_MAX);
    r->dctx = ZSTD_createDCtx();
    if (!r->dctx) {
        free(r);
        return NULL;
    }
    return r;
}

void sp_rec_reader_close(sp_rec_reader *r)
{
    if (!r)
        return;
    if (r->fd >= 0)
        close(r->fd);
    ZSTD_freeDCtx(r->dctx);
    OPENSSL_cleanse(r->data_key, sizeof(r->data_key));
    sp_buf_free(&r->index);
    free(r->scratch);
    free(r->plain);
    free(r->raw);
    free(r);
}

sp_rec_reader *sp_rec_reader_open_mem(const uint8_t *data, size_t len, char *err, size_t errlen)
{
    sp_rec_reader *r = reader_new(true);
    if (!r) {
        set_err(err, errlen, "out of memory opening a recording");
        return NULL;
    }
    r->mem = data;
    r->size = len;
    if (read_header(r, err, errlen) < 0) {
        sp_rec_reader_close(r);
        return NULL;
    }
    return r;
}

static sp_rec_reader *reader_open_file(const char *path, bool decrypt, char *err, size_t errlen)
{
    sp_rec_reader *r = reader_new(decrypt);
    if (!r) {
        set_err(err, errlen, "out of memory opening a recording");
        return NULL;
    }
    struct stat st;
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0 || fstat(r->fd, &st) < 0) {
        set_err(err, errlen, "open %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, "open %s: not a regular file", path);
        goto fail;
    }
    /* A live recording keeps growing: read what existed at open. */
    r->size = (uint64_t)st.st_size;
    char why[200];
    if (read_header(r, why, sizeof(why)) < 0) {
        set_err(err, errlen, "%s: %s", path, why);
        goto fail;
    }
    return r;
fail:
    sp_rec_reader_close(r);
    return NULL;
}

sp_rec_reader *sp_rec_reader_open(const char *path, char *err, size_t errlen)
{
    return reader_open_file(path, true, err, errlen);
}

const sp_rec_header *sp_rec_reader_header(const sp_rec_reader *r)
{
    return &r->header;
}

/* ---- blocks ---- */

/* A writer that died mid-write leaves either a short block at the end, or (on file systems
 * that extend the size before the data lands) a block of the right length that ends at the
 * end of the file with the wrong bytes, often zeros. Both are a torn tail, not damage. */
static bool block_ends_file(const sp_rec_reader *r, uint64_t block_len)
{
    return r->size - r->pos == block_len;
}

static bool rest_is_zero(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    for (uint64_t off = 0; off < left;) {
        size_t n = left - off > 4096 ? 4096 : (size_t)(left - off);
        const uint8_t *p = src_bytes(r, r->pos + off, n);
        if (!p)
            return false;
        for (size_t i = 0; i < n; i++)
            if (p[i])
                return false;
        off += n;
    }
    return true;
}

static int read_trailer_v1(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    const uint8_t *p = src_bytes(r, r->pos, 8);
    if (!p)
        return reader_unsealed(r, "the trailer is cut short");
    uint32_t body = sp_get_be32(p + 4);
    if (body < REC_TRAILER_BODY_FIXED || body > REC_TRAILER_BODY_FIXED + REC_REASON_MAX)
        return reader_damaged(r, "trailer at offset %llu: body length %u out of range",
                              (unsigned long long)r->pos, body);
    uint64_t total = 8 + (uint64_t)body + 4;
    if (left < total)
        return reader_unsealed(r, "the trailer is cut short");
    p = src_bytes(r, r->pos, (size_t)total);
    if (!p)
        return reader_damaged(r, "trailer at offset %llu: read failed", (unsigned long long)r->pos);
    if (!crc_matches(sp_get_be32(p + 8 + body), p, 8 + body)) {
        if (block_ends_file(r, total))
            return reader_unsealed(r, "the trailer is torn (checksum mismatch)");
        return reader_damaged(r, "trailer at offset %llu: checksum mismatch",
                              (unsigned long long)r->pos);
    }
    const uint8_t *b = p + 8;
    uint64_t chunks = get_be64(b), events = get_be64(b + 8);
    uint64_t raw = get_be64(b + 16), stored = get_be64(b + 24);
    size_t reason_len = sp_get_be16(b + 40);
    if (reason_len != body - REC_TRAILER_BODY_FIXED)
        return reader_damaged(r, "trailer: reason length %zu does not match its body", reason_len);
    copy_meta_str(r->end_reason, sizeof(r->end_reason), b + 42, reason_len);
    if (chunks != r->chunks || events != r->events || raw != r->raw_total ||
        stored != r->stored_total)
        return reader_damaged(r,
                              "trailer says %llu chunks / %llu events, the file holds %llu "
                              "chunks / %llu events",
                              (unsigned long long)chunks, (unsigned long long)events,
                              (unsigned long long)r->chunks, (unsigned long long)r->events);
    if (left > total)
        return reader_damaged(r, "%llu unexpected bytes after the trailer",
                              (unsigned long long)(left - total));
    r->pos += total;
    snprintf(r->note, sizeof(r->note), "%llu chunks, %llu events", (unsigned long long)r->chunks,
             (unsigned long long)r->events);
    r->state = AT_SEALED;
    return 0;
}

/* What one chunk may decompress to: a full chunk, or a single event of the largest size this
 * recording's max_text allows (the writer gives such an event a chunk of its own). */
static uint64_t chunk_raw_limit(const sp_rec_reader *r, uint32_t events)
{
    uint64_t one_event =
        REC_EVENT_HEADER + (uint64_t)SP_REC_MAX_FIELDS * (REC_FIELD_HEADER + r->max_text);
    if (events == 1 && one_event > SP_REC_MAX_CHUNK_RAW)
        return one_event;
    return SP_REC_MAX_CHUNK_RAW;
}

static int decompress_chunk(sp_rec_reader *r, const uint8_t *stored, size_t stored_len,
                            size_t raw_len)
{
    unsigned long long declared = ZSTD_getFrameContentSize(stored, stored_len);
    if (declared != raw_len)
        return reader_damaged(r, "chunk %llu: compressed frame does not declare %zu bytes",
                              (unsigned long long)r->chunks, raw_len);
    if (raw_len > r->raw_cap) {
        uint8_t *p = realloc(r->raw, raw_len);
        if (!p)
            return reader_damaged(r, "chunk %llu: out of memory for %zu bytes",
                                  (unsigned long long)r->chunks, raw_len);
        r->raw = p;
        r->raw_cap = raw_len;
    }
    size_t got = ZSTD_decompressDCtx(r->dctx, r->raw, raw_len, stored, stored_len);
    if (ZSTD_isError(got))
        return reader_damaged(r, "chunk %llu: decompression failed: %s",
                              (unsigned long long)r->chunks, ZSTD_getErrorName(got));
    if (got != raw_len)
        return reader_damaged(r, "chunk %llu: decompressed to %zu bytes, header says %zu",
                              (unsigned long long)r->chunks, got, raw_len);
    return 1;
}

static int read_chunk_v1(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    unsigned long long no = (unsigned long long)r->chunks;
    uint8_t h[REC_CHUNK_HEADER_V1];
    const uint8_t *p = src_bytes(r, r->pos, REC_CHUNK_HEADER_V1);
    if (!p)
        return reader_unsealed(r, "the last chunk is cut short");
    memcpy(h, p, sizeof(h));
    if (!crc_matches(sp_get_be32(h + 32), h, 32)) {
        if (rest_is_zero(r))
            return reader_unsealed(r, "the file ends in zeros (a torn write)");
        return reader_damaged(r, "chunk %llu at offset %llu: header checksum mismatch", no,
                              (unsigned long long)r->pos);
    }
    uint32_t seq = sp_get_be32(h + 4), stored_len = sp_get_be32(h + 8);
    uint32_t raw_len = sp_get_be32(h + 12), count = sp_get_be32(h + 16);
    if (seq != r->chunks)
        return reader_damaged(r, "chunk %llu: sequence number %u (chunks missing or reordered)", no,
                              seq);
    if (count == 0 || raw_len < (uint64_t)count * REC_EVENT_HEADER ||
        raw_len > chunk_raw_limit(r, count))
        return reader_damaged(r, "chunk %llu: %u events in %u bytes is out of range", no, count,
                              raw_len);
    if (stored_len > ZSTD_compressBound(raw_len))
        return reader_damaged(r, "chunk %llu: %u stored bytes for %u raw bytes is out of range", no,
                              stored_len, raw_len);
    uint64_t total = REC_CHUNK_HEADER_V1 + (uint64_t)stored_len;
    if (left < total)
        return reader_unsealed(r, "the last chunk is cut short");
    const uint8_t *stored = src_bytes(r, r->pos + REC_CHUNK_HEADER_V1, stored_len);
    if (!stored)
        return reader_damaged(r, "chunk %llu: read failed", no);
    if (!crc_matches(sp_get_be32(h + 28), stored, stored_len)) {
        if (block_ends_file(r, total))
            return reader_unsealed(r, "the last chunk is torn (checksum mismatch)");
        return reader_damaged(r, "chunk %llu at offset %llu: checksum mismatch", no,
                              (unsigned long long)r->pos);
    }
    int rc = decompress_chunk(r, stored, stored_len, raw_len);
    if (rc < 0)
        return rc;
    r->pos += total;
    r->raw_len = raw_len;
    r->raw_pos = 0;
    r->chunk_events = count;
    r->chunk_event_no = 0;
    r->chunks++;
    r->raw_total += raw_len;
    r->stored_total += stored_len;
    return 1;
}

/* The v2 chunk payload, decrypted under the data key into r->plain, then decompressed. The
 * associated data (the chunk header: sequence number, lengths, previous hash) is authenticated
 * with it, so a chunk moved to another place or another recording does not open. */
static int open_chunk_v2(sp_rec_reader *r, const uint8_t *h, const uint8_t *stored,
                         size_t stored_len, size_t raw_len)
{
    size_t frame_len = stored_len - REC_TAG_LEN;
    if (frame_len > r->plain_cap) {
        uint8_t *p = realloc(r->plain, frame_len ? frame_len : 1);
        if (!p)
            return reader_damaged(r, "chunk %llu: out of memory for %zu bytes",
                                  (unsigned long long)r->chunks, frame_len);
        r->plain = p;
        r->plain_cap = frame_len;
    }
    memcpy(r->plain, stored, frame_len);
    uint8_t nonce[REC_NONCE_LEN];
    rec_chunk_nonce(r->chunks, nonce);
    int rc =
        rec_gcm_open(r->data_key, nonce, h, REC_CHUNK_AAD, r->plain, frame_len, stored + frame_len);
    if (!gcm_opened(rc))
        return reader_damaged(r,
                              "chunk %llu at offset %llu: does not authenticate (its bytes "
                              "were altered)",
                              (unsigned long long)r->chunks, (unsigned long long)r->pos);
    return decompress_chunk(r, r->plain, frame_len, raw_len);
}

static int read_chunk_v2(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    unsigned long long no = (unsigned long long)r->chunks;
    uint8_t h[REC_CHUNK_HEADER];
    const uint8_t *p = src_bytes(r, r->pos, REC_CHUNK_HEADER);
    if (!p)
        return reader_unsealed(r, "the last chunk is cut short");
    memcpy(h, p, sizeof(h));
    if (!crc_matches(sp_get_be32(h + REC_CHUNK_AAD), h, REC_CHUNK_AAD)) {
        if (rest_is_zero(r))
            return reader_unsealed(r, "the file ends in zeros (a torn write)");
        return reader_damaged(r, "chunk %llu at offset %llu: header checksum mismatch", no,
                              (unsigned long long)r->pos);
    }
    uint32_t seq = sp_get_be32(h + 4), stored_len = sp_get_be32(h + 8);
    uint32_t raw_len = sp_get_be32(h + 12), count = sp_get_be32(h + 16);
    if (seq != r->chunks)
        return reader_damaged(r,
                              "chunk %llu at offset %llu: sequence number %u (a chunk is missing, "
                              "duplicated or out of order)",
                              no, (unsigned long long)r->pos, seq);
    if (!hash_matches(h + 28, r->chain)) {
        if (r->chunks == 0)
            return reader_damaged(r, "chunk 0 does not link to the header (header altered)");
        /* The link is what chunk N says about chunk N-1: the altered one is N-1. */
        r->chunks--;
        reader_damaged(r,
                       "chunk %llu: its stored bytes do not match the hash chunk %llu carries "
                       "(altered)",
                       no - 1, no);
        r->chunks++;
        return -1;
    }
    if (count == 0 || raw_len < (uint64_t)count * REC_EVENT_HEADER ||
        raw_len > chunk_raw_limit(r, count))
        return reader_damaged(r, "chunk %llu: %u events in %u bytes is out of range", no, count,
                              raw_len);
    if (stored_len <= REC_TAG_LEN || stored_len - REC_TAG_LEN > ZSTD_compressBound(raw_len))
        return reader_damaged(r, "chunk %llu: %u stored bytes for %u raw bytes is out of range", no,
                              stored_len, raw_len);
    uint64_t total = REC_CHUNK_HEADER + (uint64_t)stored_len;
    if (left < total)
        return reader_unsealed(r, "the last chunk is cut short");
    const uint8_t *stored = src_bytes(r, r->pos + REC_CHUNK_HEADER, stored_len);
    if (!stored)
        return reader_damaged(r, "chunk %llu: read failed", no);
    if (r->decrypt) {
        int rc = open_chunk_v2(r, h, stored, stored_len, raw_len);
        if (rc < 0)
            return rc;
        r->raw_len = raw_len;
        r->chunk_events = count;
    } else {
        r->raw_len = 0;
        r->chunk_events = 0; /* chain only: nothing to hand out */
    }
    uint8_t entry[REC_INDEX_ENTRY];
    sp_put_be32(entry, (uint32_t)(r->pos >> 32));
    sp_put_be32(entry + 4, (uint32_t)r->pos);
    memcpy(entry + 8, h + 20, 8);
    if (sp_buf_append(&r->index, entry, sizeof(entry)) < 0)
        return reader_damaged(r, "chunk %llu: too many chunks to index", no);
    rec_sha256(h, REC_CHUNK_HEADER, stored, stored_len, r->chain);
    r->pos += total;
    r->raw_pos = 0;
    r->chunk_event_no = 0;
    r->chunks++;
    r->events += r->decrypt ? 0 : count; /* decoded events are counted one by one */
    r->raw_total += raw_len;
    r->stored_total += stored_len;
    return 1;
}

/* The v2 trailer body (after magic and length): counts, hashes, summary, index. */
static int check_trailer_body(sp_rec_reader *r, const uint8_t *b, uint32_t body)
{
    uint64_t chunks = get_be64(b), events = get_be64(b + 8);
    uint64_t raw = get_be64(b + 16), stored = get_be64(b + 24);
    r->header.started_at = r->header.started_at ? r->header.started_at : (int64_t)get_be64(b + 32);
    const uint8_t *header_hash = b + 48, *head = b + 48 + REC_HASH_LEN;
    size_t off = REC_TRAILER2_FIXED;
    size_t summary_len = sp_get_be16(b + off);
    off += 2;
    if (summary_len + 4 > body - off)
        return reader_damaged(r, "trailer: summary longer than the trailer");
    for (size_t s = 0; s + 3 <= summary_len;) {
        uint8_t tag = b[off + s];
        size_t len = sp_get_be16(b + off + s + 1);
        if (len > summary_len - s - 3)
            return reader_damaged(r, "trailer: summary entry %u cut short", tag);
        if (tag == REC_META_END_REASON)
            copy_meta_str(r->end_reason, sizeof(r->end_reason), b + off + s + 3, len);
        s += 3 + len;
    }
    off += summary_len;
    uint64_t index_count = sp_get_be32(b + off);
    off += 4;
    if (index_count * REC_INDEX_ENTRY != body - off || index_count != chunks)
        return reader_damaged(r, "trailer: index of %llu entries for %llu chunks does not fit",
                              (unsigned long long)index_count, (unsigned long long)chunks);
    if (!hash_matches(header_hash, r->header_hash))
        return reader_damaged(r, "trailer: signed for a different header (header altered)");
    if (r->seeked)
        return 0;
    if (chunks != r->chunks || events != r->events || raw != r->raw_total ||
        stored != r->stored_total)
        return reader_damaged(r,
                              "trailer says %llu chunks / %llu events, the file holds %llu "
                              "chunks / %llu events",
                              (unsigned long long)chunks, (unsigned long long)events,
                              (unsigned long long)r->chunks, (unsigned long long)r->events);
    if (!hash_matches(head, r->chain)) {
        r->chunks = chunks ? chunks - 1 : 0;
        reader_damaged(r,
                       "chunk %llu: its stored bytes do not match the signed chain head "
                       "(altered)",
                       (unsigned long long)r->chunks);
        r->chunks = chunks;
        return -1;
    }
    if (r->index.len != body - off || memcmp(r->index.data, b + off, r->index.len) != 0)
        return reader_damaged(r, "trailer: seek index does not match the chunks");
    return 0;
}

static int read_trailer_v2(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    const uint8_t *p = src_bytes(r, r->pos, 8);
    if (!p)
        return reader_unsealed(r, "the trailer is cut short");
    uint32_t body = sp_get_be32(p + 4);
    if (body < REC_TRAILER2_FIXED + 2 + 4 || body > REC_TRAILER2_BODY_MAX)
        return reader_damaged(r, "trailer at offset %llu: body length %u out of range",
                              (unsigned long long)r->pos, body);
    uint64_t signed_len = 8 + (uint64_t)body;
    uint64_t total = signed_len + REC_SIGNER_ID_LEN + REC_SIG_LEN + REC_FOOTER_LEN;
    if (left < total)
        return reader_unsealed(r, "the trailer is cut short");
    if (left > total)
        return reader_damaged(r, "%llu unexpected bytes after the trailer",
                              (unsigned long long)(left - total));
    p = src_bytes(r, r->pos, (size_t)total);
    if (!p)
        return reader_damaged(r, "trailer at offset %llu: read failed", (unsigned long long)r->pos);
    const uint8_t *signer = p + signed_len, *sig = signer + REC_SIGNER_ID_LEN;
    const uint8_t *footer = sig + REC_SIG_LEN;
    if (memcmp(footer + 8, REC_FOOTER_MAGIC, 8) != 0 || get_be64(footer) != r->pos)
        return reader_damaged(r, "trailer at offset %llu: footer does not point at it",
                              (unsigned long long)r->pos);
    if (check_trailer_body(r, p + 8, body) < 0)
        return -1;
    r->signature = rec_keys_verify(p, (size_t)signed_len, sig, signer);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    r->signature = 1;
#endif
    if (r->signature == 0)
        return reader_damaged(r, "trailer: the signature does not verify with the gateway's "
                                 "public key (altered, or signed by another key)");
    r->pos += total;
    snprintf(r->note, sizeof(r->note), "%llu chunks, %llu events%s", (unsigned long long)r->chunks,
             (unsigned long long)r->events,
             r->signature < 0 ? "; signature not checked (no public key loaded)" : "");
    r->state = AT_SEALED;
    return 0;
}

/* 1 = a chunk with events is loaded, 0 = the recording ended, -1 = damaged. */
static int next_block(sp_rec_reader *r)
{
    if (r->pos == r->size)
        return reader_unsealed(r, NULL);
    const uint8_t *magic = src_bytes(r, r->pos, 4);
    if (!magic)
        return reader_unsealed(r, "the last block is cut short");
    bool v1 = r->header.version == REC_VERSION_1;
    if (memcmp(magic, REC_TRAILER_MAGIC, 4) == 0)
        return v1 ? read_trailer_v1(r) : read_trailer_v2(r);
    if (memcmp(magic, REC_CHUNK_MAGIC, 4) == 0)
        return v1 ? read_chunk_v1(r) : read_chunk_v2(r);
    if (rest_is_zero(r))
        return reader_unsealed(r, "the file ends in zeros (a torn write)");
    return reader_damaged(r, "chunk %llu at offset %llu: not a chunk or trailer (bad magic)",
                          (unsigned long long)r->chunks, (unsigned long long)r->pos);
}

/* ---- events ---- */

static int decode_event(sp_rec_reader *r, sp_rec_ev *ev)
{
    const uint8_t *raw = r->raw;
    size_t left = r->raw_len - r->raw_pos;
    unsigned long long chunk = (unsigned long long)(r->chunks - 1);
    unsigned event_no = r->chunk_event_no;
    if (left < REC_EVENT_HEADER)
        return reader_damaged(r, "chunk %llu event %u: cut short", chunk, event_no);
    const uint8_t *p = raw + r->raw_pos;
    uint8_t n = p[2];
    if (n > SP_REC_MAX_FIELDS)
        return reader_damaged(r, "chunk %llu event %u: %u fields (limit %d)", chunk, event_no, n,
                              SP_REC_MAX_FIELDS);
    ev->type = (enum sp_rec_type)p[0];
    ev->flags = p[1];
    ev->ts_us = (int64_t)get_be64(p + 4);
    ev->n_fields = n;
    size_t off = REC_EVENT_HEADER;
    for (uint8_t i = 0; i < n; i++) {
        if (left - off < REC_FIELD_HEADER)
            return reader_damaged(r, "chunk %llu event %u: field %u cut short", chunk, event_no, i);
        size_t len = sp_get_be32(p + off);
        off += REC_FIELD_HEADER;
        if (len > left - off)
            return reader_damaged(r, "chunk %llu event %u: field %u runs past the chunk", chunk,
                                  event_no, i);
        ev->fields[i].data = p + off;
        ev->fields[i].len = len;
        off += len;
    }
    for (size_t i = n; i < SP_REC_MAX_FIELDS; i++) {
        ev->fields[i].data = NULL;
        ev->fields[i].len = 0;
    }
    bool last = event_no + 1 == r->chunk_events;
    if (last && off != left)
        return reader_damaged(r, "chunk %llu: %zu bytes after its last event", chunk, left - off);
    if (!last && off == left)
        return reader_damaged(r, "chunk %llu: holds %u events, header says %u", chunk, event_no + 1,
                              r->chunk_events);
    r->raw_pos += off;
    r->chunk_event_no++;
    r->events++;
    return 1;
}

int sp_rec_reader_next(sp_rec_reader *r, sp_rec_ev *ev, char *err, size_t errlen)
{
    while (r->state == READING && r->chunk_event_no == r->chunk_events) {
        if (next_block(r) < 0)
            break;
    }
    int rc = 0;
    if (r->state == READING)
        rc = decode_event(r, ev);
    if (r->state == AT_DAMAGED) {
        set_err(err, errlen, "recording damaged: %s", r->note);
        return -1;
    }
    return rc;
}

enum sp_rec_state sp_rec_reader_state(const sp_rec_reader *r, const char **end_reason)
{
    if (end_reason)
        *end_reason = r->state == AT_SEALED ? r->end_reason : NULL;
    switch (r->state) {
    case AT_SEALED:
        return SP_REC_SEALED;
    case AT_DAMAGED:
        return SP_REC_DAMAGED;
    default:
        return SP_REC_UNSEALED;
    }
}

const char *sp_rec_reader_note(const sp_rec_reader *r)
{
    return r->note[0] ? r->note : "not read to the end";
}

uint64_t sp_rec_reader_chunks(const sp_rec_reader *r)
{
    return r->chunks;
}

uint64_t sp_rec_reader_bad_chunk(const sp_rec_reader *r)
{
    return r->bad_chunk;
}

/* ---- seeking ---- */

/* Index entry i of a sealed v2 file's trailer at trailer_off, or -1 if it is not there. */
static int trailer_index(sp_rec_reader *r, uint64_t trailer_off, uint64_t *count,
                         uint64_t *entries_off)
{
    const uint8_t *p = src_bytes(r, trailer_off, 8);
    if (!p || memcmp(p, REC_TRAILER_MAGIC, 4) != 0)
        return -1;
    uint32_t body = sp_get_be32(p + 4);
    if (body < REC_TRAILER2_FIXED + 2 + 4 || body > r->size - trailer_off - 8)
        return -1;
    p = src_bytes(r, trailer_off + 8 + REC_TRAILER2_FIXED, 2);
    if (!p)
        return -1;
    uint64_t off = REC_TRAILER2_FIXED + 2 + (uint64_t)sp_get_be16(p);
    if (off + 4 > body)
        return -1;
    p = src_bytes(r, trailer_off + 8 + off, 4);
    if (!p)
        return -1;
    *count = sp_get_be32(p);
    *entries_off = trailer_off + 8 + off + 4;
    if (*count * REC_INDEX_ENTRY != body - off - 4)
        return -1;
    return 0;
}

/* The last chunk starting at or before ts by the trailer's index (binary search). */
static int seek_by_index(sp_rec_reader *r, int64_t ts, uint64_t *chunk, uint64_t *offset)
{
    if (r->size < r->pos + REC_FOOTER_LEN)
        return -1;
    const uint8_t *f = src_bytes(r, r->size - REC_FOOTER_LEN, REC_FOOTER_LEN);
    if (!f || memcmp(f + 8, REC_FOOTER_MAGIC, 8) != 0)
        return -1;
    uint64_t count, entries;
    if (get_be64(f) >= r->size || trailer_index(r, get_be64(f), &count, &entries) < 0)
        return -1;
    uint64_t lo = 0, hi = count; /* the answer is the last entry with first_ts <= ts */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const uint8_t *e = src_bytes(r, entries + mid * REC_INDEX_ENTRY, REC_INDEX_ENTRY);
        if (!e)
            return -1;
        if ((int64_t)get_be64(e + 8) <= ts)
            lo = mid + 1;
        else
            hi = mid;
    }
    *chunk = lo ? lo - 1 : 0;
    if (count == 0) {
        *offset = r->pos;
        return 0;
    }
    const uint8_t *e = src_bytes(r, entries + *chunk * REC_INDEX_ENTRY, REC_INDEX_ENTRY);
    if (!e)
        return -1;
    *offset = get_be64(e);
    return 0;
}

/* Without a trailer: walk the chunk headers (in clear) and skip their payloads. */
static void seek_by_headers(sp_rec_reader *r, int64_t ts, uint64_t *chunk, uint64_t *offset)
{
    size_t hlen = r->header.version == REC_VERSION_1 ? REC_CHUNK_HEADER_V1 : REC_CHUNK_HEADER;
    uint64_t pos = r->pos, no = 0;
    *chunk = 0;
    *offset = r->pos;
    for (;;) {
        const uint8_t *h = src_bytes(r, pos, hlen);
        if (!h || memcmp(h, REC_CHUNK_MAGIC, 4) != 0 || sp_get_be32(h + 4) != no)
            return;
        if ((int64_t)get_be64(h + 20) > ts)
            return;
        *chunk = no;
        *offset = pos;
        pos += hlen + (uint64_t)sp_get_be32(h + 8);
        no++;
    }
}

int sp_rec_reader_seek(sp_rec_reader *r, int64_t ts_us, char *err, size_t errlen)
{
    if (r->state != READING || r->chunks != 0 || r->chunk_events != 0) {
        set_err(err, errlen, "seek is only possible before the first event is read");
        return -1;
    }
    uint64_t chunk, offset;
    if (r->header.version == REC_VERSION_1 || seek_by_index(r, ts_us, &chunk, &offset) < 0)
        seek_by_headers(r, ts_us, &chunk, &offset);
    if (chunk == 0)
        return 0;
    size_t hlen = r->header.version == REC_VERSION_1 ? REC_CHUNK_HEADER_V1 : REC_CHUNK_HEADER;
    const uint8_t *h = src_bytes(r, offset, hlen);
    if (!h || memcmp(h, REC_CHUNK_MAGIC, 4) != 0 || sp_get_be32(h + 4) != chunk) {
        set_err(err, errlen, "seek: chunk %llu is not at offset %llu (index damaged)",
                (unsigned long long)chunk, (unsigned long long)offset);
        return -1;
    }
    /* Reading resumes at that chunk and trusts its link backwards: replay, not verify. */
    if (r->header.version != REC_VERSION_1)
        memcpy(r->chain, h + 28, REC_HASH_LEN);
    r->pos = offset;
    r->chunks = chunk;
    r->seeked = true;
    return 0;
}

/* ---- checking a whole file ---- */

int sp_rec_check_file(const char *path, bool content, sp_rec_check *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    sp_rec_reader *r = reader_open_file(path, content, err, errlen);
    if (!r)
        return -1;
    if (content) {
        sp_rec_ev ev;
        while (sp_rec_reader_next(r, &ev, NULL, 0) == 1)
            ;
    } else {
        while (r->state == READING && next_block(r) >= 0)
            ;
    }
    const char *reason = NULL;
    out->state = sp_rec_reader_state(r, &reason);
    out->version = r->header.version;
    out->content_checked = content;
    out->signature = r->signature;
    out->chunks = r->chunks;
    out->events = r->events;
    out->bad_chunk = r->bad_chunk;
    out->header = r->header;
    snprintf(out->end_reason, sizeof(out->end_reason), "%s", reason ? reason : "");
    snprintf(out->note, sizeof(out->note), "%s", sp_rec_reader_note(r));
    if (out->state == SP_REC_DAMAGED)
        out->chunks = r->bad_chunk;
    sp_rec_reader_close(r);
    return 0;
}

/* ---- the state an orphan sealer needs (seal.c) ---- */

int rec_scan_file(const char *path, rec_scan *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    sp_rec_reader *r = reader_open_file(path, false, err, errlen);
    if (!r)
        return -1;
    if (r->header.version != REC_VERSION) {
        set_err(err, errlen, "%s: format version %d cannot be sealed", path, r->header.version);
        sp_rec_reader_close(r);
        return -1;
    }
    uint64_t end = r->pos;
    while (r->state == READING) {
        int rc = next_block(r);
        if (rc < 0)
            break;
        if (rc == 1)
            end = r->pos;
    }
    out->state = sp_rec_reader_state(r, NULL);
    snprintf(out->note, sizeof(out->note), "%s", sp_rec_reader_note(r));
    out->header = r->header;
    memcpy(out->header_hash, r->header_hash, REC_HASH_LEN);
    memcpy(out->chain, r->chain, REC_HASH_LEN);
    out->chunks = r->chunks;
    out->events = r->events;
    out->raw = r->raw_total;
    out->stored = r->stored_total;
    out->end_offset = end;
    out->index = r->index; /* handed over */
    memset(&r->index, 0, sizeof(r->index));
    sp_rec_reader_close(r);
    return 0;
}
