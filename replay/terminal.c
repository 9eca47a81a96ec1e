/* Replaying an SSH session: its terminal output, raw, at the recorded pace; or at once, as a
 * transcript, with the other events (exec, pty, input, exit, SFTP...) as lines an auditor can
 * read.
 *
 * Played at its pace the output is written raw, as asciinema does: replaying means
 * reproducing what the user's terminal showed. The footer that follows it (how the session
 * ended, whether the recording is sealed) is preceded, on a terminal, by a reset of what the
 * output may have left set (attributes such as concealed text, the alternate screen, a scroll
 * region), so the session cannot hide it.
 *
 * The transcript (--no-wait) interleaves output and event lines, so the output must not be
 * able to move the cursor over an event line, erase one, or hide the lines after it: its
 * control characters are escaped as event lines' are, keeping only line breaks and tabs.
 * Event lines carry text the user or the target chose (a command line, a file name, typed
 * keys) where the auditor expects plain text, so theirs are always escaped. The CLI is no
 * event loop, so pauses are plain monotonic sleeps. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "replay/replay.h"

#define LINE_MAX_BYTES (1024 * 1024)
#define INPUT_LINE_MAX 512 /* typed bytes shown on one input line before it is cut */

/* ---- which channels are terminals ---- */

bool sp_replay_channel(const sp_rec_ev *ev, uint32_t *channel)
{
    if (ev->type < SP_EV_CHANNEL_OPEN || ev->n_fields == 0 || ev->fields[0].len == 0 ||
        ev->fields[0].len > 10)
        return false;
    const uint8_t *p = ev->fields[0].data;
    uint64_t v = 0;
    for (size_t i = 0; i < ev->fields[0].len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    if (v > UINT32_MAX)
        return false;
    *channel = (uint32_t)v;
    return true;
}

static bool field_is(const sp_rec_ev *ev, size_t i, const char *text)
{
    return i < ev->n_fields && ev->fields[i].len == strlen(text) &&
           memcmp(ev->fields[i].data, text, ev->fields[i].len) == 0;
}

static void quiet_remove(sp_term_channels *c, uint32_t channel)
{
    for (size_t i = 0; i < c->n_quiet; i++) {
        if (c->quiet[i] == channel) {
            c->quiet[i] = c->quiet[--c->n_quiet];
            return;
        }
    }
}

void sp_term_channels_track(sp_term_channels *c, const sp_rec_ev *ev)
{
    uint32_t channel;
    if (!sp_replay_channel(ev, &channel))
        return;
    bool quiet = ev->type == SP_EV_SUBSYSTEM || ev->type == SP_EV_FORWARD ||
                 (ev->type == SP_EV_CHANNEL_OPEN && !field_is(ev, 1, "session"));
    if (ev->type == SP_EV_CHANNEL_CLOSE || ev->type == SP_EV_CHANNEL_OPEN)
        quiet_remove(c, channel);
    if (!quiet || !sp_term_channels_is_terminal(c, ev))
        return;
    if (c->n_quiet == SP_TERM_QUIET_MAX) /* forget the oldest: shown rather than lost */
        memmove(c->quiet, c->quiet + 1, --c->n_quiet * sizeof(c->quiet[0]));
    c->quiet[c->n_quiet++] = channel;
}

bool sp_term_channels_is_terminal(const sp_term_channels *c, const sp_rec_ev *ev)
{
    uint32_t channel;
    if (!sp_replay_channel(ev, &channel))
        return false;
    for (size_t i = 0; i < c->n_quiet; i++)
        if (c->quiet[i] == channel)
            return false;
    return true;
}

/* ---- timing ---- */

void sp_term_schedule_init(sp_term_schedule *s, int64_t start_ts_us, double speed,
                           double idle_limit_s)
{
    *s = (sp_term_schedule){
        .speed = speed > 0 ? speed : 1.0, .idle_limit_s = idle_limit_s, .last_ts_us = start_ts_us};
}

int64_t sp_term_schedule_next(sp_term_schedule *s, int64_t ts_us)
{
    int64_t gap = ts_us - s->last_ts_us;
    s->last_ts_us = ts_us;
    if (gap <= 0)
        return s->play_us;
    double pause = (double)gap;
    if (s->idle_limit_s > 0 && pause > s->idle_limit_s * 1e6)
        pause = s->idle_limit_s * 1e6;
    s->play_us += (int64_t)(pause / s->speed);
    return s->play_us;
}

static void sleep_until(const struct timespec *t0, int64_t offset_us)
{
    struct timespec at = *t0;
    at.tv_sec += (time_t)(offset_us / 1000000);
    at.tv_nsec += (long)(offset_us % 1000000) * 1000;
    if (at.tv_nsec >= 1000000000L) {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR) {
    }
}

/* ---- text for people ---- */

static bool bidi_control(const uint8_t *p, int len)
{
    /* U+202A..U+202E and U+2066..U+2069 reorder the text around them. */
    if (len != 3 || p[0] != 0xE2)
        return false;
    return (p[1] == 0x80 && p[2] >= 0xAA && p[2] <= 0xAE) ||
           (p[1] == 0x81 && p[2] >= 0xA6 && p[2] <= 0xA9);
}

/* Appends p as one line of plain text: printable UTF-8 as is; backslash, control characters
 * (C0, DEL, C1), bidi controls and invalid bytes as backslash escapes. */
static void append_escaped(sp_buf *b, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        int len = sp_replay_utf8_at(p + i, n - i);
        const char *named = c == '\\'   ? "\\\\"
                            : c == '\r' ? "\\r"
                            : c == '\n' ? "\\n"
                            : c == '\t' ? "\\t"
                            : c == 0x1B ? "\\e"
                                        : NULL;
        bool c1 = len == 2 && c == 0xC2 && p[i + 1] < 0xA0;
        if (named) {
            sp_buf_printf(b, "%s", named);
            i++;
        } else if (len <= 0 || c < 0x20 || c == 0x7F) {
            sp_buf_printf(b, "\\x%02x", c);
            i++;
        } else if (c1) {
            sp_buf_printf(b, "\\xc2\\x%02x", p[i + 1]);
            i += 2;
        } else if (bidi_control(p + i, len)) {
            unsigned cp = (unsigned)(p[i] & 0x0F) << 12 | (unsigned)(p[i + 1] & 0x3F) << 6 |
                          (p[i + 2] & 0x3F);
            sp_buf_printf(b, "\\u%04x", cp);
            i += 3;
        } else {
            sp_buf_append(b, p + i, (size_t)len);
            i += (size_t)len;
        }
    }
}

