/* Session recording writer. The format is in recorder/FORMAT.md; the reader is rec_read.c. */
#include "recorder/rec.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/log.h"
#include "common/util.h"
#include "recorder/keys.h"
#include "recorder/rec_format.h"

#define REC_FSYNC_INTERVAL_US (5 * 1000000LL)
/* An idle session keeps at most this much buffer capacity between flushes. */
#define REC_IDLE_BUFFER_KEEP (16 * 1024)
/* zstd level 1: on terminal text and query traffic it compresses as well as level 3 (find -ls
 * output: 12.7x against 12.6x in 64 KiB blocks) and faster; the recorder runs on the loop. */
#define REC_ZSTD_LEVEL 1

/* A periodic fsync in flight. It owns a duplicate of the descriptor so the recording can be
 * closed and freed while it runs; rec is cleared when that happens. */
typedef struct rec_fsync {
    uv_fs_t req;
    int fd;
    sp_rec *rec;
} rec_fsync;

struct sp_rec {
    int fd;
    char *path; /* heap, its own length: an idle session's recording stays small */
    size_t max_text;
    sp_buf events; /* raw events not yet flushed, in the chunk payload layout */
    uint32_t buffered_events;
    uint64_t chunks;
    uint64_t events_total;
    uint64_t raw_total;
    uint64_t stored_total;
    /* v2 integrity state */
    uint8_t data_key[REC_KEY_LEN];
    uint8_t header_hash[REC_HASH_LEN];
    uint8_t chain[REC_HASH_LEN]; /* hash of the last stored block: the next chunk's prev */
    uint64_t file_pos;           /* bytes written so far: the next block's offset */
    sp_buf index;                /* REC_INDEX_ENTRY per chunk, for the trailer */
    sp_buf summary;              /* identity metadata, repeated in the signed trailer */
    int64_t started_at;
    bool failed;
    char error[512];
    int64_t last_fsync_us; /* monotonic */
    rec_fsync *fsync_pending;
    /* sp_rec_close in progress */
    uv_fs_t close_req;
    uv_loop_t *close_loop;
    void (*done)(void *arg, int status);
    void *done_arg;
};

/* ---- CRC32C (Castagnoli), reflected, as in iSCSI/ext4 ---- */

uint32_t rec_crc32c(uint32_t crc, const void *data, size_t len)
{
    const uint8_t *p = data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    sp_put_be32(p, (uint32_t)(v >> 32));
    sp_put_be32(p + 4, (uint32_t)v);
}

/* ---- failure and plain I/O ---- */

static void rec_fail(sp_rec *r, const char *what, int err)
{
    if (r->failed)
        return;
    r->failed = true;
    if (err)
        snprintf(r->error, sizeof(r->error), "%s %.300s: %s", what, r->path, strerror(err));
    else
        snprintf(r->error, sizeof(r->error), "%s %.300s", what, r->path);
}

static int rec_write(sp_rec *r, const uint8_t *p, size_t n)
{
    if (r->failed)
        return -1;
    if (sp_write_all(r->fd, p, n) < 0) {
        rec_fail(r, "write", errno);
        return -1;
    }
    return 0;
}

/* ---- header ---- */

static int meta_put_str(sp_buf *b, enum rec_meta_tag tag, const char *s)
{
    if (!s)
        return 0;
    size_t len = strlen(s);
    if (len > UINT16_MAX)
        return -1;
    if (sp_buf_append_u8(b, (uint8_t)tag) < 0 || sp_buf_append_be16(b, (uint16_t)len) < 0)
        return -1;
    return sp_buf_append(b, s, len);
}

int rec_meta_strings(sp_buf *b, const sp_rec_meta *meta)
{
    static const enum rec_meta_tag tags[] = {
        REC_META_SESSION_ID, REC_META_KIND,    REC_META_IDENTITY,   REC_META_TARGET,
        REC_META_DATABASE,   REC_META_DB_USER, REC_META_CLIENT_ADDR};
    const char *values[] = {meta->session_id, meta->kind,    meta->identity,   meta->target,
                            meta->database,   meta->db_user, meta->client_addr};
    for (size_t i = 0; i < SP_ARRAY_LEN(tags); i++)
        if (meta_put_str(b, tags[i], values[i]) < 0)
            return -1;
    return 0;
}

