/* Exports of a recording for other tools: asciicast v2 (the terminal of an SSH session, for
 * asciinema and asciinema-player) and JSON lines (every event of any recording, every field).
 *
 * Both must stay valid UTF-8 whatever the recorded bytes are. Terminal output arrives in
 * chunks cut anywhere, so a character may start in one event and end in the next: asciicast
 * keeps the cut tail of each channel's last chunk and puts it in front of that channel's next
 * chunk. Bytes that are no part of a valid sequence are shown (U+FFFD in asciicast, as a
 * terminal shows them; \xNN in JSON, keeping their value), never dropped. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "replay/replay.h"

#define EXPORT_LINE_MAX (64 * 1024 * 1024)
#define CARRY_SLOTS 64
#define DEFAULT_COLS 80
#define DEFAULT_ROWS 24
#define TERM_SIZE_MAX 10000

static const char replacement_char[] = "\xEF\xBF\xBD"; /* U+FFFD */

const char *sp_replay_type_name(enum sp_rec_type type)
{
    switch (type) {
    case SP_EV_SESSION_START:
        return "session_start";
    case SP_EV_QUERY:
        return "query";
    case SP_EV_PARSE:
        return "parse";
    case SP_EV_BIND:
        return "bind";
    case SP_EV_EXECUTE:
        return "execute";
    case SP_EV_COMPLETE:
        return "complete";
    case SP_EV_ERROR:
        return "error";
    case SP_EV_COPY:
        return "copy";
    case SP_EV_NOTICE:
        return "notice";
    case SP_EV_READY:
        return "ready";
    case SP_EV_SESSION_END:
        return "session_end";
    case SP_EV_ROWS:
        return "rows";
    case SP_EV_NOTE:
        return "note";
    case SP_EV_CHANNEL_OPEN:
        return "channel_open";
    case SP_EV_PTY:
        return "pty";
    case SP_EV_SHELL:
        return "shell";
    case SP_EV_EXEC:
        return "exec";
    case SP_EV_SUBSYSTEM:
        return "subsystem";
    case SP_EV_ENV:
        return "env";
    case SP_EV_TERM_OUT:
        return "term_out";
    case SP_EV_TERM_ERR:
        return "term_err";
    case SP_EV_TERM_IN:
        return "term_in";
    case SP_EV_RESIZE:
        return "resize";
    case SP_EV_SIGNAL:
        return "signal";
    case SP_EV_EXIT:
        return "exit";
    case SP_EV_CHANNEL_CLOSE:
        return "channel_close";
    case SP_EV_SFTP:
        return "sftp";
    case SP_EV_FORWARD:
        return "forward";
    }
    return "unknown";
}

int sp_replay_utf8_at(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    /* The second byte's range excludes overlong forms, surrogates and code points past
     * U+10FFFF, so every byte is judged as soon as it arrives. */
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        lo = c == 0xE0 ? 0xA0 : lo;
        hi = c == 0xED ? 0x9F : hi;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        lo = c == 0xF0 ? 0x90 : lo;
        hi = c == 0xF4 ? 0x8F : hi;
    } else {
        return 0;
    }
    for (size_t i = 1; i < len; i++) {
        if (i >= n)
            return -1;
        uint8_t min = i == 1 ? lo : 0x80, max = i == 1 ? hi : 0xBF;
        if (p[i] < min || p[i] > max)
            return 0;
    }
    return (int)len;
}

static char *field_str(const sp_rec_ev *ev, size_t i)
{
    if (i >= ev->n_fields)
        return strdup("");
    return strndup(ev->fields[i].data, ev->fields[i].len);
}

static int64_t start_of(const sp_rec_header *h, const sp_rec_ev *first)
{
    return h->started_at ? h->started_at : first->ts_us;
}

/* ---- JSON lines ---- */

static bool all_utf8(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        int len = sp_replay_utf8_at(p + i, n - i);
        if (len <= 0)
            return false;
        i += (size_t)len;
    }
    return true;
}

/* A field as a JSON string; *escaped says it had invalid UTF-8, written as \xNN with the
 * field's own backslashes doubled so the escapes can be told from the text. */
static json_t *field_json(const sp_rec_field *f, bool *escaped)
{
    const uint8_t *p = f->data;
    *escaped = !all_utf8(p, f->len);
    if (!*escaped)
        return json_stringn(f->len ? (const char *)p : "", f->len);
    sp_buf b;
    sp_buf_init(&b, 0);
    for (size_t i = 0; i < f->len;) {
        int len = sp_replay_utf8_at(p + i, f->len - i);
        if (len <= 0) {
            sp_buf_printf(&b, "\\x%02x", p[i]);
            i++;
        } else if (p[i] == '\\') {
            sp_buf_append(&b, "\\\\", 2);
            i++;
        } else {
            sp_buf_append(&b, p + i, (size_t)len);
            i += (size_t)len;
        }
    }
    json_t *s = json_stringn(b.len ? (const char *)b.data : "", b.len);
    sp_buf_free(&b);
    return s;
}

