/* The PostgreSQL query timeline: the recording's events folded into one line per statement.
 *
 * Statements are matched to their results in protocol order: the server answers statements
 * one after another, so a FIFO of statements sent and not yet answered pairs each
 * CommandComplete or ErrorResponse with the statement it ends. ReadyForQuery ends a
 * round trip: whatever is still queued then was never run (skipped after an error). */
#include "replay/replay.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "recorder/rec.h"

#define TEXT_LINE_MAX (1024 * 1024)
#define PENDING_MAX 100000
#define NAMES_MAX 10000

/* A statement sent and not yet answered. */
typedef struct stmt {
    char *sql;
    bool cut;      /* the recorded text was cut to max_text */
    bool extended; /* Parse/Bind/Execute rather than a simple Query */
    char *name;    /* prepared statement name (extended) */
    json_t *params;
    int64_t sent_us;
    uint64_t rows_seen;
    char copy_dir[4];
    uint64_t copy_bytes;
} stmt;

/* A name bound to SQL: prepared statements (Parse) and portals (Bind). */
typedef struct named {
    char *name;
    char *sql;
    bool cut;
    char *stmt_name; /* portals: the statement they were bound from */
    json_t *params;  /* portals: the parameters, if recorded */
} named;

typedef struct timeline {
    FILE *out;
    bool json;
    int64_t start_us;
    int64_t from_us; /* absolute: statements sent earlier are not shown (--from) */
    stmt *pending;
    size_t n_pending;
    size_t cap_pending;
    named *stmts;
    size_t n_stmts;
    named *portals;
    size_t n_portals;
    int64_t last_end_us; /* when the previous statement of this round trip ended */
    char *end_reason;
} timeline;

/* ---- text for people ---- */

/* Length of a valid UTF-8 sequence at p, or 0. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    if (p[0] < 0x80)
        return 1;
    size_t len = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : p[0] >= 0xC2 ? 2 : 0;
    if (len == 0 || len > n || p[0] > 0xF4)
        return 0;
    if (!sp_utf8_valid(p, len))
        return 0;
    return len;
}

/* Statement text on one line of an auditor's terminal: whitespace runs become one space, and
 * control characters (C0, DEL, C1) and invalid UTF-8 are shown as \xNN, so a recording can
 * never drive the terminal that replays it. */
static void append_display(sp_buf *b, const uint8_t *p, size_t n)
{
    bool space = false, any = false;
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
            space = true;
            i++;
            continue;
        }
        if (space && any)
            sp_buf_append_u8(b, ' ');
        space = false;
        any = true;
        size_t len = utf8_seq(p + i, n - i);
        bool c1 = len == 2 && c == 0xC2 && p[i + 1] < 0xA0;
        if (len == 0 || c < 0x20 || c == 0x7F || c1) {
            sp_buf_printf(b, "\\x%02x", c);
            i++;
            continue;
        }
        sp_buf_append(b, p + i, len);
        i += len;
    }
}

/* JSON wants valid UTF-8: invalid bytes become U+FFFD. */
static json_t *json_text(const uint8_t *p, size_t n)
{
    if (sp_utf8_valid(p, n))
        return json_stringn((const char *)p, n);
    sp_buf b;
    sp_buf_init(&b, 0);
    for (size_t i = 0; i < n;) {
        size_t len = p[i] ? utf8_seq(p + i, n - i) : 1;
        if (len == 0) {
            sp_buf_append(&b, "\xEF\xBF\xBD", 3);
            i++;
        } else {
            sp_buf_append(&b, p + i, len);
            i += len;
        }
    }
    json_t *s = json_stringn(b.len ? (const char *)b.data : "", b.len);
    sp_buf_free(&b);
    return s;
}

static char *field_dup(const sp_rec_ev *ev, size_t i)
{
    if (i >= ev->n_fields)
        return strdup("");
    return strndup(ev->fields[i].data, ev->fields[i].len);
}

static long long field_num(const sp_rec_ev *ev, size_t i)
{
    char *s = field_dup(ev, i);
    long long v = s ? strtoll(s, NULL, 10) : 0;
    free(s);
    return v;
}

static void format_offset(int64_t us, char *out, size_t outlen)
{
    if (us < 0)
        us = 0;
    long long ms = us / 1000;
    snprintf(out, outlen, "%02lld:%02lld:%02lld.%03lld", ms / 3600000, ms / 60000 % 60,
             ms / 1000 % 60, ms % 1000);
}

