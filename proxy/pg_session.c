#include "proxy/pg_session.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/lease.h"
#include "auth/policy.h"
#include "auth/scram.h"
#include "auth/store.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/conn.h"
#include "proxy/gateway.h"
#include "proxy/pgproto.h"
#include "recorder/audit.h"
#include "recorder/rec.h"

#define MAX_TOKENS 32
#define LINGER_MS 2000
/* cannot_connect_now: what PostgreSQL itself answers while it cannot take sessions; clients
 * and poolers treat it as "retry later". */
#define STORE_UNAVAILABLE_SQLSTATE "57P03"
#define STORE_UNAVAILABLE_MESSAGE "sallyport's store is unavailable; try again later"
#define STORE_OUTAGE_END_MESSAGE                                                                   \
    "terminating connection: sallyport's store has been unavailable longer than "                  \
    "store_outage_grace, so revocations cannot be checked (end reason store-unavailable)"

/* The startup parameters a client may pass on to the upstream (DESIGN.md). */
static const char *const passthrough_params[] = {
    "client_encoding", "DateStyle",          "TimeZone",
    "IntervalStyle",   "extra_float_digits", "search_path",
};

typedef enum pg_state {
    PS_STARTUP,       /* plaintext, waiting for SSLRequest / GSSENCRequest / CancelRequest */
    PS_TLS_HANDSHAKE, /* answered 'S' */
    PS_TLS_STARTUP,   /* TLS up, waiting for StartupMessage */
    PS_LOOKUP,        /* fetching the identity's SCRAM salt and tokens */
    PS_SASL_INITIAL,  /* sent AuthenticationSASL */
    PS_SASL_FINAL,    /* sent AuthenticationSASLContinue */
    PS_AUTHORIZE,     /* authenticated: policy, recording, lease */
    PS_UP_CONNECT,    /* connecting to the target */
    PS_UP_TLS,        /* upstream TLS handshake */
    PS_UP_STARTUP,    /* upstream authentication and startup */
    PS_RELAY,         /* ready for queries */
    PS_CLOSING,
} pg_state;

static const char *const state_names[] = {
    "startup",   "tls-handshake", "tls-startup", "lookup",     "sasl-initial", "sasl-final",
    "authorize", "up-connect",    "up-tls",      "up-startup", "relay",        "closing",
};

typedef struct pg_session {
    struct pg_session *prev, *next;
    sp_worker *w;
    sp_gateway *gw;
    sp_config *cfg;
    sp_tls_set *tls;
    pg_state state;
    sp_conn client, up;
    int handles; /* conns and timer not yet closed */
    int jobs;    /* thread-pool jobs and recorder closes in flight */
    uv_timer_t timer;
    sp_buf in;    /* client bytes before the relay */
    sp_buf up_in; /* upstream bytes before the relay */
    bool up_ssl_answer_pending;

    char id[40];
    char identity[SP_NAME_MAX];
    char target_name[SP_NAME_MAX];
    char database[SP_NAME_MAX];
    char user_kind[16];
    sp_buf params; /* passthrough key\0value\0 pairs, and application_name */
    char client_app[64];

    sp_scram_server scram;
    bool ident_known;
    char auth_fail_reason[48];
    uint8_t salt[SP_SCRAM_SALTLEN];
    int iterations;
    sp_token_verifier *tokens; /* MAX_TOKENS, held from the lookup to the SCRAM proof only */
    size_t n_tokens;
    char cred_id[SP_CRED_ID_LEN];

    sp_decision dec;
    sp_lease lease;
    bool has_lease;
    bool row_started;
    sp_rec *rec;
    bool rec_failed_noted;
    struct sockaddr_storage up_addr;
    sp_scram_client up_scram;
    bool up_verified; /* the upstream proved it knows the verifier */
    char up_err[256];

    sp_live live;
    bool live_registered;
    sp_pg_scanner cscan, sscan;
    int64_t started_at;
    int64_t last_activity; /* mono us */
    int64_t last_status;   /* mono us of the last sessions-index update */
    uint64_t rows;         /* DataRows since the last CommandComplete */
    uint64_t copy_bytes;   /* CopyData bytes in the current COPY */
    char copy_dir;         /* 'i', 'o' or 0 */
    uint64_t bytes_in, bytes_out;
    bool busy; /* the client sent something the backend has not answered with ReadyForQuery */
    char end_reason[160];
} pg_session;

static void end_session(pg_session *s, const char *reason, const char *sqlstate,
                        const char *client_msg);
static void relay_client(pg_session *s, const uint8_t *p, size_t n);
static void relay_upstream(pg_session *s, const uint8_t *p, size_t n);
static void up_connect(pg_session *s);
static void send_cancel(sp_worker *w, const struct sockaddr_storage *addr, uint32_t pid,
                        uint32_t key);

/* ---- small helpers ---- */

static void set_state(pg_session *s, pg_state st)
{
    sp_debug("pg %s %s: %s -> %s", s->id, s->client.peer, state_names[s->state], state_names[st]);
    s->state = st;
}

static void send_client(pg_session *s, sp_buf *b)
{
    if (sp_conn_write(&s->client, b->data, b->len) < 0)
        sp_debug("pg %s: client write failed", s->id);
    sp_buf_reset(b);
}

static void send_error(pg_session *s, const char *severity, const char *sqlstate, const char *msg,
                       const char *detail)
{
    sp_buf b;
    sp_buf_init(&b, 64 * 1024);
    sp_pg_put_error(&b, severity, sqlstate, msg, detail, NULL);
    send_client(s, &b);
    sp_buf_free(&b);
}

/* The end of a session's life before any upstream exists: say why in the protocol's own form
 * and close. */
static void refuse(pg_session *s, const char *sqlstate, const char *msg, const char *reason)
{
    end_session(s, reason, sqlstate, msg);
}

/* "ip:port" (or "[v6]:port") as an OCSF network endpoint. */
static json_t *audit_endpoint(const char *peer)
{
    const char *colon = strrchr(peer, ':');
    if (!colon)
        return json_pack("{s:s}", "ip", peer);
    int ip_len = (int)(colon - peer);
    if (ip_len >= 2 && peer[0] == '[' && peer[ip_len - 1] == ']')
        return json_pack("{s:s%, s:i}", "ip", peer + 1, (size_t)(ip_len - 2), "port",
                         atoi(colon + 1));
    return json_pack("{s:s%, s:i}", "ip", peer, (size_t)ip_len, "port", atoi(colon + 1));
}

static json_t *audit_base(pg_session *s, enum sp_audit_activity activity, const char *code, bool ok)
{
    json_t *ev = sp_audit_new(activity, code, ok, s->identity[0] ? s->identity : "-");
    json_object_set_new(ev, "user",
                        sp_audit_user(s->identity, s->user_kind[0] ? s->user_kind : "unknown"));
    json_object_set_new(ev, "src_endpoint", audit_endpoint(s->client.peer));
    json_t *sess = json_object();
    json_object_set_new(sess, "uid", json_string(s->id));
    json_object_set_new(ev, "session", sess);
    if (s->target_name[0]) {
        json_object_set_new(
            ev, "dst_endpoint",
            json_pack("{s:s, s:s}", "name", s->target_name, "svc_name", "postgresql"));
        json_object_set_new(ev, "database",
                            json_pack("{s:s, s:s}", "name", s->database, "type", "PostgreSQL"));
    }
    return ev;
}

/* ---- lifecycle ---- */

static void drop_tokens(pg_session *s)
{
    if (s->tokens) {
        OPENSSL_cleanse(s->tokens, MAX_TOKENS * sizeof(*s->tokens));
        free(s->tokens);
    }
    s->tokens = NULL;
    s->n_tokens = 0;
}

static void maybe_free(pg_session *s)
{
    if (s->handles > 0 || s->jobs > 0)
        return;
    atomic_fetch_sub(&s->gw->n_clients, 1);
    sp_buf_free(&s->in);
    sp_buf_free(&s->up_in);
    sp_buf_free(&s->params);
    drop_tokens(s);
    sp_pg_scanner_free(&s->cscan);
    sp_pg_scanner_free(&s->sscan);
    if (s->tls)
        sp_tls_set_unref(s->gw, s->tls);
    sp_config_unref(s->cfg);
    OPENSSL_cleanse(&s->lease, sizeof(s->lease));
    OPENSSL_cleanse(&s->up_scram, sizeof(s->up_scram));
    free(s);
}

