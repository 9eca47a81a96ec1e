/* A growable byte buffer with a hard upper bound.
 *
 * Every buffer in sallyport has a limit: growing past it fails with -1 and leaves the
 * contents untouched, so callers turn an oversized input into a protocol error instead of
 * unbounded memory. Reading is done by advancing `off`; sp_buf_compact() drops what was read.
 */
#ifndef SP_COMMON_BUF_H
#define SP_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct sp_buf {
    uint8_t *data;
    size_t len; /* bytes written */
    size_t off; /* bytes consumed by the reader; off <= len */
    size_t cap; /* bytes allocated */
    size_t max; /* hard limit on cap; 0 means SP_BUF_DEFAULT_MAX */
} sp_buf;

#define SP_BUF_DEFAULT_MAX ((size_t)64 * 1024 * 1024)

void sp_buf_init(sp_buf *b, size_t max);
void sp_buf_free(sp_buf *b);
void sp_buf_reset(sp_buf *b);
/* Make room for n more bytes; -1 if that would pass the limit or memory ran out. */
int sp_buf_reserve(sp_buf *b, size_t n);
int sp_buf_append(sp_buf *b, const void *p, size_t n);
int sp_buf_append_str(sp_buf *b, const char *s); /* includes the NUL */
int sp_buf_append_u8(sp_buf *b, uint8_t v);
int sp_buf_append_be16(sp_buf *b, uint16_t v);
int sp_buf_append_be32(sp_buf *b, uint32_t v);
int sp_buf_append_be64(sp_buf *b, uint64_t v);
int sp_buf_printf(sp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Unread bytes. */
static inline const uint8_t *sp_buf_rptr(const sp_buf *b)
{
    return b->data + b->off;
}
static inline size_t sp_buf_unread(const sp_buf *b)
{
    return b->len - b->off;
}
void sp_buf_consume(sp_buf *b, size_t n);
/* Move unread bytes to the front. */
void sp_buf_compact(sp_buf *b);

static inline void sp_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t sp_get_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t sp_get_be16(const uint8_t *p)
{
    return (uint16_t)(((uint16_t)p[0] << 8) | p[1]);
}
static inline uint64_t sp_get_be64(const uint8_t *p)
{
    return ((uint64_t)sp_get_be32(p) << 32) | sp_get_be32(p + 4);
}

#endif