/* ---- splitting a simple query into its statements ---- */

static bool ident_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c >= 0x80;
}

/* Length of a dollar-quote tag ($$ or $name$) at p, or 0. */
static size_t dollar_tag(const char *p, size_t n)
{
    if (n < 2 || p[0] != '$' || (p[1] >= '0' && p[1] <= '9'))
        return 0;
    for (size_t i = 1; i < n; i++) {
        if (p[i] == '$')
            return i + 1;
        if (!ident_char((uint8_t)p[i]))
            return 0;
    }
    return 0;
}

/* Past the quoted string, comment or dollar-quoted body starting at s[i] (the caller checked
 * it starts one); returns the index after it, or n if it runs to the end. */
static size_t skip_quoted(const char *s, size_t n, size_t i)
{
    if (s[i] == '-') { /* -- to the end of the line */
        while (i < n && s[i] != '\n')
            i++;
        return i;
    }
    if (s[i] == '/') { /* block comments nest in PostgreSQL */
        int depth = 0;
        while (i < n) {
            if (i + 1 < n && s[i] == '/' && s[i + 1] == '*') {
                depth++;
                i += 2;
            } else if (i + 1 < n && s[i] == '*' && s[i + 1] == '/') {
                i += 2;
                if (--depth == 0)
                    return i;
            } else {
                i++;
            }
        }
        return n;
    }
    if (s[i] == '$') {
        size_t tag = dollar_tag(s + i, n - i);
        for (size_t j = i + tag; j + tag <= n; j++)
            if (memcmp(s + j, s + i, tag) == 0)
                return j + tag;
        return n;
    }
    /* '...' or "..." with the quote doubled inside; E'...' also escapes with backslashes */
    char q = s[i];
    bool backslash = q == '\'' && i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e') &&
                     (i < 2 || !ident_char((uint8_t)s[i - 2]));
    for (i++; i < n; i++) {
        if (backslash && s[i] == '\\') {
            i++;
        } else if (s[i] == q) {
            if (i + 1 < n && s[i + 1] == q)
                i++;
            else
                return i + 1;
        }
    }
    return n;
}

static bool starts_quoted(const char *s, size_t n, size_t i)
{
    char c = s[i];
    if (c == '\'' || c == '"')
        return true;
    if (c == '-' && i + 1 < n && s[i + 1] == '-')
        return true;
    if (c == '/' && i + 1 < n && s[i + 1] == '*')
        return true;
    return c == '$' && (i == 0 || !ident_char((uint8_t)s[i - 1])) && dollar_tag(s + i, n - i);
}

static bool is_comment_start(const char *s, size_t n, size_t i)
{
    return (s[i] == '-' || s[i] == '/') && i + 1 < n && (s[i + 1] == '-' || s[i + 1] == '*');
}

static void push_stmt(timeline *t, const stmt *st);

/* Queues each statement of a simple query; pieces holding only blanks and comments draw no
 * CommandComplete from the server and are left out. */
static void queue_simple_query(timeline *t, const char *sql, size_t n, bool cut, int64_t ts)
{
    size_t start = 0;
    bool has_code = false;
    size_t queued = 0;
    for (size_t i = 0; i <= n;) {
        if (i == n || sql[i] == ';') {
            if (has_code) {
                size_t b = start, e = i;
                while (b < e && strchr(" \t\r\n", sql[b]))
                    b++;
                stmt st = {.sql = strndup(sql + b, e - b), .cut = cut && i == n, .sent_us = ts};
                push_stmt(t, &st);
                queued++;
            }
            start = i + 1;
            has_code = false;
            i++;
            continue;
        }
        if (starts_quoted(sql, n, i)) {
            has_code |= !is_comment_start(sql, n, i);
            i = skip_quoted(sql, n, i);
            continue;
        }
        if (!strchr(" \t\r\n", sql[i]))
            has_code = true;
        i++;
    }
    if (queued == 0) {
        stmt st = {.sql = strndup(sql, n), .cut = cut, .sent_us = ts};
        push_stmt(t, &st);
    }
}

/* ---- statement and portal names ---- */

static void named_clear(named *e)
{
    free(e->name);
    free(e->sql);
    free(e->stmt_name);
    json_decref(e->params);
    memset(e, 0, sizeof(*e));
}

static named *named_find(named *list, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i].name, name) == 0)
            return &list[i];
    return NULL;
}

