/* Sealing recordings a crashed gateway left open. Run once at `serve` start, after the store
 * has marked the crashed gateway's sessions ended ('gateway-crashed'), before accepting. */
#ifndef SP_RECORDER_SEAL_H
#define SP_RECORDER_SEAL_H

#include <stddef.h>
#include <stdint.h>

#include "auth/store.h"

/* Seal one unsealed v2 recording as it is: the chunks are not touched (a torn partial chunk
 * after the last whole one is cut off), a signed trailer with the given end reason is
 * appended. Refuses (-1, err) a file whose chain is broken, that holds fewer chunks than
 * min_chunks (the sessions index count: it was cut, and must be reported, not sealed over), or
 * that is already sealed. */
int sp_rec_seal_file(const char *path, const char *reason, int64_t min_chunks, char *err,
                     size_t errlen);

/* For every session the store marks ended 'gateway-crashed' whose recording has no trailer:
 * seal it and emit one audit event per repaired recording. Returns how many were sealed; a
 * recording that cannot be sealed is logged (warning and audit event) and left as it is. */
int sp_rec_seal_orphans(sp_store *store);

#endif