/* A fresh data key for this recording, wrapped by the current master key. The session id is
 * the wrap's associated data, so a wrapped key moved into another recording does not open. */
static int rec_new_data_key(sp_rec *r, const char *session_id, uint8_t wrapped[REC_WRAPPED_KEY_LEN],
                            char *err, size_t errlen)
{
    const char *id = rec_keys_current_id();
    const uint8_t *master = id ? rec_keys_master(id) : NULL;
    if (!master || !sp_rec_keys_can_write()) {
        snprintf(err, errlen,
                 "recording keys are not loaded (master_key_file, signing_key_file): "
                 "recordings cannot be written");
        return -1;
    }
    if (sp_random_bytes(r->data_key, REC_KEY_LEN) < 0 ||
        sp_random_bytes(wrapped, REC_NONCE_LEN) < 0) {
        snprintf(err, errlen, "the random number generator failed");
        return -1;
    }
    uint8_t aad[sizeof(REC_WRAP_LABEL) + 64];
    size_t idlen = strlen(session_id);
    memcpy(aad, REC_WRAP_LABEL, sizeof(REC_WRAP_LABEL));
    memcpy(aad + sizeof(REC_WRAP_LABEL), session_id, idlen);
    memcpy(wrapped + REC_NONCE_LEN, r->data_key, REC_KEY_LEN);
    if (rec_gcm_seal(master, wrapped, aad, sizeof(REC_WRAP_LABEL) + idlen, wrapped + REC_NONCE_LEN,
                     REC_KEY_LEN, wrapped + REC_NONCE_LEN + REC_KEY_LEN) < 0) {
        snprintf(err, errlen, "cannot wrap the recording's data key (AES-256-GCM failed)");
        return -1;
    }
    return 0;
}

static int rec_build_header(sp_buf *b, const sp_rec_meta *meta, size_t max_text,
                            const uint8_t wrapped[REC_WRAPPED_KEY_LEN])
{
    if (sp_buf_append(b, SP_REC_MAGIC, REC_MAGIC_LEN) < 0 ||
        sp_buf_append_be16(b, REC_VERSION) < 0 || sp_buf_append_be16(b, 0) < 0 ||
        sp_buf_append_be32(b, 0) < 0)
        return -1;
    size_t meta_start = b->len;
    if (rec_meta_strings(b, meta) < 0)
        return -1;
    if (sp_buf_append_u8(b, REC_META_STARTED_AT) < 0 || sp_buf_append_be16(b, 8) < 0 ||
        sp_buf_append_be64(b, (uint64_t)meta->started_at) < 0)
        return -1;
    if (meta_put_str(b, REC_META_MASTER_KEY_ID, rec_keys_current_id()) < 0 ||
        sp_buf_append_u8(b, REC_META_WRAPPED_KEY) < 0 ||
        sp_buf_append_be16(b, REC_WRAPPED_KEY_LEN) < 0 ||
        sp_buf_append(b, wrapped, REC_WRAPPED_KEY_LEN) < 0)
        return -1;
    if (sp_buf_append_u8(b, REC_META_MAX_TEXT) < 0 || sp_buf_append_be16(b, 4) < 0 ||
        sp_buf_append_be32(b, (uint32_t)max_text) < 0)
        return -1;
    size_t meta_len = b->len - meta_start;
    if (meta_len > REC_META_MAX)
        return -1;
    sp_put_be32(b->data + REC_MAGIC_LEN + 4, (uint32_t)meta_len);
    return sp_buf_append_be32(b, rec_crc32c(0, b->data, b->len));
}

/* ---- create ---- */