/* Appends terminal output as transcript text: as append_escaped, but a line break (LF, or
 * CR LF) and a tab stay what they are. */
static void append_transcript(sp_buf *b, const uint8_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\n' && p[i] != '\t')
            continue;
        size_t end = i > start && p[i] == '\n' && p[i - 1] == '\r' ? i - 1 : i;
        append_escaped(b, p + start, end - start);
        sp_buf_append_u8(b, p[i]);
        start = i + 1;
    }
    append_escaped(b, p + start, n - start);
}

/* How many bytes at the end of p to hold back for the next output event: a CR that may be
 * the first half of CR LF, or the start of a UTF-8 character the next event completes. */
static size_t transcript_tail(const uint8_t *p, size_t n)
{
    if (n > 0 && p[n - 1] == '\r')
        return 1;
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        uint8_t c = p[n - back];
        /* an ASCII byte or a lead byte: the last character starts here */
        if (c < 0x80 || c >= 0xC0)
            return c >= 0xC0 && sp_replay_utf8_at(p + n - back, back) < 0 ? back : 0;
    }
    return 0;
}

static void append_field(sp_buf *b, const sp_rec_ev *ev, size_t i)
{
    if (i < ev->n_fields)
        append_escaped(b, ev->fields[i].data, ev->fields[i].len);
}

static void append_text(sp_buf *b, const char *s)
{
    append_escaped(b, (const uint8_t *)s, strlen(s));
}

static void format_offset(int64_t us, char *out, size_t outlen)
{
    if (us < 0)
        us = 0;
    long long ms = us / 1000;
    snprintf(out, outlen, "%02lld:%02lld:%02lld.%03lld", ms / 3600000, ms / 60000 % 60,
             ms / 1000 % 60, ms % 1000);
}

/* ---- the player ---- */

