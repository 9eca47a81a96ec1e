/* The SSH engine: one client connection from the first byte to the sealed recording.
 *
 * key exchange (libssh server, non-blocking, socket on uv_poll) -> banner -> client
 * authentication (OpenSSH user certificate from the gateway's user CA, or a token as password
 * or keyboard-interactive; username LOGIN+TARGET) -> policy, recording, sessions index (thread
 * pool) -> upstream libssh client: host key pinned by [target] host_key, a fresh Ed25519 key
 * with a certificate minted by the target CA -> relay of channels with end-to-end flow
 * control (SSH windows), recorded -> end with a reason. */
#ifndef SP_PROXY_SSH_SESSION_H
#define SP_PROXY_SSH_SESSION_H

#include <stdbool.h>
#include <uv.h>

#include "common/config.h"
#include "proxy/worker.h"

/* Per-worker setup: host key, CAs. Called before the loop runs. */
int ssh_worker_init(sp_worker *w, const sp_config *cfg, char *err, size_t errlen);
void ssh_worker_free(sp_worker *w);
/* A new client connection on the worker's SSH listener. */
void ssh_session_accept(sp_worker *w, uv_stream_t *listener);
/* End a live SSH session on this worker (kill, revocation, reload); false if not here. */
bool ssh_session_end_by_id(sp_worker *w, const char *session_id, const char *reason);
/* End every SSH session (drain deadline, stop). */
void ssh_session_end_all(sp_worker *w, const char *reason);
/* Flush recordings (worker timer). */
void ssh_session_flush_all(sp_worker *w);

#endif
