/* PostgreSQL protocol codec: startup packets, messages, field parsers, builders (byte-exact
 * against the protocol documentation) and the streaming scanner. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "proxy/pgproto.h"

/* A string literal with its embedded NULs, without the compiler's final one. */
#define RAW(s) (const uint8_t *)(s), sizeof(s) - 1

static size_t packet(uint8_t *out, uint32_t len_field, uint32_t code, const uint8_t *rest,
                     size_t rest_len)
{
    sp_put_be32(out, len_field);
    sp_put_be32(out + 4, code);
    memcpy(out + 8, rest, rest_len);
    return 8 + rest_len;
}

/* ---- startup ---- */

typedef struct startup_case {
    const char *name;
    uint32_t code;
    const uint8_t *rest;
    size_t rest_len;
    int64_t len_field; /* -1: the real length */
    long rc;           /* -2: the real length */
    size_t n_params;
} startup_case;

#define WHOLE (-2)
static const startup_case startup_cases[] = {
    {"v3", SP_PG_PROTO_V3, RAW("user\0alice\0database\0db\0\0"), -1, WHOLE, 2},
    {"v3 empty value", SP_PG_PROTO_V3, RAW("user\0alice\0options\0\0\0"), -1, WHOLE, 2},
    {"v3 no params", SP_PG_PROTO_V3, RAW("\0"), -1, WHOLE, 0},
    {"v3.2 params", (3u << 16) | 2, RAW("user\0a\0\0"), -1, WHOLE, 1},
    {"ssl", SP_PG_SSL_REQUEST, RAW(""), -1, WHOLE, 0},
    {"gss", SP_PG_GSSENC_REQUEST, RAW(""), -1, WHOLE, 0},
    {"cancel", SP_PG_CANCEL_REQUEST, RAW("\0\0\0\x2a\x01\x02\x03\x04"), -1, WHOLE, 0},
    {"unknown code", 0x04d20000, RAW("xyz"), -1, WHOLE, 0},
    {"ssl too long", SP_PG_SSL_REQUEST, RAW("\0\0\0\0"), -1, SP_PG_BAD, 0},
    {"gss too long", SP_PG_GSSENC_REQUEST, RAW("\0"), -1, SP_PG_BAD, 0},
    {"cancel short", SP_PG_CANCEL_REQUEST, RAW("\0\0\0\1"), -1, SP_PG_BAD, 0},
    {"cancel long", SP_PG_CANCEL_REQUEST, RAW("\0\0\0\1\0\0\0\2\0"), -1, SP_PG_BAD, 0},
    {"v3 without params", SP_PG_PROTO_V3, RAW(""), -1, SP_PG_BAD, 0},
    {"v3 no terminator", SP_PG_PROTO_V3, RAW("user\0alice\0"), -1, SP_PG_BAD, 0},
    {"v3 value unterminated", SP_PG_PROTO_V3, RAW("user\0alice"), -1, SP_PG_BAD, 0},
    {"v3 key unterminated", SP_PG_PROTO_V3, RAW("user"), -1, SP_PG_BAD, 0},
    {"v3 garbage after", SP_PG_PROTO_V3, RAW("user\0a\0\0junk"), -1, SP_PG_BAD, 0},
    {"v3 empty key", SP_PG_PROTO_V3, RAW("\0a\0\0"), -1, SP_PG_BAD, 0},
    {"length 0", SP_PG_PROTO_V3, RAW("\0"), 0, SP_PG_BAD, 0},
    {"length 7", SP_PG_PROTO_V3, RAW("\0"), 7, SP_PG_BAD, 0},
    {"length 8 ssl", SP_PG_SSL_REQUEST, RAW(""), 8, 8, 0},
    {"length 10001", SP_PG_PROTO_V3, RAW("\0"), 10001, SP_PG_BAD, 0},
    {"length 2^31", SP_PG_PROTO_V3, RAW("\0"), 0x80000000, SP_PG_BAD, 0},
    {"length 2^32-1", SP_PG_PROTO_V3, RAW("\0"), 0xffffffff, SP_PG_BAD, 0},
    {"needs more", SP_PG_PROTO_V3, RAW("user\0a\0\0"), 40, 0, 0},
};

