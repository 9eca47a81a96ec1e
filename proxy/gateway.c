#include "proxy/gateway.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

sp_config *sp_gateway_config(sp_gateway *g)
{
    pthread_mutex_lock(&g->mu);
    sp_config *c = g->cfg;
    sp_config_ref(c);
    pthread_mutex_unlock(&g->mu);
    return c;
}

sp_tls_set *sp_gateway_tls(sp_gateway *g)
{
    pthread_mutex_lock(&g->mu);
    sp_tls_set *t = g->tls;
    t->refs++;
    pthread_mutex_unlock(&g->mu);
    return t;
}

void sp_tls_set_free(sp_tls_set *t)
{
    SSL_CTX_free(t->server);
    for (size_t i = 0; i < t->n_upstream; i++)
        SSL_CTX_free(t->upstream[i]);
    free(t->upstream);
    free(t);
}

void sp_tls_set_unref(sp_gateway *g, sp_tls_set *t)
{
    pthread_mutex_lock(&g->mu);
    bool last = --t->refs == 0;
    pthread_mutex_unlock(&g->mu);
    if (last)
        sp_tls_set_free(t);
}

static bool key_in_use(sp_gateway *g, uint32_t pid, uint32_t key)
{
    for (sp_live *l = g->live; l; l = l->next)
        if (l->gw_pid == pid && l->gw_key == key)
            return true;
    return false;
}

int sp_gateway_live_add(sp_gateway *g, sp_live *l, int max)
{
    pthread_mutex_lock(&g->mu);
    if (g->n_live >= max) {
        pthread_mutex_unlock(&g->mu);
        return -1;
    }
    do {
        uint32_t r[2] = {0, 0};
        sp_random_bytes(r, sizeof(r));
        /* A positive "process id", as clients expect. */
        l->gw_pid = (r[0] & 0x3fffffff) + 1;
        l->gw_key = r[1];
    } while (key_in_use(g, l->gw_pid, l->gw_key));
    l->next = g->live;
    g->live = l;
    g->n_live++;
    pthread_mutex_unlock(&g->mu);
    return 0;
}

void sp_gateway_live_remove(sp_gateway *g, sp_live *l)
{
    pthread_mutex_lock(&g->mu);
    for (sp_live **p = &g->live; *p; p = &(*p)->next) {
        if (*p == l) {
            *p = l->next;
            g->n_live--;
            break;
        }
    }
    pthread_mutex_unlock(&g->mu);
}

void sp_gateway_live_backend(sp_gateway *g, sp_live *l, uint32_t pid, uint32_t key,
                             const struct sockaddr *addr)
{
    pthread_mutex_lock(&g->mu);
    l->be_pid = pid;
    l->be_key = key;
    memcpy(&l->upstream_addr, addr,
           addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    l->has_backend = true;
    pthread_mutex_unlock(&g->mu);
}

bool sp_gateway_cancel_lookup(sp_gateway *g, uint32_t pid, uint32_t key, uint32_t *be_pid,
                              uint32_t *be_key, struct sockaddr_storage *addr, char *session_id)
{
    bool found = false;
    pthread_mutex_lock(&g->mu);
    for (sp_live *l = g->live; l; l = l->next) {
        if (l->gw_pid == pid && sp_memeq_ct(&l->gw_key, &key, sizeof(key)) && l->has_backend) {
            *be_pid = l->be_pid;
            *be_key = l->be_key;
            *addr = l->upstream_addr;
            memcpy(session_id, l->id, sizeof(l->id));
            found = true;
            break;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return found;
}

sp_worker *sp_gateway_find_session(sp_gateway *g, const char *session_id)
{
    sp_worker *w = NULL;
    pthread_mutex_lock(&g->mu);
    for (sp_live *l = g->live; l; l = l->next) {
        if (!strcmp(l->id, session_id)) {
            w = l->worker;
            break;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return w;
}

typedef struct progress_job {
    uv_work_t req;
    sp_store *store;
    char id[40];
    int64_t chunks;
} progress_job;

static void progress_work(uv_work_t *req)
{
    progress_job *j = req->data;
    char err[256];
    if (sp_store_session_progress(j->store, j->id, j->chunks, err, sizeof(err)) < 0)
        sp_warn("session %s: sessions index not updated: %s", j->id, err);
}

static void progress_after(uv_work_t *req, int status)
{
    (void)status;
    free(req->data);
}

void sp_gateway_queue_progress(sp_gateway *g, uv_loop_t *loop, const char *session_id,
                               int64_t chunks)
{
    progress_job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    j->req.data = j;
    j->store = g->store;
    snprintf(j->id, sizeof(j->id), "%s", session_id);
    j->chunks = chunks;
    if (uv_queue_work(loop, &j->req, progress_work, progress_after) < 0)
        free(j);
}
