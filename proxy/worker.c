#include "proxy/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/log.h"
#include "proxy/gateway.h"
#include "proxy/pg_session.h"
#include "proxy/ssh_session.h"
#include "proxy/worker_internal.h"

sp_config *sp_worker_config(sp_worker *w)
{
    return sp_gateway_config(w->gw);
}

void sp_worker_post(sp_worker *w, sp_worker_msg *m)
{
    pthread_mutex_lock(&w->inbox_mu);
    m->next = NULL;
    sp_worker_msg **p = &w->inbox;
    while (*p)
        p = &(*p)->next;
    *p = m;
    pthread_mutex_unlock(&w->inbox_mu);
    uv_async_send(&w->inbox_async);
}

static void stop_accepting(sp_worker *w)
{
    if (w->pg_listening) {
        w->pg_listening = false;
        uv_close((uv_handle_t *)&w->pg_listener, NULL);
    }
    if (w->ssh_listening) {
        w->ssh_listening = false;
        uv_close((uv_handle_t *)&w->ssh_listener, NULL);
    }
}

static void on_inbox(uv_async_t *a)
{
    sp_worker *w = a->data;
    pthread_mutex_lock(&w->inbox_mu);
    sp_worker_msg *m = w->inbox;
    w->inbox = NULL;
    pthread_mutex_unlock(&w->inbox_mu);
    while (m) {
        sp_worker_msg *next = m->next;
        switch (m->kind) {
        case SP_WMSG_END_SESSION:
            if (!pg_session_end_by_id(w, m->session_id, m->reason))
                ssh_session_end_by_id(w, m->session_id, m->reason);
            break;
        case SP_WMSG_STOP_ACCEPTING:
            stop_accepting(w);
            break;
        case SP_WMSG_DRAIN_DEADLINE:
            pg_session_end_all(w, m->reason);
            ssh_session_end_all(w, m->reason);
            break;
        case SP_WMSG_STOP:
            stop_accepting(w);
            pg_session_end_all(w, "gateway-shutdown");
            ssh_session_end_all(w, "gateway-shutdown");
            pg_session_flush_all(w);
            uv_close((uv_handle_t *)&w->flush_timer, NULL);
            uv_close((uv_handle_t *)&w->inbox_async, NULL);
            w->stopping = true;
            break;
        }
        free(m);
        m = next;
    }
}

static void on_flush(uv_timer_t *t)
{
    pg_session_flush_all(t->data);
    ssh_session_flush_all(t->data);
}

static void on_pg_connection(uv_stream_t *server, int status)
{
    sp_worker *w = server->data;
    if (status < 0) {
        sp_warn("worker %d: accept failed: %s", w->index, uv_strerror(status));
        return;
    }
    pg_session_accept(w, server);
}

static void on_ssh_connection(uv_stream_t *server, int status)
{
    sp_worker *w = server->data;
    if (status < 0) {
        sp_warn("worker %d: ssh accept failed: %s", w->index, uv_strerror(status));
        return;
    }
    ssh_session_accept(w, server);
}

/* libuv 1.44 has no SO_REUSEPORT flag: make the socket, set the option, hand it over. */
static int listen_reuseport(sp_worker *w, uv_tcp_t *h, const char *host, int port,
                            uv_connection_cb on_conn, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
        sl = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        sl = sizeof(struct sockaddr_in6);
    } else {
        snprintf(err, errlen, "listen address %s is not a numeric IPv4 or IPv6 address", host);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    uv_tcp_init(&w->loop, h);
    h->data = w;
    int rc = uv_tcp_open(h, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)h, 1024, on_conn);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
        uv_close((uv_handle_t *)h, NULL);
        return -1;
    }
    return 0;
}

int sp_worker_init(sp_worker *w, sp_gateway *g, int index, const sp_config *cfg, char *err,
                   size_t errlen)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->gw = g;
    if (uv_loop_init(&w->loop) < 0) {
        snprintf(err, errlen, "cannot create event loop");
        return -1;
    }
    pthread_mutex_init(&w->inbox_mu, NULL);
    uv_async_init(&w->loop, &w->inbox_async, on_inbox);
    w->inbox_async.data = w;
    uv_timer_init(&w->loop, &w->flush_timer);
    w->flush_timer.data = w;
    uint64_t every = (uint64_t)(cfg->flush_interval / 1000);
    uv_timer_start(&w->flush_timer, on_flush, every ? every : 1, every ? every : 1);
    w->zctx = ZSTD_createCCtx();
    if (!w->zctx) {
        snprintf(err, errlen, "cannot create a zstd context");
        return -1;
    }
    if (cfg->pg_listen_port) {
        if (listen_reuseport(w, &w->pg_listener, cfg->pg_listen_host, cfg->pg_listen_port,
                             on_pg_connection, err, errlen) < 0)
            return -1;
        w->pg_listening = true;
    }
    if (cfg->ssh_listen_port) {
        if (ssh_worker_init(w, cfg, err, errlen) < 0)
            return -1;
        if (listen_reuseport(w, &w->ssh_listener, cfg->ssh_listen_host, cfg->ssh_listen_port,
                             on_ssh_connection, err, errlen) < 0)
            return -1;
        w->ssh_listening = true;
    }
    return 0;
}

static void *worker_main(void *arg)
{
    sp_worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

int sp_worker_start(sp_worker *w)
{
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void sp_worker_join(sp_worker *w)
{
    pthread_join(w->thread, NULL);
    uv_loop_close(&w->loop);
    ssh_worker_free(w);
    ZSTD_freeCCtx(w->zctx);
    pthread_mutex_destroy(&w->inbox_mu);
}