static void on_handle_closed(pg_session *s)
{
    s->handles--;
    maybe_free(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    on_handle_closed(h->data);
}

static void unlink_session(pg_session *s)
{
    sp_worker *w = s->w;
    if (s->prev)
        s->prev->next = s->next;
    else if (w->sessions == s)
        w->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    w->n_sessions--;
}

/* What the authorize job produces. The job writes only here; the loop thread moves it into
 * the session when the job completes, so nothing is shared while the job runs. */
typedef struct authz {
    sp_decision dec;
    char database[SP_NAME_MAX];
    struct sockaddr_storage up_addr;
    sp_lease lease;
    bool has_lease;
    sp_rec *rec;
    bool row_started;
} authz;

typedef struct job {
    uv_work_t req;
    pg_session *s;
    int status;
    char err[256];
    int64_t chunks;
    char reason[160];
    authz az;
} job;

static job *job_new(pg_session *s)
{
    job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->s = s;
    j->req.data = j;
    s->jobs++;
    return j;
}

static void job_done(job *j)
{
    pg_session *s = j->s;
    free(j);
    s->jobs--;
    maybe_free(s);
}

static void end_row_work(uv_work_t *req)
{
    job *j = req->data;
    pg_session *s = j->s;
    int64_t now = sp_now_us();
    if (s->row_started && sp_store_session_end(s->gw->store, s->id, now, j->reason, j->chunks,
                                               j->err, sizeof(j->err)) < 0)
        sp_error("pg %s: sessions index not updated: %s", s->id, j->err);
    if (s->has_lease)
        sp_lease_release(s->gw->leases, s->lease.id, now);
}

static void end_row_after(uv_work_t *req, int status)
{
    (void)status;
    job_done(req->data);
}

static void on_rec_closed(void *arg, int status)
{
    pg_session *s = arg;
    if (status < 0)
        sp_error("pg %s: recording not sealed cleanly (%s)", s->id, uv_strerror(status));
    s->jobs--;
    maybe_free(s);
}

static void on_linger(uv_timer_t *t)
{
    pg_session *s = t->data;
    if (sp_conn_open(&s->client) && !uv_is_closing((uv_handle_t *)&s->client.tcp))
        sp_conn_abort(&s->client);
    if (sp_conn_open(&s->up) && !uv_is_closing((uv_handle_t *)&s->up.tcp))
        sp_conn_abort(&s->up);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

/* Seal the recording, close the sessions-index row and give back the lease use, for what
 * exists now. Runs from end_session, and again from the authorize job's completion when the
 * session ended while that job was still on the thread pool. */
static void release_session_state(pg_session *s)
{
    int64_t chunks = 0;
    if (s->rec) {
        sp_rec_eventv(s->rec, SP_EV_SESSION_END, sp_now_us(), s->end_reason, NULL);
        sp_rec_flush(s->rec, s->w->zctx, &s->w->loop); /* so the count includes the last chunk */
        chunks = (int64_t)sp_rec_chunks(s->rec);
        s->jobs++;
        sp_rec_close(s->rec, s->w->zctx, &s->w->loop, s->end_reason, on_rec_closed, s);
        s->rec = NULL;
    }
    if (!s->row_started && !s->has_lease)
        return;
    job *j = job_new(s);
    if (!j)
        return;
    j->chunks = chunks;
    snprintf(j->reason, sizeof(j->reason), "%s", s->end_reason);
    if (uv_queue_work(&s->w->loop, &j->req, end_row_work, end_row_after) < 0)
        job_done(j);
}

/* Every way a session ends goes through here, once, with its reason. */
static void end_session(pg_session *s, const char *reason, const char *sqlstate,
                        const char *client_msg)
{
    if (s->state == PS_CLOSING)
        return;
    bool was_relay = s->state >= PS_AUTHORIZE;
    set_state(s, PS_CLOSING);
    snprintf(s->end_reason, sizeof(s->end_reason), "%s", reason);
    sp_info("pg %s %s: closing because: %s", s->id, s->client.peer, reason);

    /* A message to the client only at a message boundary of the server->client stream. */
    bool at_boundary = s->sscan.hdr_have == 0 && s->sscan.body_left == 0;
    if (client_msg && at_boundary && !s->client.eof_seen)
        send_error(s, "FATAL", sqlstate, client_msg, NULL);
    if (sp_conn_open(&s->up)) {
        bool up_boundary = s->cscan.hdr_have == 0 && s->cscan.body_left == 0;
        if (s->up.tls && !s->up.handshaking && up_boundary && !s->up.eof_seen) {
            sp_buf b;
            sp_buf_init(&b, 16);
            sp_pg_put_terminate(&b);
            sp_conn_write(&s->up, b.data, b.len);
            sp_buf_free(&b);
        }
        sp_conn_close(&s->up);
    } else {
        s->handles--; /* the upstream conn never opened: nothing to wait for */
    }
    sp_conn_close(&s->client);
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_linger, LINGER_MS, 0);

    if (s->live_registered) {
        /* Closing our side does not stop a running statement: PostgreSQL notices a gone
         * client only when it next writes. A killed or revoked session must stop now. */
        if (s->busy && s->live.has_backend)
            send_cancel(s->w, &s->live.upstream_addr, s->live.be_pid, s->live.be_key);
        sp_gateway_live_remove(s->gw, &s->live);
        s->live_registered = false;
    }
    unlink_session(s);

    release_session_state(s);
    if (was_relay || s->row_started) {
        json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGOFF, "session-end", true);
        sp_audit_set_unmapped(ev, "end_reason", json_string(reason));
        sp_audit_set_unmapped(ev, "bytes_in", json_integer((json_int_t)s->bytes_in));
        sp_audit_set_unmapped(ev, "bytes_out", json_integer((json_int_t)s->bytes_out));
        sp_audit_set_unmapped(ev, "duration_ms",
                              json_integer((sp_now_us() - s->started_at) / 1000));
        sp_audit_emit(ev);
    }
}

/* ---- connection callbacks ---- */

static void client_on_data(sp_conn *c, const uint8_t *p, size_t n);
static void client_on_tls(sp_conn *c, bool ok, const char *why);
static void client_on_drain(sp_conn *c);
static void client_on_eof(sp_conn *c, const char *why);
static void conn_on_closed(sp_conn *c);

static const sp_conn_ops client_ops = {
    .on_data = client_on_data,
    .on_tls = client_on_tls,
    .on_drain = client_on_drain,
    .on_eof = client_on_eof,
    .on_closed = conn_on_closed,
};

static void up_on_data(sp_conn *c, const uint8_t *p, size_t n);
static void up_on_tls(sp_conn *c, bool ok, const char *why);
static void up_on_connect(sp_conn *c, int status);
static void up_on_drain(sp_conn *c);
static void up_on_eof(sp_conn *c, const char *why);

static const sp_conn_ops up_ops = {
    .on_data = up_on_data,
    .on_tls = up_on_tls,
    .on_connect = up_on_connect,
    .on_drain = up_on_drain,
    .on_eof = up_on_eof,
    .on_closed = conn_on_closed,
};

static void conn_on_closed(sp_conn *c)
{
    on_handle_closed(c->owner);
}

static void on_handshake_timeout(uv_timer_t *t)
{
    pg_session *s = t->data;
    if (s->state >= PS_UP_CONNECT && s->state < PS_RELAY) {
        /* Armed with the target's connect_timeout when the upstream connect began. */
        bool connecting = s->state == PS_UP_CONNECT;
        sp_error("pg %s: target %s did not %s within connect_timeout (%llds)", s->id,
                 s->target_name, connecting ? "accept the connection" : "finish TLS and startup",
                 (long long)(s->dec.target->connect_timeout / 1000000));
        end_session(s, connecting ? "upstream-unreachable" : "upstream-timeout", "08001",
                    "sallyport could not reach the target");
    } else if (s->state < PS_RELAY) {
        end_session(s, "handshake-timeout", "08006",
                    "timeout: the connection did not finish TLS, startup and authentication");
    }
}

static void on_idle_check(uv_timer_t *t)
{
    pg_session *s = t->data;
    if (s->state != PS_RELAY || !s->dec.role || s->dec.role->idle_timeout <= 0)
        return;
    int64_t idle = sp_mono_us() - s->last_activity;
    int64_t limit = s->dec.role->idle_timeout;
    if (idle >= limit) {
        end_session(s, "idle", "57P05",
                    "terminating connection due to idle timeout of the sallyport role");
        return;
    }
    uv_timer_start(&s->timer, on_idle_check, (uint64_t)((limit - idle) / 1000) + 1, 0);
}