static void startup_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < SP_ARRAY_LEN(startup_cases); i++) {
        const startup_case *sc = &startup_cases[i];
        uint8_t p[256];
        size_t len = 8 + sc->rest_len;
        packet(p, sc->len_field < 0 ? (uint32_t)len : (uint32_t)sc->len_field, sc->code, sc->rest,
               sc->rest_len);
        sp_pg_startup s;
        const char *why = NULL;
        long rc = sp_pg_read_startup(p, len, &s, &why);
        long want = sc->rc == WHOLE ? (long)len : sc->rc;
        if (rc != want)
            fail_msg("%s: rc %ld, want %ld (%s)", sc->name, rc, want, why ? why : "");
        if (rc == SP_PG_BAD)
            assert_non_null(why);
        if (rc > 0) {
            assert_int_equal(s.code, sc->code);
            assert_int_equal(s.n_params, sc->n_params);
        }
    }
}

static void startup_fields(void **state)
{
    (void)state;
    uint8_t p[64];
    size_t len = packet(p, 0, SP_PG_PROTO_V3, RAW("user\0alice\0database\0db\0\0"));
    sp_put_be32(p, (uint32_t)len);
    sp_pg_startup s;
    const char *why;
    assert_int_equal(sp_pg_read_startup(p, len, &s, &why), (long)len);
    assert_string_equal(sp_pg_startup_param(&s, "user"), "alice");
    assert_string_equal(sp_pg_startup_param(&s, "database"), "db");
    assert_null(sp_pg_startup_param(&s, "options"));
    /* every prefix is "need more" */
    for (size_t n = 0; n < len; n++)
        assert_int_equal(sp_pg_read_startup(p, n, &s, &why), 0);

    len = packet(p, 16, SP_PG_CANCEL_REQUEST, RAW("\0\0\0\x2a\x01\x02\x03\x04"));
    assert_int_equal(sp_pg_read_startup(p, len, &s, &why), 16);
    assert_int_equal(s.cancel_pid, 42);
    assert_int_equal(s.cancel_key, 0x01020304);
}

static long startup_with_params(size_t n_params, sp_pg_startup *s)
{
    static uint8_t p[SP_PG_STARTUP_MAX];
    size_t off = 8;
    for (size_t i = 0; i < n_params; i++) {
        off += (size_t)sprintf((char *)p + off, "k%zu", i) + 1;
        off += (size_t)sprintf((char *)p + off, "v") + 1;
    }
    p[off++] = 0;
    sp_put_be32(p, (uint32_t)off);
    sp_put_be32(p + 4, SP_PG_PROTO_V3);
    const char *why;
    long rc = sp_pg_read_startup(p, off, s, &why);
    return rc == (long)off ? 1 : rc;
}

static void startup_param_limit(void **state)
{
    (void)state;
    sp_pg_startup s;
    assert_int_equal(startup_with_params(SP_PG_MAX_PARAMS, &s), 1);
    assert_int_equal(s.n_params, SP_PG_MAX_PARAMS);
    assert_string_equal(sp_pg_startup_param(&s, "k63"), "v");
    assert_int_equal(startup_with_params(SP_PG_MAX_PARAMS + 1, &s), SP_PG_BAD);
}

static void startup_max_length(void **state)
{
    (void)state;
    static uint8_t p[SP_PG_STARTUP_MAX + 1];
    /* one parameter whose value fills the packet to exactly SP_PG_STARTUP_MAX */
    memset(p, 'x', sizeof(p));
    memcpy(p + 8, "k\0", 2);
    p[SP_PG_STARTUP_MAX - 2] = 0;
    p[SP_PG_STARTUP_MAX - 1] = 0;
    sp_put_be32(p, SP_PG_STARTUP_MAX);
    sp_put_be32(p + 4, SP_PG_PROTO_V3);
    sp_pg_startup s;
    const char *why;
    assert_int_equal(sp_pg_read_startup(p, SP_PG_STARTUP_MAX, &s, &why), SP_PG_STARTUP_MAX);
    assert_int_equal(s.n_params, 1);
    sp_put_be32(p, SP_PG_STARTUP_MAX + 1);
    assert_int_equal(sp_pg_read_startup(p, sizeof(p), &s, &why), SP_PG_BAD);
}

/* ---- messages ---- */

