#include "proxy/ssh_session.h"

#include <arpa/inet.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/policy.h"
#include "auth/sshcert.h"
#include "auth/store.h"
#include "auth/token.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/gateway.h"
#include "proxy/sftp_parse.h"
#include "recorder/audit.h"
#include "recorder/rec.h"

/* The message API is the one libssh offers for answering authentication later (after a
 * thread-pool job); its accessors are marked deprecated in favour of synchronous callbacks. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define TICK_MS 1000
#define LINGER_US (2 * 1000000LL)
#define MAX_AUTH_FAILURES 6
#define MAX_PENDING_REQUESTS 16
#define MOVE_CHUNK (32 * 1024)
/* The most one relay read takes: more than libssh 0.10 ever holds for a channel stream when
 * we read everything it holds each time (one window of 1,280,000 bytes, see move()). */
#define RELAY_BUF_MAX (2 * 1024 * 1024)
#define DOPOLL_ROUNDS 64
#define RELAY_PASSES_MAX 32
/* The target leg prefers AES-GCM: AES-NI makes it several times cheaper than ChaCha20-Poly1305
 * for the gateway, which ciphers every byte twice, and it is the FIPS-approved choice. The rest
 * of libssh's list stays as fallback for targets that offer no GCM. */
#define UP_CIPHERS                                                                                 \
    "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr,"      \
    "aes192-ctr,aes128-ctr"
#define TARGET_CERT_LIFETIME_S 300
#define TARGET_CERT_BACKDATE_S 30
#define RECORDING_FAILED_MESSAGE "the session recording cannot be written (recording = strict)"
#define STORE_OUTAGE_MESSAGE                                                                       \
    "store-unavailable (the store has been unavailable longer than store_outage_grace, so "        \
    "revocations cannot be checked)"

typedef enum ss_state {
    SS_KEX,        /* key exchange with the client */
    SS_AUTH,       /* waiting for a credential */
    SS_AUTHORIZE,  /* credential and policy job on the thread pool */
    SS_UP_CONNECT, /* connecting and exchanging keys with the target */
    SS_UP_AUTH,    /* authenticating to the target with the minted certificate */
    SS_RELAY,      /* channels */
    SS_CLOSING,    /* flushing the last bytes to the client */
    SS_DONE,
} ss_state;

static const char *const state_names[] = {
    "kex", "auth", "authorize", "up-connect", "up-auth", "relay", "closing", "done",
};

typedef enum ch_state { CH_OPENING, CH_OPEN, CH_CLOSED } ch_state;
/* CK_AGENT: an auth-agent@openssh.com channel the target opened (agent forwarding), relayed to
 * a channel the gateway opens to the client. */
typedef enum ch_kind { CK_SESSION, CK_DIRECT_TCPIP, CK_AGENT } ch_kind;

typedef struct ssh_chan {
    struct ssh_chan *next;
    struct ssh_sess *s;
    int num; /* the channel number in the recording */
    char num_text[12];
    ch_kind kind;
    ch_state state;
    ssh_channel cl, up;
    ssh_message open_msg;
    ssh_message pending[MAX_PENDING_REQUESTS]; /* client requests, answered in order */
    size_t n_pending;
    char dest_host[256];
    int dest_port;
    bool has_pty;
    bool is_sftp;
    bool request_waiting; /* a forwarded request waits for the target's answer */
    bool agent_wanted;    /* the client asked for agent forwarding; not yet passed on */
    bool eof_to_up, eof_to_cl;
    bool exit_sent;
    bool exit_status_set;
    int exit_status;
    char exit_signal[32];
    uint64_t bytes_in, bytes_out; /* client->target, target->client */
    /* What was read from one side and not yet taken by the other, per direction: target
     * stdout, target stderr, client input. See move() for why this exists. */
    struct relay_buf {
        uint8_t *data;
        size_t cap, len, off;
    } relay[3];
    sp_sftp sftp;
    struct ssh_channel_callbacks_struct cl_cb, up_cb;
} ssh_chan;

enum auth_method { AM_CERT, AM_TOKEN };

typedef struct ssh_sess {
    struct ssh_sess *prev, *next;
    sp_worker *w;
    sp_gateway *gw;
    sp_config *cfg;
    ss_state state;
    ssh_session cl, up;
    ssh_event ev;
    /* Bytes libssh read from and wrote to each socket: how drive() tells that a relay pass
     * changed nothing (see relay_until_quiet). */
    struct ssh_counter_struct cl_sock, up_sock;
    uv_poll_t cl_poll, up_poll;
    bool cl_poll_init, up_poll_init;
    int cl_events, up_events;
    uv_timer_t tick;
    int handles; /* polls and timer not yet closed */
    int jobs;
    bool driving;

    char id[40];
    char peer[64];
    char user[SP_NAME_MAX * 2 + 2];
    char login[SP_NAME_MAX];
    char target_name[SP_NAME_MAX];
    char identity[SP_NAME_MAX];
    char user_kind[16];
    char cred_id[SP_CRED_ID_LEN];
    char auth_method_name[16];
    uint8_t cert_sha256[SP_SCRAM_KEY_LEN]; /* the client certificate, for its credential */
    int auth_failures;
    bool banner_sent;
    bool kbd_user_ok; /* the keyboard-interactive request named LOGIN+TARGET */
    ssh_message held; /* the client's auth request, answered once the target accepted us */

    sp_decision dec;
    sp_rec *rec;
    bool rec_failed_noted;
    bool row_started;
    struct sockaddr_storage up_addr;
    ssh_key up_key;     /* per-session key with its certificate */
    ssh_key target_key; /* the pinned host key */
    sp_live live;
    bool live_registered;

    ssh_chan *chans;
    int next_chan_num;
    struct ssh_callbacks_struct up_cb; /* the target opening agent channels */
    bool agent_forwarded;              /* an auth-agent-req went to the target */
    int64_t started_at;
    int64_t started_mono;
    int64_t up_connect_mono; /* when the connection to the target began (connect_timeout) */
    int64_t last_activity;
    int64_t last_keepalive;
    int64_t last_status; /* mono us of the last sessions-index update */
    int64_t closing_since;
    uint64_t bytes_in, bytes_out;
    char end_reason[160];
} ssh_sess;

static void end_session(ssh_sess *s, const char *reason);
static void drive(ssh_sess *s);
static void on_tick(uv_timer_t *t);

/* ---- small helpers ---- */

static void set_state(ssh_sess *s, ss_state st)
{
    sp_debug("ssh %s %s: %s -> %s", s->id, s->peer, state_names[s->state], state_names[st]);
    s->state = st;
}

static json_t *audit_base(ssh_sess *s, enum sp_audit_activity activity, const char *code, bool ok)
{
    json_t *ev = sp_audit_new(activity, code, ok, s->identity[0] ? s->identity : "-");
    json_object_set_new(ev, "user",
                        sp_audit_user(s->identity[0] ? s->identity : "-",
                                      s->user_kind[0] ? s->user_kind : "unknown"));
    json_t *src = json_object();
    json_object_set_new(src, "ip_port", json_string(s->peer));
    json_object_set_new(ev, "src_endpoint", src);
    json_t *sess = json_object();
    json_object_set_new(sess, "uid", json_string(s->id));
    json_object_set_new(ev, "session", sess);
    if (s->target_name[0]) {
        json_t *dst = json_object();
        json_object_set_new(dst, "target", json_string(s->target_name));
        json_object_set_new(dst, "login", json_string(s->login));
        json_object_set_new(ev, "dst_endpoint", dst);
    }
    json_object_set_new(ev, "protocol", json_string("ssh"));
    return ev;
}

static void rec_fail_check(ssh_sess *s)
{
    if (!s->rec || !sp_rec_failed(s->rec) || s->rec_failed_noted)
        return;
    s->rec_failed_noted = true;
    sp_error("ssh %s: recording failed: %s", s->id, sp_rec_error(s->rec));
    json_t *ev = audit_base(s, SP_AUDIT_SSH_RECORDING_GAP, "recording-gap", false);
    json_object_set_new(ev, "status_detail", json_string(sp_rec_error(s->rec)));
    sp_audit_emit(ev);
    if (s->dec.role && s->dec.role->recording == SP_REC_STRICT)
        end_session(s, "recording-failed");
}

static void rec_flush_if_needed(ssh_sess *s)
{
    if (s->rec && sp_rec_wants_flush(s->rec)) {
        sp_rec_flush(s->rec, s->w->zctx, &s->w->loop);
        rec_fail_check(s);
    }
}

/* One event for a channel: the channel number, then string fields (NULL-terminated). */
static void rec_chan(ssh_chan *c, enum sp_rec_type type, ...)
{
    ssh_sess *s = c->s;
    if (!s->rec)
        return;
    sp_rec_field f[SP_REC_MAX_FIELDS];
    size_t n = 0;
    f[n++] = (sp_rec_field){c->num_text, strlen(c->num_text)};
    va_list ap;
    va_start(ap, type);
    const char *v;
    while (n < SP_REC_MAX_FIELDS && (v = va_arg(ap, const char *)) != NULL)
        f[n++] = (sp_rec_field){v, strlen(v)};
    va_end(ap);
    sp_rec_event(s->rec, type, sp_now_us(), f, n);
    rec_flush_if_needed(s);
}

/* Terminal bytes, split into events of at most record_max_text so nothing is cut. */
static void rec_bytes(ssh_chan *c, enum sp_rec_type type, const uint8_t *p, size_t n)
{
    ssh_sess *s = c->s;
    if (!s->rec)
        return;
    size_t max = s->cfg->record_max_text ? s->cfg->record_max_text : n;
    int64_t now = sp_now_us();
    while (n > 0) {
        size_t k = n < max ? n : max;
        sp_rec_field f[2] = {{c->num_text, strlen(c->num_text)}, {p, k}};
        sp_rec_event(s->rec, type, now, f, 2);
        p += k;
        n -= k;
        rec_flush_if_needed(s);
        if (!s->rec)
            return;
    }
}

static void on_sftp_op(void *arg, const sp_sftp_op *op)
{
    ssh_chan *c = arg;
    char bytes[24];
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)op->bytes);
    rec_chan(c, SP_EV_SFTP, op->op, op->path, op->path2, bytes, NULL);
}

/* ---- lifecycle ---- */

static void maybe_free(ssh_sess *s)
{
    if (s->handles > 0 || s->jobs > 0 || s->state != SS_DONE)
        return;
    sp_config_unref(s->cfg);
    free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    ssh_sess *s = h->data;
    s->handles--;
    maybe_free(s);
}

static void unlink_session(ssh_sess *s)
{
    sp_worker *w = s->w;
    if (s->prev)
        s->prev->next = s->next;
    else if (w->ssh_sessions == s)
        w->ssh_sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    s->prev = s->next = NULL;
    w->n_ssh_sessions--;
}

