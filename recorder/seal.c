/* Sealing recordings a crashed gateway left open (recorder/seal.h). */
#include "recorder/seal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "recorder/audit.h"
#include "recorder/rec_format.h"

#define CRASHED_REASON "gateway-crashed"

/* A sealed v2 file ends in the footer magic: a cheap test before walking anything. */
static bool has_footer(int fd)
{
    uint8_t f[REC_FOOTER_LEN];
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < REC_FOOTER_LEN || pread(fd, f, sizeof(f), size - REC_FOOTER_LEN) != sizeof(f))
        return false;
    return memcmp(f + 8, REC_FOOTER_MAGIC, 8) == 0;
}

static int64_t last_chunk_ts(const rec_scan *s)
{
    if (s->index.len < REC_INDEX_ENTRY)
        return s->header.started_at;
    return (int64_t)sp_get_be64(s->index.data + s->index.len - 8);
}

static int append_trailer(int fd, const char *path, const rec_scan *s, const char *reason,
                          char *err, size_t errlen)
{
    const sp_rec_header *h = &s->header;
    sp_rec_meta meta = {.session_id = h->session_id,
                        .kind = h->kind,
                        .identity = h->identity,
                        .target = h->target,
                        .database = h->database,
                        .db_user = h->db_user,
                        .client_addr = h->client_addr};
    sp_buf summary, t;
    sp_buf_init(&summary, REC_META_MAX);
    sp_buf_init(&t, REC_TRAILER2_BODY_MAX + 1024);
    int rc = -1;
    if (rec_meta_strings(&summary, &meta) < 0) {
        snprintf(err, errlen, "%s: header metadata too large", path);
        goto out;
    }
    /* The crash time is unknown: the session ended no earlier than its last chunk began. */
    rec_trailer_in in = {.chunks = s->chunks,
                         .events = s->events,
                         .raw = s->raw,
                         .stored = s->stored,
                         .started_at = h->started_at,
                         .ended_at = last_chunk_ts(s),
                         .header_hash = s->header_hash,
                         .chain_head = s->chain,
                         .summary = summary.data,
                         .summary_len = summary.len,
                         .reason = reason,
                         .index = s->index.data,
                         .index_count = s->index.len / REC_INDEX_ENTRY,
                         .offset = s->end_offset};
    char why[256];
    if (rec_build_trailer(&t, &in, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s: %s", path, why);
        goto out;
    }
    /* A torn partial chunk after the last whole one holds no readable event: drop its bytes so
     * the trailer follows the chain's last link. Whole chunks are never touched. */
    if (ftruncate(fd, (off_t)s->end_offset) < 0 ||
        pwrite(fd, t.data, t.len, (off_t)s->end_offset) != (ssize_t)t.len || fsync(fd) < 0) {
        snprintf(err, errlen, "write trailer to %s: %s", path, strerror(errno));
        goto out;
    }
    rc = 0;
out:
    sp_buf_free(&summary);
    sp_buf_free(&t);
    return rc;
}

int sp_rec_seal_file(const char *path, const char *reason, int64_t min_chunks, char *err,
                     size_t errlen)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", path, strerror(errno));
        return -1;
    }
    rec_scan s;
    int rc = -1;
    if (has_footer(fd)) {
        snprintf(err, errlen, "%s is already sealed", path);
        close(fd);
        return -1;
    }
    if (rec_scan_file(path, &s, err, errlen) < 0) {
        close(fd);
        return -1;
    }
    if (s.state == SP_REC_SEALED)
        snprintf(err, errlen, "%s is already sealed", path);
    else if (s.state == SP_REC_DAMAGED)
        snprintf(err, errlen, "%s is tampered, not sealed over: %s", path, s.note);
    else if ((int64_t)s.chunks < min_chunks)
        snprintf(err, errlen,
                 "%s holds %llu whole chunks but the sessions index recorded %lld: it was cut "
                 "short; not sealed over",
                 path, (unsigned long long)s.chunks, (long long)min_chunks);
    else
        rc = append_trailer(fd, path, &s, reason, err, errlen);
    sp_buf_free(&s.index);
    if (close(fd) < 0 && rc == 0) {
        snprintf(err, errlen, "close %s: %s", path, strerror(errno));
        rc = -1;
    }
    return rc;
}

/* ---- orphans at start ---- */

typedef struct orphan {
    char id[40];
    char identity[SP_NAME_MAX];
    char path[512];
    int64_t chunk_count;
} orphan;

typedef struct orphan_list {
    orphan *items;
    size_t n, cap;
} orphan_list;

static void collect_orphan(const sp_session_row *row, void *arg)
{
    orphan_list *l = arg;
    if (!row->ended_at || strcmp(row->end_reason, CRASHED_REASON) != 0 || !row->recording_path[0])
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        orphan *p = realloc(l->items, cap * sizeof(*p));
        if (!p)
            return; /* sealed at the next start */
        l->items = p;
        l->cap = cap;
    }
    orphan *o = &l->items[l->n++];
    snprintf(o->id, sizeof(o->id), "%s", row->id);
    snprintf(o->identity, sizeof(o->identity), "%s", row->identity);
    snprintf(o->path, sizeof(o->path), "%s", row->recording_path);
    o->chunk_count = row->chunk_count;
}

static bool needs_seal(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false; /* missing: `sallyport verify` reports it */
    bool open_file = !has_footer(fd);
    close(fd);
    return open_file;
}

static void audit_seal(const orphan *o, bool success, const char *why)
{
    json_t *ev = sp_audit_new(SP_AUDIT_APP_RECORDING_SEAL, "recording-seal", success, "sallyport");
    json_object_set_new(ev, "user", sp_audit_user(o->identity, "unknown"));
    json_object_set_new(ev, "session", json_pack("{s:s}", "uid", o->id));
    json_object_set_new(ev, "end_reason", json_string(CRASHED_REASON));
    if (why)
        json_object_set_new(ev, "status_detail", json_string(why));
    sp_audit_emit(ev);
}

int sp_rec_seal_orphans(sp_store *store)
{
    orphan_list l = {0};
    char err[1024];
    if (sp_store_sessions_list(store, false, 0, collect_orphan, &l, err, sizeof(err)) < 0) {
        sp_warn("cannot list sessions to seal crashed recordings: %s", err);
        free(l.items);
        return 0;
    }
    int sealed = 0;
    for (size_t i = 0; i < l.n; i++) {
        const orphan *o = &l.items[i];
        if (!needs_seal(o->path))
            continue;
        if (sp_rec_seal_file(o->path, CRASHED_REASON, o->chunk_count, err, sizeof(err)) < 0) {
            sp_warn("recording of session %s left unsealed: %s", o->id, err);
            audit_seal(o, false, "recording could not be sealed; run sallyport verify");
            continue;
        }
        sp_info("sealed the recording of session %s (ended gateway-crashed)", o->id);
        audit_seal(o, true, NULL);
        sealed++;
    }
    free(l.items);
    return sealed;
}
