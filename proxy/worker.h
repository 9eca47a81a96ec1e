/* A worker: one thread, one libuv loop, its listeners and the sessions accepted on them.
 * A session lives its whole life on one worker, so nothing on the data path takes a lock.
 * Other threads talk to a worker only through its inbox (sp_worker_post). */
#ifndef SP_PROXY_WORKER_H
#define SP_PROXY_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>
#include <zstd.h>

#include "common/config.h"

struct sp_gateway;
struct pg_session;
struct ssh_sess;
struct sp_ssh_ca;

#define SP_READ_BUF (64 * 1024)

typedef struct sp_worker_msg {
    struct sp_worker_msg *next;
    enum {
        SP_WMSG_END_SESSION,
        SP_WMSG_STOP_ACCEPTING,
        SP_WMSG_DRAIN_DEADLINE,
        SP_WMSG_STOP,
    } kind;
    char session_id[40];
    char reason[160];
} sp_worker_msg;

typedef struct sp_worker {
    int index;
    struct sp_gateway *gw;
    uv_loop_t loop;
    pthread_t thread;
    uv_tcp_t pg_listener;
    bool pg_listening;
    uv_tcp_t ssh_listener;
    bool ssh_listening;
    void *ssh_bind;                  /* libssh ssh_bind holding the gateway host key */
    struct sp_ssh_ca *ssh_target_ca; /* mints the per-session certificates for targets */
    uint8_t *ssh_user_ca_blob;       /* the user CA public key client certificates must name */
    size_t ssh_user_ca_len;
    uv_async_t inbox_async;
    pthread_mutex_t inbox_mu;
    sp_worker_msg *inbox;
    uv_timer_t flush_timer;
    ZSTD_CCtx *zctx;
    /* Shared by every connection of this worker: reads are consumed synchronously. */
    uint8_t read_buf[SP_READ_BUF];
    uint8_t plain_buf[SP_READ_BUF];
    struct pg_session *sessions; /* doubly linked list of live sessions */
    int n_sessions;
    struct ssh_sess *ssh_sessions; /* doubly linked list of live SSH sessions */
    int n_ssh_sessions;
    bool stopping;
} sp_worker;

/* Queue a message for the worker's loop (any thread). Takes ownership of m. */
void sp_worker_post(sp_worker *w, sp_worker_msg *m);
/* The configuration snapshot new sessions start under (a reference the caller must drop). */
sp_config *sp_worker_config(sp_worker *w);

#endif