typedef struct authz {
    sp_decision dec;
    struct sockaddr_storage up_addr;
    sp_rec *rec;
    bool row_started;
    char identity[SP_NAME_MAX];
    char user_kind[16];
    char cred_id[SP_CRED_ID_LEN];
} authz;

enum job_outcome {
    JO_OK,
    JO_AUTH_FAILED, /* the credential is not good: generic refusal */
    JO_DENIED,      /* a good credential without a grant for this login and target */
    JO_STORE,
    JO_RECORDING,
    JO_RESOLVE,
};

typedef struct job {
    uv_work_t req;
    ssh_sess *s;
    int status;
    char err[256];
    char reason[300];
    int64_t chunks;
    enum auth_method method;
    char token[SP_TOKEN_MAX];
    uint8_t cert_sha256[SP_SCRAM_KEY_LEN];
    authz az;
} job;

static job *job_new(ssh_sess *s)
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
    ssh_sess *s = j->s;
    OPENSSL_cleanse(j->token, sizeof(j->token));
    free(j);
    s->jobs--;
    maybe_free(s);
}

static void end_row_work(uv_work_t *req)
{
    job *j = req->data;
    ssh_sess *s = j->s;
    if (sp_store_session_end(s->gw->store, s->id, sp_now_us(), j->reason, j->chunks, j->err,
                             sizeof(j->err)) < 0)
        sp_error("ssh %s: sessions index not updated: %s", s->id, j->err);
}

static void end_row_after(uv_work_t *req, int status)
{
    (void)status;
    job_done(req->data);
}

static void on_rec_closed(void *arg, int status)
{
    ssh_sess *s = arg;
    if (status < 0)
        sp_error("ssh %s: recording not sealed cleanly (%s)", s->id, uv_strerror(status));
    s->jobs--;
    maybe_free(s);
}

/* Seal the recording and close the sessions-index row, for what exists now. */
static void release_session_state(ssh_sess *s)
{
    int64_t chunks = 0;
    if (s->rec) {
        sp_rec_eventv(s->rec, SP_EV_SESSION_END, sp_now_us(), s->end_reason, NULL);
        sp_rec_flush(s->rec, s->w->zctx, &s->w->loop);
        chunks = (int64_t)sp_rec_chunks(s->rec);
        s->jobs++;
        sp_rec_close(s->rec, s->w->zctx, &s->w->loop, s->end_reason, on_rec_closed, s);
        s->rec = NULL;
    }
    if (!s->row_started)
        return;
    s->row_started = false;
    job *j = job_new(s);
    if (!j)
        return;
    j->chunks = chunks;
    snprintf(j->reason, sizeof(j->reason), "%s", s->end_reason);
    if (uv_queue_work(&s->w->loop, &j->req, end_row_work, end_row_after) < 0)
        job_done(j);
}

/* libssh keeps a channel we freed, with its callback list, until the peer's close arrives,
 * and calls those callbacks meanwhile (window adjusts, and every channel after a key
 * re-exchange): our callback structs live in c, so they must be unregistered before c goes. */
static void unregister_callbacks(ssh_chan *c)
{
    if (c->cl)
        ssh_remove_channel_callbacks(c->cl, &c->cl_cb);
    if (c->up)
        ssh_remove_channel_callbacks(c->up, &c->up_cb);
}

static void free_chan(ssh_chan *c)
{
    unregister_callbacks(c);
    for (size_t i = 0; i < SP_ARRAY_LEN(c->relay); i++)
        free(c->relay[i].data);
    if (c->open_msg)
        ssh_message_free(c->open_msg);
    for (size_t i = 0; i < c->n_pending; i++)
        ssh_message_free(c->pending[i]);
    if (c->is_sftp)
        sp_sftp_free(&c->sftp);
    free(c);
}

/* Last step of an ended session: handles closed first (so no poll watches a closed fd), then
 * the libssh sessions freed (which closes the sockets). */
static void finish(ssh_sess *s)
{
    if (s->state == SS_DONE)
        return;
    set_state(s, SS_DONE);
    if (s->cl_poll_init)
        uv_close((uv_handle_t *)&s->cl_poll, on_handle_closed);
    if (s->up_poll_init)
        uv_close((uv_handle_t *)&s->up_poll, on_handle_closed);
    uv_close((uv_handle_t *)&s->tick, on_handle_closed);
    while (s->chans) {
        ssh_chan *c = s->chans;
        s->chans = c->next;
        free_chan(c);
    }
    if (s->held)
        ssh_message_free(s->held);
    s->held = NULL;
    if (s->up) {
        ssh_event_remove_session(s->ev, s->up);
        ssh_disconnect(s->up);
        ssh_free(s->up);
    }
    if (s->cl) {
        ssh_event_remove_session(s->ev, s->cl);
        ssh_disconnect(s->cl);
        ssh_free(s->cl);
    }
    if (s->ev)
        ssh_event_free(s->ev);
    ssh_key_free(s->up_key);
    ssh_key_free(s->target_key);
    s->cl = s->up = NULL;
    maybe_free(s);
}

/* Every way a session ends goes through here, once, with its reason. The client gets a line on
 * each terminal saying why, the target connection goes at once, the client one after its last
 * bytes are out (bounded by LINGER_US). */
static void end_session(ssh_sess *s, const char *reason)
{
    if (s->state >= SS_CLOSING)
        return;
    bool was_relay = s->state == SS_RELAY;
    snprintf(s->end_reason, sizeof(s->end_reason), "%s", reason);
    sp_info("ssh %s %s: closing because: %s", s->id, s->peer, reason);
    set_state(s, SS_CLOSING);
    s->closing_since = sp_mono_us();

    bool client_gone = !s->cl || (ssh_get_status(s->cl) & (SSH_CLOSED | SSH_CLOSED_ERROR));
    bool rec_failed = strcmp(reason, "recording-failed") == 0;
    bool store_out = strcmp(reason, "store-unavailable") == 0;
    const char *why = rec_failed  ? RECORDING_FAILED_MESSAGE
                      : store_out ? STORE_OUTAGE_MESSAGE
                                  : reason;
    char msg[256];
    snprintf(msg, sizeof(msg), "sallyport: session ended: %s", why);
    if (!client_gone)
        ssh_session_set_disconnect_message(s->cl, msg);
    for (ssh_chan *c = s->chans; c; c = c->next) {
        if (c->state != CH_OPEN || !c->cl || client_gone)
            continue;
        if (!ssh_channel_is_closed(c->cl)) {
            /* A terminal shows why; so does the stderr of a command whose recording failed
             * or whose store stayed away past the grace, since the client may close before
             * the disconnect reason arrives. */
            bool tell = (c->has_pty && strcmp(reason, "client-closed") != 0) ||
                        ((rec_failed || store_out) && c->kind == CK_SESSION && !c->is_sftp);
            if (tell) {
                char line[300];
                snprintf(line, sizeof(line), "\r\n%s\r\n", msg);
                ssh_channel_write_stderr(c->cl, line, (uint32_t)strlen(line));
            }
            ssh_channel_send_eof(c->cl);
            ssh_channel_close(c->cl);
        }
        rec_chan(c, SP_EV_CHANNEL_CLOSE, "", "", NULL);
        c->state = CH_CLOSED;
    }
    if (s->up) {
        ssh_event_remove_session(s->ev, s->up);
        if (s->up_poll_init) {
            uv_close((uv_handle_t *)&s->up_poll, on_handle_closed);
            s->up_poll_init = false;
        }
        ssh_disconnect(s->up);
        ssh_free(s->up);
        s->up = NULL;
        for (ssh_chan *c = s->chans; c; c = c->next)
            c->up = NULL;
    }
    if (s->live_registered) {
        sp_gateway_live_remove(s->gw, &s->live);
        s->live_registered = false;
    }
    unlink_session(s);
    release_session_state(s);
    if (was_relay) {
        json_t *ev = audit_base(s, SP_AUDIT_SSH_CLOSE, "session-end", true);
        json_object_set_new(ev, "end_reason", json_string(reason));
        json_object_set_new(ev, "bytes_in", json_integer((json_int_t)s->bytes_in));
        json_object_set_new(ev, "bytes_out", json_integer((json_int_t)s->bytes_out));
        json_object_set_new(ev, "duration_ms",
                            json_integer((sp_mono_us() - s->started_mono) / 1000));
        sp_audit_emit(ev);
    }
    if (client_gone)
        finish(s);
}

/* ---- polling: libssh reads and writes the sockets; libuv says when ---- */

static void on_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    drive(h->data);
}

static void watch(ssh_sess *s, uv_poll_t *p, ssh_session x, int *cur, bool connecting)
{
    int want = UV_READABLE;
    if (connecting || (ssh_get_poll_flags(x) & SSH_WRITE_PENDING))
        want |= UV_WRITABLE;
    if (want == *cur)
        return;
    *cur = want;
    uv_poll_start(p, want, on_poll);
}

static void update_polls(ssh_sess *s)
{
    if (s->state == SS_DONE)
        return;
    if (s->cl_poll_init && s->cl)
        watch(s, &s->cl_poll, s->cl, &s->cl_events, false);
    if (s->up_poll_init && s->up)
        watch(s, &s->up_poll, s->up, &s->up_events, s->state == SS_UP_CONNECT);
}

/* ---- client authentication ---- */

/* The wire-format blob of a key (for a certificate key: the certificate). libssh 0.10 exports
 * it only in base64. */
static int key_blob(ssh_key key, uint8_t **out, size_t *len)
{
    char *b64 = NULL;
    *out = NULL;
    if (!key || ssh_pki_export_pubkey_base64(key, &b64) != SSH_OK || !b64)
        return -1;
    size_t n = strlen(b64);
    uint8_t *blob = malloc(n / 4 * 3 + 3);
    int got = blob ? EVP_DecodeBlock(blob, (const unsigned char *)b64, (int)n) : -1;
    if (got < 0) {
        free(blob);
        ssh_string_free_char(b64);
        return -1;
    }
    size_t pad = 0;
    while (n > 0 && b64[n - 1] == '=' && pad < 2) {
        pad++;
        n--;
    }
    ssh_string_free_char(b64);
    *out = blob;
    *len = (size_t)got - pad;
    return 0;
}

/* LOGIN+TARGET, split at the last '+' (logins may contain '+', target names may not). */
static bool split_user(ssh_sess *s, const char *user)
{
    snprintf(s->user, sizeof(s->user), "%s", user ? user : "");
    const char *plus = strrchr(s->user, '+');
    if (!plus || plus == s->user || !plus[1])
        return false;
    size_t llen = (size_t)(plus - s->user);
    if (llen >= sizeof(s->login) || strlen(plus + 1) >= sizeof(s->target_name))
        return false;
    memcpy(s->login, s->user, llen);
    s->login[llen] = '\0';
    snprintf(s->target_name, sizeof(s->target_name), "%s", plus + 1);
    return sp_name_valid(s->target_name);
}