/* The entry for name, replacing an older one; the table is bounded by dropping its oldest. */
static named *named_put(named **list, size_t *n, const char *name)
{
    named *e = named_find(*list, *n, name);
    if (e) {
        named_clear(e);
        e->name = strdup(name);
        return e;
    }
    if (*n == NAMES_MAX) {
        named_clear(&(*list)[0]);
        memmove(*list, *list + 1, (*n - 1) * sizeof(named));
        (*n)--;
    }
    named *grown = realloc(*list, (*n + 1) * sizeof(named));
    if (!grown)
        return NULL;
    *list = grown;
    e = &grown[(*n)++];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name);
    return e;
}

/* ---- the FIFO of statements awaiting their result ---- */

static void stmt_free(stmt *st)
{
    free(st->sql);
    free(st->name);
    json_decref(st->params);
}

static void push_stmt(timeline *t, const stmt *st)
{
    if (t->n_pending == PENDING_MAX) {
        stmt copy = *st;
        stmt_free(&copy);
        return;
    }
    if (t->n_pending == t->cap_pending) {
        size_t cap = t->cap_pending ? t->cap_pending * 2 : 8;
        stmt *p = realloc(t->pending, cap * sizeof(stmt));
        if (!p) {
            stmt copy = *st;
            stmt_free(&copy);
            return;
        }
        t->pending = p;
        t->cap_pending = cap;
    }
    t->pending[t->n_pending++] = *st;
}

static void pop_stmt(timeline *t)
{
    stmt_free(&t->pending[0]);
    memmove(t->pending, t->pending + 1, (t->n_pending - 1) * sizeof(stmt));
    t->n_pending--;
}

/* ---- output ---- */

typedef struct result {
    int64_t end_us; /* 0: no result (the session ended first) */
    long long rows; /* -1: none */
    const char *tag;
    const char *sqlstate;
    const sp_rec_ev *error; /* the ErrorResponse event */
} result;

static void print_text(timeline *t, const stmt *st, int64_t began, const result *res)
{
    sp_buf line;
    sp_buf_init(&line, TEXT_LINE_MAX);
    char off[32];
    format_offset(began - t->start_us, off, sizeof(off));
    sp_buf_printf(&line, "%s  ", off);
    if (res->end_us)
        sp_buf_printf(&line, "%9.3f ms  ", (double)(res->end_us - began) / 1000.0);
    else
        sp_buf_printf(&line, "%9s ms  ", "-");
    size_t before = line.len;
    append_display(&line, (const uint8_t *)st->sql, strlen(st->sql));
    if (line.len == before)
        sp_buf_printf(&line, "(empty)");
    if (st->cut)
        sp_buf_printf(&line, " [cut]");
    if (st->params && json_array_size(st->params) > 0) {
        sp_buf_printf(&line, "  params:");
        size_t i;
        json_t *v;
        json_array_foreach(st->params, i, v)
        {
            const char *s = json_string_value(v);
            sp_buf_printf(&line, " $%zu=", i + 1);
            if (s) {
                sp_buf_append_u8(&line, '\'');
                append_display(&line, (const uint8_t *)s, strlen(s));
                sp_buf_append_u8(&line, '\'');
            } else {
                sp_buf_printf(&line, "NULL");
            }
        }
    }
    sp_buf_printf(&line, "  ");
    if (st->copy_dir[0])
        sp_buf_printf(&line, "copy %s %llu bytes, ", st->copy_dir,
                      (unsigned long long)st->copy_bytes);
    if (!res->end_us) {
        sp_buf_printf(&line, "no result (the session ended first)");
    } else if (res->error) {
        sp_buf_printf(&line, "error %s ", res->sqlstate);
        if (res->error->n_fields > 1)
            append_display(&line, res->error->fields[1].data, res->error->fields[1].len);
    } else if (res->rows >= 0) {
        sp_buf_printf(&line, "rows=%lld", res->rows);
    } else {
        append_display(&line, (const uint8_t *)res->tag, strlen(res->tag));
    }
    sp_buf_append_u8(&line, '\n');
    fwrite(line.data, 1, line.len, t->out);
    sp_buf_free(&line);
}

static void print_json_line(timeline *t, json_t *obj)
{
    char *s = json_dumps(obj, JSON_COMPACT | JSON_REAL_PRECISION(9));
    if (s) {
        fprintf(t->out, "%s\n", s);
        free(s);
    }
    json_decref(obj);
}