static void read_msg(void **state)
{
    (void)state;
    const uint8_t two[] = {'Q', 0, 0, 0, 8, 'S', 'E', 'L', '\0', 'S', 0, 0, 0, 4};
    sp_pg_msg m;
    const char *why = NULL;
    for (size_t n = 0; n < 9; n++)
        assert_int_equal(sp_pg_read_msg(two, n, 100, &m, &why), 0);
    assert_int_equal(sp_pg_read_msg(two, sizeof(two), 100, &m, &why), 9);
    assert_int_equal(m.type, 'Q');
    assert_int_equal(m.len, 4);
    assert_memory_equal(m.body, "SEL", 4);
    assert_int_equal(sp_pg_read_msg(two + 9, 4, 100, &m, &why), 0);
    assert_int_equal(sp_pg_read_msg(two + 9, 5, 100, &m, &why), 5);
    assert_int_equal(m.type, 'S');
    assert_int_equal(m.len, 0);

    assert_int_equal(sp_pg_read_msg(two, sizeof(two), 3, &m, &why), SP_PG_BAD);
    assert_string_equal(why, "message too long");
    assert_int_equal(sp_pg_read_msg(two, sizeof(two), 4, &m, &why), 9);

    const uint8_t short_len[] = {'Q', 0, 0, 0, 3};
    assert_int_equal(sp_pg_read_msg(short_len, sizeof(short_len), 100, &m, &why), SP_PG_BAD);
    /* a huge length is refused from the header alone, before any body arrives */
    const uint8_t huge[] = {'D', 0x7f, 0xff, 0xff, 0xff};
    assert_int_equal(sp_pg_read_msg(huge, sizeof(huge), 1 << 20, &m, &why), SP_PG_BAD);
}

static void cursor(void **state)
{
    (void)state;
    const uint8_t body[] = {1, 0, 2, 0, 0, 0, 3, 'a', 'b', 0, 'x'};
    sp_pg_cur c;
    size_t n;
    sp_pg_cur_init(&c, body, sizeof(body));
    assert_int_equal(sp_pg_cur_u8(&c), 1);
    assert_int_equal(sp_pg_cur_u16(&c), 2);
    assert_int_equal(sp_pg_cur_u32(&c), 3);
    assert_string_equal(sp_pg_cur_str(&c, &n), "ab");
    assert_int_equal(n, 2);
    assert_false(c.bad);
    assert_null(sp_pg_cur_str(&c, &n)); /* "x" has no NUL */
    assert_true(c.bad);
    assert_int_equal(sp_pg_cur_u8(&c), 0); /* sticky */

    sp_pg_cur_init(&c, body, 3);
    assert_null(sp_pg_cur_bytes(&c, 4));
    assert_true(c.bad);
    sp_pg_cur_init(&c, body, 3);
    assert_int_equal(sp_pg_cur_u32(&c), 0);
    assert_true(c.bad);
    sp_pg_cur_init(&c, body, 3);
    assert_non_null(sp_pg_cur_bytes(&c, 3));
    assert_false(c.bad);
    assert_null(sp_pg_cur_bytes(&c, SIZE_MAX));
    assert_true(c.bad);
}

static void parse_error(void **state)
{
    (void)state;
    sp_pg_error_fields f;
    const uint8_t full[] = "SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0Dmore\0"
                           "Rauth_failed\0";
    assert_int_equal(sp_pg_parse_error(full, sizeof(full), &f), 0);
    assert_string_equal(f.severity, "FATAL");
    assert_string_equal(f.code, "28P01");
    assert_string_equal(f.message, "password authentication failed");
    assert_string_equal(f.detail, "more");

    const uint8_t old_server[] = "SERROR\0C42601\0Msyntax\0";
    assert_int_equal(sp_pg_parse_error(old_server, sizeof(old_server), &f), 0);
    assert_string_equal(f.severity, "ERROR");
    assert_null(f.detail);

    const uint8_t no_message[] = "SERROR\0C42601\0";
    assert_int_equal(sp_pg_parse_error(no_message, sizeof(no_message), &f), -1);
    /* without the final terminator */
    assert_int_equal(sp_pg_parse_error(old_server, sizeof(old_server) - 1, &f), -1);
    /* a field value running off the end */
    assert_int_equal(sp_pg_parse_error(old_server, sizeof(old_server) - 2, &f), -1);
    const uint8_t trailing[] = "SERROR\0C42601\0Mx\0\0z";
    assert_int_equal(sp_pg_parse_error(trailing, sizeof(trailing) - 1, &f), -1);
    assert_int_equal(sp_pg_parse_error(NULL, 0, &f), -1);
}

