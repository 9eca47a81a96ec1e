#include "proxy/sftp_parse.h"

#include <stdlib.h>
#include <string.h>

/* Packet types (filexfer-02). */
enum {
    FXP_OPEN = 3,
    FXP_CLOSE = 4,
    FXP_READ = 5,
    FXP_WRITE = 6,
    FXP_REMOVE = 13,
    FXP_MKDIR = 14,
    FXP_RMDIR = 15,
    FXP_RENAME = 18,
    FXP_HANDLE = 102,
    FXP_DATA = 103,
};

#define MAX_PACKET (1024 * 1024) /* OpenSSH's own limit is 256 KiB */

typedef struct cursor {
    const uint8_t *p;
    size_t left;
    bool cut; /* ran past the kept prefix: the field is longer than we keep */
} cursor;

static bool get_u32(cursor *c, uint32_t *v)
{
    if (c->left < 4)
        return false;
    *v = (uint32_t)c->p[0] << 24 | (uint32_t)c->p[1] << 16 | (uint32_t)c->p[2] << 8 | c->p[3];
    c->p += 4;
    c->left -= 4;
    return true;
}

/* A string field; *len is its declared length, *data what of it is inside the prefix. */
static bool get_str(cursor *c, const uint8_t **data, uint32_t *len, size_t *have)
{
    if (!get_u32(c, len))
        return false;
    *data = c->p;
    *have = *len <= c->left ? *len : c->left;
    c->p += *have;
    c->left -= *have;
    return true;
}

static void copy_path(char *dst, const uint8_t *src, size_t n)
{
    if (n >= SP_SFTP_PATH_MAX)
        n = SP_SFTP_PATH_MAX - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (dst[i] == '\0')
            dst[i] = '?';
}

static void emit(sp_sftp *p, const char *op, const char *path, const char *path2, uint64_t bytes)
{
    sp_sftp_op o = {.op = op, .path = path, .path2 = path2 ? path2 : "", .bytes = bytes};
    if (p->cb)
        p->cb(p->arg, &o);
}

static int find_handle(sp_sftp *p, const uint8_t *h, size_t n)
{
    for (int i = 0; i < SP_SFTP_MAX_HANDLES; i++)
        if (p->handles[i].used && p->handles[i].hlen == n && memcmp(p->handles[i].h, h, n) == 0)
            return i;
    return -1;
}

static sp_sftp_pending *pending_slot(sp_sftp *p, uint32_t id, bool create)
{
    if (!p->pending) {
        if (!create)
            return NULL;
        p->pending = calloc(SP_SFTP_MAX_PENDING, sizeof(*p->pending));
        if (!p->pending)
            return NULL;
    }
    sp_sftp_pending *free_slot = NULL;
    for (size_t i = 0; i < SP_SFTP_MAX_PENDING; i++) {
        if (p->pending[i].used && p->pending[i].id == id)
            return &p->pending[i];
        if (!p->pending[i].used && !free_slot)
            free_slot = &p->pending[i];
    }
    if (!create || !free_slot)
        return NULL;
    memset(free_slot, 0, sizeof(*free_slot));
    free_slot->used = true;
    free_slot->id = id;
    return free_slot;
}

static void close_handle(sp_sftp *p, int i)
{
    sp_sftp_handle *h = &p->handles[i];
    if (h->read)
        emit(p, "read", h->path, NULL, h->read);
    if (h->written)
        emit(p, "write", h->path, NULL, h->written);
    h->used = false;
}

static void client_packet(sp_sftp *p, uint8_t type, cursor *c, uint32_t id)
{
    const uint8_t *a, *b;
    uint32_t alen, blen;
    size_t ahave, bhave;
    char path[SP_SFTP_PATH_MAX], path2[SP_SFTP_PATH_MAX];
    switch (type) {
    case FXP_OPEN:
        if (!get_str(c, &a, &alen, &ahave))
            return;
        copy_path(path, a, ahave);
        emit(p, "open", path, NULL, 0);
        sp_sftp_pending *slot = pending_slot(p, id, true);
        if (slot) {
            slot->kind = SP_SFTP_PEND_OPEN;
            memcpy(slot->path, path, sizeof(path));
        }
        return;
    case FXP_CLOSE:
    case FXP_READ:
    case FXP_WRITE: {
        if (!get_str(c, &a, &alen, &ahave) || ahave != alen)
            return;
        int h = find_handle(p, a, ahave);
        if (h < 0)
            return;
        if (type == FXP_CLOSE) {
            close_handle(p, h);
        } else if (type == FXP_READ) {
            sp_sftp_pending *s = pending_slot(p, id, true);
            if (s) {
                s->kind = SP_SFTP_PEND_READ;
                s->handle = h;
            }
        } else {
            uint32_t off_hi, off_lo;
            if (get_u32(c, &off_hi) && get_u32(c, &off_lo) && get_u32(c, &blen))
                p->handles[h].written += blen;
        }
        return;
    }
    case FXP_REMOVE:
    case FXP_MKDIR:
    case FXP_RMDIR:
        if (!get_str(c, &a, &alen, &ahave))
            return;
        copy_path(path, a, ahave);
        emit(p,
             type == FXP_REMOVE  ? "remove"
             : type == FXP_MKDIR ? "mkdir"
                                 : "rmdir",
             path, NULL, 0);
        return;
    case FXP_RENAME:
        if (!get_str(c, &a, &alen, &ahave))
            return;
        copy_path(path, a, ahave);
        if (!get_str(c, &b, &blen, &bhave))
            return;
        copy_path(path2, b, bhave);
        emit(p, "rename", path, path2, 0);
        return;
    default:
        return;
    }
}