void pg_session_accept(sp_worker *w, uv_stream_t *listener)
{
    pg_session *s = calloc(1, sizeof(*s));
    if (!s) {
        sp_error("pg: out of memory accepting a connection");
        return;
    }
    s->w = w;
    s->gw = w->gw;
    atomic_fetch_add(&s->gw->n_clients, 1);
    s->cfg = sp_worker_config(w);
    s->state = PS_STARTUP;
    sp_uuid7(s->id);
    s->started_at = sp_now_us();
    s->last_activity = sp_mono_us();
    sp_buf_init(&s->in, s->cfg->max_message_size);
    sp_buf_init(&s->up_in, s->cfg->max_message_size);
    sp_buf_init(&s->params, 4096);
    sp_pg_scanner_init(&s->cscan, s->cfg->record_max_text + 64);
    /* Refused here, before any of it is relayed: the client hears why, and the target never
     * sees the claim (it would drop the connection without a word to the client). */
    s->cscan.max_wire_len = SP_PG_CLIENT_MSG_MAX;
    sp_pg_scanner_init(&s->sscan, 4096);
    /* What the recording needs to see the contents of; everything else is only counted. */
    for (const char *t = "QPBE"; *t; t++)
        s->cscan.want[(uint8_t)*t] = true;
    for (const char *t = "CEZ"; *t; t++)
        s->sscan.want[(uint8_t)*t] = true;
    s->handles = 3; /* client, upstream, timer */
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    s->next = w->sessions;
    if (w->sessions)
        w->sessions->prev = s;
    w->sessions = s;
    w->n_sessions++;
    if (sp_conn_accept(&s->client, w, listener, &client_ops, s) < 0) {
        end_session(s, "accept-failed", NULL, NULL);
        return;
    }
    uv_timer_start(&s->timer, on_handshake_timeout, (uint64_t)(s->cfg->handshake_timeout / 1000),
                   0);
    sp_conn_read_start(&s->client);
}

/* ---- cancel ---- */

typedef struct cancel_conn {
    sp_conn conn;
    uint8_t msg[16];
} cancel_conn;

static void cancel_on_closed(sp_conn *c)
{
    free(c->owner);
}

static void cancel_on_eof(sp_conn *c, const char *why)
{
    (void)why;
    sp_conn_close(c);
}

static void cancel_on_connect(sp_conn *c, int status)
{
    cancel_conn *cc = c->owner;
    if (status == 0)
        sp_conn_write(c, cc->msg, sizeof(cc->msg));
    else
        sp_warn("pg: cancel could not reach the upstream %s: %s", c->peer, uv_strerror(status));
    sp_conn_close(c);
}

static void cancel_on_data(sp_conn *c, const uint8_t *p, size_t n)
{
    (void)c;
    (void)p;
    (void)n;
}

static const sp_conn_ops cancel_ops = {
    .on_data = cancel_on_data,
    .on_connect = cancel_on_connect,
    .on_eof = cancel_on_eof,
    .on_closed = cancel_on_closed,
};

/* Ask the upstream to cancel what backend pid is running (a CancelRequest on a new
 * connection, as PostgreSQL expects; no answer comes back). */
static void send_cancel(sp_worker *w, const struct sockaddr_storage *addr, uint32_t pid,
                        uint32_t key)
{
    cancel_conn *cc = calloc(1, sizeof(*cc));
    if (!cc)
        return;
    sp_put_be32(cc->msg, 16);
    sp_put_be32(cc->msg + 4, SP_PG_CANCEL_REQUEST);
    sp_put_be32(cc->msg + 8, pid);
    sp_put_be32(cc->msg + 12, key);
    if (sp_conn_connect(&cc->conn, w, (const struct sockaddr *)addr, &cancel_ops, cc) < 0) {
        if (sp_conn_open(&cc->conn))
            sp_conn_close(&cc->conn);
        else
            free(cc);
    }
}

/* A CancelRequest names the gateway's key for a session; the upstream backend gets its own
 * key, and only that session's backend can be cancelled. */
static void handle_cancel(pg_session *s, uint32_t pid, uint32_t key)
{
    uint32_t be_pid, be_key;
    struct sockaddr_storage addr;
    char sid[40];
    if (!sp_gateway_cancel_lookup(s->gw, pid, key, &be_pid, &be_key, &addr, sid)) {
        sp_info("pg %s %s: cancel request for an unknown key ignored", s->id, s->client.peer);
        end_session(s, "cancel-unknown", NULL, NULL);
        return;
    }
    send_cancel(s->w, &addr, be_pid, be_key);
    sp_info("pg %s %s: cancel forwarded to session %s", s->id, s->client.peer, sid);
    end_session(s, "cancel-request", NULL, NULL);
}

/* ---- startup ---- */

static bool is_passthrough(const char *key)
{
    for (size_t i = 0; i < SP_ARRAY_LEN(passthrough_params); i++)
        if (!strcmp(key, passthrough_params[i]))
            return true;
    return false;
}

static void start_lookup(pg_session *s);

/* user = identity; database = TARGET or TARGET/DATABASE. */
static void handle_startup_message(pg_session *s, const sp_pg_startup *st)
{
    /* Checked before any credential work, so a flood costs no SCRAM, store or lease. */
    if (atomic_load(&s->gw->n_clients) > s->cfg->max_client_conn) {
        refuse(s, "53300", "sorry, too many clients already (sallyport max_client_conn)",
               "too-many-clients");
        return;
    }
    const char *user = sp_pg_startup_param(st, "user");
    const char *db = sp_pg_startup_param(st, "database");
    if (!user || !*user) {
        refuse(s, "28000", "no user name given: connect with user=<your sallyport identity>",
               "startup-no-user");
        return;
    }
    snprintf(s->identity, sizeof(s->identity), "%s", user);
    if (!sp_utf8_valid((const uint8_t *)user, strlen(user)) || !sp_name_valid(user)) {
        /* Same answer as any failed login: names are not probed. */
        s->identity[0] = '\0';
    }
    if (!db || !*db)
        db = user;
    const char *slash = strchr(db, '/');
    size_t tlen = slash ? (size_t)(slash - db) : strlen(db);
    if (tlen >= sizeof(s->target_name) || (slash && strlen(slash + 1) >= sizeof(s->database))) {
        refuse(s, "42501", "no grant for this target or database", "startup-name-too-long");
        return;
    }
    memcpy(s->target_name, db, tlen);
    s->target_name[tlen] = '\0';
    snprintf(s->database, sizeof(s->database), "%s", slash ? slash + 1 : "");

    for (size_t i = 0; i < st->n_params; i++) {
        const char *k = st->params[i].key, *v = st->params[i].value;
        if (!strcmp(k, "user") || !strcmp(k, "database"))
            continue;
        if (!strcmp(k, "options") || !strcmp(k, "replication")) {
            char msg[160];
            snprintf(msg, sizeof(msg), "startup parameter \"%s\" is not allowed through sallyport",
                     k);
            refuse(s, "42501", msg, "startup-parameter-refused");
            return;
        }
        if (!strcmp(k, "application_name")) {
            snprintf(s->client_app, sizeof(s->client_app), "%s", v);
            continue;
        }
        if (is_passthrough(k)) {
            sp_buf_append_str(&s->params, k);
            sp_buf_append_str(&s->params, v);
        }
        /* Anything else (e.g. _pq_.* protocol extensions) is dropped, as PostgreSQL drops
         * unknown GUCs from a client it does not trust. */
    }
    if (!s->identity[0]) {
        snprintf(s->identity, sizeof(s->identity), "%s", "-");
        snprintf(s->auth_fail_reason, sizeof(s->auth_fail_reason), "invalid-identity-name");
    }
    start_lookup(s);
}