typedef struct player {
    FILE *out;
    FILE *events;
    const sp_term_opts *opts;
    int64_t start_us;
    sp_term_schedule clock;
    struct timespec t0;
    sp_term_channels chans;
    bool mid_line; /* the last output byte shown was not a newline */
    /* --no-wait: output bytes held back until the next output event of the same channel */
    uint8_t held[4];
    size_t n_held;
    uint32_t held_channel;
    char *end_reason;
    /* Typed keys arrive one per event; they are gathered into one line per Enter. */
    sp_buf input;
    uint32_t input_channel;
    int64_t input_ts;
} player;

static void write_transcript(player *p, const uint8_t *d, size_t n)
{
    if (n == 0)
        return;
    sp_buf text;
    sp_buf_init(&text, 0);
    append_transcript(&text, d, n);
    fwrite(text.data, 1, text.len, p->out);
    p->mid_line = text.len > 0 && text.data[text.len - 1] != '\n';
    sp_buf_free(&text);
}

/* Shows the bytes held back, escaped: what follows is not their channel's next output. */
static void release_held(player *p)
{
    size_t n = p->n_held;
    p->n_held = 0;
    write_transcript(p, p->held, n);
}

/* Starts an event line "[00:00:03.120 ch0 exec] " on its own line. */
static void line_begin(player *p, sp_buf *line, int64_t ts, const uint32_t *channel,
                       const char *label)
{
    release_held(p);
    fflush(p->out);
    if (p->mid_line)
        sp_buf_append_u8(line, '\n');
    p->mid_line = false;
    char off[32];
    format_offset(ts - p->start_us, off, sizeof(off));
    if (channel)
        sp_buf_printf(line, "[%s ch%u %s]", off, *channel, label);
    else
        sp_buf_printf(line, "[%s %s]", off, label);
}

static void line_end(player *p, sp_buf *line, const sp_rec_ev *ev)
{
    if (ev && (ev->flags & SP_REC_FLAG_TRUNCATED))
        sp_buf_printf(line, " [cut]");
    sp_buf_append_u8(line, '\n');
    fwrite(line->data, 1, line->len, p->events);
    fflush(p->events);
    sp_buf_free(line);
}

static void flush_input(player *p)
{
    if (!p->input.len)
        return;
    sp_buf line;
    sp_buf_init(&line, LINE_MAX_BYTES);
    line_begin(p, &line, p->input_ts, &p->input_channel, "input");
    sp_buf_append_u8(&line, ' ');
    append_escaped(&line, p->input.data, p->input.len);
    line_end(p, &line, NULL);
    sp_buf_reset(&p->input);
}

static void on_input(player *p, const sp_rec_ev *ev)
{
    uint32_t channel;
    if (ev->n_fields < 2 || !sp_replay_channel(ev, &channel))
        return;
    if (p->input.len && channel != p->input_channel)
        flush_input(p);
    const uint8_t *d = ev->fields[1].data;
    size_t n = ev->fields[1].len;
    for (size_t i = 0; i < n; i++) {
        if (!p->input.len) {
            p->input_channel = channel;
            p->input_ts = ev->ts_us;
        }
        sp_buf_append_u8(&p->input, d[i]);
        if (d[i] == '\r' || d[i] == '\n' || p->input.len >= INPUT_LINE_MAX)
            flush_input(p);
    }
}

static void on_output(player *p, const sp_rec_ev *ev)
{
    if (ev->n_fields < 2 || ev->fields[1].len == 0 || !sp_term_channels_is_terminal(&p->chans, ev))
        return;
    if (!p->opts->no_wait) {
        int64_t at = sp_term_schedule_next(&p->clock, ev->ts_us);
        fflush(p->out);
        sleep_until(&p->t0, at);
    }
    const uint8_t *d = ev->fields[1].data;
    size_t n = ev->fields[1].len;
    if (!p->opts->no_wait) {
        fwrite(d, 1, n, p->out);
        p->mid_line = d[n - 1] != '\n';
        return;
    }
    uint32_t channel = 0;
    sp_replay_channel(ev, &channel);
    if (p->n_held && channel != p->held_channel)
        release_held(p);
    /* What the last event of this channel held back comes first: the two may complete a
     * character or a CR LF between them. */
    sp_buf data;
    sp_buf_init(&data, 0);
    if (sp_buf_append(&data, p->held, p->n_held) < 0 || sp_buf_append(&data, d, n) < 0) {
        sp_buf_free(&data); /* no memory to join them: shown apart, each escaped */
        release_held(p);
        write_transcript(p, d, n);
        return;
    }
    size_t tail = transcript_tail(data.data, data.len);
    write_transcript(p, data.data, data.len - tail);
    memcpy(p->held, data.data + data.len - tail, tail);
    p->n_held = tail;
    p->held_channel = channel;
    sp_buf_free(&data);
}

