/* PostgreSQL protocol v3 codec: readers validate every length against the bytes actually
 * present before touching them; builders append whole messages or nothing. */
#include "proxy/pgproto.h"

#include <limits.h>
#include <string.h>

static long bad(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return SP_PG_BAD;
}

/* ---- startup packets ---- */

/* Protocol 3.x StartupMessage parameters: key\0value\0 ... \0, the final NUL being the last
 * byte of the packet. */
static long read_startup_params(const uint8_t *p, size_t total, sp_pg_startup *out,
                                const char **why)
{
    sp_pg_cur c;
    sp_pg_cur_init(&c, p + 8, total - 8);
    for (;;) {
        if (c.off >= c.len)
            return bad(why, "startup packet lacks the final NUL terminator");
        if (c.p[c.off] == 0) {
            if (c.off + 1 != c.len)
                return bad(why, "startup packet has bytes after its terminator");
            return (long)total;
        }
        if (out->n_params == SP_PG_MAX_PARAMS)
            return bad(why, "startup packet has too many parameters");
        size_t klen, vlen;
        const char *key = sp_pg_cur_str(&c, &klen);
        const char *value = sp_pg_cur_str(&c, &vlen);
        if (c.bad)
            return bad(why, "startup parameter is not NUL-terminated");
        out->params[out->n_params].key = key;
        out->params[out->n_params].value = value;
        out->n_params++;
    }
}

long sp_pg_read_startup(const uint8_t *p, size_t len, sp_pg_startup *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    if (len < 4)
        return 0;
    uint32_t total = sp_get_be32(p);
    if (total < 8)
        return bad(why, "startup packet length below 8");
    if (total > SP_PG_STARTUP_MAX)
        return bad(why, "startup packet longer than 10000 bytes");
    if (len < total)
        return 0;
    out->code = sp_get_be32(p + 4);
    switch (out->code) {
    case SP_PG_SSL_REQUEST:
        if (total != 8)
            return bad(why, "SSLRequest must be exactly 8 bytes");
        return (long)total;
    case SP_PG_GSSENC_REQUEST:
        if (total != 8)
            return bad(why, "GSSENCRequest must be exactly 8 bytes");
        return (long)total;
    case SP_PG_CANCEL_REQUEST:
        if (total != 16)
            return bad(why, "CancelRequest must be exactly 16 bytes");
        out->cancel_pid = sp_get_be32(p + 8);
        out->cancel_key = sp_get_be32(p + 12);
        return (long)total;
    default:
        break;
    }
    /* Any 3.x minor version carries parameters; the engine decides whether it speaks it. */
    if (out->code >> 16 == 3)
        return read_startup_params(p, total, out, why);
    return (long)total;
}

const char *sp_pg_startup_param(const sp_pg_startup *s, const char *key)
{
    for (size_t i = 0; i < s->n_params; i++)
        if (strcmp(s->params[i].key, key) == 0)
            return s->params[i].value;
    return NULL;
}

/* ---- regular messages ---- */

long sp_pg_read_msg(const uint8_t *p, size_t len, size_t max, sp_pg_msg *out, const char **why)
{
    if (len < 5)
        return 0;
    uint32_t wire_len = sp_get_be32(p + 1);
    if (wire_len < 4)
        return bad(why, "message length below 4");
    if ((size_t)wire_len - 4 > max)
        return bad(why, "message too long");
    if (len - 1 < wire_len)
        return 0;
    out->type = p[0];
    out->body = p + 5;
    out->len = wire_len - 4;
    return (long)wire_len + 1;
}

void sp_pg_cur_init(sp_pg_cur *c, const uint8_t *p, size_t len)
{
    c->p = p;
    c->len = len;
    c->off = 0;
    c->bad = false;
}

/* Reserves n bytes at the cursor, or marks it bad. */
static const uint8_t *cur_take(sp_pg_cur *c, size_t n)
{
    if (c->bad || n > c->len - c->off) {
        c->bad = true;
        return NULL;
    }
    const uint8_t *at = c->p + c->off;
    c->off += n;
    return at;
}

uint8_t sp_pg_cur_u8(sp_pg_cur *c)
{
    const uint8_t *at = cur_take(c, 1);
    return at ? at[0] : 0;
}

uint16_t sp_pg_cur_u16(sp_pg_cur *c)
{
    const uint8_t *at = cur_take(c, 2);
    return at ? sp_get_be16(at) : 0;
}