static void handle_startup_packet(pg_session *s)
{
    sp_pg_startup st;
    const char *why = NULL;
    long n = sp_pg_read_startup(sp_buf_rptr(&s->in), sp_buf_unread(&s->in), &st, &why);
    if (n == 0)
        return;
    if (n < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "invalid startup packet: %s", why ? why : "malformed");
        refuse(s, "08P01", msg, "protocol-error");
        return;
    }
    bool extra = sp_buf_unread(&s->in) > (size_t)n;
    switch (st.code) {
    case SP_PG_SSL_REQUEST:
        if (s->state != PS_STARTUP) {
            refuse(s, "08P01", "SSLRequest received inside TLS", "protocol-error");
            return;
        }
        if (extra) {
            /* Bytes sent along with the SSLRequest, before our answer, were not encrypted:
             * they are never treated as part of the TLS stream. */
            sp_info("pg %s %s: data after SSLRequest before TLS; closing", s->id, s->client.peer);
            end_session(s, "protocol-error: data after SSLRequest", NULL, NULL);
            return;
        }
        sp_buf_reset(&s->in);
        sp_conn_write(&s->client, "S", 1);
        if (!s->tls)
            s->tls = sp_gateway_tls(s->gw);
        set_state(s, PS_TLS_HANDSHAKE);
        if (sp_conn_start_tls(&s->client, s->tls->server, true, NULL) < 0)
            end_session(s, "tls-setup-failed", NULL, NULL);
        return;
    case SP_PG_GSSENC_REQUEST:
        sp_buf_consume(&s->in, (size_t)n);
        if (s->state != PS_STARTUP) {
            refuse(s, "08P01", "GSSENCRequest received inside TLS", "protocol-error");
            return;
        }
        sp_conn_write(&s->client, "N", 1);
        if (sp_buf_unread(&s->in))
            handle_startup_packet(s);
        return;
    case SP_PG_CANCEL_REQUEST:
        handle_cancel(s, st.cancel_pid, st.cancel_key);
        return;
    case SP_PG_PROTO_V3:
        if (s->state == PS_STARTUP) {
            refuse(s, "08P01",
                   "sallyport requires TLS: connect with sslmode=verify-full (and sslrootcert=the "
                   "gateway's CA)",
                   "tls-required");
            return;
        }
        if (extra) {
            refuse(s, "08P01", "unexpected data after the startup message", "protocol-error");
            return;
        }
        handle_startup_message(s, &st);
        sp_buf_reset(&s->in);
        return;
    default: {
        char msg[128];
        snprintf(msg, sizeof(msg), "unsupported frontend protocol %u.%u: sallyport speaks 3.0",
                 st.code >> 16, st.code & 0xffff);
        refuse(s, "0A000", msg, "protocol-error");
        return;
    }
    }
}

/* ---- authentication ---- */

static void lookup_work(uv_work_t *req)
{
    job *j = req->data;
    pg_session *s = j->s;
    sp_gateway *g = s->gw;
    sp_identity ident;
    int64_t now = sp_now_us();
    int rc = SP_STORE_NOT_FOUND;
    if (atomic_load(&g->store_down)) {
        snprintf(j->err, sizeof(j->err), "the store is in an outage (see the store-outage event)");
        j->status = -1;
        return;
    }
    if (!s->auth_fail_reason[0])
        rc = sp_store_identity_get(g->store, s->identity, &ident, j->err, sizeof(j->err));
    if (rc < 0) {
        j->status = -1;
        return;
    }
    if (rc == SP_STORE_NOT_FOUND) {
        sp_scram_fake_salt(g->secret, g->secret_len, s->identity, s->salt);
        s->iterations = SP_SCRAM_ITERATIONS;
        if (!s->auth_fail_reason[0])
            snprintf(s->auth_fail_reason, sizeof(s->auth_fail_reason), "unknown-identity");
        return;
    }
    s->ident_known = true;
    snprintf(s->user_kind, sizeof(s->user_kind), "%s", ident.kind);
    memcpy(s->salt, ident.salt, sizeof(s->salt));
    s->iterations = ident.iterations;
    if (ident.disabled) {
        snprintf(s->auth_fail_reason, sizeof(s->auth_fail_reason), "identity-disabled");
        return;
    }
    s->tokens = calloc(MAX_TOKENS, sizeof(*s->tokens));
    if (!s->tokens) {
        snprintf(j->err, sizeof(j->err), "out of memory for token verifiers");
        j->status = -1;
        return;
    }
    if (sp_store_tokens_live(g->store, s->identity, now, s->tokens, MAX_TOKENS, &s->n_tokens,
                             j->err, sizeof(j->err)) < 0) {
        j->status = -1;
        return;
    }
    if (s->n_tokens == 0)
        snprintf(s->auth_fail_reason, sizeof(s->auth_fail_reason), "no-live-token");
}

static void lookup_after(uv_work_t *req, int status)
{
    job *j = req->data;
    pg_session *s = j->s;
    if (s->state == PS_CLOSING) {
        job_done(j);
        return;
    }
    if (status < 0 || j->status < 0) {
        sp_error("pg %s: store unavailable during login: %s", s->id, j->err);
        json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGON, "logon", false);
        json_object_set_new(ev, "status_detail", json_string("store-unavailable"));
        sp_audit_set_unmapped(ev, "error", json_string(j->err));
        sp_audit_emit(ev);
        refuse(s, STORE_UNAVAILABLE_SQLSTATE, STORE_UNAVAILABLE_MESSAGE, "store-unavailable");
        job_done(j);
        return;
    }
    job_done(j);
    bool plus = s->tls && s->tls->cbind_len > 0;
    sp_scram_server_init(&s->scram, plus, s->tls ? s->tls->cbind : NULL,
                         plus ? (size_t)s->tls->cbind_len : 0);
    const char *mechs[2];
    size_t n = 0;
    if (plus)
        mechs[n++] = SP_SCRAM_MECH_PLUS;
    mechs[n++] = SP_SCRAM_MECH;
    sp_buf b;
    sp_buf_init(&b, 1024);
    sp_pg_put_auth_sasl(&b, mechs, n);
    send_client(s, &b);
    sp_buf_free(&b);
    set_state(s, PS_SASL_INITIAL);
    if (sp_buf_unread(&s->in))
        client_on_data(&s->client, NULL, 0);
}

static void start_lookup(pg_session *s)
{
    set_state(s, PS_LOOKUP);
    job *j = job_new(s);
    if (!j || uv_queue_work(&s->w->loop, &j->req, lookup_work, lookup_after) < 0) {
        if (j)
            job_done(j);
        refuse(s, "53200", "out of memory", "out-of-memory");
    }
}

static void auth_failed(pg_session *s, const char *reason)
{
    json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGON, "logon", false);
    json_object_set_new(ev, "status_detail", json_string(reason));
    json_object_set_new(ev, "auth_protocol", json_string("SCRAM-SHA-256"));
    json_object_set_new(ev, "auth_protocol_id", json_integer(99)); /* OCSF: Other */
    sp_audit_emit(ev);
    char msg[160];
    /* One answer for every failure before authentication: the audit trail has the reason. */
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"",
             s->identity[0] == '-' ? "" : s->identity);
    refuse(s, "28P01", msg, "auth-failed");
}

static void start_authorize(pg_session *s);

static void handle_sasl(pg_session *s, const sp_pg_msg *m)
{
    char err[256];
    sp_buf out;
    sp_buf_init(&out, 4096);
    if (m->type != 'p') {
        sp_buf_free(&out);
        refuse(s, "08P01", "expected a SASL response during authentication", "protocol-error");
        return;
    }
    if (s->state == PS_SASL_INITIAL) {
        const char *mech;
        const uint8_t *data;
        size_t dlen;
        if (sp_pg_parse_sasl_initial(m->body, m->len, &mech, &data, &dlen) < 0 ||
            sp_scram_server_first(&s->scram, mech, data, dlen, s->salt, sizeof(s->salt),
                                  s->iterations, &out, err, sizeof(err)) < 0) {
            sp_buf_free(&out);
            auth_failed(s, "scram-malformed-initial");
            return;
        }
        sp_buf b;
        sp_buf_init(&b, 4096);
        sp_pg_put_auth(&b, 11, out.data, out.len);
        send_client(s, &b);
        sp_buf_free(&b);
        sp_buf_free(&out);
        set_state(s, PS_SASL_FINAL);
        return;
    }
    if (sp_scram_server_final_parse(&s->scram, m->body, m->len, err, sizeof(err)) < 0) {
        sp_buf_free(&out);
        auth_failed(s, strstr(err, "binding") ? "scram-channel-binding-mismatch"
                                              : "scram-malformed-final");
        return;
    }
    const sp_token_verifier *match = NULL;
    for (size_t i = 0; i < s->n_tokens && !s->auth_fail_reason[0]; i++) {
        if (sp_scram_server_check(&s->scram, s->tokens[i].stored_key)) {
            match = &s->tokens[i];
            break;
        }
    }
    if (!match) {
        sp_buf_free(&out);
        auth_failed(s, s->auth_fail_reason[0] ? s->auth_fail_reason : "wrong-token");
        return;
    }
    snprintf(s->cred_id, sizeof(s->cred_id), "%s", match->id);
    sp_scram_server_final_message(&s->scram, match->server_key, &out);
    sp_buf b;
    sp_buf_init(&b, 4096);
    sp_pg_put_auth(&b, 12, out.data, out.len);
    sp_pg_put_auth(&b, 0, NULL, 0);
    send_client(s, &b);
    sp_buf_free(&b);
    sp_buf_free(&out);
    drop_tokens(s);

    json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGON, "logon", true);
    json_object_set_new(ev, "auth_protocol",
                        json_string(s->scram.plus ? SP_SCRAM_MECH_PLUS : SP_SCRAM_MECH));
    json_object_set_new(ev, "auth_protocol_id", json_integer(99)); /* OCSF: Other */
    sp_audit_set_unmapped(ev, "credential_uid", json_string(s->cred_id));
    sp_audit_emit(ev);
    start_authorize(s);
}