static void print_json(timeline *t, const stmt *st, int64_t began, const result *res)
{
    char off[32], at[40];
    format_offset(began - t->start_us, off, sizeof(off));
    sp_format_time(began, at, sizeof(at));
    json_t *o = json_object();
    json_object_set_new(o, "kind", json_string("statement"));
    json_object_set_new(o, "offset", json_string(off));
    json_object_set_new(o, "time", json_string(at));
    json_object_set_new(o, "duration_ms",
                        res->end_us ? json_real((double)(res->end_us - began) / 1000.0)
                                    : json_null());
    json_object_set_new(o, "protocol", json_string(st->extended ? "extended" : "simple"));
    if (st->name && st->name[0])
        json_object_set_new(o, "prepared", json_text((const uint8_t *)st->name, strlen(st->name)));
    json_object_set_new(o, "statement", json_text((const uint8_t *)st->sql, strlen(st->sql)));
    json_object_set_new(o, "statement_cut", json_boolean(st->cut));
    if (st->params)
        json_object_set_new(o, "params", json_incref(st->params));
    if (st->copy_dir[0]) {
        json_object_set_new(o, "copy", json_string(st->copy_dir));
        json_object_set_new(o, "copy_bytes", json_integer((json_int_t)st->copy_bytes));
    }
    if (!res->end_us) {
        json_object_set_new(o, "result", json_string("none"));
    } else if (res->error) {
        json_object_set_new(o, "result", json_string("error"));
        json_object_set_new(o, "sqlstate", json_string(res->sqlstate));
        const sp_rec_field *m = res->error->n_fields > 1 ? &res->error->fields[1] : NULL;
        json_object_set_new(o, "message", m ? json_text(m->data, m->len) : json_string(""));
    } else {
        json_object_set_new(o, "result", json_string("ok"));
        json_object_set_new(o, "tag", json_text((const uint8_t *)res->tag, strlen(res->tag)));
        json_object_set_new(o, "rows", res->rows >= 0 ? json_integer(res->rows) : json_null());
    }
    print_json_line(t, o);
}

/* The statement at the head of the queue got its result (or never will). */
static void finish_stmt(timeline *t, const result *res)
{
    stmt unknown = {.sql = "(statement not in the recording)"};
    const stmt *st = t->n_pending ? &t->pending[0] : &unknown;
    /* The server runs one statement at a time: the next began when the previous ended. */
    int64_t began = st->sent_us > t->last_end_us ? st->sent_us : t->last_end_us;
    if (!t->n_pending)
        began = res->end_us;
    result r = *res;
    if (r.rows < 0 && !r.error && st->rows_seen > 0)
        r.rows = (long long)st->rows_seen;
    bool shown = began >= t->from_us;
    if (shown && t->json)
        print_json(t, st, began, &r);
    else if (shown)
        print_text(t, st, began, &r);
    if (res->end_us)
        t->last_end_us = res->end_us;
    if (t->n_pending)
        pop_stmt(t);
}

static void print_note(timeline *t, const sp_rec_ev *ev)
{
    char off[32];
    if (ev->ts_us < t->from_us)
        return;
    format_offset(ev->ts_us - t->start_us, off, sizeof(off));
    const sp_rec_field *f = ev->n_fields ? &ev->fields[0] : NULL;
    if (t->json) {
        json_t *o = json_pack("{s:s, s:s}", "kind", "note", "offset", off);
        json_object_set_new(o, "note", f ? json_text(f->data, f->len) : json_string(""));
        print_json_line(t, o);
        return;
    }
    sp_buf line;
    sp_buf_init(&line, TEXT_LINE_MAX);
    sp_buf_printf(&line, "%s  note: ", off);
    if (f)
        append_display(&line, f->data, f->len);
    sp_buf_append_u8(&line, '\n');
    fwrite(line.data, 1, line.len, t->out);
    sp_buf_free(&line);
}

/* ---- events ---- */

static void on_parse(timeline *t, const sp_rec_ev *ev)
{
    char *name = field_dup(ev, 0);
    named *e = name ? named_put(&t->stmts, &t->n_stmts, name) : NULL;
    if (e) {
        e->sql = field_dup(ev, 1);
        e->cut = ev->flags & SP_REC_FLAG_TRUNCATED;
    }
    free(name);
}

