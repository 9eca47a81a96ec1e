/* Process-wide state of `sallyport serve`, shared by the workers.
 *
 * Everything here is either immutable after start, or guarded by its own mutex and touched
 * only off the data path (session start and end, cancel, kill, reload). */
#ifndef SP_PROXY_GATEWAY_H
#define SP_PROXY_GATEWAY_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "auth/lease.h"
#include "auth/store.h"
#include "common/config.h"
#include "proxy/worker.h"

/* TLS contexts for one configuration snapshot (rebuilt on reload). */
typedef struct sp_tls_set {
    SSL_CTX *server;    /* client-facing */
    uint8_t cbind[64];  /* tls-server-end-point of the gateway certificate */
    int cbind_len;      /* 0: channel binding not possible with this certificate */
    SSL_CTX **upstream; /* per target, index as cfg->targets; NULL for disable */
    size_t n_upstream;
    int refs;
} sp_tls_set;

/* A live session as the rest of the process sees it (kill, reload, cancel). */
typedef struct sp_live {
    struct sp_live *next;
    char id[40];
    char identity[SP_NAME_MAX];
    char target[SP_NAME_MAX];
    char database[SP_NAME_MAX];
    sp_worker *worker;
    /* Cancel: the key the client holds, and where to send the real one. */
    uint32_t gw_pid, gw_key;
    uint32_t be_pid, be_key;
    struct sockaddr_storage upstream_addr;
    bool has_backend;
} sp_live;

typedef struct sp_gateway {
    pthread_mutex_t mu; /* guards cfg, tls, live */
    sp_config *cfg;
    sp_tls_set *tls;
    sp_live *live;
    int n_live;

    sp_store *store;
    sp_lease_mgr *leases;
    uint8_t secret[64];
    size_t secret_len;
    int pid;

    sp_worker *workers;
    int n_workers;
    atomic_bool draining;
    atomic_int n_clients; /* client connections open now, any state (max_client_conn) */
    /* Set by the watcher while the store does not answer: new sessions are refused at once
     * instead of each waiting out the store's lock timeout. */
    atomic_bool store_down;
} sp_gateway;

sp_config *sp_gateway_config(sp_gateway *g); /* a reference */
sp_tls_set *sp_gateway_tls(sp_gateway *g);   /* a reference */
void sp_tls_set_unref(sp_gateway *g, sp_tls_set *t);
void sp_tls_set_free(sp_tls_set *t);
/* Which worker holds a live session; NULL if none. */
sp_worker *sp_gateway_find_session(sp_gateway *g, const char *session_id);

/* Register a session that passed authentication; fills gw_pid/gw_key. -1 if over
 * max_client_conn. */
int sp_gateway_live_add(sp_gateway *g, sp_live *l, int max);
void sp_gateway_live_remove(sp_gateway *g, sp_live *l);
/* Record the upstream backend's cancel key for a live session. */
void sp_gateway_live_backend(sp_gateway *g, sp_live *l, uint32_t pid, uint32_t key,
                             const struct sockaddr *addr);
/* Look up a CancelRequest; copies out the upstream key and address. */
bool sp_gateway_cancel_lookup(sp_gateway *g, uint32_t pid, uint32_t key, uint32_t *be_pid,
                              uint32_t *be_key, struct sockaddr_storage *addr, char *session_id);

/* Record a live session's chunk count in the sessions index, on loop's thread pool, so
 * verify can tell a recording cut short from one the gateway stopped writing. Best effort:
 * a failure is logged, and the next update (or the end of the session) catches up. */
void sp_gateway_queue_progress(sp_gateway *g, uv_loop_t *loop, const char *session_id,
                               int64_t chunks);
/* How often a live session queues that update. */
#define SP_PROGRESS_INTERVAL_US (10 * 1000000LL)

#endif