/* The session id becomes a file name: refuse anything that could leave the directory. */
static bool session_id_is_file_name(const char *id)
{
    if (!id || !id[0] || strlen(id) > 64)
        return false;
    for (const char *p = id; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

static int rec_make_path(sp_rec *r, const char *dir, const sp_rec_meta *meta, char *err,
                         size_t errlen)
{
    int64_t when = meta->started_at > 0 ? meta->started_at : sp_now_us();
    time_t sec = (time_t)(when / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char day[PATH_MAX];
    int n = snprintf(day, sizeof(day), "%s/%04d/%02d/%02d", dir, tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday);
    if (n < 0 || (size_t)n >= sizeof(day)) {
        snprintf(err, errlen, "recording directory path too long: %s", dir);
        return -1;
    }
    if (sp_mkdirs(day, 0700) < 0) {
        snprintf(err, errlen, "create recording directory %s: %s", day, strerror(errno));
        return -1;
    }
    size_t len = strlen(day) + 1 + strlen(meta->session_id) + sizeof(".spr");
    if (len > PATH_MAX) {
        snprintf(err, errlen, "recording path too long under %s", day);
        return -1;
    }
    r->path = malloc(len);
    if (!r->path) {
        snprintf(err, errlen, "out of memory creating a recording");
        return -1;
    }
    n = snprintf(r->path, len, "%s/%s.spr", day, meta->session_id);
    if (n < 0 || (size_t)n >= len) { /* cannot happen: len was computed to fit */
        snprintf(err, errlen, "recording path too long under %s", day);
        return -1;
    }
    return 0;
}

/* The longest field sp_rec_event_whole keeps uncut. */
static size_t whole_max(const sp_rec *r)
{
    return r->max_text > SP_REC_WHOLE_MAX ? r->max_text : SP_REC_WHOLE_MAX;
}

sp_rec *sp_rec_create(const char *recordings_dir, const sp_rec_meta *meta, size_t max_text,
                      char *err, size_t errlen)
{
    sp_buf header;
    sp_buf_init(&header, REC_META_MAX + 64);
    if (!session_id_is_file_name(meta->session_id)) {
        snprintf(err, errlen, "session id is not usable as a recording file name");
        return NULL;
    }
    sp_rec *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory creating a recording");
        return NULL;
    }
    r->fd = -1;
    r->max_text = max_text == 0 || max_text > REC_MAX_TEXT_CAP ? REC_MAX_TEXT_CAP : max_text;
    /* Room for a full chunk plus one largest event, so sp_rec_event never fails on a session
     * whose engine flushes when asked. */
    sp_buf_init(&r->events, (size_t)SP_REC_MAX_CHUNK_RAW * 2 + REC_EVENT_HEADER +
                                SP_REC_MAX_FIELDS * (REC_FIELD_HEADER + whole_max(r)));
    /* 0: the first flush fsyncs at once, so a new session's recording is durable early. */
    r->last_fsync_us = 0;
    if (rec_make_path(r, recordings_dir, meta, err, errlen) < 0)
        goto fail;
    r->fd = open(r->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (r->fd < 0) {
        snprintf(err, errlen, "create recording %s: %s", r->path, strerror(errno));
        goto fail;
    }
    uint8_t wrapped[REC_WRAPPED_KEY_LEN];
    if (rec_new_data_key(r, meta->session_id, wrapped, err, errlen) < 0)
        goto fail_unlink;
    sp_buf_init(&r->index, REC_TRAILER2_BODY_MAX);
    sp_buf_init(&r->summary, REC_META_MAX);
    r->started_at = meta->started_at;
    if (rec_meta_strings(&r->summary, meta) < 0 ||
        rec_build_header(&header, meta, r->max_text, wrapped) < 0) {
        snprintf(err, errlen, "recording header for %s: metadata too large", r->path);
        goto fail_unlink;
    }
    if (sp_write_all(r->fd, header.data, header.len) < 0) {
        snprintf(err, errlen, "write %s: %s", r->path, strerror(errno));
        goto fail_unlink;
    }
    rec_sha256(header.data, header.len, NULL, 0, r->header_hash);
    memcpy(r->chain, r->header_hash, REC_HASH_LEN);
    r->file_pos = header.len;
    sp_buf_free(&header);
    return r;

fail_unlink:
    /* No session has used this file yet: leave no half-written header behind. */
    unlink(r->path);
fail:
    if (r->fd >= 0)
        close(r->fd);
    sp_buf_free(&header);
    sp_buf_free(&r->events);
    sp_buf_free(&r->index);
    sp_buf_free(&r->summary);
    OPENSSL_cleanse(r->data_key, sizeof(r->data_key));
    free(r->path);
    free(r);
    return NULL;
}

const char *sp_rec_path(const sp_rec *r)
{
    return r->path;
}

/* ---- events ---- */

/* Cut to max_text, backing off to a UTF-8 character boundary so text stays valid text. */
static size_t cut_length(const sp_rec_field *f, size_t max_text, bool *cut)
{
    if (f->len <= max_text)
        return f->len;
    *cut = true;
    const uint8_t *p = f->data;
    size_t len = max_text;
    for (int back = 0; back < 3 && len > 0 && (p[len] & 0xC0) == 0x80; back++)
        len--;
    if ((p[len] & 0xC0) == 0x80)
        len = max_text; /* not UTF-8 after all: cut at the byte limit */
    return len;
}

static int rec_append(sp_rec *r, enum sp_rec_type type, int64_t ts_us, const sp_rec_field *fields,
                      size_t n, uint8_t flags, size_t max_text)
{
    if (r->failed)
        return -1;
    if (n > SP_REC_MAX_FIELDS) {
        n = SP_REC_MAX_FIELDS;
        flags |= SP_REC_FLAG_FIELDS_DROPPED;
    }
    size_t lens[SP_REC_MAX_FIELDS];
    bool cut = false;
    size_t total = REC_EVENT_HEADER;
    for (size_t i = 0; i < n; i++) {
        lens[i] = fields[i].data ? cut_length(&fields[i], max_text, &cut) : 0;
        total += REC_FIELD_HEADER + lens[i];
    }
    if (cut)
        flags |= SP_REC_FLAG_TRUNCATED;
    if (sp_buf_reserve(&r->events, total) < 0) {
        rec_fail(r, "event buffer full (the engine did not flush) for", 0);
        return -1;
    }
    uint8_t head[REC_EVENT_HEADER] = {(uint8_t)type, flags, (uint8_t)n, 0};
    put_be64(head + 4, (uint64_t)ts_us);
    sp_buf_append(&r->events, head, sizeof(head));
    for (size_t i = 0; i < n; i++) {
        sp_buf_append_be32(&r->events, (uint32_t)lens[i]);
        sp_buf_append(&r->events, fields[i].data, lens[i]);
    }
    r->buffered_events++;
    return 0;
}

int sp_rec_event(sp_rec *r, enum sp_rec_type type, int64_t ts_us, const sp_rec_field *fields,
                 size_t n)
{
    return rec_append(r, type, ts_us, fields, n, 0, r->max_text);
}

int sp_rec_event_whole(sp_rec *r, enum sp_rec_type type, int64_t ts_us, const sp_rec_field *fields,
                       size_t n)
{
    return rec_append(r, type, ts_us, fields, n, 0, whole_max(r));
}

int sp_rec_eventv(sp_rec *r, enum sp_rec_type type, int64_t ts_us, ...)
{
    sp_rec_field fields[SP_REC_MAX_FIELDS];
    size_t n = 0;
    uint8_t flags = 0;
    va_list ap;
    va_start(ap, ts_us);
    for (const char *s; (s = va_arg(ap, const char *)) != NULL;) {
        if (n == SP_REC_MAX_FIELDS) {
            flags |= SP_REC_FLAG_FIELDS_DROPPED;
            continue;
        }
        fields[n].data = s;
        fields[n].len = strlen(s);
        n++;
    }
    va_end(ap);
    return rec_append(r, type, ts_us, fields, n, flags, r->max_text);
}

bool sp_rec_wants_flush(const sp_rec *r)
{
    return r->events.len >= SP_REC_BUFFER_FLUSH;
}

uint64_t sp_rec_chunks(const sp_rec *r)
{
    return r->chunks;
}

bool sp_rec_failed(const sp_rec *r)
{
    return r->failed;
}

const char *sp_rec_error(const sp_rec *r)
{
    return r->failed ? r->error : NULL;
}

/* ---- flush: buffered events -> chunks ---- */

static size_t event_size_at(const uint8_t *p)
{
    size_t size = REC_EVENT_HEADER;
    for (uint8_t i = 0; i < p[2]; i++)
        size += REC_FIELD_HEADER + sp_get_be32(p + size);
    return size;
}

/* Writes raw[0..raw_len), holding `count` events, as one chunk. */
static int rec_write_chunk(sp_rec *r, ZSTD_CCtx *cctx, const uint8_t *raw, size_t raw_len,
                           uint32_t count)
{
    size_t bound = ZSTD_compressBound(raw_len);
    uint8_t *out = malloc(REC_CHUNK_HEADER + bound + REC_TAG_LEN);
    if (!out) {
        rec_fail(r, "out of memory compressing a chunk of", 0);
        return -1;
    }
    size_t stored =
        ZSTD_compressCCtx(cctx, out + REC_CHUNK_HEADER, bound, raw, raw_len, REC_ZSTD_LEVEL);
    if (ZSTD_isError(stored)) {
        snprintf(r->error, sizeof(r->error), "compress chunk of %.300s: %s", r->path,
                 ZSTD_getErrorName(stored));
        r->failed = true;
        free(out);
        return -1;
    }
    uint8_t *h = out;
    memcpy(h, REC_CHUNK_MAGIC, 4);
    sp_put_be32(h + 4, (uint32_t)r->chunks);
    sp_put_be32(h + 8, (uint32_t)(stored + REC_TAG_LEN));
    sp_put_be32(h + 12, (uint32_t)raw_len);
    sp_put_be32(h + 16, count);
    memcpy(h + 20, raw + 4, 8); /* the first event's timestamp */
    memcpy(h + 28, r->chain, REC_HASH_LEN);
    sp_put_be32(h + REC_CHUNK_AAD, rec_crc32c(0, h, REC_CHUNK_AAD));
    uint8_t nonce[REC_NONCE_LEN];
    rec_chunk_nonce(r->chunks, nonce);
    if (rec_gcm_seal(r->data_key, nonce, h, REC_CHUNK_AAD, out + REC_CHUNK_HEADER, stored,
                     out + REC_CHUNK_HEADER + stored) < 0) {
        rec_fail(r, "encrypt a chunk of", 0);
        free(out);
        return -1;
    }
    stored += REC_TAG_LEN;
    size_t block = REC_CHUNK_HEADER + stored;
    uint8_t entry[REC_INDEX_ENTRY];
    put_be64(entry, r->file_pos);
    memcpy(entry + 8, raw + 4, 8);
    if (sp_buf_append(&r->index, entry, sizeof(entry)) < 0) {
        rec_fail(r, "out of memory indexing", 0);
        free(out);
        return -1;
    }
    int rc = rec_write(r, out, block);
    if (rc == 0)
        rec_sha256(out, block, NULL, 0, r->chain);
    free(out);
    if (rc < 0)
        return -1;
    r->file_pos += block;
    r->chunks++;
    r->events_total += count;
    r->raw_total += raw_len;
    r->stored_total += stored;
    return 0;
}

/* One chunk per flush, unless the engine let the buffer grow past SP_REC_MAX_CHUNK_RAW: then
 * it is split at event boundaries, and an event larger than that gets a chunk of its own. */
static int rec_write_buffer(sp_rec *r, ZSTD_CCtx *cctx)
{
    const uint8_t *data = r->events.data;
    size_t len = r->events.len;
    size_t start = 0;
    while (start < len) {
        size_t end = start;
        uint32_t count = 0;
        while (end < len) {
            size_t size = event_size_at(data + end);
            if (count > 0 && end - start + size > SP_REC_MAX_CHUNK_RAW)
                break;
            end += size;
            count++;
        }
        if (rec_write_chunk(r, cctx, data + start, end - start, count) < 0)
            return -1;
        start = end;
    }
    return 0;
}

static void rec_fsync_done(uv_fs_t *req)
{
    rec_fsync *f = req->data;
    sp_rec *r = f->rec;
    if (r) {
        r->fsync_pending = NULL;
        if (req->result < 0)
            rec_fail(r, "fsync", (int)-req->result);
    }
    uv_fs_req_cleanup(req);
    close(f->fd);
    free(f);
}

static void rec_maybe_fsync(sp_rec *r, uv_loop_t *loop)
{
    int64_t now = sp_mono_us();
    if (!loop || r->fsync_pending ||
        (r->last_fsync_us && now - r->last_fsync_us < REC_FSYNC_INTERVAL_US))
        return;
    rec_fsync *f = calloc(1, sizeof(*f));
    if (!f)
        return; /* retried at the next flush */
    f->fd = fcntl(r->fd, F_DUPFD_CLOEXEC, 0);
    if (f->fd < 0) {
        free(f);
        return;
    }
    f->rec = r;
    f->req.data = f;
    if (uv_fs_fsync(loop, &f->req, f->fd, rec_fsync_done) < 0) {
        close(f->fd);
        free(f);
        return;
    }
    r->fsync_pending = f;
    r->last_fsync_us = now;
}

/* An idle session should cost kilobytes: give back a buffer that a burst made large. */
static void rec_reset_buffer(sp_rec *r)
{
    if (r->events.cap > REC_IDLE_BUFFER_KEEP)
        sp_buf_free(&r->events);
    else
        sp_buf_reset(&r->events);
    r->buffered_events = 0;
}

int sp_rec_flush(sp_rec *r, ZSTD_CCtx *cctx, uv_loop_t *loop)
{
    if (r->failed)
        return -1;
    if (r->events.len == 0)
        return 0;
    int rc = rec_write_buffer(r, cctx);
    rec_reset_buffer(r);
    if (rc < 0)
        return -1;
    rec_maybe_fsync(r, loop);
    return 0;
}

/* ---- close ---- */

int rec_build_trailer(sp_buf *out, const rec_trailer_in *in, char *err, size_t errlen)
{
    size_t reason_len = in->reason ? strlen(in->reason) : 0;
    if (reason_len > REC_REASON_MAX)
        reason_len = REC_REASON_MAX;
    size_t summary_len = in->summary_len + (reason_len ? 3 + reason_len : 0);
    uint64_t body =
        REC_TRAILER2_FIXED + 2 + summary_len + 4 + (uint64_t)in->index_count * REC_INDEX_ENTRY;
    if (summary_len > UINT16_MAX || body > REC_TRAILER2_BODY_MAX) {
        snprintf(err, errlen, "trailer too large (%llu chunks)", (unsigned long long)in->chunks);
        return -1;
    }
    size_t start = out->len;
    int bad = sp_buf_append(out, REC_TRAILER_MAGIC, 4) < 0 ||
              sp_buf_append_be32(out, (uint32_t)body) < 0 ||
              sp_buf_append_be64(out, in->chunks) < 0 || sp_buf_append_be64(out, in->events) < 0 ||
              sp_buf_append_be64(out, in->raw) < 0 || sp_buf_append_be64(out, in->stored) < 0 ||
              sp_buf_append_be64(out, (uint64_t)in->started_at) < 0 ||
              sp_buf_append_be64(out, (uint64_t)in->ended_at) < 0 ||
              sp_buf_append(out, in->header_hash, REC_HASH_LEN) < 0 ||
              sp_buf_append(out, in->chain_head, REC_HASH_LEN) < 0 ||
              sp_buf_append_be16(out, (uint16_t)summary_len) < 0 ||
              sp_buf_append(out, in->summary, in->summary_len) < 0;
    if (!bad && reason_len)
        bad = sp_buf_append_u8(out, REC_META_END_REASON) < 0 ||
              sp_buf_append_be16(out, (uint16_t)reason_len) < 0 ||
              sp_buf_append(out, in->reason, reason_len) < 0;
    if (!bad)
        bad = sp_buf_append_be32(out, (uint32_t)in->index_count) < 0 ||
              sp_buf_append(out, in->index, in->index_count * REC_INDEX_ENTRY) < 0 ||
              sp_buf_reserve(out, REC_SIGNER_ID_LEN + REC_SIG_LEN + REC_FOOTER_LEN) < 0;
    if (bad) {
        snprintf(err, errlen, "out of memory building the trailer");
        return -1;
    }
    uint8_t sig[REC_SIG_LEN], signer[REC_SIGNER_ID_LEN];
    if (rec_keys_sign(out->data + start, out->len - start, sig, signer) < 0) {
        snprintf(err, errlen, "cannot sign the trailer: no signing key loaded");
        return -1;
    }
    sp_buf_append(out, signer, sizeof(signer));
    sp_buf_append(out, sig, sizeof(sig));
    sp_buf_append_be64(out, in->offset);
    sp_buf_append(out, REC_FOOTER_MAGIC, 8);
    return 0;
}

static int rec_write_trailer(sp_rec *r, const char *reason)
{
    if (r->failed)
        return -1;
    rec_trailer_in in = {.chunks = r->chunks,
                         .events = r->events_total,
                         .raw = r->raw_total,
                         .stored = r->stored_total,
                         .started_at = r->started_at,
                         .ended_at = sp_now_us(),
                         .header_hash = r->header_hash,
                         .chain_head = r->chain,
                         .summary = r->summary.data,
                         .summary_len = r->summary.len,
                         .reason = reason,
                         .index = r->index.data,
                         .index_count = r->index.len / REC_INDEX_ENTRY,
                         .offset = r->file_pos};
    sp_buf t;
    sp_buf_init(&t, REC_TRAILER2_BODY_MAX + 1024);
    char why[256];
    int rc;
    if (rec_build_trailer(&t, &in, why, sizeof(why)) < 0) {
        snprintf(r->error, sizeof(r->error), "seal %.300s: %.200s", r->path, why);
        r->failed = true;
        rc = -1;
    } else {
        rc = rec_write(r, t.data, t.len);
    }
    sp_buf_free(&t);
    return rc;
}

/* Nothing may touch the descriptor after it is closed: detach a periodic fsync in flight. */
static void rec_free(sp_rec *r)
{
    if (r->fsync_pending)
        r->fsync_pending->rec = NULL;
    sp_buf_free(&r->events);
    sp_buf_free(&r->index);
    sp_buf_free(&r->summary);
    OPENSSL_cleanse(r->data_key, sizeof(r->data_key));
    free(r->path);
    free(r);
}

static void rec_seal(sp_rec *r, ZSTD_CCtx *cctx, const char *reason)
{
    if (sp_rec_flush(r, cctx, NULL) == 0)
        rec_write_trailer(r, reason);
}

int sp_rec_close_sync(sp_rec *r, ZSTD_CCtx *cctx, const char *reason)
{
    rec_seal(r, cctx, reason);
    if (!r->failed && fsync(r->fd) < 0)
        rec_fail(r, "fsync", errno);
    if (close(r->fd) < 0)
        rec_fail(r, "close", errno);
    int rc = r->failed ? -1 : 0;
    if (rc < 0)
        sp_error("recording not sealed: %s", r->error);
    rec_free(r);
    return rc;
}

static void rec_close_finished(uv_fs_t *req)
{
    sp_rec *r = req->data;
    if (req->result < 0)
        rec_fail(r, "close", (int)-req->result);
    uv_fs_req_cleanup(req);
    int status = r->failed ? -1 : 0;
    if (status < 0)
        sp_error("recording not sealed: %s", r->error);
    if (r->done)
        r->done(r->done_arg, status);
    rec_free(r);
}

static void rec_close_fsynced(uv_fs_t *req)
{
    sp_rec *r = req->data;
    if (req->result < 0)
        rec_fail(r, "fsync", (int)-req->result);
    uv_fs_req_cleanup(req);
    if (uv_fs_close(r->close_loop, &r->close_req, r->fd, rec_close_finished) < 0) {
        /* libuv refused the request (it only does so for bad arguments): close here. */
        if (close(r->fd) < 0)
            rec_fail(r, "close", errno);
        r->close_req.result = 0;
        rec_close_finished(&r->close_req);
    }
}

void sp_rec_close(sp_rec *r, ZSTD_CCtx *cctx, uv_loop_t *loop, const char *reason,
                  void (*done)(void *arg, int status), void *arg)
{
    if (!loop) {
        int status = sp_rec_close_sync(r, cctx, reason);
        if (done)
            done(arg, status);
        return;
    }
    r->done = done;
    r->done_arg = arg;
    r->close_loop = loop;
    rec_seal(r, cctx, reason);
    r->close_req.data = r;
    /* A failed recording is still fsync'd: what was written is evidence. */
    if (uv_fs_fsync(loop, &r->close_req, r->fd, rec_close_fsynced) < 0) {
        if (fsync(r->fd) < 0)
            rec_fail(r, "fsync", errno);
        r->close_req.result = 0;
        rec_close_fsynced(&r->close_req);
    }
}