static void parse_parse_and_execute(void **state)
{
    (void)state;
    sp_pg_parse_msg p;
    const uint8_t parse[] = "s1\0SELECT $1\0\0\1\0\0\0\x17";
    assert_int_equal(sp_pg_parse_parse(parse, sizeof(parse) - 1, &p), 0);
    assert_string_equal(p.stmt, "s1");
    assert_string_equal(p.query, "SELECT $1");
    assert_int_equal(p.query_len, 9);
    assert_int_equal(sp_pg_parse_parse(parse, sizeof(parse) - 2, &p), -1);
    assert_int_equal(sp_pg_parse_parse(parse, sizeof(parse), &p), -1);

    sp_pg_execute_msg e;
    const uint8_t exec[] = "\0\0\0\0\x0a";
    assert_int_equal(sp_pg_parse_execute(exec, sizeof(exec) - 1, &e), 0);
    assert_string_equal(e.portal, "");
    assert_int_equal(e.max_rows, 10);
    assert_int_equal(sp_pg_parse_execute(exec, 3, &e), -1);
}

/* Bind "" "s1", 1 format (text), params: 'abc', NULL, '' and one result format. */
static const uint8_t bind_body[] = "\0s1\0\0\1\0\0\0\3"
                                   "\0\0\0\3abc"
                                   "\xff\xff\xff\xff"
                                   "\0\0\0\0"
                                   "\0\1\0\1";

static void parse_bind(void **state)
{
    (void)state;
    sp_pg_bind_msg b;
    assert_int_equal(sp_pg_parse_bind(bind_body, sizeof(bind_body) - 1, &b), 0);
    assert_string_equal(b.portal, "");
    assert_string_equal(b.stmt, "s1");
    assert_int_equal(b.n_formats, 1);
    assert_int_equal(b.n_params, 3);
    assert_int_equal(b.params_len, 7 + 4 + 4);

    size_t pos = 0;
    const uint8_t *v;
    int32_t len;
    assert_int_equal(sp_pg_bind_next_param(&b, &pos, &v, &len), 1);
    assert_int_equal(len, 3);
    assert_memory_equal(v, "abc", 3);
    assert_int_equal(sp_pg_bind_next_param(&b, &pos, &v, &len), 1);
    assert_int_equal(len, -1);
    assert_int_equal(sp_pg_bind_next_param(&b, &pos, &v, &len), 1);
    assert_int_equal(len, 0);
    assert_int_equal(sp_pg_bind_next_param(&b, &pos, &v, &len), 0);
    assert_int_equal(sp_pg_bind_next_param(&b, &pos, &v, &len), 0);
}

static void parse_bind_malformed(void **state)
{
    (void)state;
    uint8_t body[sizeof(bind_body)];
    sp_pg_bind_msg b;
    size_t n = sizeof(bind_body) - 1;
    /* every truncation is refused */
    for (size_t cut = 0; cut < n; cut++)
        assert_int_equal(sp_pg_parse_bind(bind_body, cut, &b), -1);
    /* trailing bytes */
    assert_int_equal(sp_pg_parse_bind(bind_body, n + 1, &b), -1);
    /* a parameter length of -2 */
    memcpy(body, bind_body, n);
    body[17] = 0xff, body[18] = 0xff, body[19] = 0xff, body[20] = 0xfe;
    assert_int_equal(sp_pg_parse_bind(body, n, &b), -1);
    /* a parameter length past the end of the body */
    memcpy(body, bind_body, n);
    body[11] = 0x7f;
    assert_int_equal(sp_pg_parse_bind(body, n, &b), -1);
    /* four parameters announced, three present */
    memcpy(body, bind_body, n);
    body[9] = 4;
    assert_int_equal(sp_pg_parse_bind(body, n, &b), -1);
}

