/* SFTP (draft-ietf-secsh-filexfer-02, version 3 as OpenSSH speaks it) seen from the middle,
 * I/O-free: the bytes of an sftp subsystem channel in both directions go in, file operations
 * come out for the recording (open/read/write/rename/remove/mkdir/rmdir with paths and byte
 * counts). Only a bounded prefix of each packet is kept; file data is counted, never buffered.
 * Malformed input stops the parser for that channel (the relay itself is not affected).
 * Fuzzed by tests/fuzz/fuzz_sftp.c. */
#ifndef SP_PROXY_SFTP_PARSE_H
#define SP_PROXY_SFTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SP_SFTP_PREFIX 2048 /* packet bytes kept: type, id, handle, paths */
#define SP_SFTP_MAX_HANDLES 64
#define SP_SFTP_MAX_PENDING 256
#define SP_SFTP_PATH_MAX 512

typedef struct sp_sftp_op {
    const char *op; /* "open", "read", "write", "rename", "remove", "mkdir", "rmdir" */
    const char *path;
    const char *path2; /* rename target, else "" */
    uint64_t bytes;    /* read/write: bytes moved through the handle until its close */
} sp_sftp_op;

typedef void (*sp_sftp_cb)(void *arg, const sp_sftp_op *op);

typedef struct sp_sftp_stream {
    uint8_t hdr[4];
    size_t hdr_have;
    uint32_t body_len, body_have;
    uint8_t prefix[SP_SFTP_PREFIX];
} sp_sftp_stream;

typedef struct sp_sftp_handle {
    bool used;
    uint8_t h[256];
    size_t hlen;
    char path[SP_SFTP_PATH_MAX];
    uint64_t read, written;
} sp_sftp_handle;

typedef struct sp_sftp_pending {
    bool used;
    uint32_t id;
    enum { SP_SFTP_PEND_OPEN, SP_SFTP_PEND_READ } kind;
    int handle;                  /* READ: index into handles */
    char path[SP_SFTP_PATH_MAX]; /* OPEN */
} sp_sftp_pending;

typedef struct sp_sftp {
    sp_sftp_stream from_client, from_server;
    sp_sftp_handle handles[SP_SFTP_MAX_HANDLES];
    sp_sftp_pending *pending; /* SP_SFTP_MAX_PENDING entries, allocated on first use */
    bool broken;
    sp_sftp_cb cb;
    void *arg;
} sp_sftp;

void sp_sftp_init(sp_sftp *p, sp_sftp_cb cb, void *arg);
/* Bytes of the channel, in order, from the client (true) or from the server (false). */
void sp_sftp_feed(sp_sftp *p, bool from_client, const uint8_t *data, size_t n);
/* Reports reads/writes of handles still open (channel closed without SSH_FXP_CLOSE). */
void sp_sftp_free(sp_sftp *p);

#endif
