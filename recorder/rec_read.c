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
    if (version != REC_VERSION) {
        set_err(err, errlen, "recording format version %u is not supported (this reader: %d)",
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
    r->pos = total;
    return 0;
}

/* ---- open/close ---- */

static sp_rec_reader *reader_new(void)
{
    sp_rec_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = -1;
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
    free(r->scratch);
    free(r->raw);
    free(r);
}

sp_rec_reader *sp_rec_reader_open_mem(const uint8_t *data, size_t len, char *err, size_t errlen)
{
    sp_rec_reader *r = reader_new();
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

sp_rec_reader *sp_rec_reader_open(const char *path, char *err, size_t errlen)
{
    sp_rec_reader *r = reader_new();
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

static int read_trailer(sp_rec_reader *r)
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

static int read_chunk(sp_rec_reader *r)
{
    uint64_t left = r->size - r->pos;
    unsigned long long no = (unsigned long long)r->chunks;
    uint8_t h[REC_CHUNK_HEADER];
    const uint8_t *p = src_bytes(r, r->pos, REC_CHUNK_HEADER);
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
    uint64_t total = REC_CHUNK_HEADER + (uint64_t)stored_len;
    if (left < total)
        return reader_unsealed(r, "the last chunk is cut short");
    const uint8_t *stored = src_bytes(r, r->pos + REC_CHUNK_HEADER, stored_len);
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

/* 1 = a chunk with events is loaded, 0 = the recording ended, -1 = damaged. */
static int next_block(sp_rec_reader *r)
{
    if (r->pos == r->size)
        return reader_unsealed(r, NULL);
    const uint8_t *magic = src_bytes(r, r->pos, 4);
    if (!magic)
        return reader_unsealed(r, "the last block is cut short");
    if (memcmp(magic, REC_TRAILER_MAGIC, 4) == 0)
        return read_trailer(r);
    if (memcmp(magic, REC_CHUNK_MAGIC, 4) == 0)
        return read_chunk(r);
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