static void parse_auth_and_sasl(void **state)
{
    (void)state;
    uint32_t subtype;
    const uint8_t *rest;
    size_t rest_len;
    const uint8_t sasl[] = "\0\0\0\x0aSCRAM-SHA-256\0\0";
    assert_int_equal(sp_pg_parse_auth(sasl, sizeof(sasl) - 1, &subtype, &rest, &rest_len), 0);
    assert_int_equal(subtype, 10);
    assert_int_equal(rest_len, 15);
    assert_int_equal(sp_pg_parse_auth(sasl, 3, &subtype, &rest, &rest_len), -1);

    const char *mech;
    const uint8_t *data;
    size_t dlen;
    const uint8_t init[] = "SCRAM-SHA-256\0\0\0\0\3n,,";
    assert_int_equal(sp_pg_parse_sasl_initial(init, sizeof(init) - 1, &mech, &data, &dlen), 0);
    assert_string_equal(mech, "SCRAM-SHA-256");
    assert_int_equal(dlen, 3);
    assert_memory_equal(data, "n,,", 3);
    assert_int_equal(sp_pg_parse_sasl_initial(init, sizeof(init) - 2, &mech, &data, &dlen), -1);
    assert_int_equal(sp_pg_parse_sasl_initial(init, sizeof(init), &mech, &data, &dlen), -1);
    const uint8_t none[] = "SCRAM-SHA-256\0\xff\xff\xff\xff";
    assert_int_equal(sp_pg_parse_sasl_initial(none, sizeof(none) - 1, &mech, &data, &dlen), 0);
    assert_null(data);
    assert_int_equal(dlen, 0);
    const uint8_t negative[] = "SCRAM-SHA-256\0\xff\xff\xff\xfe";
    assert_int_equal(sp_pg_parse_sasl_initial(negative, sizeof(negative) - 1, &mech, &data, &dlen),
                     -1);
}

typedef struct tag_case {
    const char *tag;
    int64_t rows;
} tag_case;

static const tag_case tag_cases[] = {
    {"SELECT 5", 5},
    {"SELECT 0", 0},
    {"INSERT 0 3", 3},
    {"INSERT 16384 1", 1},
    {"UPDATE 12", 12},
    {"DELETE 7", 7},
    {"COPY 10", 10},
    {"FETCH 2", 2},
    {"MOVE 4", 4},
    {"MERGE 9", 9},
    {"SELECT 9223372036854775807", INT64_MAX},
    {"SELECT 9223372036854775808", -1},
    {"BEGIN", -1},
    {"CREATE TABLE", -1},
    {"SELECT", -1},
    {"SELECT ", -1},
    {"SELECT 5x", -1},
    {"SELECT -5", -1},
    {"INSERT 3", -1},
    {"INSERT  3", -1},
    {"INSERT x 3", -1},
    {"", -1},
    {NULL, -1},
};

static void tag_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < SP_ARRAY_LEN(tag_cases); i++)
        if (sp_pg_tag_rows(tag_cases[i].tag) != tag_cases[i].rows)
            fail_msg("tag \"%s\": %lld, want %lld", tag_cases[i].tag ? tag_cases[i].tag : "NULL",
                     (long long)sp_pg_tag_rows(tag_cases[i].tag), (long long)tag_cases[i].rows);
}

/* ---- builders ---- */

static void assert_built(sp_buf *b, const uint8_t *want, size_t n)
{
    assert_int_equal(b->len, n);
    assert_memory_equal(b->data, want, n);
    sp_buf_reset(b);
}

