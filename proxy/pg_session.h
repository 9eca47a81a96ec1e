/* The PostgreSQL engine: one client connection from the first byte to the sealed recording.
 *
 * startup (SSLRequest -> TLS, GSSENCRequest -> 'N', CancelRequest) -> SCRAM authentication
 * with a token -> policy decision, recording and lease (thread pool) -> upstream connection
 * as the ephemeral role over TLS -> relay with both directions scanned for the recording ->
 * end with a reason. The state and the end reason change in one place each. */
#ifndef SP_PROXY_PG_SESSION_H
#define SP_PROXY_PG_SESSION_H

#include <uv.h>

#include "proxy/worker.h"

/* A new client connection on the worker's PostgreSQL listener. */
void pg_session_accept(sp_worker *w, uv_stream_t *listener);
/* End a live session on this worker (kill, revocation, reload); false if not here. */
bool pg_session_end_by_id(sp_worker *w, const char *session_id, const char *reason);
/* End every session (drain deadline). */
void pg_session_end_all(sp_worker *w, const char *reason);
/* Flush recordings (worker timer). */
void pg_session_flush_all(sp_worker *w);

#endif
