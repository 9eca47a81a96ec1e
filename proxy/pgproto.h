/* PostgreSQL frontend/backend protocol v3 codec. I/O-free: bytes in, messages out, every read
 * bounds-checked. Nothing here touches a socket; the engine (proxy/pg_*.c) owns I/O.
 *
 * Readers return the number of bytes consumed (> 0), 0 when more bytes are needed, or
 * SP_PG_BAD with a reason for a malformed message. */
#ifndef SP_PROXY_PGPROTO_H
#define SP_PROXY_PGPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define SP_PG_BAD (-1L)

#define SP_PG_PROTO_V3 196608u      /* 3.0 */
#define SP_PG_SSL_REQUEST 80877103u /* 1234.5679 */
#define SP_PG_GSSENC_REQUEST 80877104u
#define SP_PG_CANCEL_REQUEST 80877102u
#define SP_PG_STARTUP_MAX 10000u /* as PostgreSQL's MAX_STARTUP_PACKET_LENGTH */
#define SP_PG_MAX_PARAMS 64

/* ---- startup packets (no type byte) ---- */
typedef struct sp_pg_kv {
    const char *key; /* point into the packet passed in */
    const char *value;
} sp_pg_kv;

typedef struct sp_pg_startup {
    uint32_t code; /* SP_PG_PROTO_V3, SP_PG_SSL_REQUEST, ... or an unknown version */
    /* CancelRequest */
    uint32_t cancel_pid;
    uint32_t cancel_key;
    /* StartupMessage */
    sp_pg_kv params[SP_PG_MAX_PARAMS];
    size_t n_params;
} sp_pg_startup;

/* Parses one startup-phase packet from p[0..len). `why` gets a static reason on SP_PG_BAD
 * (length below 8 or above SP_PG_STARTUP_MAX, strings not NUL-terminated, missing final
 * terminator, too many parameters, an unknown protocol code is NOT an error: code says it).
 * Parameter strings point into p, which must stay alive and writable is not required.
 * Any 3.x code (3.0, 3.2, ...) carries parameters, which are parsed and must be well formed. */
long sp_pg_read_startup(const uint8_t *p, size_t len, sp_pg_startup *out, const char **why);
const char *sp_pg_startup_param(const sp_pg_startup *s, const char *key);

/* ---- regular messages: 1 type byte, int32 length (including itself), body ---- */
typedef struct sp_pg_msg {
    uint8_t type;
    const uint8_t *body; /* points into the input */
    uint32_t len;        /* body length (the wire length minus 4) */
} sp_pg_msg;

/* One whole message, at most `max` body bytes (SP_PG_BAD if longer or length < 4). */
long sp_pg_read_msg(const uint8_t *p, size_t len, size_t max, sp_pg_msg *out, const char **why);

/* A cursor over a message body for field parsing. */
typedef struct sp_pg_cur {
    const uint8_t *p;
    size_t len;
    size_t off;
    bool bad; /* sticky: a read past the end or a missing NUL sets it */
} sp_pg_cur;

void sp_pg_cur_init(sp_pg_cur *c, const uint8_t *p, size_t len);
uint8_t sp_pg_cur_u8(sp_pg_cur *c);
uint16_t sp_pg_cur_u16(sp_pg_cur *c);
uint32_t sp_pg_cur_u32(sp_pg_cur *c);
/* A NUL-terminated string; returns it and sets *n to its length (without NUL). */
const char *sp_pg_cur_str(sp_pg_cur *c, size_t *n);
const uint8_t *sp_pg_cur_bytes(sp_pg_cur *c, size_t n);

/* ---- parsed views of the messages the gateway looks into ---- */
typedef struct sp_pg_error_fields {
    const char *severity; /* 'V' (or 'S') */
    const char *code;     /* 'C' SQLSTATE */
    const char *message;  /* 'M' */
    const char *detail;   /* 'D', may be NULL */
} sp_pg_error_fields;
/* ErrorResponse / NoticeResponse body; -1 if malformed or severity, code or message is
 * missing. */
int sp_pg_parse_error(const uint8_t *body, size_t len, sp_pg_error_fields *out);

typedef struct sp_pg_parse_msg {
    const char *stmt;
    const char *query;
    size_t query_len;
} sp_pg_parse_msg;
int sp_pg_parse_parse(const uint8_t *body, size_t len, sp_pg_parse_msg *out);

#define SP_PG_BIND_MAX_PARAMS 65535
typedef struct sp_pg_bind_msg {
    const char *portal;
    const char *stmt;
    uint16_t n_formats;
    const uint8_t *formats; /* n_formats big-endian int16 */
    uint16_t n_params;
    const uint8_t *params; /* raw parameter section: for each, int32 length (-1 = NULL), bytes */
    size_t params_len;
} sp_pg_bind_msg;
/* Bind body; checks that the parameter section is well formed. */
int sp_pg_parse_bind(const uint8_t *body, size_t len, sp_pg_bind_msg *out);
/* Iterate the parameters of a parsed Bind: returns 1 and sets value/len (len -1 = NULL),
 * 0 at the end. *pos starts at 0. */