static void builders(void **state)
{
    (void)state;
    sp_buf b;
    sp_buf_init(&b, 1024);
    static const char *const mechs[] = {"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"};
    static const sp_pg_kv params[] = {{"user", "u"}, {"database", "d"}};

    assert_int_equal(sp_pg_put_msg(&b, 'Q', "SELECT 1", 9), 0);
    assert_built(&b, RAW("Q\0\0\0\x0dSELECT 1\0"));
    assert_int_equal(sp_pg_put_error(&b, "FATAL", "28000", "no", "why", "fix"), 0);
    assert_built(&b, RAW("E\0\0\0\x28"
                         "SFATAL\0VFATAL\0C28000\0Mno\0Dwhy\0Hfix\0\0"));
    assert_int_equal(sp_pg_put_error(&b, "ERROR", "42501", "denied", NULL, NULL), 0);
    assert_built(&b, RAW("E\0\0\0\x22SERROR\0VERROR\0C42501\0Mdenied\0\0"));
    assert_int_equal(sp_pg_put_notice(&b, "hi"), 0);
    assert_built(&b, RAW("N\0\0\0\x20SNOTICE\0VNOTICE\0C00000\0Mhi\0\0"));
    assert_int_equal(sp_pg_put_auth(&b, 0, NULL, 0), 0);
    assert_built(&b, RAW("R\0\0\0\x08\0\0\0\0"));
    assert_int_equal(sp_pg_put_auth(&b, 11, "r=x", 3), 0);
    assert_built(&b, RAW("R\0\0\0\x0b\0\0\0\x0br=x"));
    assert_int_equal(sp_pg_put_auth_sasl(&b, mechs, 2), 0);
    assert_built(&b, RAW("R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"));
    assert_int_equal(sp_pg_put_parameter_status(&b, "TimeZone", "UTC"), 0);
    assert_built(&b, RAW("S\0\0\0\x11TimeZone\0UTC\0"));
    assert_int_equal(sp_pg_put_backend_key(&b, 42, 0xdeadbeef), 0);
    assert_built(&b, RAW("K\0\0\0\x0c\0\0\0\x2a\xde\xad\xbe\xef"));
    assert_int_equal(sp_pg_put_ready(&b, 'I'), 0);
    assert_built(&b, RAW("Z\0\0\0\x05I"));
    assert_int_equal(sp_pg_put_startup(&b, params, 2), 0);
    assert_built(&b, RAW("\0\0\0\x1b\0\x03\0\0user\0u\0database\0d\0\0"));
    assert_int_equal(sp_pg_put_ssl_request(&b), 0);
    assert_built(&b, RAW("\0\0\0\x08\x04\xd2\x16\x2f"));
    assert_int_equal(sp_pg_put_cancel(&b, 7, 9), 0);
    assert_built(&b, RAW("\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x07\0\0\0\x09"));
    assert_int_equal(sp_pg_put_sasl_initial(&b, "SCRAM-SHA-256", "n,,", 3), 0);
    assert_built(&b, RAW("p\0\0\0\x19SCRAM-SHA-256\0\0\0\0\x03n,,"));
    assert_int_equal(sp_pg_put_sasl_initial(&b, "SCRAM-SHA-256", NULL, 0), 0);
    assert_built(&b, RAW("p\0\0\0\x16SCRAM-SHA-256\0\xff\xff\xff\xff"));
    assert_int_equal(sp_pg_put_sasl_response(&b, "c=biws", 6), 0);
    assert_built(&b, RAW("p\0\0\0\x0a"
                         "c=biws"));
    assert_int_equal(sp_pg_put_terminate(&b), 0);
    assert_built(&b, RAW("X\0\0\0\x04"));
    sp_buf_free(&b);
}

static void builders_round_trip_through_readers(void **state)
{
    (void)state;
    sp_buf b;
    sp_buf_init(&b, 1024);
    assert_int_equal(sp_pg_put_error(&b, "FATAL", "28P01", "bad token", "d", NULL), 0);
    sp_pg_msg m;
    const char *why;
    assert_int_equal(sp_pg_read_msg(b.data, b.len, 1024, &m, &why), (long)b.len);
    sp_pg_error_fields f;
    assert_int_equal(sp_pg_parse_error(m.body, m.len, &f), 0);
    assert_string_equal(f.message, "bad token");
    assert_string_equal(f.detail, "d");
    sp_buf_reset(&b);
    static const sp_pg_kv params[] = {{"user", "u"}, {"application_name", "psql"}};
    assert_int_equal(sp_pg_put_startup(&b, params, 2), 0);
    sp_pg_startup s;
    assert_int_equal(sp_pg_read_startup(b.data, b.len, &s, &why), (long)b.len);
    assert_string_equal(sp_pg_startup_param(&s, "application_name"), "psql");
    sp_buf_free(&b);
}

static void builders_leave_nothing_at_the_limit(void **state)
{
    (void)state;
    sp_buf b;
    sp_buf_init(&b, 16);
    assert_int_equal(sp_pg_put_ready(&b, 'I'), 0);
    assert_int_equal(sp_pg_put_error(&b, "FATAL", "28000", "too long for the buffer", NULL, NULL),
                     -1);
    assert_int_equal(b.len, 6); /* only the ReadyForQuery */
    assert_int_equal(sp_pg_put_msg(&b, 'Q', "0123456789", 10), -1);
    assert_int_equal(b.len, 6);
    assert_int_equal(sp_pg_put_ready(&b, 'T'), 0);
    assert_int_equal(b.len, 12);
    sp_buf_free(&b);
}

/* ---- scanner ---- */

typedef struct seen {
    uint8_t type;
    uint32_t len;
    bool truncated;
    bool has_body;
    char body[64];
} seen;

typedef struct seen_log {
    seen items[64];
    size_t n;
} seen_log;