static void auth_refuse(ssh_sess *s, ssh_message m, const char *reason)
{
    json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGON, "logon", false);
    json_object_set_new(ev, "auth_protocol", json_string(s->auth_method_name));
    json_object_set_new(ev, "status_detail", json_string(reason));
    sp_audit_emit(ev);
    sp_info("ssh %s %s: authentication refused: %s", s->id, s->peer, reason);
    s->identity[0] = '\0';
    ssh_message_auth_set_methods(m, SSH_AUTH_METHOD_PUBLICKEY | SSH_AUTH_METHOD_PASSWORD |
                                        SSH_AUTH_METHOD_INTERACTIVE);
    ssh_message_reply_default(m);
    ssh_message_free(m);
    if (++s->auth_failures >= MAX_AUTH_FAILURES)
        end_session(s, "auth-failed: too many attempts");
}

/* The certificate the client presents: signed by the user CA, valid now, a user certificate
 * whose principal is the identity named in its key id "IDENTITY cred=<id>". */
static int check_client_cert(ssh_sess *s, ssh_key key, char *why, size_t whylen)
{
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    if (!s->w->ssh_user_ca_blob) {
        snprintf(why, whylen, "no ssh_user_ca_key configured: certificates are not accepted");
        return -1;
    }
    if (key_blob(key, &blob, &blob_len) < 0) {
        snprintf(why, whylen, "cannot read the offered key");
        return -1;
    }
    sp_ssh_cert cert;
    char err[200];
    int rc = -1;
    if (sp_ssh_cert_parse(blob, blob_len, &cert, err, sizeof(err)) < 0) {
        snprintf(why, whylen, "not a certificate: %s", err);
        goto out;
    }
    const char *sep = strstr(cert.key_id, " cred=");
    if (!sep || (size_t)(sep - cert.key_id) >= sizeof(s->identity) ||
        strlen(sep + 6) >= sizeof(s->cred_id)) {
        snprintf(why, whylen, "certificate key id \"%.120s\" does not name a sallyport credential",
                 cert.key_id);
        goto out;
    }
    char identity[SP_NAME_MAX];
    memcpy(identity, cert.key_id, (size_t)(sep - cert.key_id));
    identity[sep - cert.key_id] = '\0';
    if (sp_ssh_cert_check(&cert, s->w->ssh_user_ca_blob, s->w->ssh_user_ca_len, identity,
                          (uint64_t)(sp_now_us() / 1000000), err, sizeof(err)) < 0) {
        snprintf(why, whylen, "certificate refused: %s", err);
        goto out;
    }
    snprintf(s->identity, sizeof(s->identity), "%s", identity);
    snprintf(s->cred_id, sizeof(s->cred_id), "%s", sep + 6);
    SHA256(blob, blob_len, s->cert_sha256);
    rc = 0;
out:
    free(blob);
    return rc;
}

static void start_authorize(ssh_sess *s, ssh_message m, enum auth_method method, const char *token);
static void tell_client(ssh_sess *s, const char *text);

