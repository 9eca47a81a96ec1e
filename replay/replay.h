/* Reading recordings back for people: the sessions list and the query timeline. */
#ifndef SP_REPLAY_REPLAY_H
#define SP_REPLAY_REPLAY_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

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

#endif
