#include "proxy/conn.h"

#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "proxy/worker.h"

typedef struct write_req {
    uv_write_t req;
    sp_conn *conn;
    size_t len;
    uint8_t data[];
} write_req;

static void on_closed(uv_handle_t *h)
{
    sp_conn *c = h->data;
    if (c->ssl)
        SSL_free(c->ssl); /* frees both BIOs */
    c->ssl = NULL;
    c->ops->on_closed(c);
}

static void fail(sp_conn *c, const char *why)
{
    if (c->closing || c->eof_seen)
        return;
    c->eof_seen = true;
    c->ops->on_eof(c, why);
}

static void on_write_done(uv_write_t *req, int status)
{
    write_req *wr = (write_req *)req;
    sp_conn *c = wr->conn;
    c->pending -= wr->len;
    free(wr);
    if (status < 0) {
        if (status != UV_ECANCELED)
            fail(c, uv_strerror(status));
        return;
    }
    if (c->above_high && c->pending <= SP_CONN_LOW_WATER && !c->closing) {
        c->above_high = false;
        if (c->ops->on_drain)
            c->ops->on_drain(c);
    }
}

static int raw_write(sp_conn *c, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    /* Most writes fit in the socket buffer at once: then no copy and no request. Only when
     * nothing is queued, so bytes never overtake earlier ones. */
    if (c->tcp.write_queue_size == 0) {
        uv_buf_t now = uv_buf_init((char *)p, (unsigned)n);
        int done = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
        if (done == (int)n)
            return 0;
        if (done > 0) {
            p = (const uint8_t *)p + done;
            n -= (size_t)done;
        }
        /* An error (not EAGAIN) is left to uv_write below, which reports it through
         * on_write_done as before: the owner hears of it from its callbacks, never here. */
    }
    write_req *wr = malloc(sizeof(*wr) + n);
    if (!wr)
        return -1;
    wr->conn = c;
    wr->len = n;
    memcpy(wr->data, p, n);
    uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)n);
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write_done);
    if (rc < 0) {
        free(wr);
        return -1;
    }
    c->pending += n;
    if (c->pending > SP_CONN_HIGH_WATER)
        c->above_high = true;
    return 0;
}

/* Move whatever TLS produced (handshake records, ciphertext) onto the socket. */
static int flush_tls(sp_conn *c)
{
    char *p;
    long n;
    while ((n = BIO_get_mem_data(c->wbio, &p)) > 0) {
        if (raw_write(c, p, (size_t)n) < 0)
            return -1;
        (void)BIO_reset(c->wbio);
    }
    return 0;
}

static void tls_error(sp_conn *c, const char *what)
{
    char why[256];
    unsigned long e = ERR_get_error();
    if (e)
        snprintf(why, sizeof(why), "%s: %s", what, ERR_reason_error_string(e));
    else
        snprintf(why, sizeof(why), "%s", what);
    ERR_clear_error();
    if (c->handshaking) {
        c->handshaking = false;
        c->ops->on_tls(c, false, why);
    } else {
        fail(c, why);
    }
}

