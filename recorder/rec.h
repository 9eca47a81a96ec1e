/* Session recordings: writer and reader. The format is specified in recorder/FORMAT.md.
 *
 * A recording is one file: a header (format version, session metadata), then chunks. The
 * writer keeps a small buffer of raw events per session; sp_rec_flush() turns it into one
 * chunk: an independent zstd frame made with the caller's (the worker's) ZSTD_CCtx, so an
 * idle session costs only its buffer. The engine calls flush at least every flush_interval
 * and when sp_rec_wants_flush() says the buffer is large; flush write(2)s the chunk (page
 * cache; a killed process loses nothing written) and fsync runs at most every 5 s on the
 * libuv thread pool. sp_rec_close() writes the trailer (end reason, counts) and fsyncs.
 *
 * Writer functions are called on the session's loop thread only. A write failure is
 * reported (-1, sp_rec_error()) and the recording stays failed; the engine applies the
 * role's recording policy. */
#ifndef SP_RECORDER_REC_H
#define SP_RECORDER_REC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <zstd.h>

#include "common/buf.h"

#define SP_REC_MAGIC "SPREC1\n" /* see FORMAT.md */
#define SP_REC_MAX_FIELDS 16
#define SP_REC_BUFFER_FLUSH (64 * 1024) /* raw bytes that trigger an early flush */
#define SP_REC_MAX_CHUNK_RAW (4 * 1024 * 1024)
/* sp_rec_event_whole keeps fields up to this size whatever max_text says */
#define SP_REC_WHOLE_MAX (1024 * 1024)
#define REC_CHECK_REASON_MAX 1025

/* Event types. Numbers are part of the file format: never reuse one. */
enum sp_rec_type {
    SP_EV_SESSION_START = 1, /* fields: key, value, key, value... (startup parameters) */
    SP_EV_QUERY = 2,         /* sql */
    SP_EV_PARSE = 3,         /* statement name, sql */
    SP_EV_BIND = 4,          /* portal, statement, param count (text), then params if recorded */
    SP_EV_EXECUTE = 5,       /* portal, max rows (text) */
    SP_EV_COMPLETE = 6,      /* command tag, rows (text, "-1" none) */
    SP_EV_ERROR = 7,         /* sqlstate, message */
    SP_EV_COPY = 8,          /* direction "in"|"out", bytes (text) */
    SP_EV_NOTICE = 9,        /* severity, message */
    SP_EV_READY = 10,        /* transaction status "I"|"T"|"E" */
    SP_EV_SESSION_END = 11,  /* reason */
    SP_EV_ROWS = 12,         /* DataRow count since the last event (text) */
    SP_EV_NOTE = 13,         /* free text from the gateway (e.g. "recording gap") */
    /* SSH sessions. The first field of each is the channel number (text). */
    SP_EV_CHANNEL_OPEN = 20,  /* channel, type ("session", "direct-tcpip", ...) */
    SP_EV_PTY = 21,           /* channel, TERM, cols, rows */
    SP_EV_SHELL = 22,         /* channel */
    SP_EV_EXEC = 23,          /* channel, command line */
    SP_EV_SUBSYSTEM = 24,     /* channel, name ("sftp") */
    SP_EV_ENV = 25,           /* channel, name, value */
    SP_EV_TERM_OUT = 26,      /* channel, bytes the target sent (stdout) */
    SP_EV_TERM_ERR = 27,      /* channel, bytes the target sent on stderr */
    SP_EV_TERM_IN = 28,       /* channel, bytes the user typed (only with record_input) */
    SP_EV_RESIZE = 29,        /* channel, cols, rows */
    SP_EV_SIGNAL = 30,        /* channel, signal name */
    SP_EV_EXIT = 31,          /* channel, "status" | "signal", value */
    SP_EV_CHANNEL_CLOSE = 32, /* channel, bytes in, bytes out */
    SP_EV_SFTP = 33,          /* channel, op, path, second path or "", bytes (text) */
    SP_EV_FORWARD = 34,       /* channel, "local" | "agent", destination host:port */
};

/* Event flags. */
#define SP_REC_FLAG_TRUNCATED 0x01      /* a field was cut to max_text */
#define SP_REC_FLAG_FIELDS_DROPPED 0x02 /* fields past SP_REC_MAX_FIELDS were dropped */

typedef struct sp_rec_field {
    const void *data;
    size_t len;
} sp_rec_field;

typedef struct sp_rec_meta {
    const char *session_id;
    const char *kind; /* "postgres" */
    const char *identity;
    const char *target;
    const char *database;
    const char *db_user; /* the ephemeral upstream role */
    const char *client_addr;
    int64_t started_at; /* us */
} sp_rec_meta;

typedef struct sp_rec sp_rec;

/* Creates recordings_dir/YYYY/MM/DD/SESSION.spr (0600, dirs 0700) and writes the header.
 * Blocking (open/mkdir): call it from the thread pool. Returns NULL with err filled. */
sp_rec *sp_rec_create(const char *recordings_dir, const sp_rec_meta *meta, size_t max_text,
                      char *err, size_t errlen);
const char *sp_rec_path(const sp_rec *r);
/* Append an event to the buffer. Each field is cut to max_text bytes (the cut is marked in the
 * event flags). -1 if the recording has failed. */