static void handle_auth(ssh_sess *s, ssh_message m)
{
    /* The banner may only come once the client asked for authentication (RFC 4252 5.4). */
    if (!s->banner_sent) {
        s->banner_sent = true;
        if (s->cfg->ssh_banner && *s->cfg->ssh_banner) {
            char text[1024];
            snprintf(text, sizeof(text), "%s\n", s->cfg->ssh_banner);
            tell_client(s, text);
        }
    }
    int method = ssh_message_subtype(m);
    /* An answer to the keyboard-interactive prompt carries no user name: it belongs to the
     * request that asked for the prompt. */
    bool kbd_answer =
        method == SSH_AUTH_METHOD_INTERACTIVE && ssh_message_auth_kbdint_is_response(m);
    bool user_ok = kbd_answer ? s->kbd_user_ok : split_user(s, ssh_message_auth_user(m));
    switch (method) {
    case SSH_AUTH_METHOD_PUBLICKEY: {
        snprintf(s->auth_method_name, sizeof(s->auth_method_name), "certificate");
        char why[256];
        if (!user_ok) {
            auth_refuse(s, m, "username is not LOGIN+TARGET");
            return;
        }
        if (check_client_cert(s, ssh_message_auth_pubkey(m), why, sizeof(why)) < 0) {
            auth_refuse(s, m, why);
            return;
        }
        enum ssh_publickey_state_e st = ssh_message_auth_publickey_state(m);
        if (st == SSH_PUBLICKEY_STATE_NONE) {
            ssh_message_auth_reply_pk_ok_simple(m);
            ssh_message_free(m);
            return;
        }
        if (st != SSH_PUBLICKEY_STATE_VALID) {
            auth_refuse(s, m, "signature with the certificate's key does not verify");
            return;
        }
        start_authorize(s, m, AM_CERT, NULL);
        return;
    }
    case SSH_AUTH_METHOD_PASSWORD:
        snprintf(s->auth_method_name, sizeof(s->auth_method_name), "token");
        if (!user_ok) {
            auth_refuse(s, m, "username is not LOGIN+TARGET");
            return;
        }
        start_authorize(s, m, AM_TOKEN, ssh_message_auth_password(m));
        return;
    case SSH_AUTH_METHOD_INTERACTIVE:
        snprintf(s->auth_method_name, sizeof(s->auth_method_name), "token");
        if (!kbd_answer) {
            s->kbd_user_ok = user_ok;
            const char *prompts[] = {"sallyport token: "};
            char echo[] = {0};
            ssh_message_auth_interactive_request(m, "sallyport", "", 1, prompts, echo);
            ssh_message_free(m);
            return;
        }
        if (!user_ok || ssh_userauth_kbdint_getnanswers(s->cl) < 1) {
            auth_refuse(s, m, !user_ok ? "username is not LOGIN+TARGET" : "no token given");
            return;
        }
        start_authorize(s, m, AM_TOKEN, ssh_userauth_kbdint_getanswer(s->cl, 0));
        return;
    default:
        ssh_message_auth_set_methods(m, SSH_AUTH_METHOD_PUBLICKEY | SSH_AUTH_METHOD_PASSWORD |
                                            SSH_AUTH_METHOD_INTERACTIVE);
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
}

/* ---- authentication of the credential, policy, recording (thread pool) ---- */

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

/* Who is this? For a token, the credential it names says; for a certificate, its credential
 * must still be live. Sets j->status to JO_AUTH_FAILED with the reason in j->reason. */
static int authenticate_credential(job *j, int64_t now)
{
    const ssh_sess *s = j->s;
    sp_store *st = s->gw->store;
    authz *az = &j->az;
    sp_credential cred;
    char err[256];
    if (j->method == AM_CERT) {
        int live = sp_store_cred_live(st, az->cred_id, az->identity, now, j->cert_sha256, err,
                                      sizeof(err));
        if (live < 0) {
            snprintf(j->err, sizeof(j->err), "%s", err);
            j->status = JO_STORE;
            return -1;
        }
        if (live != 0) {
            snprintf(j->reason, sizeof(j->reason), "%s", err);
            j->status = JO_AUTH_FAILED;
            return -1;
        }
    }
    if (j->method == AM_TOKEN && sp_token_parse_id(j->token, az->cred_id) < 0) {
        snprintf(j->reason, sizeof(j->reason), "password is not shaped like a sallyport token");
        j->status = JO_AUTH_FAILED;
        return -1;
    }
    int rc = sp_store_cred_get(st, az->cred_id, &cred, j->err, sizeof(j->err));
    if (rc < 0) {
        j->status = JO_STORE;
        return -1;
    }
    if (rc == SP_STORE_NOT_FOUND) {
        snprintf(j->reason, sizeof(j->reason), "unknown credential %s", az->cred_id);
        j->status = JO_AUTH_FAILED;
        return -1;
    }
    if (j->method == AM_CERT && strcmp(cred.identity, az->identity) != 0) {
        snprintf(j->reason, sizeof(j->reason), "credential %s belongs to another identity",
                 az->cred_id);
        j->status = JO_AUTH_FAILED;
        return -1;
    }
    if (cred.revoked_at) {
        snprintf(j->reason, sizeof(j->reason), "credential %s is revoked", az->cred_id);
        j->status = JO_AUTH_FAILED;
        return -1;
    }
    snprintf(az->identity, sizeof(az->identity), "%s", cred.identity);
    if (j->method == AM_TOKEN) {
        rc = sp_token_verify(st, az->identity, j->token, now, err, sizeof(err));
        if (rc < 0) {
            snprintf(j->err, sizeof(j->err), "%s", err);
            j->status = JO_STORE;
            return -1;
        }
        if (rc != 0) {
            snprintf(j->reason, sizeof(j->reason), "%s", err);
            j->status = JO_AUTH_FAILED;
            return -1;
        }
    }
    sp_identity ident;
    if (sp_store_identity_get(st, az->identity, &ident, err, sizeof(err)) == 0)
        snprintf(az->user_kind, sizeof(az->user_kind), "%s", ident.kind);
    return 0;
}

static void authorize_work(uv_work_t *req)
{
    job *j = req->data;
    const ssh_sess *s = j->s;
    authz *az = &j->az;
    sp_gateway *g = s->gw;
    int64_t now = sp_now_us();
    if (atomic_load(&g->store_down)) {
        snprintf(j->err, sizeof(j->err), "the store is in an outage (see the store-outage event)");
        j->status = JO_STORE;
        return;
    }
    if (authenticate_credential(j, now) < 0)
        return;
    if (sp_policy_decide(g->store, s->cfg, az->identity, s->target_name, s->login, now, &az->dec,
                         j->err, sizeof(j->err)) < 0) {
        j->status = JO_STORE;
        return;
    }
    if (!az->dec.allowed) {
        j->status = JO_DENIED;
        return;
    }
    if (az->dec.target->kind != SP_TARGET_SSH) {
        az->dec.allowed = false;
        snprintf(az->dec.reason, sizeof(az->dec.reason), "target-not-ssh");
        j->status = JO_DENIED;
        return;
    }
    if (resolve_target(az->dec.target, &az->up_addr, j->err, sizeof(j->err)) < 0) {
        j->status = JO_RESOLVE;
        return;
    }
    sp_rec_meta meta = {
        .session_id = s->id,
        .kind = "ssh",
        .identity = az->identity,
        .target = s->target_name,
        .database = s->login,
        .db_user = s->login,
        .client_addr = s->peer,
        .started_at = s->started_at,
    };
    char rerr[256];
    az->rec =
        sp_rec_create(s->cfg->recordings_dir, &meta, s->cfg->record_max_text, rerr, sizeof(rerr));
    if (!az->rec) {
        snprintf(j->err, sizeof(j->err), "%s", rerr);
        if (az->dec.role->recording == SP_REC_STRICT) {
            j->status = JO_RECORDING;
            return;
        }
    }
    sp_session_row row = {0};
    snprintf(row.id, sizeof(row.id), "%s", s->id);
    snprintf(row.identity, sizeof(row.identity), "%s", az->identity);
    snprintf(row.kind, sizeof(row.kind), "ssh");
    snprintf(row.target, sizeof(row.target), "%s", s->target_name);
    snprintf(row.database, sizeof(row.database), "%s", s->login);
    snprintf(row.role, sizeof(row.role), "%s", az->dec.role->name);
    snprintf(row.cred_id, sizeof(row.cred_id), "%s", az->cred_id);
    row.binding_id = az->dec.binding_id;
    snprintf(row.client_addr, sizeof(row.client_addr), "%s", s->peer);
    if (az->rec)
        snprintf(row.recording_path, sizeof(row.recording_path), "%s", sp_rec_path(az->rec));
    row.started_at = s->started_at;
    row.gateway_pid = g->pid;
    if (sp_store_session_start(g->store, &row, j->err, sizeof(j->err)) < 0) {
        j->status = JO_STORE;
        return;
    }
    az->row_started = true;
    j->status = JO_OK;
}

static void up_start(ssh_sess *s);

static void audit_authorize(ssh_sess *s, int outcome, const char *err)
{
    json_t *ev = audit_base(s, SP_AUDIT_SESSION_ASSIGN_PRIVILEGES, "authorize", outcome == JO_OK);
    if (s->dec.role)
        json_object_set_new(ev, "role", json_string(s->dec.role->name));
    if (outcome == JO_DENIED)
        json_object_set_new(ev, "status_detail", json_string(s->dec.reason));
    else if (outcome != JO_OK)
        json_object_set_new(ev, "status_detail", json_string(err));
    if (s->rec)
        json_object_set_new(ev, "recording", json_string(sp_rec_path(s->rec)));
    sp_audit_emit(ev);
}

/* A line the OpenSSH client prints before its own error. Only after the client proved who it
 * is: before that every refusal looks the same. */
static void tell_client(ssh_sess *s, const char *text)
{
    ssh_string b = ssh_string_from_char(text);
    if (b) {
        ssh_send_issue_banner(s->cl, b);
        ssh_string_free(b);
    }
}

/* Applies the authorization's result; false when the session was already gone. */
static bool authorize_apply(job *j, int status)
{
    ssh_sess *s = j->s;
    int outcome = status < 0 ? JO_STORE : j->status;
    char err[256], reason[300];
    snprintf(err, sizeof(err), "%s", j->err);
    snprintf(reason, sizeof(reason), "%s", j->reason);
    s->dec = j->az.dec;
    s->up_addr = j->az.up_addr;
    s->rec = j->az.rec;
    s->row_started = j->az.row_started;
    if (j->az.identity[0])
        snprintf(s->identity, sizeof(s->identity), "%s", j->az.identity);
    snprintf(s->user_kind, sizeof(s->user_kind), "%s", j->az.user_kind);
    if (j->az.cred_id[0])
        snprintf(s->cred_id, sizeof(s->cred_id), "%s", j->az.cred_id);
    if (s->state != SS_AUTHORIZE) {
        /* The client left while the job ran: undo what it made. */
        release_session_state(s);
        job_done(j);
        return false;
    }
    job_done(j);
    ssh_message m = s->held;
    s->held = NULL;
    set_state(s, SS_AUTH);

    if (outcome == JO_AUTH_FAILED) {
        auth_refuse(s, m, reason);
        return true;
    }
    json_t *ev = audit_base(s, SP_AUDIT_AUTH_LOGON, "logon", outcome != JO_STORE);
    json_object_set_new(ev, "auth_protocol", json_string(s->auth_method_name));
    json_object_set_new(ev, "credential", json_string(s->cred_id));
    sp_audit_emit(ev);
    audit_authorize(s, outcome, err);

    char msg[384];
    switch (outcome) {
    case JO_OK:
        break;
    case JO_DENIED:
        snprintf(msg, sizeof(msg),
                 "sallyport: no grant for login \"%s\" on \"%s\" held by \"%s\" (check the login "
                 "and target names, or ask for access)\n",
                 s->login, s->target_name, s->identity);
        tell_client(s, msg);
        auth_refuse(s, m, s->dec.reason);
        return true;
    case JO_RECORDING:
        sp_error("ssh %s: recording cannot be written: %s", s->id, err);
        tell_client(s, "sallyport: session refused: its recording cannot be written\n");
        auth_refuse(s, m, "recording-failed");
        return true;
    case JO_RESOLVE:
        sp_error("ssh %s: %s", s->id, err);
        tell_client(s, "sallyport: cannot reach the target\n");
        auth_refuse(s, m, "upstream-unreachable");
        return true;
    default:
        sp_error("ssh %s: store error while authorizing: %s", s->id, err);
        tell_client(s, "sallyport: the store is unavailable; try again later\n");
        auth_refuse(s, m, "store-unavailable");
        return true;
    }
    if (!s->rec) {
        json_t *gap = audit_base(s, SP_AUDIT_SSH_RECORDING_GAP, "recording-gap", false);
        json_object_set_new(gap, "status_detail", json_string(err));
        sp_audit_emit(gap);
    }
    snprintf(s->live.id, sizeof(s->live.id), "%s", s->id);
    snprintf(s->live.identity, sizeof(s->live.identity), "%s", s->identity);
    snprintf(s->live.target, sizeof(s->live.target), "%s", s->target_name);
    snprintf(s->live.database, sizeof(s->live.database), "%s", s->login);
    s->live.worker = s->w;
    if (sp_gateway_live_add(s->gw, &s->live, s->cfg->max_client_conn) < 0) {
        tell_client(s, "sallyport: too many sessions already\n");
        ssh_message_reply_default(m);
        ssh_message_free(m);
        end_session(s, "too-many-clients");
        return true;
    }
    s->live_registered = true;
    s->held = m;
    if (s->rec)
        sp_rec_eventv(s->rec, SP_EV_SESSION_START, sp_now_us(), "user", s->identity, "target",
                      s->target_name, "login", s->login, "client_addr", s->peer, "auth",
                      s->auth_method_name, "credential", s->cred_id, NULL);
    up_start(s);
    return true;
}

/* A refusal's answer can sit in libssh's output buffer (the issue banner before it took the
 * socket): drive the session now rather than at the next tick, a second later. */
static void authorize_after(uv_work_t *req, int status)
{
    job *j = req->data;
    ssh_sess *s = j->s;
    if (authorize_apply(j, status))
        drive(s);
}

static void start_authorize(ssh_sess *s, ssh_message m, enum auth_method method, const char *token)
{
    job *j = job_new(s);
    if (!j) {
        auth_refuse(s, m, "out of memory");
        return;
    }
    j->method = method;
    if (token)
        snprintf(j->token, sizeof(j->token), "%s", token);
    snprintf(j->az.identity, sizeof(j->az.identity), "%s", s->identity);
    snprintf(j->az.cred_id, sizeof(j->az.cred_id), "%s", s->cred_id);
    memcpy(j->cert_sha256, s->cert_sha256, sizeof(j->cert_sha256));
    s->held = m;
    set_state(s, SS_AUTHORIZE);
    if (uv_queue_work(&s->w->loop, &j->req, authorize_work, authorize_after) < 0) {
        s->held = NULL;
        set_state(s, SS_AUTH);
        job_done(j);
        auth_refuse(s, m, "cannot queue the authorization");
    }
}

/* ---- upstream: the gateway's own SSH connection to the target ---- */

static void up_fail(ssh_sess *s, const char *reason, const char *detail)
{
    sp_error("ssh %s: target %s: %s: %s", s->id, s->target_name, reason, detail);
    json_t *ev = audit_base(s, SP_AUDIT_SSH_FAIL, "upstream", false);
    json_object_set_new(ev, "status_detail", json_string(detail));
    sp_audit_emit(ev);
    char msg[256];
    snprintf(msg, sizeof(msg), "sallyport: cannot open a session on target \"%s\": %s\n",
             s->target_name, reason);
    tell_client(s, msg);
    if (s->held) {
        ssh_message_reply_default(s->held);
        ssh_message_free(s->held);
        s->held = NULL;
    }
    end_session(s, reason);
}

static int b64_encode(const uint8_t *p, size_t n, char **out)
{
    *out = malloc(4 * ((n + 2) / 3) + 1);
    if (!*out)
        return -1;
    EVP_EncodeBlock((unsigned char *)*out, p, (int)n);
    return 0;
}

/* The pinned host key, "TYPE BASE64 [comment]". */
static int load_target_key(ssh_sess *s, char *err, size_t errlen)
{
    const char *line = s->dec.target->host_key;
    char type[64], b64[8192];
    if (!line || sscanf(line, "%63s %8191s", type, b64) != 2) {
        snprintf(err, errlen, "[target %s] host_key is not \"TYPE BASE64\"", s->target_name);
        return -1;
    }
    if (ssh_pki_import_pubkey_base64(b64, ssh_key_type_from_name(type), &s->target_key) != SSH_OK) {
        snprintf(err, errlen, "[target %s] host_key cannot be read", s->target_name);
        return -1;
    }
    return 0;
}

/* A fresh Ed25519 key with a certificate for LOGIN from the target CA, valid for minutes. */
static int mint_upstream_key(ssh_sess *s, char *err, size_t errlen)
{
    ssh_key pub = NULL, cert = NULL;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    char *b64 = NULL;
    sp_buf certblob;
    sp_buf_init(&certblob, SP_SSH_CERT_MAX);
    int rc = -1;
    if (!s->w->ssh_target_ca) {
        snprintf(err, errlen, "no ssh_target_ca_key loaded");
        goto out;
    }
    if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &s->up_key) != SSH_OK ||
        ssh_pki_export_privkey_to_pubkey(s->up_key, &pub) != SSH_OK ||
        key_blob(pub, &blob, &blob_len) < 0) {
        snprintf(err, errlen, "cannot generate the session key");
        goto out;
    }
    char key_id[SP_NAME_MAX + 64];
    snprintf(key_id, sizeof(key_id), "sallyport %s session=%s", s->identity, s->id);
    const char *principals[] = {s->login};
    const char *ext[4];
    size_t n_ext = 0;
    ext[n_ext++] = "permit-pty";
    if (s->dec.role->forwarding == SP_FWD_LOCAL)
        ext[n_ext++] = "permit-port-forwarding";
    if (s->dec.role->forwarding == SP_FWD_AGENT)
        ext[n_ext++] = "permit-agent-forwarding";
    uint64_t now = (uint64_t)(sp_now_us() / 1000000);
    uint8_t serial_bytes[8];
    uint64_t serial = 0;
    if (RAND_bytes(serial_bytes, sizeof(serial_bytes)) == 1)
        memcpy(&serial, serial_bytes, sizeof(serial));
    sp_ssh_cert_req req = {
        .pubkey_blob = blob,
        .pubkey_len = blob_len,
        .serial = serial,
        .key_id = key_id,
        .principals = principals,
        .n_principals = 1,
        .valid_after = now - TARGET_CERT_BACKDATE_S,
        .valid_before = now + TARGET_CERT_LIFETIME_S - TARGET_CERT_BACKDATE_S,
        .extensions = ext,
        .n_extensions = n_ext,
    };
    if (sp_ssh_cert_sign(s->w->ssh_target_ca, &req, &certblob, err, errlen) < 0)
        goto out;
    if (b64_encode(certblob.data, certblob.len, &b64) < 0 ||
        ssh_pki_import_cert_base64(b64, SSH_KEYTYPE_ED25519_CERT01, &cert) != SSH_OK ||
        ssh_pki_copy_cert_to_privkey(cert, s->up_key) != SSH_OK) {
        snprintf(err, errlen, "libssh does not accept the minted certificate");
        goto out;
    }
    rc = 0;