static void record(void *arg, uint8_t type, const uint8_t *body, uint32_t len, bool truncated)
{
    seen_log *log = arg;
    assert_true(log->n < SP_ARRAY_LEN(log->items));
    seen *s = &log->items[log->n++];
    memset(s, 0, sizeof(*s));
    s->type = type;
    s->len = len;
    s->truncated = truncated;
    s->has_body = body != NULL;
    if (body)
        memcpy(s->body, body, len < sizeof(s->body) ? len : sizeof(s->body));
}

static size_t stream(uint8_t *out)
{
    sp_buf b;
    sp_buf_init(&b, 4096);
    sp_pg_put_msg(&b, 'Q', "SELECT * FROM patients", 23);
    sp_pg_put_msg(&b, 'D', "\0\1\0\0\0\3abc", 9);
    sp_pg_put_msg(&b, 'C', "SELECT 1", 9);
    sp_pg_put_ready(&b, 'I');
    sp_pg_put_terminate(&b);
    sp_pg_put_msg(&b, 'C', "", 0);
    memcpy(out, b.data, b.len);
    size_t n = b.len;
    sp_buf_free(&b);
    return n;
}

static void scanner_init_wanting(sp_pg_scanner *s, size_t capture_max)
{
    sp_pg_scanner_init(s, capture_max);
    s->want['Q'] = true;
    s->want['C'] = true;
}

static void check_stream_log(const seen_log *log)
{
    assert_int_equal(log->n, 6);
    assert_int_equal(log->items[0].type, 'Q');
    assert_true(log->items[0].truncated);
    assert_int_equal(log->items[0].len, 16);
    assert_memory_equal(log->items[0].body, "SELECT * FROM pa", 16);
    assert_int_equal(log->items[1].type, 'D');
    assert_false(log->items[1].has_body);
    assert_int_equal(log->items[1].len, 9);
    assert_int_equal(log->items[2].type, 'C');
    assert_false(log->items[2].truncated);
    assert_string_equal(log->items[2].body, "SELECT 1");
    assert_int_equal(log->items[3].type, 'Z');
    assert_int_equal(log->items[3].len, 1);
    assert_int_equal(log->items[4].type, 'X');
    assert_int_equal(log->items[4].len, 0);
    assert_int_equal(log->items[5].type, 'C');
    assert_true(log->items[5].has_body); /* wanted: never NULL, even when empty */
    assert_int_equal(log->items[5].len, 0);
    assert_false(log->items[5].truncated);
}

static void scanner_splits(void **state)
{
    (void)state;
    uint8_t data[256];
    size_t n = stream(data);
    const char *why;
    /* whole, byte by byte, and every split in pieces of 2..n bytes */
    for (size_t piece = 1; piece <= n; piece++) {
        sp_pg_scanner s;
        seen_log log = {.n = 0};
        scanner_init_wanting(&s, 16);
        for (size_t off = 0; off < n; off += piece) {
            size_t k = n - off < piece ? n - off : piece;
            assert_int_equal(sp_pg_scanner_feed(&s, data + off, k, record, &log, &why), 0);
        }
        check_stream_log(&log);
        sp_pg_scanner_free(&s);
    }
    /* nothing is reported before a message's last byte */
    sp_pg_scanner s;
    seen_log log = {.n = 0};
    scanner_init_wanting(&s, 16);
    assert_int_equal(sp_pg_scanner_feed(&s, data, 27, record, &log, &why), 0);
    assert_int_equal(log.n, 0);
    assert_int_equal(sp_pg_scanner_feed(&s, data + 27, 1, record, &log, &why), 0);
    assert_int_equal(log.n, 1);
    sp_pg_scanner_free(&s);
}

static void scanner_rejects_short_length(void **state)
{
    (void)state;
    const uint8_t bad_msg[] = {'Z', 0, 0, 0, 5, 'I', 'Q', 0, 0, 0, 3, 'x'};
    sp_pg_scanner s;
    seen_log log = {.n = 0};
    const char *why = NULL;
    sp_pg_scanner_init(&s, 16);
    assert_int_equal(sp_pg_scanner_feed(&s, bad_msg, sizeof(bad_msg), record, &log, &why), -1);
    assert_non_null(why);
    assert_int_equal(log.n, 1); /* the good message before it */
    why = NULL;
    assert_int_equal(sp_pg_scanner_feed(&s, bad_msg, 6, record, &log, &why), -1);
    assert_non_null(why);
    assert_int_equal(log.n, 1);
    sp_pg_scanner_free(&s);
}

