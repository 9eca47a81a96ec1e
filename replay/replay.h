/* Reading recordings back for people: the query timeline of PostgreSQL sessions, the terminal
 * of SSH sessions, and exports (asciicast v2, JSON lines). */
#ifndef SP_REPLAY_REPLAY_H
#define SP_REPLAY_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "recorder/rec.h"

/* Print the PostgreSQL query timeline of a recording: one line per statement with the offset
 * from session start, duration, statement text, and rows or error; then the end reason and
 * whether the recording is sealed. Returns 0, or 1 with a message on stderr if the file
 * cannot be read (damage after some events still prints what was read, then says so). */
int sp_replay_timeline(const char *path, FILE *out, bool json);
/* The same from offset from_us after the session start: seeks by the recording's index
 * (without decompressing what comes before) and prints statements sent from then on. */
int sp_replay_timeline_from(const char *path, FILE *out, bool json, int64_t from_us);

/* ---- sallyport verify ---- */
enum sp_verify_status {
    SP_VERIFY_SEALED_OK,       /* trailer signed by the gateway key, every chunk in the chain */
    SP_VERIFY_UNSEALED_INTACT, /* no trailer (live, or the gateway stopped); chain intact */
    SP_VERIFY_MISSING,         /* in the sessions index, not on disk */
    SP_VERIFY_TAMPERED,        /* a chunk, the chain, the trailer or the length is wrong */
    SP_VERIFY_UNSIGNED,        /* format 1: neither encrypted nor signed; never ok */
};

typedef struct sp_verify_result {
    enum sp_verify_status status;
    uint64_t chunks;
    bool has_bad_chunk;
    uint64_t bad_chunk; /* tampered: the first bad chunk */
    bool content_checked;
    char end_reason[128];
    char detail[600]; /* why, in words for an auditor */
} sp_verify_result;

/* What the sessions index says about a recording. */
typedef struct sp_verify_expect {
    int64_t chunk_count; /* latest count the gateway stored (at least every 10 s) */
    bool ended;
    const char *end_reason; /* the index's end reason, "" while live */
} sp_verify_expect;

/* Check the recording at path against the sessions index. Needs the public key loaded
 * (sp_rec_keys_init_readonly); the content is also checked when the master key is loaded. */
void sp_verify_recording(const char *path, const sp_verify_expect *expect, sp_verify_result *out);
const char *sp_verify_status_name(enum sp_verify_status s);

/* ---- SSH terminal sessions (replay/terminal.c) ---- */

/* The kind in a recording's header ("postgres", "ssh"): 0, or -1 with err filled. */
int sp_replay_recording_kind(const char *path, char *kind, size_t kindlen, char *err,
                             size_t errlen);

typedef struct sp_term_opts {
    double speed;        /* > 0; 1 plays at the recorded pace, 2 twice as fast */
    double idle_limit_s; /* no pause longer than this (recorded time); <= 0: no cap */
    bool no_wait;        /* print at once, with the other events as lines for people */
} sp_term_opts;

/* When each event is shown: pauses are the recorded gaps, each capped at idle_limit_s, then
 * divided by speed (as asciinema does). A clock that stepped back counts as no pause. */
typedef struct sp_term_schedule {
    double speed;
    double idle_limit_s;
    int64_t last_ts_us; /* recorded time of the previous event */
    int64_t play_us;    /* when the previous event is shown, from the start of playback */
} sp_term_schedule;

void sp_term_schedule_init(sp_term_schedule *s, int64_t start_ts_us, double speed,
                           double idle_limit_s);
/* Microseconds from the start of playback at which the event recorded at ts_us is shown. */
int64_t sp_term_schedule_next(sp_term_schedule *s, int64_t ts_us);

/* Which channels are terminals, followed event by event: the output of a subsystem (sftp) or
 * forwarding channel is protocol data that no terminal showed, so it is neither played nor
 * exported. A channel number is freed for reuse by its CHANNEL_CLOSE. */
#define SP_TERM_QUIET_MAX 64
typedef struct sp_term_channels {
    uint32_t quiet[SP_TERM_QUIET_MAX];
    size_t n_quiet;
} sp_term_channels;

void sp_term_channels_track(sp_term_channels *c, const sp_rec_ev *ev);
bool sp_term_channels_is_terminal(const sp_term_channels *c, const sp_rec_ev *ev);
/* The channel number (first field) of an SSH event; false when it has none or it is not a
 * number. */
bool sp_replay_channel(const sp_rec_ev *ev, uint32_t *channel);

/* Plays the terminal output of an SSH recording (stdout and stderr of its shell and exec
 * channels) raw to out, at the recorded pace unless opts->no_wait. Lines for people go to
 * events: the session at the start; with no_wait each other event (channel open, pty, exec,
 * input, resize, exit, SFTP, forward...) at its place between the output, its control
 * characters escaped; the end reason and sealed state at the end. out and events may be the
 * same stream. Returns 0, or 1 with a message on stderr (damage: what was read is shown). */
int sp_replay_terminal(const char *path, FILE *out, FILE *events, const sp_term_opts *opts);

/* ---- export (replay/export.c) ---- */

enum sp_export_format { SP_EXPORT_ASCIICAST, SP_EXPORT_JSON };

/* Writes a recording as asciicast v2 (SSH recordings only) or as JSON lines (any recording:
 * a header line, one line per event with every field, a trailer line). Invalid UTF-8 is
 * shown, never dropped: asciicast replaces each invalid byte with U+FFFD, as a terminal
 * shows it; JSON writes it as \xNN, doubles the backslashes of that field and lists the
 * field's index in "escaped". Returns 0, or 1 with a message on stderr. */
int sp_export(const char *path, enum sp_export_format format, FILE *out);

/* The name of an event type in exports and event lines ("exec", "term_out"); "unknown" for a
 * type this version does not know. */
const char *sp_replay_type_name(enum sp_rec_type type);

/* UTF-8 at p (n > 0 bytes): the length of the valid sequence that starts there (1-4); 0 when
 * no valid sequence starts there; -1 when the n bytes are a valid start cut short. */
int sp_replay_utf8_at(const uint8_t *p, size_t n);

#endif