out:
    free(b64);
    ssh_key_free(pub);
    ssh_key_free(cert);
    free(blob);
    sp_buf_free(&certblob);
    return rc;
}

static ssh_channel on_up_agent_open(ssh_session session, void *ud);

static void up_start(ssh_sess *s)
{
    char err[256];
    if (load_target_key(s, err, sizeof(err)) < 0) {
        up_fail(s, "target-misconfigured", err);
        return;
    }
    if (mint_upstream_key(s, err, sizeof(err)) < 0) {
        up_fail(s, "certificate-mint-failed", err);
        return;
    }
    char host[INET6_ADDRSTRLEN];
    int port = 0;
    if (s->up_addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&s->up_addr;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
    } else {
        const struct sockaddr_in *a = (const struct sockaddr_in *)&s->up_addr;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
    }
    s->up = ssh_new();
    bool no = false;
    int yes = 1;
    const char *hk_type = ssh_key_type_to_char(ssh_key_type(s->target_key));
    if (!s->up || ssh_options_set(s->up, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_HOST, host) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_PORT, &port) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_USER, s->login) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_HOSTKEYS, hk_type) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_CIPHERS_C_S, UP_CIPHERS) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_CIPHERS_S_C, UP_CIPHERS) < 0 ||
        ssh_options_set(s->up, SSH_OPTIONS_NODELAY, &yes) < 0) {
        up_fail(s, "upstream-setup-failed", "libssh refused the connection options");
        return;
    }
    ssh_set_blocking(s->up, 0);
    ssh_callbacks_init(&s->up_cb);
    s->up_cb.userdata = s;
    s->up_cb.channel_open_request_auth_agent_function = on_up_agent_open;
    ssh_set_callbacks(s->up, &s->up_cb);
    s->up_connect_mono = sp_mono_us();
    ssh_set_counters(s->up, &s->up_sock, NULL);
    set_state(s, SS_UP_CONNECT);
    drive(s);
}

static bool host_key_matches(ssh_sess *s)
{
    ssh_key k = NULL;
    if (ssh_get_server_publickey(s->up, &k) != SSH_OK || !k)
        return false;
    bool same = ssh_key_cmp(k, s->target_key, SSH_KEY_CMP_PUBLIC) == 0;
    ssh_key_free(k);
    return same;
}

static void session_started(ssh_sess *s)
{
    set_state(s, SS_RELAY);
    s->last_activity = sp_mono_us();
    s->last_keepalive = s->last_activity;
    ssh_message_auth_reply_success(s->held, 0);
    ssh_message_free(s->held);
    s->held = NULL;
    json_t *ev = audit_base(s, SP_AUDIT_SSH_OPEN, "session-start", true);
    json_object_set_new(ev, "role", json_string(s->dec.role->name));
    if (s->rec)
        json_object_set_new(ev, "recording", json_string(sp_rec_path(s->rec)));
    sp_audit_emit(ev);
    sp_info("ssh %s %s: %s as %s on %s", s->id, s->peer, s->identity, s->login, s->target_name);
}

static void up_step(ssh_sess *s)
{
    if (s->state == SS_UP_CONNECT) {
        int rc = ssh_connect(s->up);
        if (!s->up_poll_init && ssh_get_fd(s->up) >= 0) {
            uv_poll_init(&s->w->loop, &s->up_poll, ssh_get_fd(s->up));
            s->up_poll.data = s;
            s->up_poll_init = true;
            s->handles++;
            ssh_event_add_session(s->ev, s->up);
        }
        if (rc == SSH_AGAIN)
            return;
        if (rc != SSH_OK) {
            up_fail(s, "upstream-unreachable", ssh_get_error(s->up));
            return;
        }
        if (!host_key_matches(s)) {
            up_fail(s, "upstream-host-key-mismatch",
                    "the target's host key is not the one in [target] host_key");
            return;
        }
        set_state(s, SS_UP_AUTH);
    }
    if (s->state == SS_UP_AUTH) {
        int rc = ssh_userauth_publickey(s->up, NULL, s->up_key);
        if (rc == SSH_AUTH_AGAIN)
            return;
        if (rc != SSH_AUTH_SUCCESS) {
            up_fail(s, "upstream-auth-failed",
                    "the target refused the gateway's certificate (TrustedUserCAKeys?)");
            return;
        }
        session_started(s);
    }
}

/* ---- channels ---- */

static ssh_chan *chan_by_client(ssh_sess *s, ssh_channel ch)
{
    for (ssh_chan *c = s->chans; c; c = c->next)
        if (c->cl == ch)
            return c;
    return NULL;
}

static void on_up_exit_status(ssh_session session, ssh_channel channel, int status, void *ud)
{
    (void)session;
    (void)channel;
    ssh_chan *c = ud;
    c->exit_status_set = true;
    c->exit_status = status;
}

static void on_up_exit_signal(ssh_session session, ssh_channel channel, const char *signal,
                              int core, const char *errmsg, const char *lang, void *ud)
{
    (void)session;
    (void)channel;
    (void)core;
    (void)errmsg;
    (void)lang;
    ssh_chan *c = ud;
    snprintf(c->exit_signal, sizeof(c->exit_signal), "%s", signal ? signal : "");
}

static void on_cl_signal(ssh_session session, ssh_channel channel, const char *signal, void *ud)
{
    (void)session;
    (void)channel;
    ssh_chan *c = ud;
    if (!signal || !c->up)
        return;
    rec_chan(c, SP_EV_SIGNAL, signal, NULL);
    ssh_channel_request_send_signal(c->up, signal);
}

/* ---- agent forwarding ---- */

static const char *forwarding_name(enum sp_forwarding f)
{
    switch (f) {
    case SP_FWD_LOCAL:
        return "local";
    case SP_FWD_AGENT:
        return "agent";
    default:
        return "none";
    }
}

static void refuse_agent(ssh_sess *s, const char *why)
{
    json_t *ev = audit_base(s, SP_AUDIT_SSH_REFUSE, "forward-refused", false);
    json_object_set_new(ev, "status_detail", json_string(why));
    json_object_set_new(ev, "forward_kind", json_string("agent"));
    sp_audit_emit(ev);
    if (s->rec) {
        char note[200];
        snprintf(note, sizeof(note), "agent forwarding refused: %s", why);
        sp_rec_eventv(s->rec, SP_EV_NOTE, sp_now_us(), note, NULL);
    }
}

/* OpenSSH sends auth-agent-req@openssh.com without asking for an answer, so a refusal is
 * silent: the target never hears of the agent and `ssh -A` carries on without one. An allowed
 * request goes to the target from chan_requests_step, between two answered requests, because
 * libssh sends nothing on a channel while it waits for the answer to an earlier request. */
static void on_cl_agent_req(ssh_session session, ssh_channel channel, void *ud)
{
    (void)session;
    (void)channel;
    ssh_chan *c = ud;
    ssh_sess *s = c->s;
    if (c->kind != CK_SESSION)
        return;
    if (s->dec.role->forwarding != SP_FWD_AGENT) {
        char why[120];
        snprintf(why, sizeof(why), "agent forwarding is not allowed by the role (forwarding = %s)",
                 forwarding_name(s->dec.role->forwarding));
        refuse_agent(s, why);
        return;
    }
    c->agent_wanted = true;
}

static void pass_agent_request(ssh_chan *c)
{
    ssh_sess *s = c->s;
    c->agent_wanted = false;
    if (ssh_channel_request_auth_agent(c->up) != SSH_OK) {
        sp_info("ssh %s: the agent forwarding request on channel %d did not reach the target: %s",
                s->id, c->num, ssh_get_error(s->up));
        return;
    }
    s->agent_forwarded = true;
    if (s->rec) {
        char note[80];
        snprintf(note, sizeof(note), "agent forwarding requested on channel %d", c->num);
        sp_rec_eventv(s->rec, SP_EV_NOTE, sp_now_us(), note, NULL);
    }
}

static void chan_append(ssh_sess *s, ssh_chan *c)
{
    ssh_chan **tail = &s->chans;
    while (*tail)
        tail = &(*tail)->next;
    *tail = c;
}

/* The target opens an auth-agent@openssh.com channel when a program there talks to the
 * forwarded agent socket. libssh wants the answer now: the target's channel is accepted at
 * once and the gateway then opens the matching channel to the client (chan_opening_step); if
 * the client refuses it, the target's channel is closed, which its program sees as an agent
 * that went away. */
static ssh_channel on_up_agent_open(ssh_session session, void *ud)
{
    (void)session;
    ssh_sess *s = ud;
    if (s->state != SS_RELAY)
        return NULL;
    if (s->dec.role->forwarding != SP_FWD_AGENT || !s->agent_forwarded) {
        refuse_agent(s, "the target opened an agent channel the client did not ask for");
        return NULL;
    }
    ssh_chan *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->s = s;
    c->num = s->next_chan_num++;
    snprintf(c->num_text, sizeof(c->num_text), "%d", c->num);
    c->kind = CK_AGENT;
    c->up = ssh_channel_new(s->up);
    c->cl = ssh_channel_new(s->cl);
    if (!c->up || !c->cl) {
        if (c->up)
            ssh_channel_free(c->up);
        if (c->cl)
            ssh_channel_free(c->cl);
        free(c);
        return NULL;
    }
    c->state = CH_OPENING;
    chan_append(s, c);
    return c->up;
}

static void agent_destination(const ssh_chan *c, char *out, size_t outlen)
{
    snprintf(out, outlen, "client %s", c->s->peer);
}

static void agent_chan_opened(ssh_chan *c)
{
    ssh_sess *s = c->s;
    char dest[96];
    agent_destination(c, dest, sizeof(dest));
    c->state = CH_OPEN;
    rec_chan(c, SP_EV_CHANNEL_OPEN, "auth-agent", NULL);
    rec_chan(c, SP_EV_FORWARD, "agent", dest, NULL);
    json_t *ev = audit_base(s, SP_AUDIT_SSH_OPEN, "forward", true);
    json_object_set_new(ev, "forward_kind", json_string("agent"));
    json_object_set_new(ev, "destination", json_string(dest));
    sp_audit_emit(ev);
}

/* The client's side is opened to the end even when the target closed its side meanwhile: a
 * channel freed while its open is in flight would leave libssh an answer for a channel it no
 * longer knows. chan_pump then closes both. */