int sp_rec_event(sp_rec *r, enum sp_rec_type type, int64_t ts_us, const sp_rec_field *fields,
                 size_t n);
/* Convenience: fields given as NUL-terminated strings, NULL-terminated list. */
int sp_rec_eventv(sp_rec *r, enum sp_rec_type type, int64_t ts_us, ...);
/* As sp_rec_event, but fields are cut only past SP_REC_WHOLE_MAX (or max_text, if larger): for
 * what an auditor must see whole, such as an SSH exec command line (at most one SSH packet). */
int sp_rec_event_whole(sp_rec *r, enum sp_rec_type type, int64_t ts_us, const sp_rec_field *fields,
                       size_t n);
bool sp_rec_wants_flush(const sp_rec *r);
/* Compress the buffered events into one chunk and write it. No-op when empty. loop is used
 * for the periodic fsync on the thread pool. */
int sp_rec_flush(sp_rec *r, ZSTD_CCtx *cctx, uv_loop_t *loop);
uint64_t sp_rec_chunks(const sp_rec *r);
bool sp_rec_failed(const sp_rec *r);
const char *sp_rec_error(const sp_rec *r);
/* Flush, write the trailer with the end reason, fsync (on the thread pool) and free. done
 * (may be NULL) runs on the loop when the file is durable. */
void sp_rec_close(sp_rec *r, ZSTD_CCtx *cctx, uv_loop_t *loop, const char *reason,
                  void (*done)(void *arg, int status), void *arg);
/* Same, blocking, for use off-loop (e.g. sealing orphans at startup, tests). */
int sp_rec_close_sync(sp_rec *r, ZSTD_CCtx *cctx, const char *reason);

/* ---- reader ---- */
typedef struct sp_rec_reader sp_rec_reader;

typedef struct sp_rec_header {
    int version;
    char session_id[40];
    char kind[16];
    char identity[64];
    char target[64];
    char database[64];
    char db_user[64];
    char client_addr[64];
    int64_t started_at;
} sp_rec_header;

typedef struct sp_rec_ev {
    enum sp_rec_type type;
    int64_t ts_us;
    uint8_t flags; /* SP_REC_FLAG_* */
    size_t n_fields;
    sp_rec_field fields[SP_REC_MAX_FIELDS]; /* valid until the next sp_rec_reader_next */
} sp_rec_ev;

enum sp_rec_state { SP_REC_SEALED, SP_REC_UNSEALED, SP_REC_DAMAGED };

sp_rec_reader *sp_rec_reader_open(const char *path, char *err, size_t errlen);
/* Open from memory (fuzzing); the data must outlive the reader. */
sp_rec_reader *sp_rec_reader_open_mem(const uint8_t *data, size_t len, char *err, size_t errlen);
const sp_rec_header *sp_rec_reader_header(const sp_rec_reader *r);
/* 1 = event read, 0 = end of recording, -1 = damaged from here on (err says where/why). */
int sp_rec_reader_next(sp_rec_reader *r, sp_rec_ev *ev, char *err, size_t errlen);
/* After reading to the end: sealed (trailer present), unsealed (ended without trailer at a
 * chunk boundary or with a cut last chunk), or damaged. end_reason from the trailer. */
enum sp_rec_state sp_rec_reader_state(const sp_rec_reader *r, const char **end_reason);
/* How reading ended, in words for people, to follow the state: sealed "12 chunks, 340 events";
 * unsealed "after 11 whole chunks; the last chunk is cut short"; damaged "chunk 3 at offset
 * 81234: checksum mismatch". */
const char *sp_rec_reader_note(const sp_rec_reader *r);
/* Whole chunks read so far. */
uint64_t sp_rec_reader_chunks(const sp_rec_reader *r);
void sp_rec_reader_close(sp_rec_reader *r);
/* When damaged: the number of the first chunk found bad. */
uint64_t sp_rec_reader_bad_chunk(const sp_rec_reader *r);
/* Before the first sp_rec_reader_next: go to the last chunk whose first event is at or before
 * ts_us, by the trailer's seek index (sealed v2), else by walking the chunk headers (which are
 * in clear) without decrypting or decompressing. Events before ts_us in that chunk are still
 * returned. -1 (err) if the index points at no chunk. */
int sp_rec_reader_seek(sp_rec_reader *r, int64_t ts_us, char *err, size_t errlen);

/* ---- integrity (sallyport verify) ---- */
typedef struct sp_rec_check {
    enum sp_rec_state state;
    int version;          /* 1 never verifies ok: not encrypted, not signed */
    bool content_checked; /* every chunk was decrypted and authenticated (master key) */
    int signature;        /* sealed v2: 1 good, 0 bad, -1 not checked (no public key) */
    uint64_t chunks;      /* whole authentic chunks (damaged: those before the bad one) */
    uint64_t events;
    uint64_t bad_chunk; /* damaged: the first bad chunk */
    sp_rec_header header;
    char end_reason[REC_CHECK_REASON_MAX];
    char note[256]; /* as sp_rec_reader_note */
} sp_rec_check;
/* Walk the whole file: the hash chain and the signed trailer, which need only the public key;
 * with content, also decrypt and decode every chunk (needs the master key). Returns -1 (err)
 * only when the file cannot be opened as a recording at all. */
int sp_rec_check_file(const char *path, bool content, sp_rec_check *out, char *err, size_t errlen);

#endif
