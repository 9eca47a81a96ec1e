/* One TCP connection on a worker's loop, plaintext or TLS (OpenSSL over memory BIOs).
 *
 * Reads use the worker's shared buffers and hand plaintext to on_data synchronously, so an
 * idle connection holds no read buffer. Writes are copied into uv_write requests; the bytes
 * queued but not yet on the socket are `pending`, and the owner uses them for backpressure
 * (stop reading the other side above a high mark, resume in on_drain). */
#ifndef SP_PROXY_CONN_H
#define SP_PROXY_CONN_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sp_worker;
typedef struct sp_conn sp_conn;

typedef struct sp_conn_ops {
    /* Plaintext arrived (after TLS if on). n > 0. */
    void (*on_data)(sp_conn *c, const uint8_t *p, size_t n);
    /* TLS handshake finished (ok) or failed (ok = false, why set). */
    void (*on_tls)(sp_conn *c, bool ok, const char *why);
    /* Outgoing connect finished. status 0 or a libuv error. */
    void (*on_connect)(sp_conn *c, int status);
    /* Queued bytes fell below the low-water mark after having passed the high one. */
    void (*on_drain)(sp_conn *c);
    /* The peer closed or the connection failed; why is a short reason. */
    void (*on_eof)(sp_conn *c, const char *why);
    /* The handle is closed (after sp_conn_close); the owner may free c now. */
    void (*on_closed)(sp_conn *c);
} sp_conn_ops;

#define SP_CONN_HIGH_WATER (256 * 1024)
#define SP_CONN_LOW_WATER (64 * 1024)

struct sp_conn {
    uv_tcp_t tcp;
    struct sp_worker *worker;
    const sp_conn_ops *ops;
    void *owner;
    SSL *ssl;
    BIO *rbio, *wbio;
    bool tls;         /* bytes on the wire are TLS */
    bool handshaking; /* TLS handshake in progress */
    bool reading;
    bool want_read; /* owner wants reads; cleared by backpressure */
    bool closing;
    bool above_high; /* pending passed the high mark; on_drain due */
    bool eof_seen;
    size_t pending; /* bytes queued in uv_write not yet written */
    char peer[64];  /* "ip:port" */
    uv_connect_t connect_req;
    uv_shutdown_t shutdown_req;
    bool inited;
};

/* Accept onto c (zeroed by the caller) from a listening server. */
int sp_conn_accept(sp_conn *c, struct sp_worker *w, uv_stream_t *server, const sp_conn_ops *ops,
                   void *owner);
/* Start connecting to host:port (numeric or name resolved by the caller). */
int sp_conn_connect(sp_conn *c, struct sp_worker *w, const struct sockaddr *addr,
                    const sp_conn_ops *ops, void *owner);
int sp_conn_read_start(sp_conn *c);
void sp_conn_read_stop(sp_conn *c);
/* Begin TLS on an established connection. server: accept side; else connect side. Any bytes
 * already read stay plaintext: callers refuse data that came before the switch. */
int sp_conn_start_tls(sp_conn *c, SSL_CTX *ctx, bool server, const char *verify_host);
/* Queue bytes (copied). -1 if the connection is closing or TLS failed. */
int sp_conn_write(sp_conn *c, const void *p, size_t n);
/* Close after the queued bytes are written (bounded by a short linger), then on_closed. */
void sp_conn_close(sp_conn *c);
/* Close at once, dropping queued bytes (a peer that stopped reading). */
void sp_conn_abort(sp_conn *c);
/* Has the handle been initialised (accept/connect ran)? */
bool sp_conn_open(const sp_conn *c);

#endif