static void agent_chan_opening_step(ssh_chan *c)
{
    ssh_sess *s = c->s;
    int rc = ssh_channel_open_auth_agent(c->cl);
    if (rc == SSH_AGAIN)
        return;
    if (rc == SSH_OK) {
        agent_chan_opened(c);
        return;
    }
    sp_info("ssh %s: the client refused agent channel %d: %s", s->id, c->num, ssh_get_error(s->cl));
    refuse_agent(s, "the client refused the agent channel (no agent, or ForwardAgent off)");
    if (!ssh_channel_is_closed(c->up))
        ssh_channel_close(c->up);
    ssh_channel_free(c->up);
    ssh_channel_free(c->cl);
    c->up = c->cl = NULL;
    c->state = CH_CLOSED;
}

static void chan_open_request(ssh_sess *s, ssh_message m)
{
    int type = ssh_message_subtype(m);
    if (type != SSH_CHANNEL_SESSION && type != SSH_CHANNEL_DIRECT_TCPIP) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    ssh_chan *c = calloc(1, sizeof(*c));
    if (!c) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    c->s = s;
    c->num = s->next_chan_num++;
    snprintf(c->num_text, sizeof(c->num_text), "%d", c->num);
    c->kind = type == SSH_CHANNEL_SESSION ? CK_SESSION : CK_DIRECT_TCPIP;
    if (c->kind == CK_DIRECT_TCPIP) {
        const char *h = ssh_message_channel_request_open_destination(m);
        snprintf(c->dest_host, sizeof(c->dest_host), "%s", h ? h : "");
        c->dest_port = ssh_message_channel_request_open_destination_port(m);
        char dest[300];
        snprintf(dest, sizeof(dest), "%s:%d", c->dest_host, c->dest_port);
        if (s->dec.role->forwarding != SP_FWD_LOCAL) {
            json_t *ev = audit_base(s, SP_AUDIT_SSH_REFUSE, "forward-refused", false);
            json_object_set_new(ev, "status_detail",
                                json_string("port forwarding is not allowed by the role"));
            json_object_set_new(ev, "destination", json_string(dest));
            sp_audit_emit(ev);
            if (s->rec) {
                char note[80];
                snprintf(note, sizeof(note), "port forwarding refused (role forwarding = %s)",
                         forwarding_name(s->dec.role->forwarding));
                sp_rec_eventv(s->rec, SP_EV_NOTE, sp_now_us(), note, NULL);
            }
            ssh_message_reply_default(m);
            ssh_message_free(m);
            free(c);
            return;
        }
    }
    c->up = ssh_channel_new(s->up);
    if (!c->up) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        free(c);
        return;
    }
    c->open_msg = m;
    c->state = CH_OPENING;
    chan_append(s, c);
}

static void chan_opened(ssh_chan *c)
{
    ssh_sess *s = c->s;
    c->cl = ssh_message_channel_request_open_reply_accept(c->open_msg);
    ssh_message_free(c->open_msg);
    c->open_msg = NULL;
    if (!c->cl) {
        ssh_channel_close(c->up);
        c->state = CH_CLOSED;
        return;
    }
    c->state = CH_OPEN;
    ssh_callbacks_init(&c->up_cb);
    c->up_cb.userdata = c;
    c->up_cb.channel_exit_status_function = on_up_exit_status;
    c->up_cb.channel_exit_signal_function = on_up_exit_signal;
    ssh_set_channel_callbacks(c->up, &c->up_cb);
    ssh_callbacks_init(&c->cl_cb);
    c->cl_cb.userdata = c;
    c->cl_cb.channel_signal_function = on_cl_signal;
    c->cl_cb.channel_auth_agent_req_function = on_cl_agent_req;
    ssh_set_channel_callbacks(c->cl, &c->cl_cb);
    if (c->kind == CK_SESSION) {
        rec_chan(c, SP_EV_CHANNEL_OPEN, "session", NULL);
    } else {
        char dest[300];
        snprintf(dest, sizeof(dest), "%s:%d", c->dest_host, c->dest_port);
        rec_chan(c, SP_EV_CHANNEL_OPEN, "direct-tcpip", NULL);
        rec_chan(c, SP_EV_FORWARD, "local", dest, NULL);
        json_t *ev = audit_base(s, SP_AUDIT_SSH_OPEN, "forward", true);
        json_object_set_new(ev, "forward_kind", json_string("local"));
        json_object_set_new(ev, "destination", json_string(dest));
        sp_audit_emit(ev);
    }
}

static void chan_opening_step(ssh_chan *c)
{
    if (c->kind == CK_AGENT) {
        agent_chan_opening_step(c);
        return;
    }
    int rc = c->kind == CK_SESSION
                 ? ssh_channel_open_session(c->up)
                 : ssh_channel_open_forward(c->up, c->dest_host, c->dest_port, "127.0.0.1", 0);
    if (rc == SSH_AGAIN)
        return;
    if (rc != SSH_OK) {
        sp_info("ssh %s: target refused channel %d: %s", c->s->id, c->num, ssh_get_error(c->s->up));
        ssh_message_reply_default(c->open_msg);
        ssh_message_free(c->open_msg);
        c->open_msg = NULL;
        c->state = CH_CLOSED;
        return;
    }
    chan_opened(c);
}

static bool env_allowed(const ssh_sess *s, const char *name)
{
    return name && s->dec.role->env && sp_list_contains(s->dec.role->env, name);
}

/* A channel request the role does not allow is answered with a failure and only noted in the
 * recording: OpenSSH sends LANG and LC_* on every session, so an audit line each would drown
 * the trail. An env value is not kept, only its name. */
static void rec_refused(ssh_chan *c, const char *what, const char *name)
{
    if (!c->s->rec)
        return;
    char note[160];
    if (name)
        snprintf(note, sizeof(note), "channel %d: %s %.64s refused: not in the role's env", c->num,
                 what, name);
    else
        snprintf(note, sizeof(note), "channel %d: %s refused", c->num, what);
    sp_rec_eventv(c->s->rec, SP_EV_NOTE, sp_now_us(), note, NULL);
}

/* Forward the request at the head of the queue upstream. SSH_AGAIN: the target has not
 * answered yet, retried on the next event. */
static int forward_request(ssh_chan *c, ssh_message m, bool *handled)
{
    *handled = true;
    char a[16], b[16];
    switch (ssh_message_subtype(m)) {
    case SSH_CHANNEL_REQUEST_PTY: {
        const char *term = ssh_message_channel_request_pty_term(m);
        int cols = ssh_message_channel_request_pty_width(m);
        int rows = ssh_message_channel_request_pty_height(m);
        int rc = ssh_channel_request_pty_size(c->up, term ? term : "vt100", cols, rows);
        if (rc == SSH_OK) {
            c->has_pty = true;
            snprintf(a, sizeof(a), "%d", cols);
            snprintf(b, sizeof(b), "%d", rows);
            rec_chan(c, SP_EV_PTY, term ? term : "", a, b, NULL);
        }
        return rc;
    }
    case SSH_CHANNEL_REQUEST_WINDOW_CHANGE: {
        int cols = ssh_message_channel_request_pty_width(m);
        int rows = ssh_message_channel_request_pty_height(m);
        snprintf(a, sizeof(a), "%d", cols);
        snprintf(b, sizeof(b), "%d", rows);
        rec_chan(c, SP_EV_RESIZE, a, b, NULL);
        *handled = false; /* no reply for window-change */
        return ssh_channel_change_pty_size(c->up, cols, rows);
    }
    case SSH_CHANNEL_REQUEST_SHELL: {
        int rc = ssh_channel_request_shell(c->up);
        if (rc == SSH_OK)
            rec_chan(c, SP_EV_SHELL, NULL);
        return rc;
    }
    case SSH_CHANNEL_REQUEST_EXEC: {
        const char *cmd = ssh_message_channel_request_command(m);
        int rc = ssh_channel_request_exec(c->up, cmd ? cmd : "");
        if (rc == SSH_OK && c->s->rec) {
            /* Whole, past record_max_text: a command padded to push its tail past the cut
             * would otherwise run unseen. */
            const char *line = cmd ? cmd : "";
            sp_rec_field f[2] = {{c->num_text, strlen(c->num_text)}, {line, strlen(line)}};
            sp_rec_event_whole(c->s->rec, SP_EV_EXEC, sp_now_us(), f, 2);
            rec_flush_if_needed(c->s);
        }
        return rc;
    }
    case SSH_CHANNEL_REQUEST_SUBSYSTEM: {
        const char *name = ssh_message_channel_request_subsystem(m);
        int rc = ssh_channel_request_subsystem(c->up, name ? name : "");
        if (rc == SSH_OK) {
            rec_chan(c, SP_EV_SUBSYSTEM, name ? name : "", NULL);
            if (name && !strcmp(name, "sftp")) {
                c->is_sftp = true;
                sp_sftp_init(&c->sftp, on_sftp_op, c);
            }
        }
        return rc;
    }
    case SSH_CHANNEL_REQUEST_ENV: {
        const char *name = ssh_message_channel_request_env_name(m);
        const char *value = ssh_message_channel_request_env_value(m);
        if (!env_allowed(c->s, name)) {
            rec_refused(c, "env", name);
            return SSH_ERROR;
        }
        int rc = ssh_channel_request_env(c->up, name, value ? value : "");
        if (rc == SSH_OK)
            rec_chan(c, SP_EV_ENV, name, value ? value : "", NULL);
        return rc;
    }
    case SSH_CHANNEL_REQUEST_X11:
        rec_refused(c, "x11-req", NULL);
        return SSH_ERROR;
    default: /* unknown (auth-agent-req comes through on_cl_agent_req) */
        rec_refused(c, "an unknown request", NULL);
        return SSH_ERROR;
    }
}

static void chan_requests_step(ssh_chan *c)
{
    while (c->state == CH_OPEN) {
        if (c->agent_wanted && !c->request_waiting)
            pass_agent_request(c);
        if (c->n_pending == 0)
            return;
        ssh_message m = c->pending[0];
        bool reply = true;
        int rc = forward_request(c, m, &reply);
        c->request_waiting = rc == SSH_AGAIN;
        if (rc == SSH_AGAIN)
            return;
        if (reply) {
            if (rc == SSH_OK)
                ssh_message_channel_request_reply_success(m);
            else
                ssh_message_reply_default(m);
        }
        ssh_message_free(m);
        c->n_pending--;
        memmove(c->pending, c->pending + 1, c->n_pending * sizeof(c->pending[0]));
    }
}

static void chan_request(ssh_sess *s, ssh_message m)
{
    ssh_chan *c = chan_by_client(s, ssh_message_channel_request_channel(m));
    if (!c || c->state != CH_OPEN || c->n_pending >= MAX_PENDING_REQUESTS) {
        ssh_message_reply_default(m);
        ssh_message_free(m);
        return;
    }
    c->pending[c->n_pending++] = m;
}

static int relay_write(ssh_channel to, const uint8_t *p, uint32_t n, int is_stderr, bool to_client)
{
    return is_stderr && to_client ? ssh_channel_write_stderr(to, p, n)
                                  : ssh_channel_write(to, p, n);
}