uint32_t sp_pg_cur_u32(sp_pg_cur *c)
{
    const uint8_t *at = cur_take(c, 4);
    return at ? sp_get_be32(at) : 0;
}

const char *sp_pg_cur_str(sp_pg_cur *c, size_t *n)
{
    if (n)
        *n = 0;
    if (c->bad)
        return NULL;
    const uint8_t *start = c->p + c->off;
    const uint8_t *nul = memchr(start, 0, c->len - c->off);
    if (!nul) {
        c->bad = true;
        return NULL;
    }
    size_t slen = (size_t)(nul - start);
    c->off += slen + 1;
    if (n)
        *n = slen;
    return (const char *)start;
}

const uint8_t *sp_pg_cur_bytes(sp_pg_cur *c, size_t n)
{
    return cur_take(c, n);
}

static bool cur_at_end(const sp_pg_cur *c)
{
    return !c->bad && c->off == c->len;
}

/* ---- parsed views ---- */

int sp_pg_parse_error(const uint8_t *body, size_t len, sp_pg_error_fields *out)
{
    memset(out, 0, sizeof(*out));
    const char *s_severity = NULL;
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    for (;;) {
        uint8_t field = sp_pg_cur_u8(&c);
        if (c.bad)
            return -1;
        if (field == 0)
            break;
        const char *value = sp_pg_cur_str(&c, NULL);
        if (c.bad)
            return -1;
        switch (field) {
        case 'V':
            out->severity = value;
            break;
        case 'S':
            s_severity = value;
            break;
        case 'C':
            out->code = value;
            break;
        case 'M':
            out->message = value;
            break;
        case 'D':
            out->detail = value;
            break;
        default:
            break; /* other fields (hint, position, ...) are not looked into */
        }
    }
    if (!out->severity)
        out->severity = s_severity;
    if (!cur_at_end(&c) || !out->severity || !out->code || !out->message)
        return -1;
    return 0;
}

int sp_pg_parse_parse(const uint8_t *body, size_t len, sp_pg_parse_msg *out)
{
    memset(out, 0, sizeof(*out));
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    out->stmt = sp_pg_cur_str(&c, NULL);
    out->query = sp_pg_cur_str(&c, &out->query_len);
    uint16_t n_types = sp_pg_cur_u16(&c);
    sp_pg_cur_bytes(&c, (size_t)n_types * 4);
    return cur_at_end(&c) ? 0 : -1;
}

/* Walks the parameter section: n_params of (int32 length, bytes), length -1 meaning NULL. */
static bool skip_bind_params(sp_pg_cur *c, uint16_t n_params)
{
    for (uint32_t i = 0; i < n_params; i++) {
        int32_t plen = (int32_t)sp_pg_cur_u32(c);
        if (c->bad || plen < -1)
            return false;
        if (plen > 0)
            sp_pg_cur_bytes(c, (size_t)plen);
    }
    return !c->bad;
}

int sp_pg_parse_bind(const uint8_t *body, size_t len, sp_pg_bind_msg *out)
{
    memset(out, 0, sizeof(*out));
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    out->portal = sp_pg_cur_str(&c, NULL);
    out->stmt = sp_pg_cur_str(&c, NULL);
    out->n_formats = sp_pg_cur_u16(&c);
    out->formats = sp_pg_cur_bytes(&c, (size_t)out->n_formats * 2);
    out->n_params = sp_pg_cur_u16(&c);
    if (c.bad)
        return -1;
    size_t params_start = c.off;
    if (!skip_bind_params(&c, out->n_params))
        return -1;
    out->params = body + params_start;
    out->params_len = c.off - params_start;
    uint16_t n_result_formats = sp_pg_cur_u16(&c);
    sp_pg_cur_bytes(&c, (size_t)n_result_formats * 2);
    return cur_at_end(&c) ? 0 : -1;
}

int sp_pg_bind_next_param(const sp_pg_bind_msg *b, size_t *pos, const uint8_t **value, int32_t *len)
{
    sp_pg_cur c;
    sp_pg_cur_init(&c, b->params, b->params_len);
    if (*pos >= b->params_len)
        return 0;
    c.off = *pos;
    int32_t plen = (int32_t)sp_pg_cur_u32(&c);
    if (c.bad || plen < -1)
        return 0;
    const uint8_t *at = plen > 0 ? sp_pg_cur_bytes(&c, (size_t)plen) : NULL;
    if (c.bad)
        return 0;
    *value = plen == 0 ? c.p + c.off : at;
    *len = plen;
    *pos = c.off;
    return 1;
}