/* ---- authorization, recording and lease (thread pool) ---- */

static int resolve_target(const sp_target *t, struct sockaddr_storage *out, char *err,
                          size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%d", t->port);
    int rc = getaddrinfo(t->host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve %s: %s", t->host, gai_strerror(rc));
        return -1;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

enum authorize_outcome {
    AZ_OK,
    AZ_DENIED,
    AZ_STORE,
    AZ_RECORDING,
    AZ_LEASE,
    AZ_RESOLVE,
};

static void authorize_work(uv_work_t *req)
{
    job *j = req->data;
    const pg_session *s = j->s;
    authz *az = &j->az;
    sp_gateway *g = s->gw;
    int64_t now = sp_now_us();
    if (atomic_load(&g->store_down)) {
        snprintf(j->err, sizeof(j->err), "the store is in an outage (see the store-outage event)");
        j->status = AZ_STORE;
        return;
    }
    if (sp_policy_decide(g->store, s->cfg, s->identity, s->target_name, s->database, now, &az->dec,
                         j->err, sizeof(j->err)) < 0) {
        j->status = AZ_STORE;
        return;
    }
    if (!az->dec.allowed) {
        j->status = AZ_DENIED;
        return;
    }
    snprintf(az->database, sizeof(az->database), "%s", az->dec.database);
    if (resolve_target(az->dec.target, &az->up_addr, j->err, sizeof(j->err)) < 0) {
        j->status = AZ_RESOLVE;
        return;
    }
    /* The lease first: the recording header names the upstream role. */
    int64_t until =
        az->dec.binding_expires_at ? az->dec.binding_expires_at : now + az->dec.role->max_ttl;
    if (sp_lease_acquire(g->leases, s->cfg, az->dec.target, s->identity, az->dec.role->db_roles,
                         until, &az->lease, j->err, sizeof(j->err)) < 0) {
        j->status = AZ_LEASE;
        return;
    }
    az->has_lease = true;
    sp_rec_meta meta = {
        .session_id = s->id,
        .kind = "postgres",
        .identity = s->identity,
        .target = s->target_name,
        .database = az->database,
        .db_user = az->lease.role_name,
        .client_addr = s->client.peer,
        .started_at = s->started_at,
    };
    char rerr[256];
    az->rec =
        sp_rec_create(s->cfg->recordings_dir, &meta, s->cfg->record_max_text, rerr, sizeof(rerr));
    if (!az->rec) {
        snprintf(j->err, sizeof(j->err), "%s", rerr);
        if (az->dec.role->recording == SP_REC_STRICT) {
            j->status = AZ_RECORDING;
            sp_lease_release(g->leases, az->lease.id, now);
            az->has_lease = false;
            return;
        }
    }
    sp_session_row row = {0};
    snprintf(row.id, sizeof(row.id), "%s", s->id);
    snprintf(row.identity, sizeof(row.identity), "%s", s->identity);
    snprintf(row.kind, sizeof(row.kind), "postgres");
    snprintf(row.target, sizeof(row.target), "%s", s->target_name);
    snprintf(row.database, sizeof(row.database), "%s", az->database);
    snprintf(row.role, sizeof(row.role), "%s", az->dec.role->name);
    snprintf(row.cred_id, sizeof(row.cred_id), "%s", s->cred_id);
    row.binding_id = az->dec.binding_id;
    snprintf(row.client_addr, sizeof(row.client_addr), "%s", s->client.peer);
    if (az->rec)
        snprintf(row.recording_path, sizeof(row.recording_path), "%s", sp_rec_path(az->rec));
    row.started_at = s->started_at;
    row.gateway_pid = g->pid;
    if (sp_store_session_start(g->store, &row, j->err, sizeof(j->err)) < 0) {
        j->status = AZ_STORE;
        return;
    }
    az->row_started = true;
    j->status = AZ_OK;
}

static void authorize_after(uv_work_t *req, int status)
{
    job *j = req->data;
    pg_session *s = j->s;
    int outcome = status < 0 ? AZ_STORE : j->status;
    char err[256];
    snprintf(err, sizeof(err), "%s", j->err);
    s->dec = j->az.dec;
    if (j->az.database[0])
        snprintf(s->database, sizeof(s->database), "%s", j->az.database);
    s->up_addr = j->az.up_addr;
    s->lease = j->az.lease;
    s->has_lease = j->az.has_lease;
    s->rec = j->az.rec;
    s->row_started = j->az.row_started;
    OPENSSL_cleanse(&j->az.lease, sizeof(j->az.lease));
    if (s->state == PS_CLOSING) {
        /* The client left while the job ran: undo what it made (before job_done, which may
         * free the session). */
        release_session_state(s);
        job_done(j);
        return;
    }
    job_done(j);

    json_t *ev = audit_base(s, SP_AUDIT_SESSION_ASSIGN_PRIVILEGES, "authorize", outcome == AZ_OK);
    if (s->dec.role)
        sp_audit_set_unmapped(ev, "role", json_string(s->dec.role->name));
    if (outcome == AZ_DENIED)
        json_object_set_new(ev, "status_detail", json_string(s->dec.reason));
    else if (outcome != AZ_OK)
        json_object_set_new(ev, "status_detail", json_string(err));
    if (s->has_lease)
        sp_audit_set_unmapped(ev, "db_user", json_string(s->lease.role_name));
    if (s->rec)
        sp_audit_set_unmapped(ev, "recording", json_string(sp_rec_path(s->rec)));
    sp_audit_emit(ev);

    char msg[384];
    switch (outcome) {
    case AZ_OK:
        break;
    case AZ_DENIED:
        /* Says nothing about whether the target exists. */
        snprintf(msg, sizeof(msg),
                 "no grant for \"%s%s%s\" held by \"%s\" (check the target name, or ask "
                 "for access)",
                 s->target_name, s->database[0] ? "/" : "", s->database, s->identity);
        refuse(s, "42501", msg, "no-grant");
        return;
    case AZ_RECORDING:
        sp_error("pg %s: recording cannot be written: %s", s->id, err);
        refuse(s, "58030", "session refused: its recording cannot be written (recording = strict)",
               "recording-failed");
        return;
    case AZ_LEASE:
        sp_error("pg %s: upstream credential for %s failed: %s", s->id, s->target_name, err);
        refuse(s, "08001", "sallyport could not obtain a credential for the target",
               "lease-failed");
        return;
    case AZ_RESOLVE:
        sp_error("pg %s: %s", s->id, err);
        refuse(s, "08001", "sallyport could not reach the target", "upstream-unreachable");
        return;
    default:
        sp_error("pg %s: store error while authorizing: %s", s->id, err);
        refuse(s, STORE_UNAVAILABLE_SQLSTATE, STORE_UNAVAILABLE_MESSAGE, "store-unavailable");
        return;
    }
    if (!s->rec) {
        json_t *gap = audit_base(s, SP_AUDIT_DATASTORE_RECORDING_GAP, "recording-gap", false);
        json_object_set_new(gap, "status_detail", json_string(err));
        sp_audit_emit(gap);
    }
    snprintf(s->live.id, sizeof(s->live.id), "%s", s->id);
    snprintf(s->live.identity, sizeof(s->live.identity), "%s", s->identity);
    snprintf(s->live.target, sizeof(s->live.target), "%s", s->target_name);
    snprintf(s->live.database, sizeof(s->live.database), "%s", s->database);
    s->live.worker = s->w;
    if (sp_gateway_live_add(s->gw, &s->live, s->cfg->max_client_conn) < 0) {
        refuse(s, "53300", "sorry, too many clients already", "too-many-clients");
        return;
    }
    s->live_registered = true;
    if (s->rec) {
        /* Startup parameters as the session asked for them (no secrets in there). */
        sp_rec_field f[2 * 12];
        size_t n = 0;
        const char *kv[][2] = {{"user", s->identity},
                               {"target", s->target_name},
                               {"database", s->database},
                               {"db_user", s->lease.role_name},
                               {"application_name", s->client_app},
                               {"client_addr", s->client.peer}};
        for (size_t i = 0; i < SP_ARRAY_LEN(kv); i++) {
            f[n++] = (sp_rec_field){kv[i][0], strlen(kv[i][0])};
            f[n++] = (sp_rec_field){kv[i][1], strlen(kv[i][1])};
        }
        for (size_t off = 0; off < s->params.len && n + 2 <= SP_ARRAY_LEN(f);) {
            const char *k = (const char *)s->params.data + off;
            const char *v = k + strlen(k) + 1;
            f[n++] = (sp_rec_field){k, strlen(k)};
            f[n++] = (sp_rec_field){v, strlen(v)};
            off = (size_t)(v + strlen(v) + 1 - (const char *)s->params.data);
        }
        sp_rec_event(s->rec, SP_EV_SESSION_START, sp_now_us(), f,
                     n > SP_REC_MAX_FIELDS ? SP_REC_MAX_FIELDS : n);
    }
    up_connect(s);
}

static void start_authorize(pg_session *s)
{
    set_state(s, PS_AUTHORIZE);
    sp_conn_read_stop(&s->client); /* nothing to read until the upstream is ready */
    job *j = job_new(s);
    if (!j || uv_queue_work(&s->w->loop, &j->req, authorize_work, authorize_after) < 0) {
        if (j)
            job_done(j);
        refuse(s, "53200", "out of memory", "out-of-memory");
    }
}

/* ---- upstream ---- */

static void up_connect(pg_session *s)
{
    set_state(s, PS_UP_CONNECT);
    if (sp_conn_connect(&s->up, s->w, (struct sockaddr *)&s->up_addr, &up_ops, s) < 0) {
        end_session(s, "upstream-unreachable", "08001", "sallyport could not reach the target");
        return;
    }
    /* The handshake timer now also bounds the upstream connect. */
    uv_timer_stop(&s->timer);
    uv_timer_start(&s->timer, on_handshake_timeout,
                   (uint64_t)(s->dec.target->connect_timeout / 1000), 0);
}

static void send_upstream_startup(pg_session *s)
{
    sp_pg_kv kv[SP_ARRAY_LEN(passthrough_params) + 3];
    size_t n = 0;
    char app[128];
    /* application_name names the identity and the session for the target's DBAs. */
    snprintf(app, sizeof(app), "%s/%s", s->identity, s->id);
    kv[n++] = (sp_pg_kv){"user", s->lease.role_name};
    kv[n++] = (sp_pg_kv){"database", s->database};
    kv[n++] = (sp_pg_kv){"application_name", app};
    for (size_t off = 0; off < s->params.len && n < SP_ARRAY_LEN(kv);) {
        const char *k = (const char *)s->params.data + off;
        const char *v = k + strlen(k) + 1;
        kv[n++] = (sp_pg_kv){k, v};
        off = (size_t)(v + strlen(v) + 1 - (const char *)s->params.data);
    }
    sp_buf b;
    sp_buf_init(&b, 8192);
    sp_pg_put_startup(&b, kv, n);
    sp_conn_write(&s->up, b.data, b.len);
    sp_buf_free(&b);
    sp_scram_client_init(&s->up_scram, NULL, s->lease.salt, s->lease.iterations,
                         s->lease.client_key, s->lease.server_key);
    set_state(s, PS_UP_STARTUP);
}

static void up_on_connect(sp_conn *c, int status)
{
    pg_session *s = c->owner;
    if (s->state != PS_UP_CONNECT)
        return;
    if (status < 0) {
        sp_error("pg %s: upstream %s: %s", s->id, c->peer, uv_strerror(status));
        end_session(s, "upstream-unreachable", "08001", "sallyport could not reach the target");
        return;
    }
    sp_conn_read_start(c);
    if (s->dec.target->upstream_tls == SP_UTLS_DISABLE) {
        send_upstream_startup(s);
        return;
    }
    sp_buf b;
    sp_buf_init(&b, 16);
    sp_pg_put_ssl_request(&b);
    sp_conn_write(c, b.data, b.len);
    sp_buf_free(&b);
    s->up_ssl_answer_pending = true;
    set_state(s, PS_UP_TLS);
}

static void up_on_tls(sp_conn *c, bool ok, const char *why)
{
    pg_session *s = c->owner;
    if (!ok) {
        sp_error("pg %s: upstream TLS with %s failed: %s", s->id, c->peer, why);
        end_session(s, "upstream-tls-failed", "08001",
                    "sallyport could not establish TLS with the target");
        return;
    }
    send_upstream_startup(s);
}

/* The upstream refused the lease's own credential: someone changed the role's password
 * (any role may change its own). Re-key it for the next session and say so in the audit. */
static void lease_tampered(pg_session *s, const char *why)
{
    sp_lease_invalidate(s->gw->leases, s->lease.id);
    json_t *ev = audit_base(s, SP_AUDIT_ACCOUNT_PASSWORD_CHANGE, "lease-credential-changed", false);
    sp_audit_set_unmapped(ev, "db_user", json_string(s->lease.role_name));
    json_object_set_new(ev, "status_detail", json_string(why));
    sp_audit_emit(ev);
    sp_warn("pg %s: the password of lease role %s was changed outside the gateway; it gets a "
            "new one at the next session",
            s->id, s->lease.role_name);
}

static void up_fail(pg_session *s, const char *log_why)
{
    sp_error("pg %s: upstream startup failed: %s", s->id, log_why);
    end_session(s, "upstream-startup-failed", "08001", "sallyport could not log in to the target");
}

static void finish_startup(pg_session *s)
{
    sp_buf b;
    sp_buf_init(&b, 4096);
    sp_pg_put_backend_key(&b, s->live.gw_pid, s->live.gw_key);
    sp_pg_put_notice(&b, s->cfg->session_notice);
    send_client(s, &b);
    sp_buf_free(&b);
    set_state(s, PS_RELAY);
    s->last_activity = sp_mono_us();
    uv_timer_stop(&s->timer);
    if (s->dec.role->idle_timeout > 0)
        uv_timer_start(&s->timer, on_idle_check, (uint64_t)(s->dec.role->idle_timeout / 1000) + 1,
                       0);
    json_t *ev = audit_base(s, SP_AUDIT_DATASTORE_CONNECT, "session-start", true);
    sp_audit_set_unmapped(ev, "db_user", json_string(s->lease.role_name));
    sp_audit_set_unmapped(ev, "role", json_string(s->dec.role->name));
    sp_audit_emit(ev);
    sp_info("pg %s %s: %s -> %s/%s as %s", s->id, s->client.peer, s->identity, s->target_name,
            s->database, s->lease.role_name);
    sp_conn_read_start(&s->client);
    /* A client may pipeline its first messages right behind the SCRAM proof. */
    if (sp_buf_unread(&s->in)) {
        sp_buf early = s->in;
        sp_buf_init(&s->in, s->cfg->max_message_size);
        relay_client(s, sp_buf_rptr(&early), sp_buf_unread(&early));
        sp_buf_free(&early);
    }
}

/* One whole upstream message during its startup. Returns -1 when the session ended. */
static int up_startup_msg(pg_session *s, const sp_pg_msg *m)
{
    char err[256];
    sp_buf out;
    switch (m->type) {
    case 'R': {
        uint32_t sub;
        const uint8_t *rest;
        size_t rlen;
        if (sp_pg_parse_auth(m->body, m->len, &sub, &rest, &rlen) < 0) {
            up_fail(s, "malformed authentication request");
            return -1;
        }
        sp_buf_init(&out, 4096);
        int rc = 0;
        if (sub == 0) {
            /* AuthenticationOk: the SCRAM exchange must have been verified first. */
            if (!s->up_verified) {
                sp_buf_free(&out);
                up_fail(s, "upstream accepted the login without authenticating itself");
                return -1;
            }
        } else if (sub == 10) {
            sp_buf cf;
            sp_buf_init(&cf, 1024);
            rc = sp_scram_client_first(&s->up_scram, &cf);
            if (rc == 0)
                rc = sp_pg_put_sasl_initial(&out, SP_SCRAM_MECH, cf.data, cf.len);
            sp_buf_free(&cf);
        } else if (sub == 11) {
            sp_buf cf;
            sp_buf_init(&cf, 1024);
            rc = sp_scram_client_final(&s->up_scram, rest, rlen, &cf, err, sizeof(err));
            if (rc < 0)
                lease_tampered(s, err);
            if (rc == 0)
                rc = sp_pg_put_sasl_response(&out, cf.data, cf.len);
            sp_buf_free(&cf);
        } else if (sub == 12) {
            rc = sp_scram_client_verify(&s->up_scram, rest, rlen, err, sizeof(err));
            if (rc == 0)
                s->up_verified = true;
        } else {
            snprintf(err, sizeof(err),
                     "upstream asked for authentication method %u; only "
                     "SCRAM-SHA-256 is used",
                     sub);
            rc = -1;
        }
        if (rc < 0) {
            sp_buf_free(&out);
            up_fail(s, err);
            return -1;
        }
        if (out.len)
            sp_conn_write(&s->up, out.data, out.len);
        sp_buf_free(&out);
        return 0;
    }
    case 'E': {
        sp_pg_error_fields ef = {0};
        sp_pg_parse_error(m->body, m->len, &ef);
        snprintf(err, sizeof(err), "%s %s", ef.code ? ef.code : "?", ef.message ? ef.message : "?");
        sp_error("pg %s: upstream refused the session: %s", s->id, err);
        if (ef.code && !strcmp(ef.code, "28P01"))
            lease_tampered(s, err);
        /* The upstream's own words reach the client (it may be "too many connections"). */
        char msg[300];
        snprintf(msg, sizeof(msg), "the target refused the session: %s",
                 ef.message ? ef.message : "unknown error");
        end_session(s, "upstream-refused", ef.code ? ef.code : "08004", msg);
        return -1;
    }
    case 'K':
        if (m->len == 8) {
            sp_gateway_live_backend(s->gw, &s->live, sp_get_be32(m->body), sp_get_be32(m->body + 4),
                                    (struct sockaddr *)&s->up_addr);
        }
        return 0;
    case 'S':
    case 'N':
        sp_buf_init(&out, (size_t)m->len + 16);
        sp_pg_put_msg(&out, m->type, m->body, m->len);
        send_client(s, &out);
        sp_buf_free(&out);
        return 0;
    case 'v': /* NegotiateProtocolVersion: we asked for nothing optional */
        return 0;
    case 'Z':
        finish_startup(s);
        sp_buf_init(&out, 16);
        sp_pg_put_msg(&out, 'Z', m->body, m->len);
        send_client(s, &out);
        sp_buf_free(&out);
        return 1;
    default:
        snprintf(err, sizeof(err), "unexpected message '%c' during startup", m->type);
        up_fail(s, err);
        return -1;
    }
}

static void up_on_data(sp_conn *c, const uint8_t *p, size_t n)
{
    pg_session *s = c->owner;
    if (s->state == PS_RELAY) {
        relay_upstream(s, p, n);
        return;
    }
    if (s->state == PS_UP_TLS && s->up_ssl_answer_pending) {
        s->up_ssl_answer_pending = false;
        if (p[0] != 'S' || n != 1) {
            up_fail(s, p[0] == 'N' ? "the target does not accept TLS"
                                   : "unexpected answer to SSLRequest");
            return;
        }
        sp_tls_set *t = s->tls ? s->tls : (s->tls = sp_gateway_tls(s->gw));
        size_t ti = (size_t)(s->dec.target - s->cfg->targets);
        SSL_CTX *ctx = ti < t->n_upstream ? t->upstream[ti] : NULL;
        const char *host =
            s->dec.target->upstream_tls == SP_UTLS_VERIFY_FULL ? s->dec.target->host : NULL;
        if (!ctx || sp_conn_start_tls(c, ctx, false, host) < 0)
            up_fail(s, "cannot set up upstream TLS");
        return;
    }
    if (s->state != PS_UP_STARTUP)
        return;
    if (sp_buf_append(&s->up_in, p, n) < 0) {
        up_fail(s, "upstream startup message too long");
        return;
    }
    for (;;) {
        sp_pg_msg m;
        const char *why;
        long used = sp_pg_read_msg(sp_buf_rptr(&s->up_in), sp_buf_unread(&s->up_in),
                                   s->cfg->max_message_size, &m, &why);
        if (used == 0)
            return;
        if (used < 0) {
            up_fail(s, why);
            return;
        }
        int rc = up_startup_msg(s, &m);
        sp_buf_consume(&s->up_in, (size_t)used);
        if (rc < 0)
            return;
        if (rc == 1) {
            /* Anything after ReadyForQuery belongs to the relay. */
            if (sp_buf_unread(&s->up_in)) {
                sp_buf rest = s->up_in;
                sp_buf_init(&s->up_in, s->cfg->max_message_size);
                relay_upstream(s, sp_buf_rptr(&rest), sp_buf_unread(&rest));
                sp_buf_free(&rest);
            }
            return;
        }
    }
}

static void up_on_drain(sp_conn *c)
{
    pg_session *s = c->owner;
    if (s->state == PS_RELAY)
        sp_conn_read_start(&s->client);
}

static void up_on_eof(sp_conn *c, const char *why)
{
    pg_session *s = c->owner;
    if (s->state == PS_CLOSING)
        return;
    if (s->state < PS_RELAY) {
        up_fail(s, why);
        return;
    }
    /* The upstream closed: after a client Terminate this is the normal end. */
    if (!strcmp(s->end_reason, "client-terminated"))
        end_session(s, "client-closed", NULL, NULL);
    else
        end_session(s, "server-closed", "08006", "the target closed the connection");
}

/* ---- relay and recording ---- */

static void rec_fail_check(pg_session *s)
{
    if (!s->rec || !sp_rec_failed(s->rec) || s->rec_failed_noted)
        return;
    s->rec_failed_noted = true;
    sp_error("pg %s: recording failed: %s", s->id, sp_rec_error(s->rec));
    json_t *ev = audit_base(s, SP_AUDIT_DATASTORE_RECORDING_GAP, "recording-gap", false);
    json_object_set_new(ev, "status_detail", json_string(sp_rec_error(s->rec)));
    sp_audit_emit(ev);
    if (s->dec.role && s->dec.role->recording == SP_REC_STRICT)
        end_session(s, "recording-failed", "58030",
                    "terminating connection: the session recording cannot be written "
                    "(recording = strict)");
}

static void rec_event(pg_session *s, enum sp_rec_type type, const sp_rec_field *f, size_t n)
{
    if (!s->rec)
        return;
    sp_rec_event(s->rec, type, sp_now_us(), f, n);
    if (sp_rec_wants_flush(s->rec))
        sp_rec_flush(s->rec, s->w->zctx, &s->w->loop);
    rec_fail_check(s);
}

static sp_rec_field fstr(const char *p)
{
    return (sp_rec_field){p, p ? strlen(p) : 0};
}

static void record_bind(pg_session *s, const uint8_t *body, uint32_t len, bool truncated)
{
    sp_pg_bind_msg b;
    if (truncated || sp_pg_parse_bind(body, len, &b) < 0) {
        /* A Bind larger than what we keep: record what it ran, not its values. */
        sp_pg_cur c;
        sp_pg_cur_init(&c, body, len);
        size_t n;
        const char *portal = sp_pg_cur_str(&c, &n);
        const char *stmt = sp_pg_cur_str(&c, &n);
        sp_rec_field f[3] = {fstr(c.bad ? "" : portal), fstr(c.bad ? "" : stmt), fstr("?")};
        rec_event(s, SP_EV_BIND, f, 3);
        return;
    }
    char count[16];
    snprintf(count, sizeof(count), "%u", b.n_params);
    sp_rec_field f[SP_REC_MAX_FIELDS];
    size_t n = 0;
    f[n++] = fstr(b.portal);
    f[n++] = fstr(b.stmt);
    f[n++] = fstr(count);
    if (s->dec.role->record_params) {
        size_t pos = 0;
        const uint8_t *v;
        int32_t vlen;
        while (n < SP_REC_MAX_FIELDS && sp_pg_bind_next_param(&b, &pos, &v, &vlen) == 1)
            f[n++] = vlen < 0 ? fstr("NULL") : (sp_rec_field){v, (size_t)vlen};
    }
    rec_event(s, SP_EV_BIND, f, n);
}

static void on_client_msg(void *arg, uint8_t type, const uint8_t *body, uint32_t len,
                          bool truncated)
{
    pg_session *s = arg;
    sp_pg_cur c;
    size_t n;
    if (type != 'X')
        s->busy = true;
    if (!body && type != 'd' && type != 'X')
        return;
    switch (type) {
    case 'Q': {
        sp_pg_cur_init(&c, body, len);
        const char *q = truncated ? (const char *)body : sp_pg_cur_str(&c, &n);
        sp_rec_field f = {q, truncated ? strnlen((const char *)body, len) : n};
        if (!c.bad || truncated)
            rec_event(s, SP_EV_QUERY, &f, 1);
        break;
    }
    case 'P': {
        sp_pg_parse_msg pm;
        if (!truncated && sp_pg_parse_parse(body, len, &pm) == 0) {
            sp_rec_field f[2] = {fstr(pm.stmt), {pm.query, pm.query_len}};
            rec_event(s, SP_EV_PARSE, f, 2);
        } else {
            sp_pg_cur_init(&c, body, len);
            const char *name = sp_pg_cur_str(&c, &n);
            const char *q = c.bad ? "" : (const char *)body + c.off;
            sp_rec_field f[2] = {fstr(c.bad ? "" : name), {q, strnlen(q, len - c.off)}};
            rec_event(s, SP_EV_PARSE, f, 2);
        }
        break;
    }
    case 'B':
        record_bind(s, body, len, truncated);
        break;
    case 'E': {
        sp_pg_execute_msg em;
        if (sp_pg_parse_execute(body, len, &em) == 0) {
            char rows[16];
            snprintf(rows, sizeof(rows), "%u", em.max_rows);
            sp_rec_field f[2] = {fstr(em.portal), fstr(rows)};
            rec_event(s, SP_EV_EXECUTE, f, 2);
        }
        break;
    }
    case 'd':
        s->copy_bytes += len;
        break;
    case 'X':
        snprintf(s->end_reason, sizeof(s->end_reason), "client-terminated");
        break;
    default:
        break;
    }
}

static void record_copy_end(pg_session *s)
{
    if (!s->copy_dir)
        return;
    char bytes[24];
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)s->copy_bytes);
    sp_rec_field f[2] = {fstr(s->copy_dir == 'i' ? "in" : "out"), fstr(bytes)};
    rec_event(s, SP_EV_COPY, f, 2);
    s->copy_dir = 0;
    s->copy_bytes = 0;
}

