#include "proxy/server.h"

#include <malloc.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "auth/lease.h"
#include "auth/policy.h"
#include "auth/scram.h"
#include "auth/store.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/gateway.h"
#include "proxy/worker_internal.h"
#include "recorder/audit.h"
#include "recorder/keys.h"
#include "recorder/seal.h"

#define WATCH_MS 500
#define SWEEP_MS 2000
/* How long the watcher waits for the store's write lock before it counts as an outage. */
#define STORE_PROBE_WAIT_MS 1000

typedef struct server {
    sp_gateway gw;
    uv_loop_t *loop;
    uv_signal_t sig_hup, sig_term, sig_int;
    uv_timer_t watch_timer, sweep_timer, drain_timer;
    bool watch_busy, sweep_busy;
    bool drain_deadline_passed;
    bool finished;
    int exit_status;
    /* Store outage: since when (monotonic us; 0 = none), the last check that reached the
     * store, and whether live sessions were ended for this outage. */
    int64_t store_ok_mono;
    int64_t outage_since_mono;
    bool outage_grace_exceeded;
    /* The watcher's own connection to the store: session starts and index updates waiting
     * out a lock on the shared one must not delay noticing the outage. */
    sp_store *watch_store;
} server;

static void ssl_errors(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    snprintf(err, errlen, "%s: %s", what, e ? ERR_reason_error_string(e) : "unknown error");
    ERR_clear_error();
}