int sp_pg_parse_execute(const uint8_t *body, size_t len, sp_pg_execute_msg *out)
{
    memset(out, 0, sizeof(*out));
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    out->portal = sp_pg_cur_str(&c, NULL);
    out->max_rows = sp_pg_cur_u32(&c);
    return cur_at_end(&c) ? 0 : -1;
}

int sp_pg_parse_auth(const uint8_t *body, size_t len, uint32_t *subtype, const uint8_t **rest,
                     size_t *rest_len)
{
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    *subtype = sp_pg_cur_u32(&c);
    if (c.bad)
        return -1;
    *rest = body + c.off;
    *rest_len = len - c.off;
    return 0;
}

int sp_pg_parse_sasl_initial(const uint8_t *body, size_t len, const char **mechanism,
                             const uint8_t **data, size_t *data_len)
{
    sp_pg_cur c;
    sp_pg_cur_init(&c, body, len);
    *mechanism = sp_pg_cur_str(&c, NULL);
    int32_t dlen = (int32_t)sp_pg_cur_u32(&c);
    *data = NULL;
    *data_len = 0;
    if (c.bad || dlen < -1)
        return -1;
    if (dlen == -1)
        return cur_at_end(&c) ? 0 : -1;
    *data = sp_pg_cur_bytes(&c, (size_t)dlen);
    *data_len = (size_t)dlen;
    return cur_at_end(&c) ? 0 : -1;
}

/* Parses a decimal count running to the end of the string; -1 if it is not one. */
static int64_t parse_count(const char *s)
{
    if (*s < '0' || *s > '9')
        return -1;
    int64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        int digit = *s - '0';
        if (v > (INT64_MAX - digit) / 10)
            return -1;
        v = v * 10 + digit;
    }
    return v;
}

int64_t sp_pg_tag_rows(const char *tag)
{
    static const char *const with_count[] = {"SELECT ", "UPDATE ", "DELETE ", "COPY ",
                                             "FETCH ",  "MOVE ",   "MERGE "};
    if (!tag)
        return -1;
    for (size_t i = 0; i < sizeof(with_count) / sizeof(with_count[0]); i++) {
        size_t n = strlen(with_count[i]);
        if (strncmp(tag, with_count[i], n) == 0)
            return parse_count(tag + n);
    }
    /* INSERT oid rows: the oid is always present (0 since PostgreSQL 12) */
    if (strncmp(tag, "INSERT ", 7) == 0) {
        const char *space = strchr(tag + 7, ' ');
        if (!space)
            return -1;
        for (const char *d = tag + 7; d < space; d++)
            if (*d < '0' || *d > '9')
                return -1;
        if (space == tag + 7)
            return -1;
        return parse_count(space + 1);
    }
    return -1;
}

/* ---- builders ----
 * A message is started with its header, filled, then its length patched in. Any failure
 * rewinds `out` to where the message began, so a caller never sends half a message. */

typedef struct msg_builder {
    sp_buf *out;
    size_t start;
    size_t len_at; /* offset of the int32 length field */
    bool failed;
} msg_builder;

static void mb_begin(msg_builder *mb, sp_buf *out, int type)
{
    mb->out = out;
    mb->start = out->len;
    mb->failed = false;
    if (type >= 0 && sp_buf_append_u8(out, (uint8_t)type) < 0)
        mb->failed = true;
    mb->len_at = out->len;
    if (!mb->failed && sp_buf_append_be32(out, 0) < 0)
        mb->failed = true;
}

static void mb_bytes(msg_builder *mb, const void *p, size_t n)
{
    if (!mb->failed && sp_buf_append(mb->out, p, n) < 0)
        mb->failed = true;
}

static void mb_str(msg_builder *mb, const char *s)
{
    mb_bytes(mb, s, strlen(s) + 1);
}

static void mb_u8(msg_builder *mb, uint8_t v)
{
    mb_bytes(mb, &v, 1);
}

static void mb_be32(msg_builder *mb, uint32_t v)
{
    uint8_t p[4];
    sp_put_be32(p, v);
    mb_bytes(mb, p, 4);
}