static void on_bind(timeline *t, const sp_rec_ev *ev)
{
    char *portal = field_dup(ev, 0), *stmt_name = field_dup(ev, 1);
    named *ps = stmt_name ? named_find(t->stmts, t->n_stmts, stmt_name) : NULL;
    named *e = portal ? named_put(&t->portals, &t->n_portals, portal) : NULL;
    if (e) {
        e->sql = strdup(ps && ps->sql ? ps->sql : "(prepared before the recording started)");
        e->cut = ps && ps->cut;
        e->stmt_name = stmt_name;
        stmt_name = NULL;
        if (ev->n_fields > 3) {
            e->params = json_array();
            for (size_t i = 3; i < ev->n_fields; i++)
                json_array_append_new(e->params, json_text(ev->fields[i].data, ev->fields[i].len));
        }
    }
    free(portal);
    free(stmt_name);
}

static void on_execute(timeline *t, const sp_rec_ev *ev)
{
    char *portal = field_dup(ev, 0);
    named *p = portal ? named_find(t->portals, t->n_portals, portal) : NULL;
    stmt st = {.extended = true, .sent_us = ev->ts_us};
    st.sql = strdup(p && p->sql ? p->sql : "(portal bound before the recording started)");
    st.cut = p && p->cut;
    st.name = p && p->stmt_name ? strdup(p->stmt_name) : NULL;
    st.params = p && p->params ? json_incref(p->params) : NULL;
    push_stmt(t, &st);
    free(portal);
}

static void on_complete(timeline *t, const sp_rec_ev *ev)
{
    char *tag = field_dup(ev, 0);
    result res = {.end_us = ev->ts_us, .rows = field_num(ev, 1), .tag = tag ? tag : ""};
    finish_stmt(t, &res);
    free(tag);
}

static void on_error(timeline *t, const sp_rec_ev *ev)
{
    char *state = field_dup(ev, 0);
    result res = {.end_us = ev->ts_us, .rows = -1, .sqlstate = state ? state : "", .error = ev};
    finish_stmt(t, &res);
    free(state);
}

static void on_copy(timeline *t, const sp_rec_ev *ev)
{
    char *dir = field_dup(ev, 0);
    uint64_t bytes = (uint64_t)field_num(ev, 1);
    if (t->n_pending) {
        stmt *st = &t->pending[0];
        snprintf(st->copy_dir, sizeof(st->copy_dir), "%s",
                 dir && !strcmp(dir, "in") ? "in" : "out");
        st->copy_bytes += bytes;
    }
    free(dir);
}

static void on_event(timeline *t, const sp_rec_ev *ev)
{
    switch (ev->type) {
    case SP_EV_QUERY:
        if (ev->n_fields > 0)
            queue_simple_query(t, ev->fields[0].data, ev->fields[0].len,
                               ev->flags & SP_REC_FLAG_TRUNCATED, ev->ts_us);
        break;
    case SP_EV_PARSE:
        on_parse(t, ev);
        break;
    case SP_EV_BIND:
        on_bind(t, ev);
        break;
    case SP_EV_EXECUTE:
        on_execute(t, ev);
        break;
    case SP_EV_COMPLETE:
        on_complete(t, ev);
        break;
    case SP_EV_ERROR:
        on_error(t, ev);
        break;
    case SP_EV_COPY:
        on_copy(t, ev);
        break;
    case SP_EV_ROWS:
        if (t->n_pending)
            t->pending[0].rows_seen += (uint64_t)field_num(ev, 0);
        break;
    case SP_EV_READY:
        /* Statements still queued were skipped by the server after an error. */
        while (t->n_pending)
            pop_stmt(t);
        t->last_end_us = 0;
        break;
    case SP_EV_NOTE:
        print_note(t, ev);
        break;
    case SP_EV_SESSION_END:
        free(t->end_reason);
        t->end_reason = field_dup(ev, 0);
        break;
    default:
        break; /* startup parameters and notices are not statements */
    }
}

/* ---- header and footer ---- */