static void on_server_msg(void *arg, uint8_t type, const uint8_t *body, uint32_t len,
                          bool truncated)
{
    pg_session *s = arg;
    (void)truncated;
    if (!body && (type == 'C' || type == 'E' || type == 'Z'))
        return;
    switch (type) {
    case 'D':
        s->rows++;
        break;
    case 'd':
        if (s->copy_dir == 'o')
            s->copy_bytes += len;
        break;
    case 'G':
        s->copy_dir = 'i';
        s->copy_bytes = 0;
        break;
    case 'H':
        s->copy_dir = 'o';
        s->copy_bytes = 0;
        break;
    case 'C': {
        record_copy_end(s);
        const char *tag = (const char *)body;
        size_t tlen = strnlen(tag, len);
        char tagbuf[128];
        snprintf(tagbuf, sizeof(tagbuf), "%.*s", (int)(tlen < 127 ? tlen : 127), tag);
        int64_t rows = sp_pg_tag_rows(tagbuf);
        if (rows < 0 && s->rows)
            rows = (int64_t)s->rows;
        char r[24];
        snprintf(r, sizeof(r), "%lld", (long long)rows);
        sp_rec_field f[2] = {fstr(tagbuf), fstr(r)};
        rec_event(s, SP_EV_COMPLETE, f, 2);
        s->rows = 0;
        break;
    }
    case 'E': {
        record_copy_end(s);
        sp_pg_error_fields ef = {0};
        if (sp_pg_parse_error(body, len, &ef) == 0) {
            sp_rec_field f[2] = {fstr(ef.code ? ef.code : ""), fstr(ef.message ? ef.message : "")};
            rec_event(s, SP_EV_ERROR, f, 2);
        }
        s->rows = 0;
        break;
    }
    case 'Z':
        s->busy = false;
        if (len >= 1) {
            char st[2] = {(char)body[0], 0};
            sp_rec_field f = fstr(st);
            rec_event(s, SP_EV_READY, &f, 1);
        }
        break;
    default:
        break;
    }
}

