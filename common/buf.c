#include "common/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sp_buf_init(sp_buf *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max ? max : SP_BUF_DEFAULT_MAX;
}

void sp_buf_free(sp_buf *b)
{
    free(b->data);
    size_t max = b->max;
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void sp_buf_reset(sp_buf *b)
{
    b->len = 0;
    b->off = 0;
}

int sp_buf_reserve(sp_buf *b, size_t n)
{
    size_t max = b->max ? b->max : SP_BUF_DEFAULT_MAX;
    if (n > max || b->len > max - n)
        return -1;
    size_t need = b->len + n;
    if (need <= b->cap)
        return 0;
    if (b->off > 0 && b->len - b->off + n <= b->cap) {
        sp_buf_compact(b);
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > max / 2 ? max : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int sp_buf_append(sp_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (sp_buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int sp_buf_append_str(sp_buf *b, const char *s)
{
    return sp_buf_append(b, s, strlen(s) + 1);
}

int sp_buf_append_u8(sp_buf *b, uint8_t v)
{
    return sp_buf_append(b, &v, 1);
}

int sp_buf_append_be16(sp_buf *b, uint16_t v)
{
    uint8_t p[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    return sp_buf_append(b, p, 2);
}

int sp_buf_append_be32(sp_buf *b, uint32_t v)
{
    uint8_t p[4];
    sp_put_be32(p, v);
    return sp_buf_append(b, p, 4);
}

int sp_buf_append_be64(sp_buf *b, uint64_t v)
{
    if (sp_buf_append_be32(b, (uint32_t)(v >> 32)) < 0)
        return -1;
    return sp_buf_append_be32(b, (uint32_t)v);
}

int sp_buf_printf(sp_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || sp_buf_reserve(b, (size_t)n + 1) < 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sp_buf_consume(sp_buf *b, size_t n)
{
    if (n > b->len - b->off)
        n = b->len - b->off;
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

void sp_buf_compact(sp_buf *b)
{
    if (b->off == 0)
        return;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}