static void drive_tls(sp_conn *c)
{
    if (c->handshaking) {
        int rc = SSL_do_handshake(c->ssl);
        if (flush_tls(c) < 0)
            return fail(c, "write failed");
        if (rc != 1) {
            int err = SSL_get_error(c->ssl, rc);
            if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
                return;
            return tls_error(c, "TLS handshake failed");
        }
        c->handshaking = false;
        c->ops->on_tls(c, true, NULL);
        if (c->closing || c->eof_seen)
            return;
    }
    sp_worker *w = c->worker;
    for (;;) {
        int n = SSL_read(c->ssl, w->plain_buf, sizeof(w->plain_buf));
        if (n > 0) {
            c->ops->on_data(c, w->plain_buf, (size_t)n);
            if (c->closing || c->eof_seen || !c->ssl)
                return;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (flush_tls(c) < 0)
            return fail(c, "write failed");
        if (err == SSL_ERROR_WANT_READ)
            return;
        if (err == SSL_ERROR_ZERO_RETURN)
            return fail(c, "peer closed TLS");
        return tls_error(c, "TLS error");
    }
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    sp_conn *c = h->data;
    (void)hint;
    *buf = uv_buf_init((char *)c->worker->read_buf, sizeof(c->worker->read_buf));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    sp_conn *c = s->data;
    if (n == 0 || c->closing)
        return;
    if (n < 0) {
        fail(c, n == UV_EOF ? "peer closed the connection" : uv_strerror((int)n));
        return;
    }
    if (!c->tls) {
        c->ops->on_data(c, (const uint8_t *)buf->base, (size_t)n);
        return;
    }
    if (BIO_write(c->rbio, buf->base, (int)n) != n)
        return fail(c, "out of memory in TLS");
    drive_tls(c);
}

static void set_peer(sp_conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *in = (struct sockaddr_in *)&ss;
            uv_ip4_name(in, ip, sizeof(ip));
            port = ntohs(in->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(in6, ip, sizeof(ip));
            port = ntohs(in6->sin6_port);
        }
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

static int init(sp_conn *c, sp_worker *w, const sp_conn_ops *ops, void *owner)
{
    c->worker = w;
    c->ops = ops;
    c->owner = owner;
    if (uv_tcp_init(&w->loop, &c->tcp) < 0)
        return -1;
    c->tcp.data = c;
    c->inited = true;
    uv_tcp_nodelay(&c->tcp, 1);
    return 0;
}

int sp_conn_accept(sp_conn *c, sp_worker *w, uv_stream_t *server, const sp_conn_ops *ops,
                   void *owner)
{
    if (init(c, w, ops, owner) < 0)
        return -1;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0)
        return -1;
    /* Set on the accepted socket itself: small protocol messages must not wait for Nagle. */
    uv_tcp_nodelay(&c->tcp, 1);
    set_peer(c);
    return 0;
}

static void on_connected(uv_connect_t *req, int status)
{
    sp_conn *c = req->data;
    if (c->closing)
        return;
    if (status == 0)
        uv_tcp_nodelay(&c->tcp, 1);
    c->ops->on_connect(c, status);
}

int sp_conn_connect(sp_conn *c, sp_worker *w, const struct sockaddr *addr, const sp_conn_ops *ops,
                    void *owner)
{
    if (init(c, w, ops, owner) < 0)
        return -1;
    c->connect_req.data = c;
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->sa_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)addr, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in *)addr)->sin_port);
    } else {
        uv_ip6_name((const struct sockaddr_in6 *)addr, ip, sizeof(ip));
        port = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
    return uv_tcp_connect(&c->connect_req, &c->tcp, addr, on_connected) < 0 ? -1 : 0;
}

int sp_conn_read_start(sp_conn *c)
{
    c->want_read = true;
    if (c->reading || c->closing)
        return 0;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        return -1;
    c->reading = true;
    return 0;
}

void sp_conn_read_stop(sp_conn *c)
{
    c->want_read = false;
    if (!c->reading)
        return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
}

int sp_conn_start_tls(sp_conn *c, SSL_CTX *ctx, bool server, const char *verify_host)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl)
        return -1;
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        SSL_free(c->ssl);
        c->ssl = NULL;
        return -1;
    }
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    if (server) {
        SSL_set_accept_state(c->ssl);
    } else {
        SSL_set_connect_state(c->ssl);
        if (verify_host) {
            /* An IP address is checked against IP SANs, a name against DNS names. */
            X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
            if (X509_VERIFY_PARAM_set1_ip_asc(vp, verify_host) != 1) {
                if (SSL_set1_host(c->ssl, verify_host) != 1)
                    return -1;
                SSL_set_tlsext_host_name(c->ssl, verify_host);
            }
        }
    }
    c->tls = true;
    c->handshaking = true;
    if (!server)
        drive_tls(c); /* send ClientHello */
    return 0;
}

int sp_conn_write(sp_conn *c, const void *p, size_t n)
{
    if (c->closing || c->eof_seen)
        return -1;
    if (!c->tls)
        return raw_write(c, p, n);
    if (c->handshaking)
        return -1;
    const uint8_t *b = p;
    while (n > 0) {
        int chunk = n > 16384 ? 16384 : (int)n;
        int rc = SSL_write(c->ssl, b, chunk);
        if (rc <= 0) {
            tls_error(c, "TLS write failed");
            return -1;
        }
        b += rc;
        n -= (size_t)rc;
    }
    return flush_tls(c);
}

static void close_now(sp_conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    close_now(req->data);
}

void sp_conn_close(sp_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (!c->inited) {
        c->ops->on_closed(c);
        return;
    }
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    if (c->tls && !c->handshaking && c->ssl && !c->eof_seen) {
        SSL_shutdown(c->ssl); /* close_notify, best effort */
        flush_tls(c);
    }
    /* A shutdown request runs after the queued writes, so a final ErrorResponse reaches the
     * client before the socket closes. */
    c->shutdown_req.data = c;
    if (uv_is_writable((uv_stream_t *)&c->tcp) && !c->eof_seen && c->pending < SP_CONN_HIGH_WATER &&
        uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) == 0)
        return;
    close_now(c);
}

void sp_conn_abort(sp_conn *c)
{
    if (!c->closing)
        sp_conn_close(c);
    if (c->inited)
        close_now(c);
}

bool sp_conn_open(const sp_conn *c)
{
    return c->inited;
}