static int write_json_line(FILE *out, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(obj);
    if (!s)
        return -1;
    int rc = fprintf(out, "%s\n", s) < 0 ? -1 : 0;
    free(s);
    return rc;
}

static json_t *text_json(const char *s)
{
    sp_rec_field f = {.data = s, .len = strlen(s)};
    bool escaped;
    return field_json(&f, &escaped);
}

static int json_header(FILE *out, const sp_rec_header *h)
{
    char started[40];
    sp_format_time(h->started_at, started, sizeof(started));
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("header"));
    json_object_set_new(o, "version", json_integer(h->version));
    json_object_set_new(o, "session_id", text_json(h->session_id));
    json_object_set_new(o, "kind", text_json(h->kind));
    json_object_set_new(o, "identity", text_json(h->identity));
    json_object_set_new(o, "target", text_json(h->target));
    json_object_set_new(o, "database", text_json(h->database));
    json_object_set_new(o, "db_user", text_json(h->db_user));
    json_object_set_new(o, "client_addr", text_json(h->client_addr));
    json_object_set_new(o, "started_at_us", json_integer(h->started_at));
    json_object_set_new(o, "started", json_string(started));
    return write_json_line(out, o);
}

static int json_event(FILE *out, const sp_rec_ev *ev, int64_t start_us)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(sp_replay_type_name(ev->type)));
    json_object_set_new(o, "code", json_integer(ev->type));
    json_object_set_new(o, "ts_us", json_integer(ev->ts_us));
    json_object_set_new(o, "offset_us", json_integer(ev->ts_us - start_us));
    json_object_set_new(o, "flags", json_integer(ev->flags));
    json_t *fields = json_array(), *escaped = json_array();
    for (size_t i = 0; i < ev->n_fields; i++) {
        bool esc;
        json_array_append_new(fields, field_json(&ev->fields[i], &esc));
        if (esc)
            json_array_append_new(escaped, json_integer((json_int_t)i));
    }
    json_object_set_new(o, "fields", fields);
    if (json_array_size(escaped))
        json_object_set_new(o, "escaped", escaped);
    else
        json_decref(escaped);
    return write_json_line(out, o);
}

static int json_trailer(FILE *out, sp_rec_reader *rd)
{
    const char *reason = NULL;
    enum sp_rec_state state = sp_rec_reader_state(rd, &reason);
    const char *names[] = {
        [SP_REC_SEALED] = "sealed", [SP_REC_UNSEALED] = "unsealed", [SP_REC_DAMAGED] = "damaged"};
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("trailer"));
    json_object_set_new(o, "state", json_string(names[state]));
    json_object_set_new(o, "end_reason", reason ? text_json(reason) : json_null());
    json_object_set_new(o, "detail", text_json(sp_rec_reader_note(rd)));
    return write_json_line(out, o);
}

static int export_json(sp_rec_reader *rd, FILE *out, char *err, size_t errlen)
{
    const sp_rec_header *h = sp_rec_reader_header(rd);
    if (json_header(out, h) < 0)
        return -1;
    sp_rec_ev ev;
    int rc;
    int64_t start_us = h->started_at;
    bool first = true;
    while ((rc = sp_rec_reader_next(rd, &ev, err, errlen)) == 1) {
        if (first)
            start_us = start_of(h, &ev);
        first = false;
        if (json_event(out, &ev, start_us) < 0)
            return -1;
    }
    if (json_trailer(out, rd) < 0)
        return -1;
    return rc;
}

/* ---- asciicast v2 ---- */

/* The cut tail of a channel's last chunk (at most 3 bytes: a 4-byte sequence less one). */
typedef struct carry {
    uint32_t channel;
    bool input;
    uint8_t len;
    uint8_t bytes[3];
} carry;

typedef struct cast {
    FILE *out;
    sp_term_schedule clock;
    sp_term_channels chans;
    carry carries[CARRY_SLOTS];
    size_t n_carries;
    int cols, rows;
    bool size_known;
} cast;

static carry *carry_for(cast *c, uint32_t channel, bool input)
{
    for (size_t i = 0; i < c->n_carries; i++)
        if (c->carries[i].channel == channel && c->carries[i].input == input)
            return &c->carries[i];
    if (c->n_carries == CARRY_SLOTS)
        return NULL;
    carry *k = &c->carries[c->n_carries++];
    *k = (carry){.channel = channel, .input = input};
    return k;
}