static int mb_end(msg_builder *mb)
{
    size_t msg_len = mb->failed ? 0 : mb->out->len - mb->len_at;
    if (mb->failed || msg_len > INT32_MAX) {
        mb->out->len = mb->start;
        return -1;
    }
    sp_put_be32(mb->out->data + mb->len_at, (uint32_t)msg_len);
    return 0;
}

int sp_pg_put_msg(sp_buf *out, uint8_t type, const void *body, size_t len)
{
    msg_builder mb;
    mb_begin(&mb, out, type);
    mb_bytes(&mb, body, len);
    return mb_end(&mb);
}

static void mb_field(msg_builder *mb, char code, const char *value)
{
    mb_u8(mb, (uint8_t)code);
    mb_str(mb, value);
}

static int put_error_or_notice(sp_buf *out, uint8_t type, const char *severity,
                               const char *sqlstate, const char *message, const char *detail,
                               const char *hint)
{
    msg_builder mb;
    mb_begin(&mb, out, type);
    mb_field(&mb, 'S', severity);
    mb_field(&mb, 'V', severity);
    mb_field(&mb, 'C', sqlstate);
    mb_field(&mb, 'M', message);
    if (detail)
        mb_field(&mb, 'D', detail);
    if (hint)
        mb_field(&mb, 'H', hint);
    mb_u8(&mb, 0);
    return mb_end(&mb);
}

int sp_pg_put_error(sp_buf *out, const char *severity, const char *sqlstate, const char *message,
                    const char *detail, const char *hint)
{
    return put_error_or_notice(out, 'E', severity, sqlstate, message, detail, hint);
}

int sp_pg_put_notice(sp_buf *out, const char *message)
{
    return put_error_or_notice(out, 'N', "NOTICE", "00000", message, NULL, NULL);
}

int sp_pg_put_auth(sp_buf *out, uint32_t subtype, const void *data, size_t len)
{
    msg_builder mb;
    mb_begin(&mb, out, 'R');
    mb_be32(&mb, subtype);
    mb_bytes(&mb, data, len);
    return mb_end(&mb);
}

int sp_pg_put_auth_sasl(sp_buf *out, const char *const *mechanisms, size_t n)
{
    msg_builder mb;
    mb_begin(&mb, out, 'R');
    mb_be32(&mb, 10); /* AuthenticationSASL */
    for (size_t i = 0; i < n; i++)
        mb_str(&mb, mechanisms[i]);
    mb_u8(&mb, 0);
    return mb_end(&mb);
}

int sp_pg_put_parameter_status(sp_buf *out, const char *name, const char *value)
{
    msg_builder mb;
    mb_begin(&mb, out, 'S');
    mb_str(&mb, name);
    mb_str(&mb, value);
    return mb_end(&mb);
}

int sp_pg_put_backend_key(sp_buf *out, uint32_t pid, uint32_t key)
{
    msg_builder mb;
    mb_begin(&mb, out, 'K');
    mb_be32(&mb, pid);
    mb_be32(&mb, key);
    return mb_end(&mb);
}

int sp_pg_put_ready(sp_buf *out, uint8_t status)
{
    msg_builder mb;
    mb_begin(&mb, out, 'Z');
    mb_u8(&mb, status);
    return mb_end(&mb);
}

int sp_pg_put_startup(sp_buf *out, const sp_pg_kv *params, size_t n)
{
    msg_builder mb;
    mb_begin(&mb, out, -1);
    mb_be32(&mb, SP_PG_PROTO_V3);
    for (size_t i = 0; i < n; i++) {
        mb_str(&mb, params[i].key);
        mb_str(&mb, params[i].value);
    }
    mb_u8(&mb, 0);
    return mb_end(&mb);
}

int sp_pg_put_ssl_request(sp_buf *out)
{
    msg_builder mb;
    mb_begin(&mb, out, -1);
    mb_be32(&mb, SP_PG_SSL_REQUEST);
    return mb_end(&mb);
}

int sp_pg_put_cancel(sp_buf *out, uint32_t pid, uint32_t key)
{
    msg_builder mb;
    mb_begin(&mb, out, -1);
    mb_be32(&mb, SP_PG_CANCEL_REQUEST);
    mb_be32(&mb, pid);
    mb_be32(&mb, key);
    return mb_end(&mb);
}