static void relay_client(pg_session *s, const uint8_t *p, size_t n)
{
    const char *why = NULL;
    s->last_activity = sp_mono_us();
    s->bytes_in += n;
    if (sp_pg_scanner_feed(&s->cscan, p, n, on_client_msg, s, &why) < 0) {
        char msg[160];
        snprintf(msg, sizeof(msg), "invalid message from client: %s", why);
        end_session(s, "protocol-error", "08P01", msg);
        return;
    }
    if (s->state != PS_RELAY)
        return;
    if (sp_conn_write(&s->up, p, n) < 0)
        return;
    if (s->up.pending > SP_CONN_HIGH_WATER)
        sp_conn_read_stop(&s->client);
}

static void relay_upstream(pg_session *s, const uint8_t *p, size_t n)
{
    const char *why = NULL;
    s->bytes_out += n;
    if (sp_pg_scanner_feed(&s->sscan, p, n, on_server_msg, s, &why) < 0) {
        sp_error("pg %s: invalid message from the target: %s", s->id, why);
        end_session(s, "protocol-error", "08P01", NULL);
        return;
    }
    if (s->state != PS_RELAY)
        return;
    if (sp_conn_write(&s->client, p, n) < 0)
        return;
    if (s->client.pending > SP_CONN_HIGH_WATER)
        sp_conn_read_stop(&s->up);
}