/* Appends k's carried bytes then p as valid UTF-8; a valid sequence cut by the end of p goes
 * back into k (without k, as when 64 channels already carry something, it is shown as
 * invalid). */
static void append_utf8(sp_buf *text, carry *k, const uint8_t *p, size_t n)
{
    sp_buf all;
    sp_buf_init(&all, 0);
    if (k)
        sp_buf_append(&all, k->bytes, k->len);
    sp_buf_append(&all, p, n);
    if (k)
        k->len = 0;
    for (size_t i = 0; i < all.len;) {
        int len = sp_replay_utf8_at(all.data + i, all.len - i);
        if (len < 0 && k) {
            k->len = (uint8_t)(all.len - i);
            memcpy(k->bytes, all.data + i, k->len);
            break;
        }
        if (len <= 0) {
            sp_buf_append(text, replacement_char, 3);
            i++;
        } else {
            sp_buf_append(text, all.data + i, (size_t)len);
            i += (size_t)len;
        }
    }
    sp_buf_free(&all);
}

static int cast_line(cast *c, int64_t at_us, const char *code, const sp_buf *text)
{
    json_t *s = json_stringn(text->len ? (const char *)text->data : "", text->len);
    char *enc = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
    json_decref(s);
    if (!enc)
        return -1;
    /* Seconds with microseconds, printed from integers: exact, and short. */
    int rc = fprintf(c->out, "[%lld.%06lld, \"%s\", %s]\n", (long long)(at_us / 1000000),
                     (long long)(at_us % 1000000), code, enc);
    free(enc);
    return rc < 0 ? -1 : 0;
}

static int cast_text(cast *c, int64_t at_us, const char *code, carry *k, const sp_rec_field *f)
{
    sp_buf text;
    sp_buf_init(&text, EXPORT_LINE_MAX);
    append_utf8(&text, k, f->data, f->len);
    int rc = text.len ? cast_line(c, at_us, code, &text) : 0;
    sp_buf_free(&text);
    return rc;
}

/* What a channel still carries when it closes (or the recording ends) was cut for good. */
static int cast_flush_carries(cast *c, int64_t at_us, bool all, uint32_t channel)
{
    int rc = 0;
    for (size_t i = 0; i < c->n_carries;) {
        carry *k = &c->carries[i];
        if (!all && k->channel != channel) {
            i++;
            continue;
        }
        sp_buf text;
        sp_buf_init(&text, 0);
        for (uint8_t b = 0; b < k->len; b++)
            sp_buf_append(&text, replacement_char, 3);
        if (text.len && cast_line(c, at_us, k->input ? "i" : "o", &text) < 0)
            rc = -1;
        sp_buf_free(&text);
        *k = c->carries[--c->n_carries];
    }
    return rc;
}

static bool parse_size(const sp_rec_ev *ev, size_t first, int *cols, int *rows)
{
    if (ev->n_fields < first + 2)
        return false;
    char *cs = field_str(ev, first), *rs = field_str(ev, first + 1);
    char *ce = NULL, *re = NULL;
    long cv = cs ? strtol(cs, &ce, 10) : 0, rv = rs ? strtol(rs, &re, 10) : 0;
    bool ok = cs && rs && *cs && *rs && !*ce && !*re && cv > 0 && rv > 0 && cv <= TERM_SIZE_MAX &&
              rv <= TERM_SIZE_MAX;
    free(cs);
    free(rs);
    if (ok) {
        *cols = (int)cv;
        *rows = (int)rv;
    }
    return ok;
}

static int cast_resize(cast *c, int64_t at_us, const sp_rec_ev *ev, size_t first)
{
    int cols, rows;
    if (!parse_size(ev, first, &cols, &rows) || (cols == c->cols && rows == c->rows))
        return 0;
    c->cols = cols;
    c->rows = rows;
    sp_buf text;
    sp_buf_init(&text, 0);
    sp_buf_printf(&text, "%dx%d", cols, rows);
    int rc = cast_line(c, at_us, "r", &text);
    sp_buf_free(&text);
    return rc;
}

static int cast_event(cast *c, const sp_rec_ev *ev)
{
    int64_t at_us = sp_term_schedule_next(&c->clock, ev->ts_us);
    uint32_t channel = 0;
    bool has_channel = sp_replay_channel(ev, &channel);
    bool terminal = sp_term_channels_is_terminal(&c->chans, ev);
    sp_term_channels_track(&c->chans, ev);
    switch (ev->type) {
    case SP_EV_TERM_OUT:
    case SP_EV_TERM_ERR:
    case SP_EV_TERM_IN:
        if (!has_channel || !terminal || ev->n_fields < 2)
            return 0;
        bool input = ev->type == SP_EV_TERM_IN;
        return cast_text(c, at_us, input ? "i" : "o", carry_for(c, channel, input), &ev->fields[1]);
    case SP_EV_PTY:
        return cast_resize(c, at_us, ev, 2);
    case SP_EV_RESIZE:
        return cast_resize(c, at_us, ev, 1);
    case SP_EV_CHANNEL_CLOSE:
        return has_channel ? cast_flush_carries(c, at_us, false, channel) : 0;
    default:
        return 0;
    }
}