int sp_pg_put_sasl_initial(sp_buf *out, const char *mechanism, const void *data, size_t len)
{
    if (data && len > INT32_MAX)
        return -1;
    msg_builder mb;
    mb_begin(&mb, out, 'p');
    mb_str(&mb, mechanism);
    mb_be32(&mb, data ? (uint32_t)len : UINT32_MAX); /* -1: no initial response */
    if (data)
        mb_bytes(&mb, data, len);
    return mb_end(&mb);
}

int sp_pg_put_sasl_response(sp_buf *out, const void *data, size_t len)
{
    return sp_pg_put_msg(out, 'p', data, len);
}

int sp_pg_put_terminate(sp_buf *out)
{
    return sp_pg_put_msg(out, 'X', NULL, 0);
}

/* ---- streaming scanner ---- */

static const uint8_t empty_body[1];

/* hdr_have past the header size marks a stream whose framing broke: it stays broken. */
#define SCANNER_FAILED (sizeof(((sp_pg_scanner *)0)->hdr) + 1)

void sp_pg_scanner_init(sp_pg_scanner *s, size_t capture_max)
{
    memset(s, 0, sizeof(*s));
    s->capture_max = capture_max;
    sp_buf_init(&s->capture, capture_max ? capture_max : 1);
}

void sp_pg_scanner_free(sp_pg_scanner *s)
{
    sp_buf_free(&s->capture);
}

static void scanner_deliver(sp_pg_scanner *s, sp_pg_on_msg fn, void *arg)
{
    uint8_t type = s->hdr[0];
    s->hdr_have = 0;
    if (!s->want[type]) {
        fn(arg, type, NULL, s->body_len, false);
        return;
    }
    const uint8_t *body = s->capture.len ? s->capture.data : empty_body;
    fn(arg, type, body, (uint32_t)s->capture.len, s->capture.len < s->body_len);
    sp_buf_reset(&s->capture);
}

/* Consumes header bytes; returns how many, or -1 on a bad length. */
static long scanner_header(sp_pg_scanner *s, const uint8_t *p, size_t n, const char **why)
{
    size_t take = sizeof(s->hdr) - s->hdr_have;
    if (take > n)
        take = n;
    memcpy(s->hdr + s->hdr_have, p, take);
    s->hdr_have += take;
    if (s->hdr_have < sizeof(s->hdr))
        return (long)take;
    uint32_t wire_len = sp_get_be32(s->hdr + 1);
    if (wire_len < 4) {
        s->hdr_have = SCANNER_FAILED;
        return bad(why, "message length below 4");
    }
    if (s->max_wire_len && wire_len > s->max_wire_len) {
        s->hdr_have = SCANNER_FAILED;
        return bad(why, "message length above PostgreSQL's limit of 1 GB");
    }
    s->body_len = wire_len - 4;
    s->body_left = s->body_len;
    sp_buf_reset(&s->capture);
    return (long)take;
}

static void scanner_body(sp_pg_scanner *s, const uint8_t *p, size_t take)
{
    if (s->want[s->hdr[0]] && s->capture.len < s->capture_max) {
        size_t room = s->capture_max - s->capture.len;
        size_t keep = take < room ? take : room;
        /* capture.max is capture_max, so this cannot fail short of memory; a failed
         * append only shortens the capture, which `truncated` then reports */
        (void)sp_buf_append(&s->capture, p, keep);
    }
    s->body_left -= (uint32_t)take;
}

int sp_pg_scanner_feed(sp_pg_scanner *s, const uint8_t *p, size_t n, sp_pg_on_msg fn, void *arg,
                       const char **why)
{
    if (s->hdr_have == SCANNER_FAILED) {
        if (why)
            *why = "stream already failed message framing";
        return -1;
    }
    while (n > 0) {
        if (s->hdr_have < sizeof(s->hdr)) {
            long used = scanner_header(s, p, n, why);
            if (used < 0)
                return -1;
            p += used;
            n -= (size_t)used;
            if (s->hdr_have == sizeof(s->hdr) && s->body_left == 0)
                scanner_deliver(s, fn, arg);
            continue;
        }
        size_t take = n < s->body_left ? n : s->body_left;
        scanner_body(s, p, take);
        p += take;
        n -= take;
        if (s->body_left == 0)
            scanner_deliver(s, fn, arg);
    }
    return 0;
}
