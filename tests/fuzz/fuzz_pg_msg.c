/* libFuzzer: regular messages. The input is read as a sequence of messages; each is handed
 * to every field parser, and the same bytes are fed to the streaming scanner in splits chosen
 * by the input, which must report exactly the messages sp_pg_read_msg found. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pgproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAPTURE_MAX 64
#define MAX_MSGS 4096

typedef struct expect {
    uint8_t types[MAX_MSGS];
    uint32_t lens[MAX_MSGS];
    size_t n;    /* messages found by sp_pg_read_msg */
    size_t seen; /* messages reported by the scanner */
    const uint8_t *msgs[MAX_MSGS];
} expect;

static volatile uint8_t sink; /* reads the last byte of every view, for ASan to check */

static void parse_all(const uint8_t *body, size_t len)
{
    sp_pg_error_fields ef;
    if (sp_pg_parse_error(body, len, &ef) == 0)
        (void)(strlen(ef.severity) + strlen(ef.code) + strlen(ef.message));
    sp_pg_parse_msg pm;
    if (sp_pg_parse_parse(body, len, &pm) == 0 && strlen(pm.query) != pm.query_len)
        abort();
    sp_pg_bind_msg bm;
    if (sp_pg_parse_bind(body, len, &bm) == 0) {
        size_t pos = 0, count = 0;
        const uint8_t *v;
        int32_t vlen;
        while (sp_pg_bind_next_param(&bm, &pos, &v, &vlen) == 1) {
            if (vlen > 0)
                sink ^= v[vlen - 1];
            count++;
        }
        if (count != bm.n_params || pos != bm.params_len)
            abort();
    }
    sp_pg_execute_msg em;
    if (sp_pg_parse_execute(body, len, &em) == 0)
        (void)strlen(em.portal);
    uint32_t subtype;
    const uint8_t *rest, *sasl;
    size_t rest_len, sasl_len;
    if (sp_pg_parse_auth(body, len, &subtype, &rest, &rest_len) == 0 && rest_len > 0)
        sink ^= rest[rest_len - 1];
    const char *mech;
    if (sp_pg_parse_sasl_initial(body, len, &mech, &sasl, &sasl_len) == 0 && sasl_len > 0)
        sink ^= sasl[sasl_len - 1];
    /* a body ending in NUL is a candidate CommandComplete tag */
    if (len > 0 && body[len - 1] == 0)
        (void)sp_pg_tag_rows((const char *)body);
}

static void on_msg(void *arg, uint8_t type, const uint8_t *body, uint32_t len, bool truncated)
{
    expect *e = arg;
    if (e->seen >= e->n || e->types[e->seen] != type)
        abort();
    uint32_t full = e->lens[e->seen];
    if (type == 'Q' || type == 'C') {
        uint32_t want = full < CAPTURE_MAX ? full : CAPTURE_MAX;
        if (!body || len != want || truncated != (full > CAPTURE_MAX) ||
            memcmp(body, e->msgs[e->seen], len) != 0)
            abort();
    } else if (body || len != full || truncated) {
        abort();
    }
    e->seen++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    /* first byte: the split size for the scanner */
    size_t split = (size_t)data[0] + 1;
    data++;
    size--;
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    expect *e = calloc(1, sizeof(*e));
    size_t off = 0;
    bool framing_bad = false;
    while (off < size && e->n < MAX_MSGS) {
        sp_pg_msg m;
        const char *why = NULL;
        long rc = sp_pg_read_msg(p + off, size - off, 1 << 20, &m, &why);
        if (rc == SP_PG_BAD) {
            if (!why)
                abort();
            /* a length below 4 breaks the scanner too; "too long" is only our limit */
            framing_bad = sp_get_be32(p + off + 1) < 4;
            break;
        }
        if (rc == 0)
            break;
        e->types[e->n] = m.type;
        e->lens[e->n] = m.len;
        e->msgs[e->n] = m.body;
        e->n++;
        parse_all(m.body, m.len);
        off += (size_t)rc;
    }
    sp_pg_scanner s;
    sp_pg_scanner_init(&s, CAPTURE_MAX);
    s.want['Q'] = true;
    s.want['C'] = true;
    int rc = 0;
    const char *why = NULL;
    for (size_t at = 0; at < off && rc == 0; at += split)
        rc = sp_pg_scanner_feed(&s, p + at, off - at < split ? off - at : split, on_msg, e, &why);
    if (rc != 0 || e->seen != e->n)
        abort();
    /* the message sp_pg_read_msg refused for a length below 4 is refused by the scanner too */
    if (framing_bad && sp_pg_scanner_feed(&s, p + off, size - off, on_msg, e, &why) != -1)
        abort();
    sp_pg_scanner_free(&s);
    free(e);
    free(p);
    return 0;
}