/* The first pass: the terminal's first size and type, and the shell if the client sent it. */
static int cast_scan(const char *path, cast *c, char **term, char **shell, char *err, size_t errlen)
{
    sp_rec_reader *rd = sp_rec_reader_open(path, err, errlen);
    if (!rd)
        return -1;
    sp_rec_ev ev;
    int rc;
    while ((rc = sp_rec_reader_next(rd, &ev, err, errlen)) == 1) {
        if (ev.type == SP_EV_PTY && !c->size_known && parse_size(&ev, 2, &c->cols, &c->rows)) {
            c->size_known = true;
            *term = field_str(&ev, 1);
        }
        if (ev.type == SP_EV_ENV && !*shell && ev.n_fields >= 3 && ev.fields[1].len == 5 &&
            memcmp(ev.fields[1].data, "SHELL", 5) == 0)
            *shell = field_str(&ev, 2);
    }
    sp_rec_reader_close(rd);
    return 0; /* damage is reported by the second pass, which stops at the same place */
}

static int cast_header(cast *c, const sp_rec_header *h, const char *term, const char *shell)
{
    char title[256];
    snprintf(title, sizeof(title), "sallyport session %s %s@%s", h->session_id, h->identity,
             h->target);
    json_t *env = json_object();
    if (term)
        json_object_set_new(env, "TERM", text_json(term));
    if (shell)
        json_object_set_new(env, "SHELL", text_json(shell));
    json_t *o = json_object();
    json_object_set_new(o, "version", json_integer(2));
    json_object_set_new(o, "width", json_integer(c->cols));
    json_object_set_new(o, "height", json_integer(c->rows));
    json_object_set_new(o, "timestamp", json_integer(h->started_at / 1000000));
    json_object_set_new(o, "env", env);
    json_object_set_new(o, "title", text_json(title));
    /* The spec's own layout: one line, ", " and ": " between items. */
    char *s = json_dumps(o, JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!s)
        return -1;
    int rc = fprintf(c->out, "%s\n", s) < 0 ? -1 : 0;
    free(s);
    return rc;
}

static int export_asciicast(const char *path, sp_rec_reader *rd, FILE *out, char *err,
                            size_t errlen)
{
    const sp_rec_header *h = sp_rec_reader_header(rd);
    if (strcmp(h->kind, "ssh") != 0) {
        snprintf(err, errlen,
                 "%s is a %s recording; asciicast holds terminal sessions (ssh): use --format "
                 "json",
                 path, h->kind[0] ? h->kind : "postgres");
        return -2;
    }
    cast c = {.out = out, .cols = DEFAULT_COLS, .rows = DEFAULT_ROWS};
    char *term = NULL, *shell = NULL;
    int rc = cast_scan(path, &c, &term, &shell, err, errlen);
    if (rc == 0)
        rc = cast_header(&c, h, term, shell);
    free(term);
    free(shell);
    if (rc < 0)
        return -1;
    sp_rec_ev ev;
    bool first = true;
    while ((rc = sp_rec_reader_next(rd, &ev, err, errlen)) == 1) {
        if (first)
            sp_term_schedule_init(&c.clock, start_of(h, &ev), 1.0, 0);
        first = false;
        if (cast_event(&c, &ev) < 0)
            return -1;
    }
    if (cast_flush_carries(&c, c.clock.play_us, true, 0) < 0)
        return -1;
    return rc;
}

int sp_export(const char *path, enum sp_export_format format, FILE *out)
{
    char err[512] = "";
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    if (!rd) {
        fprintf(stderr, "export: %s\n", err);
        return 1;
    }
    int rc = format == SP_EXPORT_ASCIICAST ? export_asciicast(path, rd, out, err, sizeof(err))
                                           : export_json(rd, out, err, sizeof(err));
    sp_rec_reader_close(rd);
    if (fflush(out) != 0 || ferror(out))
        rc = -1;
    if (rc == -1 && !err[0])
        snprintf(err, sizeof(err), "cannot write the export (disk full, or out of memory)");
    if (rc == -1)
        fprintf(stderr, "export: %s: %s\n", path, err);
    if (rc == -2)
        fprintf(stderr, "export: %s\n", err);
    return rc < 0 ? 1 : 0;
}