static struct relay_buf *relay_of(ssh_chan *c, int is_stderr, bool to_client)
{
    return &c->relay[to_client ? is_stderr : 2];
}

static bool has_pending(const ssh_chan *c, bool to_client)
{
    return to_client ? (c->relay[0].len || c->relay[1].len) : c->relay[2].len > 0;
}

/* Write what the relay buffer holds as far as the destination takes it: its window, its
 * socket not backed up, its session not re-keying (libssh 0.10 then takes nothing and
 * ssh_channel_write returns 0). 1 when the buffer is empty, 0 when the destination takes no
 * more for now, -1 on an error. Whatever wakes us next (a window adjust, the socket draining,
 * the peer's NEWKEYS) brings us back here. */
static int relay_flush(ssh_chan *c, struct relay_buf *rb, ssh_channel to, int is_stderr,
                       bool to_client)
{
    ssh_session dst = to_client ? c->s->cl : c->s->up;
    while (rb->off < rb->len) {
        if (ssh_get_poll_flags(dst) & SSH_WRITE_PENDING)
            return 0;
        uint32_t win = ssh_channel_window_size(to);
        if (win == 0)
            return 0;
        size_t n = rb->len - rb->off;
        if (n > win)
            n = win;
        if (n > MOVE_CHUNK)
            n = MOVE_CHUNK;
        int wr = relay_write(to, rb->data + rb->off, (uint32_t)n, is_stderr, to_client);
        if (wr < 0)
            return -1;
        if (wr == 0)
            return 0;
        rb->off += (size_t)wr;
    }
    rb->len = rb->off = 0;
    return 1;
}

/* Take everything libssh holds for this stream of `from`, in one read: the number of bytes
 * read, 0 when there is nothing, -1 on an error. */
static int relay_fill(ssh_chan *c, struct relay_buf *rb, ssh_channel from, int is_stderr)
{
    int avail = ssh_channel_poll(from, is_stderr);
    if (avail == SSH_ERROR)
        return -1;
    if (avail <= 0) /* nothing yet, or SSH_EOF */
        return 0;
    size_t want = (size_t)avail < RELAY_BUF_MAX ? (size_t)avail : RELAY_BUF_MAX;
    if (rb->cap < want) {
        uint8_t *grown = realloc(rb->data, want);
        if (!grown) {
            sp_warn("ssh %s: channel %d: no memory for %zu relayed bytes", c->s->id, c->num, want);
            return -1;
        }
        rb->data = grown;
        rb->cap = want;
    }
    int n = ssh_channel_read_nonblocking(from, rb->data, (uint32_t)want, is_stderr);
    if (n == SSH_EOF)
        return 0;
    if (n < 0)
        return -1;
    rb->len = (size_t)n;
    rb->off = 0;
    return n;
}

/* Count, record and parse what was read, in slices of MOVE_CHUNK so recorded events keep the
 * size they have always had. */
static void note_relayed(ssh_chan *c, const uint8_t *p, size_t n, int is_stderr, bool to_client)
{
    ssh_sess *s = c->s;
    s->last_activity = sp_mono_us();
    if (to_client) {
        c->bytes_out += (uint64_t)n;
        s->bytes_out += (uint64_t)n;
    } else {
        c->bytes_in += (uint64_t)n;
        s->bytes_in += (uint64_t)n;
    }
    for (size_t off = 0; off < n && s->state == SS_RELAY; off += MOVE_CHUNK) {
        size_t k = n - off < MOVE_CHUNK ? n - off : MOVE_CHUNK;
        if (c->is_sftp)
            sp_sftp_feed(&c->sftp, !to_client, p + off, k);
        else if (c->kind != CK_SESSION)
            continue;
        else if (to_client)
            rec_bytes(c, is_stderr ? SP_EV_TERM_ERR : SP_EV_TERM_OUT, p + off, k);
        else if (s->dec.role->record_input)
            rec_bytes(c, SP_EV_TERM_IN, p + off, k);
    }
}

/* Move one stream of a channel from `from` to `to`.
 *
 * libssh 0.10 re-opens a channel's receive window to 1,280,000 bytes after every read that
 * leaves it under half that, without counting what it still holds unread: a relay that reads
 * a little at a time (as much as the slower side takes) lets the faster side send on and on,
 * libssh's channel buffer grows without bound, and at 256 MiB (its buffer limit) libssh
 * throws the whole buffer away, silently. So we read only when the previous read is written
 * out, and then everything libssh holds: what libssh buffers stays within one window, and
 * what we buffer within one read. */
static int move(ssh_chan *c, ssh_channel from, ssh_channel to, int is_stderr, bool to_client)
{
    struct relay_buf *rb = relay_of(c, is_stderr, to_client);
    for (;;) {
        int rc = relay_flush(c, rb, to, is_stderr, to_client);
        if (rc <= 0)
            return rc;
        int n = relay_fill(c, rb, from, is_stderr);
        if (n <= 0)
            return n;
        note_relayed(c, rb->data, (size_t)n, is_stderr, to_client);
        if (c->s->state != SS_RELAY)
            return -1;
    }
}

static bool drained(ssh_channel ch)
{
    int a = ssh_channel_poll(ch, 0), b = ssh_channel_poll(ch, 1);
    return a <= 0 && b <= 0;
}

static void send_exit(ssh_chan *c)
{
    if (c->exit_sent)
        return;
    c->exit_sent = true;
    if (c->exit_signal[0]) {
        ssh_channel_request_send_exit_signal(c->cl, c->exit_signal, 0, "", "");
        rec_chan(c, SP_EV_EXIT, "signal", c->exit_signal, NULL);
    } else if (c->exit_status_set) {
        char v[16];
        snprintf(v, sizeof(v), "%d", c->exit_status);
        ssh_channel_request_send_exit_status(c->cl, c->exit_status);
        rec_chan(c, SP_EV_EXIT, "status", v, NULL);
    }
}

static void chan_close_both(ssh_chan *c)
{
    char in[24], out[24];
    snprintf(in, sizeof(in), "%llu", (unsigned long long)c->bytes_in);
    snprintf(out, sizeof(out), "%llu", (unsigned long long)c->bytes_out);
    if (c->kind == CK_DIRECT_TCPIP || c->kind == CK_AGENT) {
        json_t *ev = audit_base(c->s, SP_AUDIT_SSH_CLOSE, "forward-end", true);
        char dest[300];
        if (c->kind == CK_AGENT)
            agent_destination(c, dest, sizeof(dest));
        else
            snprintf(dest, sizeof(dest), "%s:%d", c->dest_host, c->dest_port);
        json_object_set_new(ev, "forward_kind",
                            json_string(c->kind == CK_AGENT ? "agent" : "local"));
        json_object_set_new(ev, "destination", json_string(dest));
        json_object_set_new(ev, "bytes_in", json_integer((json_int_t)c->bytes_in));
        json_object_set_new(ev, "bytes_out", json_integer((json_int_t)c->bytes_out));
        sp_audit_emit(ev);
    }
    rec_chan(c, SP_EV_CHANNEL_CLOSE, in, out, NULL);
    if (!ssh_channel_is_closed(c->cl))
        ssh_channel_close(c->cl);
    if (!ssh_channel_is_closed(c->up))
        ssh_channel_close(c->up);
    unregister_callbacks(c);
    ssh_channel_free(c->cl);
    ssh_channel_free(c->up);
    c->cl = c->up = NULL;
    c->state = CH_CLOSED;
}

/* Data both ways, then EOF and close in the order the protocol wants: the target's exit status
 * before the client channel closes. */
static void chan_pump(ssh_chan *c)
{
    ssh_sess *s = c->s;
    if (move(c, c->up, c->cl, 0, true) < 0 || move(c, c->up, c->cl, 1, true) < 0 ||
        move(c, c->cl, c->up, 0, false) < 0) {
        if (s->state == SS_RELAY)
            chan_close_both(c);
        return;
    }
    if (!c->eof_to_up && !has_pending(c, false) && ssh_channel_poll(c->cl, 0) == SSH_EOF) {
        c->eof_to_up = true;
        ssh_channel_send_eof(c->up);
    }
    bool up_done = ssh_channel_is_closed(c->up) || ssh_channel_is_eof(c->up);
    if (!c->eof_to_cl && up_done && drained(c->up) && !has_pending(c, true)) {
        c->eof_to_cl = true;
        if (!ssh_channel_is_closed(c->cl))
            ssh_channel_send_eof(c->cl);
    }
    if (ssh_channel_is_closed(c->up) && drained(c->up) && !has_pending(c, true)) {
        if (!(ssh_get_status(s->cl) & (SSH_CLOSED | SSH_CLOSED_ERROR)))
            send_exit(c);
        chan_close_both(c);
        return;
    }
    /* A client that closes its channel once both directions saw EOF (OpenSSH does, with its
     * input at EOF, e.g. `ssh -n` or a multiplexed channel) still reads the exit status we
     * send before our close, as it would from sshd: the target sends its EOF first and the
     * exit status when the command has exited, so wait for the target's close. A client
     * that closes before the target's output has ended has left: close both now. */
    if (ssh_channel_is_closed(c->cl) && !(c->eof_to_cl && !ssh_channel_is_closed(c->up)))
        chan_close_both(c);
}

static void chans_step(ssh_sess *s)
{
    for (ssh_chan **pp = &s->chans; *pp && s->state == SS_RELAY;) {
        ssh_chan *c = *pp;
        if (c->state == CH_OPENING)
            chan_opening_step(c);
        if (c->state == CH_OPEN) {
            chan_requests_step(c);
            if (c->state == CH_OPEN)
                chan_pump(c);
        }
        if (c->state == CH_CLOSED) {
            *pp = c->next;
            free_chan(c);
            continue;
        }
        pp = &c->next;
    }
}

/* ---- the client's messages ---- */

static void dispatch(ssh_sess *s, ssh_message m)
{
    switch (ssh_message_type(m)) {
    case SSH_REQUEST_AUTH:
        if (s->state == SS_AUTH) {
            handle_auth(s, m);
            return;
        }
        break;
    case SSH_REQUEST_SERVICE:
        ssh_message_service_reply_success(m);
        ssh_message_free(m);
        return;
    case SSH_REQUEST_CHANNEL_OPEN:
        if (s->state == SS_RELAY) {
            chan_open_request(s, m);
            return;
        }
        break;
    case SSH_REQUEST_CHANNEL:
        if (s->state == SS_RELAY) {
            chan_request(s, m);
            return;
        }
        break;
    case SSH_REQUEST_GLOBAL:
        if (ssh_message_subtype(m) == SSH_GLOBAL_REQUEST_TCPIP_FORWARD) {
            json_t *ev = audit_base(s, SP_AUDIT_SSH_REFUSE, "forward-refused", false);
            json_object_set_new(ev, "status_detail",
                                json_string("remote port forwarding is not supported"));
            sp_audit_emit(ev);
        }
        break;
    default:
        break;
    }
    ssh_message_reply_default(m);
    ssh_message_free(m);
}