static void server_packet(sp_sftp *p, uint8_t type, cursor *c, uint32_t id)
{
    sp_sftp_pending *s = pending_slot(p, id, false);
    if (!s)
        return;
    const uint8_t *a;
    uint32_t alen;
    size_t ahave;
    if (type == FXP_HANDLE && s->kind == SP_SFTP_PEND_OPEN && get_str(c, &a, &alen, &ahave) &&
        ahave == alen && alen <= sizeof(p->handles[0].h)) {
        for (int i = 0; i < SP_SFTP_MAX_HANDLES; i++) {
            sp_sftp_handle *h = &p->handles[i];
            if (h->used)
                continue;
            memset(h, 0, sizeof(*h));
            h->used = true;
            memcpy(h->h, a, alen);
            h->hlen = alen;
            memcpy(h->path, s->path, sizeof(h->path));
            break;
        }
    } else if (type == FXP_DATA && s->kind == SP_SFTP_PEND_READ && get_u32(c, &alen)) {
        if (p->handles[s->handle].used)
            p->handles[s->handle].read += alen;
    }
    s->used = false;
}

static void packet(sp_sftp *p, bool from_client, const uint8_t *body, size_t have)
{
    cursor c = {body, have, false};
    if (have < 1)
        return;
    uint8_t type = body[0];
    c.p++;
    c.left--;
    uint32_t id;
    if (!get_u32(&c, &id))
        return; /* INIT / VERSION carry a version, not an id: nothing to record */
    if (from_client)
        client_packet(p, type, &c, id);
    else
        server_packet(p, type, &c, id);
}

void sp_sftp_init(sp_sftp *p, sp_sftp_cb cb, void *arg)
{
    memset(p, 0, sizeof(*p));
    p->cb = cb;
    p->arg = arg;
}

void sp_sftp_feed(sp_sftp *p, bool from_client, const uint8_t *data, size_t n)
{
    sp_sftp_stream *st = from_client ? &p->from_client : &p->from_server;
    while (n > 0 && !p->broken) {
        if (st->hdr_have < 4) {
            size_t k = 4 - st->hdr_have < n ? 4 - st->hdr_have : n;
            memcpy(st->hdr + st->hdr_have, data, k);
            st->hdr_have += k;
            data += k;
            n -= k;
            if (st->hdr_have < 4)
                return;
            st->body_len = (uint32_t)st->hdr[0] << 24 | (uint32_t)st->hdr[1] << 16 |
                           (uint32_t)st->hdr[2] << 8 | st->hdr[3];
            st->body_have = 0;
            if (st->body_len == 0 || st->body_len > MAX_PACKET) {
                p->broken = true;
                return;
            }
        }
        size_t want = st->body_len - st->body_have;
        size_t k = want < n ? want : n;
        if (st->body_have < SP_SFTP_PREFIX) {
            size_t keep = SP_SFTP_PREFIX - st->body_have;
            if (keep > k)
                keep = k;
            memcpy(st->prefix + st->body_have, data, keep);
        }
        st->body_have += (uint32_t)k;
        data += k;
        n -= k;
        if (st->body_have == st->body_len) {
            size_t have = st->body_len < SP_SFTP_PREFIX ? st->body_len : SP_SFTP_PREFIX;
            packet(p, from_client, st->prefix, have);
            st->hdr_have = 0;
        }
    }
}

void sp_sftp_free(sp_sftp *p)
{
    for (int i = 0; i < SP_SFTP_MAX_HANDLES; i++)
        if (p->handles[i].used)
            close_handle(p, i);
    free(p->pending);
    p->pending = NULL;
}