int sp_pg_bind_next_param(const sp_pg_bind_msg *b, size_t *pos, const uint8_t **value,
                          int32_t *len);

typedef struct sp_pg_execute_msg {
    const char *portal;
    uint32_t max_rows;
} sp_pg_execute_msg;
int sp_pg_parse_execute(const uint8_t *body, size_t len, sp_pg_execute_msg *out);

/* Authentication request ('R'): subtype and the rest. */
int sp_pg_parse_auth(const uint8_t *body, size_t len, uint32_t *subtype, const uint8_t **rest,
                     size_t *rest_len);
/* SASLInitialResponse ('p' body while authenticating): mechanism and data (a wire length of
 * -1 means none: data NULL, data_len 0). */
int sp_pg_parse_sasl_initial(const uint8_t *body, size_t len, const char **mechanism,
                             const uint8_t **data, size_t *data_len);

/* Row count from a CommandComplete tag ("SELECT 5" -> 5, "INSERT 0 3" -> 3, "COPY 10" -> 10);
 * -1 when the tag carries none ("BEGIN"). */
int64_t sp_pg_tag_rows(const char *tag);

/* ---- builders (append one whole message to out; -1 only if out's limit is hit) ---- */
int sp_pg_put_msg(sp_buf *out, uint8_t type, const void *body, size_t len);
/* ErrorResponse/NoticeResponse: S, V, C, M and, when not NULL, D and H fields. */
int sp_pg_put_error(sp_buf *out, const char *severity, const char *sqlstate, const char *message,
                    const char *detail, const char *hint);
int sp_pg_put_notice(sp_buf *out, const char *message);
int sp_pg_put_auth(sp_buf *out, uint32_t subtype, const void *data, size_t len);
/* AuthenticationSASL with a list of mechanism names. */
int sp_pg_put_auth_sasl(sp_buf *out, const char *const *mechanisms, size_t n);
int sp_pg_put_parameter_status(sp_buf *out, const char *name, const char *value);
int sp_pg_put_backend_key(sp_buf *out, uint32_t pid, uint32_t key);
int sp_pg_put_ready(sp_buf *out, uint8_t status);
/* Client messages (the gateway as a client of the upstream). */
int sp_pg_put_startup(sp_buf *out, const sp_pg_kv *params, size_t n);
int sp_pg_put_ssl_request(sp_buf *out);
int sp_pg_put_cancel(sp_buf *out, uint32_t pid, uint32_t key);
int sp_pg_put_sasl_initial(sp_buf *out, const char *mechanism, const void *data, size_t len);
int sp_pg_put_sasl_response(sp_buf *out, const void *data, size_t len);
int sp_pg_put_terminate(sp_buf *out);

/* ---- streaming scanner for the relay ----
 * Follows message boundaries in one direction of a connection without buffering bodies: a
 * 256 MiB DataRow streams through. For types the caller wants to look into (want[type]),
 * the first `capture_max` body bytes are kept and the message is handed to on_msg when its
 * last byte has been fed, with `truncated` set if it was longer. Every other message is
 * reported too (body NULL, len = full body length) so the engine can count rows and bytes.
 * For a wanted message, body is never NULL and len is the number of captured bytes.
 * After a framing violation the scanner refuses every later feed. */
typedef struct sp_pg_scanner {
    bool want[256];
    size_t capture_max;
    uint32_t max_wire_len; /* a longer message is a framing violation; 0 = no limit */
    /* state */
    uint8_t hdr[5];
    size_t hdr_have;
    uint32_t body_len;
    uint32_t body_left;
    sp_buf capture;
} sp_pg_scanner;

typedef void (*sp_pg_on_msg)(void *arg, uint8_t type, const uint8_t *body, uint32_t len,
                             bool truncated);

void sp_pg_scanner_init(sp_pg_scanner *s, size_t capture_max);
void sp_pg_scanner_free(sp_pg_scanner *s);
/* PostgreSQL's own bound on a message from a client, length word included
 * (PQ_LARGE_MESSAGE_LIMIT): the server drops a connection that claims more. */
#define SP_PG_CLIENT_MSG_MAX 0x3fffffffu

/* Returns 0, or -1 with *why on a framing violation (length < 4, or above max_wire_len). */
int sp_pg_scanner_feed(sp_pg_scanner *s, const uint8_t *p, size_t n, sp_pg_on_msg fn, void *arg,
                       const char **why);

#endif