static const char *event_label(enum sp_rec_type type)
{
    switch (type) {
    case SP_EV_CHANNEL_OPEN:
        return "open";
    case SP_EV_CHANNEL_CLOSE:
        return "close";
    default:
        return sp_replay_type_name(type);
    }
}

/* The detail after the label, per event type (fields as in recorder/rec.h). */
static void append_detail(sp_buf *b, const sp_rec_ev *ev)
{
    switch (ev->type) {
    case SP_EV_PTY:
        append_field(b, ev, 1);
        sp_buf_printf(b, " ");
        append_field(b, ev, 2);
        sp_buf_printf(b, "x");
        append_field(b, ev, 3);
        break;
    case SP_EV_ENV:
        append_field(b, ev, 1);
        sp_buf_printf(b, "=");
        append_field(b, ev, 2);
        break;
    case SP_EV_RESIZE:
        append_field(b, ev, 1);
        sp_buf_printf(b, "x");
        append_field(b, ev, 2);
        break;
    case SP_EV_EXIT:
    case SP_EV_FORWARD:
        append_field(b, ev, 1);
        sp_buf_printf(b, " ");
        append_field(b, ev, 2);
        break;
    case SP_EV_CHANNEL_CLOSE:
        append_field(b, ev, 1);
        sp_buf_printf(b, " bytes in, ");
        append_field(b, ev, 2);
        sp_buf_printf(b, " bytes out");
        break;
    case SP_EV_SFTP:
        append_field(b, ev, 1);
        sp_buf_printf(b, " ");
        append_field(b, ev, 2);
        if (ev->n_fields > 3 && ev->fields[3].len) {
            sp_buf_printf(b, " -> ");
            append_field(b, ev, 3);
        }
        if (ev->n_fields > 4 && !field_is(ev, 4, "0") && ev->fields[4].len) {
            sp_buf_printf(b, " (");
            append_field(b, ev, 4);
            sp_buf_printf(b, " bytes)");
        }
        break;
    default: /* one field after the channel, or all of them for a type with no channel */
        for (size_t i = ev->type >= SP_EV_CHANNEL_OPEN ? 1 : 0; i < ev->n_fields; i++) {
            if (b->len && b->data[b->len - 1] != ' ')
                sp_buf_append_u8(b, ' ');
            append_field(b, ev, i);
        }
    }
}

static void on_other(player *p, const sp_rec_ev *ev)
{
    if (ev->type == SP_EV_SESSION_END) {
        free(p->end_reason);
        p->end_reason = ev->n_fields ? strndup(ev->fields[0].data, ev->fields[0].len) : NULL;
        return;
    }
    if (!p->opts->no_wait)
        return;
    flush_input(p);
    sp_buf line, detail;
    sp_buf_init(&line, LINE_MAX_BYTES);
    sp_buf_init(&detail, LINE_MAX_BYTES);
    uint32_t channel;
    bool has_channel = sp_replay_channel(ev, &channel);
    line_begin(p, &line, ev->ts_us, has_channel ? &channel : NULL, event_label(ev->type));
    append_detail(&detail, ev);
    if (detail.len) {
        sp_buf_append_u8(&line, ' ');
        sp_buf_append(&line, detail.data, detail.len);
    }
    sp_buf_free(&detail);
    line_end(p, &line, ev);
}

static void on_event(player *p, const sp_rec_ev *ev)
{
    switch (ev->type) {
    case SP_EV_TERM_OUT:
    case SP_EV_TERM_ERR:
        on_output(p, ev);
        break;
    case SP_EV_TERM_IN:
        if (p->opts->no_wait)
            on_input(p, ev);
        break;
    default:
        on_other(p, ev);
    }
    sp_term_channels_track(&p->chans, ev);
}