static void client_messages(ssh_sess *s)
{
    ssh_message m;
    while (s->state >= SS_AUTH && s->state <= SS_RELAY && (m = ssh_message_get(s->cl)) != NULL)
        dispatch(s, m);
}

static void step(ssh_sess *s)
{
    if (s->state == SS_KEX) {
        int rc = ssh_handle_key_exchange(s->cl);
        if (rc == SSH_AGAIN)
            return;
        if (rc != SSH_OK) {
            sp_info("ssh %s %s: key exchange failed: %s", s->id, s->peer, ssh_get_error(s->cl));
            end_session(s, "kex-failed");
            return;
        }
        set_state(s, SS_AUTH);
    }
    if (s->state == SS_UP_CONNECT || s->state == SS_UP_AUTH)
        up_step(s);
    client_messages(s);
    if (s->state == SS_RELAY)
        chans_step(s);
    if (s->state < SS_CLOSING && s->cl &&
        (ssh_get_status(s->cl) & (SSH_CLOSED | SSH_CLOSED_ERROR))) {
        if (ssh_get_status(s->cl) & SSH_CLOSED_ERROR)
            sp_info("ssh %s %s: client connection failed: %s", s->id, s->peer,
                    ssh_get_error(s->cl));
        end_session(s, "client-closed");
    }
    if (s->state < SS_CLOSING && s->up && s->state >= SS_RELAY &&
        (ssh_get_status(s->up) & (SSH_CLOSED | SSH_CLOSED_ERROR)))
        end_session(s, "target-closed");
}

static uint64_t relay_activity(const ssh_sess *s)
{
    return s->bytes_in + s->bytes_out + s->cl_sock.in_bytes + s->cl_sock.out_bytes +
           s->up_sock.in_bytes + s->up_sock.out_bytes;
}

/* libssh reads and writes both sockets from inside our calls (ssh_channel_write flushes and
 * polls the whole event, ssh_channel_poll reads when a channel buffer is empty): after a pass
 * over the channels, data may wait in a channel buffer whose socket was already drained, or
 * in a relay buffer whose destination has since flushed its socket, and no socket event will
 * come for it. So pass again until a pass changes nothing: moves no byte and makes libssh
 * read or write none. Then every stream waits for something only a socket event brings. When
 * the passes run out first, the tick timer comes back on the next loop iteration. */
static void relay_until_quiet(ssh_sess *s)
{
    for (int i = 0; i < RELAY_PASSES_MAX; i++) {
        if (s->state != SS_RELAY)
            return;
        uint64_t before = relay_activity(s);
        chans_step(s);
        if (relay_activity(s) == before)
            return;
    }
    uv_timer_start(&s->tick, on_tick, 0, TICK_MS);
}

static void drive(ssh_sess *s)
{
    if (s->driving || s->state == SS_DONE)
        return;
    s->driving = true;
    for (int i = 0; i < DOPOLL_ROUNDS; i++) {
        if (ssh_event_dopoll(s->ev, 0) != SSH_OK)
            break;
        if (s->state == SS_RELAY)
            chans_step(s);
    }
    if (s->state < SS_CLOSING)
        step(s);
    relay_until_quiet(s);
    if (s->state == SS_CLOSING && (!(ssh_get_poll_flags(s->cl) & SSH_WRITE_PENDING) ||
                                   sp_mono_us() - s->closing_since > LINGER_US))
        finish(s);
    update_polls(s);
    s->driving = false;
}

/* Timeouts, keepalives, and a safety net: drive once a second whatever the sockets say. */
static void on_tick(uv_timer_t *t)
{
    ssh_sess *s = t->data;
    int64_t now = sp_mono_us();
    if (s->state == SS_UP_CONNECT && now - s->up_connect_mono > s->dec.target->connect_timeout) {
        up_fail(s, "upstream-unreachable", "no answer from the target within connect_timeout");
    } else if (s->state < SS_RELAY && now - s->started_mono > s->cfg->handshake_timeout) {
        end_session(s, "handshake-timeout");
    } else if (s->state == SS_RELAY) {
        int64_t idle_limit = s->dec.role ? s->dec.role->idle_timeout : 0;
        if (idle_limit > 0 && now - s->last_activity >= idle_limit) {
            end_session(s, "idle");
        } else if (s->cfg->ssh_keepalive > 0 && now - s->last_keepalive >= s->cfg->ssh_keepalive) {
            s->last_keepalive = now;
            ssh_send_keepalive(s->cl);
        }
    }
    drive(s);
}

/* ---- accept ---- */

static void close_free_tcp(uv_handle_t *h)
{
    free(h);
}

void ssh_session_accept(sp_worker *w, uv_stream_t *listener)
{
    uv_tcp_t *tcp = malloc(sizeof(*tcp));
    if (!tcp)
        return;
    uv_tcp_init(&w->loop, tcp);
    if (uv_accept(listener, (uv_stream_t *)tcp) < 0) {
        uv_close((uv_handle_t *)tcp, close_free_tcp);
        return;
    }
    uv_os_fd_t ufd;
    int fd = -1;
    if (uv_fileno((uv_handle_t *)tcp, &ufd) == 0)
        fd = dup(ufd);
    uv_close((uv_handle_t *)tcp, close_free_tcp);
    if (fd < 0) {
        sp_warn("ssh: cannot take over an accepted connection");
        return;
    }
    ssh_sess *s = calloc(1, sizeof(*s));
    if (!s) {
        close(fd);
        return;
    }
    s->w = w;
    s->gw = w->gw;
    s->cfg = sp_worker_config(w);
    s->state = SS_KEX;
    sp_uuid7(s->id);
    s->started_at = sp_now_us();
    s->started_mono = sp_mono_us();
    s->next_chan_num = 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
        } else {
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip, sizeof(ip));
            port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        }
    }
    snprintf(s->peer, sizeof(s->peer), "%s:%d", ip, port);
    /* SSH sends small packets (window adjusts, sftp requests, keystrokes) right behind large
     * ones: with Nagle they wait for the peer's delayed ACK, 40 ms each on Linux. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    s->next = w->ssh_sessions;
    if (w->ssh_sessions)
        w->ssh_sessions->prev = s;
    w->ssh_sessions = s;
    w->n_ssh_sessions++;
    uv_timer_init(&w->loop, &s->tick);
    s->tick.data = s;
    s->handles = 1;
    s->cl = ssh_new();
    s->ev = ssh_event_new();
    if (!s->cl || !s->ev || ssh_bind_accept_fd((ssh_bind)w->ssh_bind, s->cl, fd) != SSH_OK) {
        sp_warn("ssh %s: cannot start the session: %s", s->peer,
                s->cl ? ssh_get_error(s->cl) : "out of memory");
        if (!s->cl)
            close(fd);
        end_session(s, "accept-failed");
        finish(s);
        return;
    }
    ssh_set_blocking(s->cl, 0);
    ssh_set_counters(s->cl, &s->cl_sock, NULL);
    ssh_event_add_session(s->ev, s->cl);
    uv_poll_init(&w->loop, &s->cl_poll, fd);
    s->cl_poll.data = s;
    s->cl_poll_init = true;
    s->handles++;
    uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    drive(s);
}

/* ---- worker entry points ---- */

bool ssh_session_end_by_id(sp_worker *w, const char *session_id, const char *reason)
{
    for (ssh_sess *s = w->ssh_sessions; s; s = s->next) {
        if (strcmp(s->id, session_id) != 0)
            continue;
        end_session(s, reason);
        drive(s);
        return true;
    }
    return false;
}

void ssh_session_end_all(sp_worker *w, const char *reason)
{
    while (w->ssh_sessions) {
        ssh_sess *s = w->ssh_sessions;
        end_session(s, reason);
        finish(s);
    }
}

void ssh_session_flush_all(sp_worker *w)
{
    int64_t now = sp_mono_us();
    /* rec_fail_check may end a session, which unlinks it: take the next one first. */
    for (ssh_sess *s = w->ssh_sessions, *next; s; s = next) {
        next = s->next;
        if (!s->rec)
            continue;
        sp_rec_flush(s->rec, w->zctx, &w->loop);
        rec_fail_check(s);
        if (s->state == SS_CLOSING) {
            /* Ended here (strict recording): send the goodbye now, not at the next tick. */
            drive(s);
            continue;
        }
        if (!s->rec || !s->row_started || now - s->last_status < SP_PROGRESS_INTERVAL_US)
            continue;
        s->last_status = now;
        sp_gateway_queue_progress(s->gw, &w->loop, s->id, (int64_t)sp_rec_chunks(s->rec));
    }
}

int ssh_worker_init(sp_worker *w, const sp_config *cfg, char *err, size_t errlen)
{
    ssh_init();
    ssh_bind b = ssh_bind_new();
    if (!b) {
        snprintf(err, errlen, "cannot create the SSH listener state");
        return -1;
    }
    w->ssh_bind = b;
    if (ssh_bind_options_set(b, SSH_BIND_OPTIONS_HOSTKEY, cfg->ssh_host_key) < 0) {
        snprintf(err, errlen, "ssh_host_key %s: %s", cfg->ssh_host_key, ssh_get_error(b));
        return -1;
    }
    char cerr[256];
    w->ssh_target_ca = sp_ssh_ca_load(cfg->ssh_target_ca_key, cerr, sizeof(cerr));
    if (!w->ssh_target_ca) {
        snprintf(err, errlen, "ssh_target_ca_key: %s", cerr);
        return -1;
    }
    if (cfg->ssh_user_ca_key) {
        sp_ssh_ca *uca = sp_ssh_ca_load(cfg->ssh_user_ca_key, cerr, sizeof(cerr));
        if (!uca) {
            snprintf(err, errlen, "ssh_user_ca_key: %s", cerr);
            return -1;
        }
        sp_buf blob;
        sp_buf_init(&blob, 1024);
        int rc = sp_ssh_ca_public_blob(uca, &blob);
        sp_ssh_ca_free(uca);
        if (rc < 0) {
            sp_buf_free(&blob);
            snprintf(err, errlen, "ssh_user_ca_key: cannot derive its public key");
            return -1;
        }
        w->ssh_user_ca_blob = malloc(blob.len);
        if (w->ssh_user_ca_blob) {
            memcpy(w->ssh_user_ca_blob, blob.data, blob.len);
            w->ssh_user_ca_len = blob.len;
        }
        sp_buf_free(&blob);
    }
    return 0;
}

void ssh_worker_free(sp_worker *w)
{
    if (w->ssh_bind)
        ssh_bind_free((ssh_bind)w->ssh_bind);
    w->ssh_bind = NULL;
    sp_ssh_ca_free(w->ssh_target_ca);
    w->ssh_target_ca = NULL;
    free(w->ssh_user_ca_blob);
    w->ssh_user_ca_blob = NULL;
}