/* ---- client callbacks ---- */

static void client_on_data(sp_conn *c, const uint8_t *p, size_t n)
{
    pg_session *s = c->owner;
    switch (s->state) {
    case PS_RELAY:
        relay_client(s, p, n);
        return;
    case PS_STARTUP:
    case PS_TLS_STARTUP:
        if (n && sp_buf_append(&s->in, p, n) < 0) {
            refuse(s, "08P01", "startup packet too long", "protocol-error");
            return;
        }
        handle_startup_packet(s);
        return;
    case PS_SASL_INITIAL:
    case PS_SASL_FINAL:
    case PS_LOOKUP:
        break;
    default:
        /* Between authentication and the relay the client is not read from. */
        if (n && sp_buf_append(&s->in, p, n) < 0)
            refuse(s, "08P01", "too much data before the session was ready", "protocol-error");
        return;
    }
    if (n && sp_buf_append(&s->in, p, n) < 0) {
        refuse(s, "08P01", "authentication message too long", "protocol-error");
        return;
    }
    while (s->state == PS_SASL_INITIAL || s->state == PS_SASL_FINAL) {
        sp_pg_msg m;
        const char *why;
        long used = sp_pg_read_msg(sp_buf_rptr(&s->in), sp_buf_unread(&s->in), 2 * SP_SCRAM_MSG_MAX,
                                   &m, &why);
        if (used == 0)
            return;
        if (used < 0) {
            auth_failed(s, "protocol-error");
            return;
        }
        if (m.type == 'X') {
            end_session(s, "client-closed", NULL, NULL);
            return;
        }
        sp_pg_msg copy = m;
        handle_sasl(s, &copy);
        if (s->state != PS_CLOSING)
            sp_buf_consume(&s->in, (size_t)used);
    }
}

static void client_on_tls(sp_conn *c, bool ok, const char *why)
{
    pg_session *s = c->owner;
    if (!ok) {
        sp_info("pg %s %s: TLS handshake failed: %s", s->id, c->peer, why);
        end_session(s, "tls-handshake-failed", NULL, NULL);
        return;
    }
    set_state(s, PS_TLS_STARTUP);
}

static void client_on_drain(sp_conn *c)
{
    pg_session *s = c->owner;
    if (s->state == PS_RELAY)
        sp_conn_read_start(&s->up);
}

static void client_on_eof(sp_conn *c, const char *why)
{
    pg_session *s = c->owner;
    (void)why;
    if (s->state == PS_CLOSING)
        return;
    end_session(s, s->state == PS_RELAY ? "client-closed" : "client-closed-during-login", NULL,
                NULL);
}

/* ---- worker entry points ---- */

bool pg_session_end_by_id(sp_worker *w, const char *session_id, const char *reason)
{
    for (pg_session *s = w->sessions; s; s = s->next) {
        if (strcmp(s->id, session_id) != 0)
            continue;
        char msg[256];
        if (!strncmp(reason, "killed:", 7))
            snprintf(msg, sizeof(msg),
                     "terminating connection: session killed by an administrator:%s", reason + 7);
        else if (!strcmp(reason, "store-unavailable"))
            snprintf(msg, sizeof(msg), "%s", STORE_OUTAGE_END_MESSAGE);
        else
            snprintf(msg, sizeof(msg), "terminating connection: %s", reason);
        end_session(s, reason, "57P01", msg);
        return true;
    }
    return false;
}

void pg_session_end_all(sp_worker *w, const char *reason)
{
    while (w->sessions) {
        char msg[160];
        snprintf(msg, sizeof(msg), "terminating connection: %s", reason);
        end_session(w->sessions, reason, "57P01", msg);
    }
}

void pg_session_flush_all(sp_worker *w)
{
    int64_t now = sp_mono_us();
    for (pg_session *s = w->sessions, *next; s; s = next) {
        next = s->next;
        if (!s->rec)
            continue;
        sp_rec_flush(s->rec, w->zctx, &w->loop);
        rec_fail_check(s);
        if (s->state == PS_CLOSING || !s->rec || now - s->last_status < SP_PROGRESS_INTERVAL_US)
            continue;
        s->last_status = now;
        sp_gateway_queue_progress(s->gw, &w->loop, s->id, (int64_t)sp_rec_chunks(s->rec));
    }
}