static void print_header(player *p, const sp_rec_header *h)
{
    char started[40];
    sp_format_time(h->started_at, started, sizeof(started));
    sp_buf line;
    sp_buf_init(&line, LINE_MAX_BYTES);
    sp_buf_printf(&line, "session ");
    append_text(&line, h->session_id);
    sp_buf_printf(&line, "  identity ");
    append_text(&line, h->identity);
    sp_buf_printf(&line, "  target ");
    append_text(&line, h->target);
    if (h->db_user[0]) {
        sp_buf_printf(&line, " as ");
        append_text(&line, h->db_user);
    }
    sp_buf_printf(&line, "  from ");
    append_text(&line, h->client_addr);
    sp_buf_printf(&line, "  started %s\n", started);
    fwrite(line.data, 1, line.len, p->events);
    fflush(p->events);
    sp_buf_free(&line);
}

static void print_footer(player *p, sp_rec_reader *rd)
{
    flush_input(p);
    const char *trailer_reason = NULL;
    enum sp_rec_state state = sp_rec_reader_state(rd, &trailer_reason);
    const char *reason = trailer_reason  ? trailer_reason
                         : p->end_reason ? p->end_reason
                                         : "unknown (the recording has no end)";
    const char *names[] = {
        [SP_REC_SEALED] = "sealed", [SP_REC_UNSEALED] = "unsealed", [SP_REC_DAMAGED] = "damaged"};
    const char *note = sp_rec_reader_note(rd);
    release_held(p);
    sp_buf line;
    sp_buf_init(&line, LINE_MAX_BYTES);
    fflush(p->out);
    if (p->mid_line)
        sp_buf_append_u8(&line, '\n');
    /* Raw output may have left the terminal on the alternate screen, in a scroll region,
     * concealing text or with the cursor hidden: undo that so the footer shows. The scroll
     * region reset homes the cursor, hence the save and restore around it; the attributes
     * are reset after the restore, which brings back those saved. */
    if (!p->opts->no_wait && isatty(fileno(p->events)))
        sp_buf_printf(&line, "%s", "\033[?1049l\0337\033[r\0338\033[0m\033(B\033[?25h");
    sp_buf_printf(&line, "end: ");
    append_text(&line, reason);
    if (state == SP_REC_DAMAGED)
        sp_buf_printf(&line, "\nrecording: damaged at %s\n", note);
    else
        sp_buf_printf(&line, "\nrecording: %s (%s)\n", names[state], note);
    fwrite(line.data, 1, line.len, p->events);
    fflush(p->events);
    sp_buf_free(&line);
}

int sp_replay_terminal(const char *path, FILE *out, FILE *events, const sp_term_opts *opts)
{
    char err[512];
    sp_rec_reader *rd = sp_rec_reader_open(path, err, sizeof(err));
    if (!rd) {
        fprintf(stderr, "replay: %s\n", err);
        return 1;
    }
    const sp_rec_header *h = sp_rec_reader_header(rd);
    player p = {.out = out, .events = events, .opts = opts, .start_us = h->started_at};
    sp_buf_init(&p.input, 0);
    clock_gettime(CLOCK_MONOTONIC, &p.t0);
    print_header(&p, h);
    sp_rec_ev ev;
    int rc;
    bool first = true;
    while ((rc = sp_rec_reader_next(rd, &ev, err, sizeof(err))) == 1) {
        if (first) {
            p.start_us = p.start_us ? p.start_us : ev.ts_us;
            sp_term_schedule_init(&p.clock, p.start_us, opts->speed, opts->idle_limit_s);
        }
        first = false;
        on_event(&p, &ev);
    }
    print_footer(&p, rd);
    if (rc < 0)
        fprintf(stderr, "replay: %s: %s\n", path, err);
    free(p.end_reason);
    sp_buf_free(&p.input);
    sp_rec_reader_close(rd);
    return rc < 0 ? 1 : 0;
}

int sp_replay_recording_kind(const char *path, char *kind, size_t kindlen, char *err, size_t errlen)
{
    sp_rec_reader *rd = sp_rec_reader_open(path, err, errlen);
    if (!rd)
        return -1;
    snprintf(kind, kindlen, "%s", sp_rec_reader_header(rd)->kind);
    sp_rec_reader_close(rd);
    return 0;
}
