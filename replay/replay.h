/* Reading recordings back for people: the sessions list and the query timeline. */
#ifndef SP_REPLAY_REPLAY_H
#define SP_REPLAY_REPLAY_H

#include <stdbool.h>
#include <stdio.h>

/* Print the PostgreSQL query timeline of a recording: one line per statement with the offset
 * from session start, duration, statement text, and rows or error; then the end reason and
 * whether the recording is sealed. Returns 0, or 1 with a message on stderr if the file
 * cannot be read (damage after some events still prints what was read, then says so). */
int sp_replay_timeline(const char *path, FILE *out, bool json);

#endif