static SSL_CTX *server_ctx(const sp_config *cfg, uint8_t *cbind, int *cbind_len, char *err,
                           size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_errors(err, errlen, "cannot create TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* An idle session keeps no TLS record buffers (about 34 KiB per connection). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "cannot load tls_cert %s", cfg->tls_cert);
        ssl_errors(err, errlen, what);
        goto fail;
    }
    char kerr[256];
    char *pem = sp_read_file(cfg->tls_key, 1 << 20, true, NULL, kerr, sizeof(kerr));
    if (!pem) {
        snprintf(err, errlen, "tls_key: %s", kerr);
        goto fail;
    }
    OPENSSL_cleanse(pem, strlen(pem));
    free(pem);
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "tls_key %s does not load or does not match tls_cert",
                 cfg->tls_key);
        ssl_errors(err, errlen, what);
        goto fail;
    }
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    unsigned char *der = NULL;
    int derlen = i2d_X509(cert, &der);
    *cbind_len = derlen > 0 ? sp_scram_cert_endpoint_hash(der, (size_t)derlen, cbind) : -1;
    OPENSSL_free(der);
    if (*cbind_len <= 0) {
        *cbind_len = 0;
        sp_warn("tls_cert %s: channel binding (tls-server-end-point) is not defined for its "
                "signature algorithm; SCRAM-SHA-256-PLUS is not offered. Use an RSA or ECDSA "
                "certificate.",
                cfg->tls_cert);
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

static SSL_CTX *upstream_ctx(const sp_target *t, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ssl_errors(err, errlen, "cannot create TLS context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS); /* as for clients */
    if (t->upstream_cert) {
        /* With a client certificate, the target can admit the managed roles only from the
         * gateway: a leaked or self-changed role password alone does not get in. */
        char kerr[256];
        char *pem = sp_read_file(t->upstream_key, 1 << 20, true, NULL, kerr, sizeof(kerr));
        if (!pem) {
            snprintf(err, errlen, "[target %s] upstream_key: %s", t->name, kerr);
            SSL_CTX_free(ctx);
            return NULL;
        }
        OPENSSL_cleanse(pem, strlen(pem));
        free(pem);
        if (SSL_CTX_use_certificate_chain_file(ctx, t->upstream_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, t->upstream_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ctx) != 1) {
            char what[600];
            snprintf(what, sizeof(what),
                     "[target %s] upstream_cert %s and upstream_key do not load or match", t->name,
                     t->upstream_cert);
            ssl_errors(err, errlen, what);
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (t->upstream_tls == SP_UTLS_REQUIRE) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = t->upstream_ca ? SSL_CTX_load_verify_locations(ctx, t->upstream_ca, NULL)
                            : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char what[600];
        snprintf(what, sizeof(what), "[target %s] cannot load upstream_ca %s", t->name,
                 t->upstream_ca ? t->upstream_ca : "(system store)");
        ssl_errors(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static sp_tls_set *build_tls(const sp_config *cfg, char *err, size_t errlen)
{
    sp_tls_set *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->refs = 1;
    if (cfg->pg_listen_port) {
        t->server = server_ctx(cfg, t->cbind, &t->cbind_len, err, errlen);
        if (!t->server)
            goto fail;
    }
    t->n_upstream = cfg->n_targets;
    t->upstream = calloc(cfg->n_targets + 1, sizeof(SSL_CTX *));
    if (!t->upstream)
        goto fail;
    for (size_t i = 0; i < cfg->n_targets; i++) {
        if (cfg->targets[i].upstream_tls == SP_UTLS_DISABLE)
            continue;
        t->upstream[i] = upstream_ctx(&cfg->targets[i], err, errlen);
        if (!t->upstream[i])
            goto fail;
    }
    return t;
fail:
    sp_tls_set_free(t);
    return NULL;
}

static int load_secret(sp_gateway *g, const sp_config *cfg, char *err, size_t errlen)
{
    if (!cfg->gateway_secret_file) {
        snprintf(err, errlen,
                 "[sallyport] gateway_secret_file is required (32 random bytes, "
                 "mode 0600: head -c 32 /dev/urandom > secret)");
        return -1;
    }
    size_t len;
    char rerr[512];
    char *data = sp_read_file(cfg->gateway_secret_file, 4096, true, &len, rerr, sizeof(rerr));
    if (!data) {
        snprintf(err, errlen, "gateway_secret_file: %s", rerr);
        return -1;
    }
    if (len < 32) {
        snprintf(err, errlen, "gateway_secret_file %s holds %zu bytes; at least 32 are needed",
                 cfg->gateway_secret_file, len);
        free(data);
        return -1;
    }
    g->secret_len = len > sizeof(g->secret) ? sizeof(g->secret) : len;
    memcpy(g->secret, data, g->secret_len);
    OPENSSL_cleanse(data, len);
    free(data);
    return 0;
}

static int ensure_dirs(const sp_config *cfg, char *err, size_t errlen)
{
    const char *dirs[] = {cfg->recordings_dir, cfg->audit_dir};
    for (size_t i = 0; i < SP_ARRAY_LEN(dirs); i++) {
        if (sp_mkdirs(dirs[i], 0700) < 0) {
            snprintf(err, errlen, "cannot create directory %s: %m", dirs[i]);
            return -1;
        }
    }
    char *slash = strrchr(cfg->store_path, '/');
    if (slash && slash != cfg->store_path) {
        char dir[4096];
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - cfg->store_path), cfg->store_path);
        if (sp_mkdirs(dir, 0700) < 0) {
            snprintf(err, errlen, "cannot create directory %.900s: %m", dir);
            return -1;
        }
    }
    return 0;
}

/* ---- audit helpers for lifecycle events seen by the server ---- */

/* The gateway writes the signed checkpoints, and sends each to syslog. */
static int open_audit(const sp_config *cfg, char *err, size_t errlen)
{
    sp_audit_options opt = {
        .fsync_batch = cfg->audit_fsync == SP_AUDIT_FSYNC_BATCH,
        .batch_us = cfg->audit_batch,
        .checkpoint_interval_us = cfg->audit_checkpoint_interval,
        .signing_key_file = cfg->signing_key_file,
        .checkpoints_to_syslog = true,
    };
    return sp_audit_open(cfg->audit_dir, &opt, err, errlen);
}

static void audit_lease_drop(const char *identity, const char *target, const char *role_name,
                             const char *why, void *arg)
{
    (void)arg;
    json_t *ev = sp_audit_new(SP_AUDIT_ACCESS_REVOKE_PRIVILEGES, "lease-drop", true, "sallyport");
    json_object_set_new(ev, "user", sp_audit_user(identity, "unknown"));
    sp_audit_set_unmapped(ev, "target", json_string(target));
    sp_audit_set_unmapped(ev, "db_user", json_string(role_name));
    sp_audit_set_unmapped(ev, "reason", json_string(why));
    sp_audit_emit(ev);
    sp_info("lease %s for %s on %s dropped: %s", role_name, identity, target, why);
}

static void audit_orphan(const sp_session_row *row, void *arg)
{
    (void)arg;
    json_t *ev = sp_audit_new(SP_AUDIT_AUTH_LOGOFF, "session-end", true, "sallyport");
    json_object_set_new(ev, "user", sp_audit_user(row->identity, "unknown"));
    json_t *sess = json_object();
    json_object_set_new(sess, "uid", json_string(row->id));
    json_object_set_new(ev, "session", sess);
    sp_audit_set_unmapped(ev, "end_reason", json_string("gateway-crashed"));
    sp_audit_emit(ev);
    sp_warn("session %s of %s was left open by a gateway that stopped; marked gateway-crashed",
            row->id, row->identity);
}

/* ---- watcher: kills and revocations, within about a second ---- */

typedef struct end_item {
    struct end_item *next;
    char id[40];
    char reason[160];
} end_item;

typedef struct watch_job {
    uv_work_t req;
    server *srv;
    sp_config *cfg; /* set for a reload check */
    end_item *items;
    int64_t started_mono;
    char err[256];
    int status;
    char pending_err[256];
    int pending_status;
} watch_job;

static void collect_end(const char *session_id, const char *reason, void *arg)
{
    watch_job *j = arg;
    end_item *it = calloc(1, sizeof(*it));
    if (!it)
        return;
    snprintf(it->id, sizeof(it->id), "%s", session_id);
    snprintf(it->reason, sizeof(it->reason), "%s", reason);
    it->next = j->items;
    j->items = it;
}

static void watch_work(uv_work_t *req)
{
    watch_job *j = req->data;
    sp_gateway *g = &j->srv->gw;
    j->started_mono = sp_mono_us();
    sp_store *st = j->srv->watch_store;
    j->status =
        sp_store_sessions_to_end(st, g->pid, sp_now_us(), collect_end, j, j->err, sizeof(j->err));
    if (j->status == 0)
        j->status = sp_store_probe(st, STORE_PROBE_WAIT_MS, j->err, sizeof(j->err));
    if (j->status == 0)
        j->pending_status =
            sp_store_retry_pending(g->store, j->pending_err, sizeof(j->pending_err));
}

static void dispatch_ends(server *srv, end_item *items)
{
    while (items) {
        end_item *next = items->next;
        sp_worker *w = sp_gateway_find_session(&srv->gw, items->id);
        if (w) {
            sp_worker_msg *m = calloc(1, sizeof(*m));
            if (m) {
                m->kind = SP_WMSG_END_SESSION;
                snprintf(m->session_id, sizeof(m->session_id), "%s", items->id);
                snprintf(m->reason, sizeof(m->reason), "%s", items->reason);
                sp_worker_post(w, m);
            }
        }
        free(items);
        items = next;
    }
}

/* ---- store outage: refuse new sessions at once, end live ones after the grace ---- */

static void end_all_live(server *srv, const char *reason)
{
    end_item *items = NULL;
    pthread_mutex_lock(&srv->gw.mu);
    for (sp_live *l = srv->gw.live; l; l = l->next) {
        end_item *it = calloc(1, sizeof(*it));
        if (!it)
            break;
        snprintf(it->id, sizeof(it->id), "%s", l->id);
        snprintf(it->reason, sizeof(it->reason), "%s", reason);
        it->next = items;
        items = it;
    }
    pthread_mutex_unlock(&srv->gw.mu);
    dispatch_ends(srv, items);
}

static int live_count(server *srv)
{
    pthread_mutex_lock(&srv->gw.mu);
    int n = srv->gw.n_live;
    pthread_mutex_unlock(&srv->gw.mu);
    return n;
}

static void audit_store_outage(const char *code, bool success, const char *detail, int64_t grace_us,
                               int64_t lasted_us, int sessions)
{
    json_t *ev = sp_audit_new(SP_AUDIT_APP_STORE_OUTAGE, code, success, "sallyport");
    if (detail)
        json_object_set_new(ev, "status_detail", json_string(detail));
    sp_audit_set_unmapped(ev, "store_outage_grace_s", json_integer(grace_us / 1000000));
    sp_audit_set_unmapped(ev, "outage_ms", json_integer(lasted_us / 1000));
    sp_audit_set_unmapped(ev, "live_sessions", json_integer(sessions));
    sp_audit_emit(ev);
}

/* The grace runs from the start of the last check that reached the store: revocations made
 * after it are unseen, so no session outlives them by more than store_outage_grace. */
static void store_unreachable(server *srv, const char *why)
{
    sp_config *cfg = sp_gateway_config(&srv->gw);
    int64_t grace = cfg->store_outage_grace;
    sp_config_unref(cfg);
    int64_t now = sp_mono_us();
    int64_t lasted = now - srv->store_ok_mono;
    if (!srv->outage_since_mono) {
        srv->outage_since_mono = srv->store_ok_mono;
        atomic_store(&srv->gw.store_down, true);
        int live = live_count(srv);
        audit_store_outage("store-outage", false, why, grace, lasted, live);
        sp_error("store unavailable: %s. New sessions are refused; the %d live sessions end if "
                 "it lasts past store_outage_grace (%llds)",
                 why, live, (long long)(grace / 1000000));
    }
    if (lasted <= grace)
        return;
    if (!srv->outage_grace_exceeded) {
        srv->outage_grace_exceeded = true;
        int live = live_count(srv);
        audit_store_outage("store-outage-grace-exceeded", false, why, grace, lasted, live);
        sp_error("store unavailable for %llds, past store_outage_grace: ending the %d live "
                 "sessions (kills and revocations cannot be seen)",
                 (long long)(lasted / 1000000), live);
    }
    /* Every tick: a session that got in before the outage was noticed ends too. */
    end_all_live(srv, "store-unavailable");
}

static void store_reachable(server *srv, int64_t checked_mono)
{
    srv->store_ok_mono = checked_mono;
    if (!srv->outage_since_mono)
        return;
    sp_config *cfg = sp_gateway_config(&srv->gw);
    int64_t grace = cfg->store_outage_grace;
    sp_config_unref(cfg);
    int64_t lasted = sp_mono_us() - srv->outage_since_mono;
    audit_store_outage("store-outage-end", true,
                       srv->outage_grace_exceeded ? "live sessions were ended after the grace"
                                                  : "within the grace: no session was ended",
                       grace, lasted, live_count(srv));
    sp_info("store reachable again after %lld ms; new sessions are accepted again",
            (long long)(lasted / 1000));
    srv->outage_since_mono = 0;
    srv->outage_grace_exceeded = false;
    atomic_store(&srv->gw.store_down, false);
}

static void watch_after(uv_work_t *req, int status)
{
    watch_job *j = req->data;
    server *srv = j->srv;
    srv->watch_busy = false;
    if (status == 0 && j->status < 0)
        store_unreachable(srv, j->err);
    else if (status == 0)
        store_reachable(srv, j->started_mono);
    if (status == 0 && j->status == 0 && j->pending_status < 0)
        sp_warn("session ends kept during a store outage are not written yet: %s", j->pending_err);
    dispatch_ends(srv, j->items);
    free(j);
}

static void on_watch(uv_timer_t *t)
{
    server *srv = t->data;
    if (srv->watch_busy)
        return;
    watch_job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    j->req.data = j;
    j->srv = srv;
    srv->watch_busy = true;
    if (uv_queue_work(srv->loop, &j->req, watch_work, watch_after) < 0) {
        srv->watch_busy = false;
        free(j);
    }
}

/* ---- reload: sessions the new policy no longer allows end ---- */

typedef struct live_copy {
    struct live_copy *next;
    char id[40], identity[SP_NAME_MAX], target[SP_NAME_MAX], database[SP_NAME_MAX];
} live_copy;

typedef struct reload_job {
    uv_work_t req;
    server *srv;
    sp_config *cfg;
    live_copy *live;
    end_item *items;
} reload_job;

static void reload_work(uv_work_t *req)
{
    reload_job *j = req->data;
    sp_gateway *g = &j->srv->gw;
    for (live_copy *l = j->live; l; l = l->next) {
        sp_decision d;
        char err[256];
        if (sp_policy_decide(g->store, j->cfg, l->identity, l->target, l->database, sp_now_us(), &d,
                             err, sizeof(err)) < 0 ||
            d.allowed)
            continue;
        end_item *it = calloc(1, sizeof(*it));
        if (!it)
            continue;
        snprintf(it->id, sizeof(it->id), "%s", l->id);
        snprintf(it->reason, sizeof(it->reason), "policy-changed: %s", d.reason);
        it->next = j->items;
        j->items = it;
    }
}

static void reload_after(uv_work_t *req, int status)
{
    (void)status;
    reload_job *j = req->data;
    dispatch_ends(j->srv, j->items);
    while (j->live) {
        live_copy *n = j->live->next;
        free(j->live);
        j->live = n;
    }
    sp_config_unref(j->cfg);
    free(j);
}

static void reload(server *srv)
{
    sp_gateway *g = &srv->gw;
    char err[1024];
    sp_config *old = sp_gateway_config(g);
    sp_config *cfg = sp_config_load(old->path, err, sizeof(err));
    if (!cfg) {
        sp_error("reload refused, keeping the running configuration: %s", err);
        sp_config_unref(old);
        return;
    }
    sp_tls_set *tls = build_tls(cfg, err, sizeof(err));
    if (!tls) {
        sp_error("reload refused, keeping the running configuration: %s", err);
        sp_config_unref(cfg);
        sp_config_unref(old);
        return;
    }
    if (cfg->pg_listen_port != old->pg_listen_port ||
        (cfg->pg_listen_host && old->pg_listen_host &&
         strcmp(cfg->pg_listen_host, old->pg_listen_host)))
        sp_warn("reload: pg_listen changes take effect at the next restart");
    enum sp_log_level lvl;
    if (sp_log_parse_level(cfg->log_level, &lvl) == 0)
        sp_log_set_level(lvl);
    pthread_mutex_lock(&g->mu);
    sp_config *prev = g->cfg;
    sp_tls_set *prev_tls = g->tls;
    g->cfg = cfg;
    g->tls = tls;
    reload_job *j = calloc(1, sizeof(*j));
    if (j) {
        for (sp_live *l = g->live; l; l = l->next) {
            live_copy *c = calloc(1, sizeof(*c));
            if (!c)
                break;
            snprintf(c->id, sizeof(c->id), "%s", l->id);
            snprintf(c->identity, sizeof(c->identity), "%s", l->identity);
            snprintf(c->target, sizeof(c->target), "%s", l->target);
            snprintf(c->database, sizeof(c->database), "%s", l->database);
            c->next = j->live;
            j->live = c;
        }
    }
    pthread_mutex_unlock(&g->mu);
    sp_config_unref(prev);
    sp_tls_set_unref(g, prev_tls);
    sp_config_unref(old);
    json_t *ev = sp_audit_new(SP_AUDIT_APP_RELOAD, "config-reload", true, "sallyport");
    sp_audit_set_unmapped(ev, "config", json_string(cfg->path));
    sp_audit_emit(ev);
    sp_info("configuration reloaded from %s", cfg->path);
    if (j) {
        j->req.data = j;
        j->srv = srv;
        j->cfg = cfg;
        sp_config_ref(cfg);
        if (uv_queue_work(srv->loop, &j->req, reload_work, reload_after) < 0)
            reload_after(&j->req, 0);
    }
}

/* ---- lease sweep ---- */

typedef struct sweep_job {
    uv_work_t req;
    server *srv;
    sp_config *cfg;
    char err[256];
    int rc;
} sweep_job;

static void sweep_work(uv_work_t *req)
{
    sweep_job *j = req->data;
    j->rc = sp_lease_sweep(j->srv->gw.leases, j->cfg, sp_now_us(), false, audit_lease_drop, NULL,
                           j->err, sizeof(j->err));
    /* TLS handshakes and authorizations free tens of KiB each between long-lived session
     * allocations; glibc keeps those holes resident. Hand them back every sweep, here on the
     * thread pool rather than on a loop. */
    malloc_trim(0);
}

static void sweep_after(uv_work_t *req, int status)
{
    sweep_job *j = req->data;
    j->srv->sweep_busy = false;
    if (status == 0 && j->rc < 0)
        sp_warn("lease sweep: %s", j->err);
    sp_config_unref(j->cfg);
    free(j);
}

static void on_sweep(uv_timer_t *t)
{
    server *srv = t->data;
    if (srv->sweep_busy)
        return;
    sweep_job *j = calloc(1, sizeof(*j));
    if (!j)
        return;
    j->req.data = j;
    j->srv = srv;
    j->cfg = sp_gateway_config(&srv->gw);
    srv->sweep_busy = true;
    if (uv_queue_work(srv->loop, &j->req, sweep_work, sweep_after) < 0) {
        srv->sweep_busy = false;
        sp_config_unref(j->cfg);
        free(j);
    }
}

/* ---- drain ---- */

static void post_all(server *srv, int kind, const char *reason)
{
    for (int i = 0; i < srv->gw.n_workers; i++) {
        sp_worker_msg *m = calloc(1, sizeof(*m));
        if (!m)
            continue;
        m->kind = kind;
        snprintf(m->reason, sizeof(m->reason), "%s", reason);
        sp_worker_post(&srv->gw.workers[i], m);
    }
}

static void finish(server *srv)
{
    uv_close((uv_handle_t *)&srv->watch_timer, NULL);
    uv_close((uv_handle_t *)&srv->sweep_timer, NULL);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    uv_close((uv_handle_t *)&srv->sig_hup, NULL);
    uv_close((uv_handle_t *)&srv->sig_term, NULL);
    uv_close((uv_handle_t *)&srv->sig_int, NULL);
}

static void on_drain_tick(uv_timer_t *t)
{
    server *srv = t->data;
    pthread_mutex_lock(&srv->gw.mu);
    int live = srv->gw.n_live;
    pthread_mutex_unlock(&srv->gw.mu);
    if (!srv->finished && (live == 0 || srv->drain_deadline_passed)) {
        srv->finished = true;
        post_all(srv, SP_WMSG_STOP, "gateway-shutdown");
        finish(srv);
    }
}

static void on_drain_deadline(uv_timer_t *t)
{
    server *srv = t->data;
    srv->drain_deadline_passed = true;
    sp_info("drain deadline reached; ending the remaining sessions");
    post_all(srv, SP_WMSG_DRAIN_DEADLINE, "gateway-shutdown");
    uv_timer_start(t, on_drain_tick, 200, 200);
}

static void on_signal(uv_signal_t *h, int signum)
{
    server *srv = h->data;
    if (signum == SIGHUP) {
        reload(srv);
        return;
    }
    if (atomic_exchange(&srv->gw.draining, true)) {
        sp_info("second stop signal: ending sessions now");
        srv->drain_deadline_passed = true;
        post_all(srv, SP_WMSG_DRAIN_DEADLINE, "gateway-shutdown");
        return;
    }
    sp_config *cfg = sp_gateway_config(&srv->gw);
    sp_info("%s: draining: no new connections, live sessions may run %llds more",
            signum == SIGTERM ? "SIGTERM" : "SIGINT", (long long)(cfg->drain_timeout / 1000000));
    post_all(srv, SP_WMSG_STOP_ACCEPTING, "");
    uv_timer_start(&srv->drain_timer, on_drain_deadline, (uint64_t)(cfg->drain_timeout / 1000), 0);
    sp_config_unref(cfg);
    /* Polls the live count; the deadline timer takes over if sessions outlast it. */
    uv_timer_stop(&srv->watch_timer);
    uv_timer_start(&srv->watch_timer, on_drain_tick, 100, 100);
}

/* ---- start ---- */

/* Each session holds two sockets, and libuv, the store and the recordings a few more: a soft
 * limit of 1024 descriptors would cap the gateway at a few hundred sessions. */
static void raise_fd_limit(const sp_config *cfg)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    rlim_t need = (rlim_t)cfg->max_client_conn * 2 + 256;
    if (rl.rlim_cur < need)
        sp_warn("open-file limit %llu is below the %llu that max_client_conn = %d needs; raise "
                "it (LimitNOFILE= in the systemd unit, ulimit -n)",
                (unsigned long long)rl.rlim_cur, (unsigned long long)need, cfg->max_client_conn);
}

static int start(server *srv, const char *config_path)
{
    sp_gateway *g = &srv->gw;
    char err[1024];
    sp_config *cfg = sp_config_load(config_path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "sallyport: serve: %s\n", err);
        return 1;
    }
    enum sp_log_level lvl;
    if (sp_log_parse_level(cfg->log_level, &lvl) == 0)
        sp_log_set_level(lvl);
    raise_fd_limit(cfg);
    pthread_mutex_init(&g->mu, NULL);
    g->cfg = cfg;
    g->pid = (int)getpid();
    if (ensure_dirs(cfg, err, sizeof(err)) < 0 || load_secret(g, cfg, err, sizeof(err)) < 0 ||
        open_audit(cfg, err, sizeof(err)) < 0)
        goto fail;
    if (sp_store_open(cfg->store_path, &g->store, err, sizeof(err)) < 0 ||
        sp_store_open(cfg->store_path, &srv->watch_store, err, sizeof(err)) < 0)
        goto fail;
    if (sp_rec_keys_init(cfg, err, sizeof(err)) < 0)
        goto fail;
    g->leases = sp_lease_mgr_new(g->store);
    if (!g->leases) {
        snprintf(err, sizeof(err), "cannot set up the lease manager");
        goto fail;
    }
    g->tls = build_tls(cfg, err, sizeof(err));
    if (!g->tls)
        goto fail;

    /* A previous gateway may have died: its sessions are over and its leases unowned. */
    if (sp_store_sessions_close_orphans(g->store, g->pid, sp_now_us(), "gateway-crashed",
                                        audit_orphan, NULL, err, sizeof(err)) < 0)
        sp_warn("cannot close sessions left by a previous gateway: %s", err);
    sp_rec_seal_orphans(g->store);
    if (sp_lease_sweep(g->leases, cfg, sp_now_us(), true, audit_lease_drop, NULL, err,
                       sizeof(err)) < 0)
        sp_warn("start-up lease sweep incomplete: %s", err);

    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    g->n_workers = cfg->workers > 0 ? cfg->workers : (ncpu > 0 ? (int)ncpu : 1);
    g->workers = calloc((size_t)g->n_workers, sizeof(sp_worker));
    if (!g->workers) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    for (int i = 0; i < g->n_workers; i++) {
        if (sp_worker_init(&g->workers[i], g, i, cfg, err, sizeof(err)) < 0)
            goto fail;
    }
    for (int i = 0; i < g->n_workers; i++) {
        if (sp_worker_start(&g->workers[i]) < 0) {
            snprintf(err, sizeof(err), "cannot start worker thread %d", i);
            goto fail;
        }
    }
    json_t *ev = sp_audit_new(SP_AUDIT_APP_START, "gateway-start", true, "sallyport");
    sp_audit_set_unmapped(ev, "config", json_string(cfg->path));
    sp_audit_set_unmapped(ev, "pid", json_integer(g->pid));
    sp_audit_emit(ev);
    sp_info("sallyport serving: postgres on %s:%d, %d workers, pid %d",
            cfg->pg_listen_host ? cfg->pg_listen_host : "-", cfg->pg_listen_port, g->n_workers,
            g->pid);
    return 0;
fail:
    sp_error("cannot start: %s", err);
    fprintf(stderr, "sallyport: serve: %s\n", err);
    return 1;
}

int sp_serve(const char *config_path)
{
    static server srv;
    memset(&srv, 0, sizeof(srv));
    signal(SIGPIPE, SIG_IGN);
    /* Thread-pool jobs include blocking admin connections; give them room. */
    setenv("UV_THREADPOOL_SIZE", "16", 0);
    /* Signal handlers before the listeners: a SIGHUP or SIGTERM that arrives as soon as the
     * port accepts must wait for the loop, not kill the process with the default action. */
    srv.loop = uv_default_loop();
    uv_signal_t *sigs[] = {&srv.sig_hup, &srv.sig_term, &srv.sig_int};
    int nums[] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(srv.loop, sigs[i]);
        sigs[i]->data = &srv;
        uv_signal_start(sigs[i], on_signal, nums[i]);
    }
    if (start(&srv, config_path) != 0)
        return 1;
    uv_timer_t *timers[] = {&srv.watch_timer, &srv.sweep_timer, &srv.drain_timer};
    for (int i = 0; i < 3; i++) {
        uv_timer_init(srv.loop, timers[i]);
        timers[i]->data = &srv;
    }
    srv.store_ok_mono = sp_mono_us();
    uv_timer_start(&srv.watch_timer, on_watch, WATCH_MS, WATCH_MS);
    uv_timer_start(&srv.sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_run(srv.loop, UV_RUN_DEFAULT);

    for (int i = 0; i < srv.gw.n_workers; i++)
        sp_worker_join(&srv.gw.workers[i]);
    sp_info("all sessions ended; recordings sealed; stopping");
    json_t *ev = sp_audit_new(SP_AUDIT_APP_STOP, "gateway-stop", true, "sallyport");
    sp_audit_emit(ev);
    sp_audit_close();
    sp_lease_mgr_free(srv.gw.leases);
    sp_store_close(srv.watch_store);
    sp_store_close(srv.gw.store);
    sp_tls_set_unref(&srv.gw, srv.gw.tls);
    sp_config_unref(srv.gw.cfg);
    free(srv.gw.workers);
    uv_loop_close(srv.loop);
    return srv.exit_status;
}