/* A client message that claims more than PostgreSQL accepts fails at its header. */
static void scanner_rejects_length_over_limit(void **state)
{
    (void)state;
    uint8_t hdr[5] = {'Q'};
    sp_pg_scanner s;
    seen_log log = {.n = 0};
    const char *why = NULL;
    sp_pg_scanner_init(&s, 16);
    s.max_wire_len = SP_PG_CLIENT_MSG_MAX;
    sp_put_be32(hdr + 1, SP_PG_CLIENT_MSG_MAX);
    assert_int_equal(sp_pg_scanner_feed(&s, hdr, sizeof(hdr), record, &log, &why), 0);
    sp_pg_scanner_free(&s);
    sp_pg_scanner_init(&s, 16);
    s.max_wire_len = SP_PG_CLIENT_MSG_MAX;
    sp_put_be32(hdr + 1, SP_PG_CLIENT_MSG_MAX + 1);
    assert_int_equal(sp_pg_scanner_feed(&s, hdr, sizeof(hdr), record, &log, &why), -1);
    assert_non_null(strstr(why, "1 GB"));
    assert_int_equal(log.n, 0);
    sp_pg_scanner_free(&s);
}

/* A DataRow of 300 MB in 64 KiB pieces, and one of 4 GiB - 5 bytes: nothing is buffered. */
static void scanner_streams_huge_bodies(void **state)
{
    (void)state;
    static uint8_t piece[64 * 1024];
    const uint64_t sizes[] = {300u * 1000 * 1000, UINT32_MAX - 4};
    for (size_t i = 0; i < SP_ARRAY_LEN(sizes); i++) {
        for (int wanted = 0; wanted < 2; wanted++) {
            sp_pg_scanner s;
            seen_log log = {.n = 0};
            const char *why;
            uint8_t hdr[5] = {'D'};
            sp_put_be32(hdr + 1, (uint32_t)(sizes[i] + 4));
            sp_pg_scanner_init(&s, 32);
            s.want['D'] = wanted;
            s.want['C'] = true;
            assert_int_equal(sp_pg_scanner_feed(&s, hdr, sizeof(hdr), record, &log, &why), 0);
            uint64_t left = sizes[i];
            size_t step = i == 0 ? sizeof(piece) : sizeof(piece) * 16;
            static uint8_t big[64 * 1024 * 16];
            while (left > 0) {
                size_t k = left < step ? (size_t)left : step;
                assert_int_equal(
                    sp_pg_scanner_feed(&s, i == 0 ? piece : big, k, record, &log, &why), 0);
                left -= k;
            }
            assert_int_equal(log.n, 1);
            assert_true(s.capture.cap <= 256); /* the body was never held */
            const uint8_t tail[] = {'C', 0, 0, 0, 6, 'O', 0};
            assert_int_equal(sp_pg_scanner_feed(&s, tail, sizeof(tail), record, &log, &why), 0);
            assert_int_equal(log.n, 2);
            if (wanted) {
                assert_int_equal(log.items[0].len, 32);
                assert_true(log.items[0].truncated);
            } else {
                assert_int_equal(log.items[0].len, (uint32_t)sizes[i]);
                assert_false(log.items[0].has_body);
            }
            assert_string_equal(log.items[1].body, "O");
            sp_pg_scanner_free(&s);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(startup_table),
        cmocka_unit_test(startup_fields),
        cmocka_unit_test(startup_param_limit),
        cmocka_unit_test(startup_max_length),
        cmocka_unit_test(read_msg),
        cmocka_unit_test(cursor),
        cmocka_unit_test(parse_error),
        cmocka_unit_test(parse_parse_and_execute),
        cmocka_unit_test(parse_bind),
        cmocka_unit_test(parse_bind_malformed),
        cmocka_unit_test(parse_auth_and_sasl),
        cmocka_unit_test(tag_rows),
        cmocka_unit_test(builders),
        cmocka_unit_test(builders_round_trip_through_readers),
        cmocka_unit_test(builders_leave_nothing_at_the_limit),
        cmocka_unit_test(scanner_splits),
        cmocka_unit_test(scanner_rejects_short_length),
        cmocka_unit_test(scanner_rejects_length_over_limit),
        cmocka_unit_test(scanner_streams_huge_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