static void print_header(timeline *t, const sp_rec_header *h)
{
    char started[40];
    sp_format_time(h->started_at, started, sizeof(started));
    if (t->json) {
        print_json_line(t, json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s}", "kind",
                                     "session", "session_id", h->session_id, "identity",
                                     h->identity, "target", h->target, "database", h->database,
                                     "db_user", h->db_user, "client_addr", h->client_addr,
                                     "started", started, "protocol", h->kind));
        return;
    }
    sp_buf line;
    sp_buf_init(&line, TEXT_LINE_MAX);
    sp_buf_printf(&line, "session ");
    append_display(&line, (const uint8_t *)h->session_id, strlen(h->session_id));
    sp_buf_printf(&line, "  identity ");
    append_display(&line, (const uint8_t *)h->identity, strlen(h->identity));
    sp_buf_printf(&line, "  target ");
    append_display(&line, (const uint8_t *)h->target, strlen(h->target));
    sp_buf_printf(&line, "/");
    append_display(&line, (const uint8_t *)h->database, strlen(h->database));
    sp_buf_printf(&line, " as ");
    append_display(&line, (const uint8_t *)h->db_user, strlen(h->db_user));
    sp_buf_printf(&line, "  from ");
    append_display(&line, (const uint8_t *)h->client_addr, strlen(h->client_addr));
    sp_buf_printf(&line, "  started %s\n", started);
    fwrite(line.data, 1, line.len, t->out);
    sp_buf_free(&line);
}

static void print_footer(timeline *t, sp_rec_reader *rd)
{
    const char *trailer_reason = NULL;
    enum sp_rec_state state = sp_rec_reader_state(rd, &trailer_reason);
    const char *reason = trailer_reason  ? trailer_reason
                         : t->end_reason ? t->end_reason
                                         : "unknown (the recording has no end)";
    const char *names[] = {
        [SP_REC_SEALED] = "sealed", [SP_REC_UNSEALED] = "unsealed", [SP_REC_DAMAGED] = "damaged"};
    const char *note = sp_rec_reader_note(rd);
    if (t->json) {
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "kind", "end", "reason", "", "recording",
                              names[state], "detail", note);
        json_object_set_new(o, "reason", json_text((const uint8_t *)reason, strlen(reason)));
        print_json_line(t, o);
        return;
    }
    sp_buf line;
    sp_buf_init(&line, TEXT_LINE_MAX);
    sp_buf_printf(&line, "end: ");
    append_display(&line, (const uint8_t *)reason, strlen(reason));
    if (state == SP_REC_DAMAGED)
        sp_buf_printf(&line, "\nrecording: damaged at %s\n", note);
    else
        sp_buf_printf(&line, "\nrecording: %s (%s)\n", names[state], note);
    fwrite(line.data, 1, line.len, t->out);
    sp_buf_free(&line);
}

static void timeline_free(timeline *t)
{
    while (t->n_pending)
        pop_stmt(t);
    free(t->pending);
    for (size_t i = 0; i < t->n_stmts; i++)
        named_clear(&t->stmts[i]);
    for (size_t i = 0; i < t->n_portals; i++)
        named_clear(&t->portals[i]);
    free(t->stmts);
    free(t->portals);
    free(t->end_reason);
}

int sp_replay_timeline(const char *path, FILE *out, bool json)
{
    return sp_replay_timeline_from(path, out, json, 0);
}

int sp_replay_timeline_from(const char *path, FILE *out, bool json, int64_t from_us)
{
    char err[512];
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    if (!rd) {
        fprintf(stderr, "replay: %s\n", err);
        return 1;
    }
    const sp_rec_header *h = sp_rec_reader_header(rd);
    timeline t = {.out = out, .json = json, .start_us = h->started_at};
    if (from_us > 0) {
        t.from_us = h->started_at + from_us;
        if (sp_rec_reader_seek(rd, t.from_us, err, sizeof(err)) < 0) {
            fprintf(stderr, "replay: %s: %s\n", path, err);
            sp_rec_reader_close(rd);
            return 1;
        }
    }
    print_header(&t, h);
    sp_rec_ev ev;
    int rc;
    bool first = true;
    while ((rc = sp_rec_reader_next(rd, &ev, err, sizeof(err))) == 1) {
        if (first && t.start_us == 0)
            t.start_us = ev.ts_us;
        first = false;
        on_event(&t, &ev);
    }
    /* Statements the session never answered: shown, since an auditor needs to see them. */
    while (t.n_pending) {
        result none = {.rows = -1};
        finish_stmt(&t, &none);
    }
    print_footer(&t, rd);
    if (rc < 0)
        fprintf(stderr, "replay: %s: %s\n", path, err);
    timeline_free(&t);
    sp_rec_reader_close(rd);
    return rc < 0 ? 1 : 0;
}
