/* The audit trail writer: a bounded queue drained by one thread; each line is chained to the
 * previous one by SHA-256 and appended under flock so several processes share one chain. The
 * same thread writes the signed checkpoints and, in batch mode, the deferred fsyncs. */
#include "recorder/audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define AUDIT_QUEUE_MAX 10000
#define AUDIT_RETRY_SECONDS 1
#define AUDIT_HASH_HEX SP_AUDIT_HASH_HEX
#define AUDIT_PATH_MAX 4096
#define AUDIT_SEQ_LINE_MAX (64 * 1024) /* a longer last line is counted, not parsed */
#define AUDIT_KEY_FILE_MAX (16 * 1024)
#define AUDIT_SIG_B64 89 /* base64 of a 64-byte Ed25519 signature + NUL */
#define AUDIT_KEY_ID_HEX 17

static const char audit_zero_hash[AUDIT_HASH_HEX] =
    "0000000000000000000000000000000000000000000000000000000000000000";

/* Process-wide writer state; everything below `lock` is guarded by it. A NULL in the queue
 * asks for a checkpoint at that point. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    bool running;
    bool stopping;
    json_t *queue[AUDIT_QUEUE_MAX];
    size_t head;
    size_t count;
    uint64_t dropped;     /* events lost since the last written line */
    bool warned_not_open; /* emit before open is logged once */
    bool warned_phi;      /* a PHI-bearing field reached emit: logged once */
    char dir[AUDIT_PATH_MAX];
    char host[256];
    sp_audit_options opt;
    EVP_PKEY *signing_key;               /* NULL: checkpoints are written unsigned */
    char key_id[AUDIT_KEY_ID_HEX];       /* names the key in each checkpoint */
    char unsynced[AUDIT_PATH_MAX + 512]; /* batch mode: the file written since the last fsync */
    int64_t sync_due_us;                 /* monotonic; 0 = nothing to sync */
    int64_t checkpoint_due_us;           /* monotonic; 0 = no periodic checkpoints */
} audit = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- file names ---- */

/* Host names go into a file name: keep them to a safe alphabet. */
static void audit_read_host(char *out, size_t outlen)
{
    char host[256];
    if (gethostname(host, sizeof(host)) < 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    size_t i = 0;
    for (; host[i] && i + 1 < outlen; i++) {
        char c = host[i];
        bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_';
        out[i] = safe ? c : '_';
    }
    out[i] = '\0';
}

static int audit_file_name(char *out, size_t outlen, time_t now)
{
    struct tm tm;
    gmtime_r(&now, &tm);
    int n = snprintf(out, outlen, "audit-%s-%04d-%02d-%02d.jsonl", audit.host, tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* ---- hashing the last line of a file ---- */

/* Where the last line of fd starts and ends (end excludes its newline). A file whose last
 * byte is not a newline ends with a torn line from a crashed writer; it still counts as the
 * previous line (verify will flag it), and *torn tells the caller to terminate it. */
static int audit_find_last_line(int fd, off_t size, off_t *start, off_t *end, bool *torn)
{
    uint8_t block[4096];
    *torn = false;
    *end = size;
    if (size == 0) {
        *start = 0;
        return 0;
    }
    uint8_t last;
    if (pread(fd, &last, 1, size - 1) != 1)
        return -1;
    if (last == '\n')
        *end = size - 1;
    else
        *torn = true;
    off_t pos = *end;
    while (pos > 0) {
        size_t n = pos > (off_t)sizeof(block) ? sizeof(block) : (size_t)pos;
        ssize_t got = pread(fd, block, n, pos - (off_t)n);
        if (got != (ssize_t)n)
            return -1;
        for (size_t i = n; i > 0; i--) {
            if (block[i - 1] == '\n') {
                *start = pos - (off_t)n + (off_t)i;
                return 0;
            }
        }
        pos -= (off_t)n;
    }
    *start = 0;
    return 0;
}

static int audit_hash_range(int fd, off_t start, off_t end, char hex[AUDIT_HASH_HEX])
{
    uint8_t block[4096];
    uint8_t digest[32];
    unsigned int dlen = 0;
    int rc = -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
        goto out;
    for (off_t pos = start; pos < end;) {
        size_t n = end - pos > (off_t)sizeof(block) ? sizeof(block) : (size_t)(end - pos);
        ssize_t got = pread(fd, block, n, pos);
        if (got <= 0 || EVP_DigestUpdate(md, block, (size_t)got) != 1)
            goto out;
        pos += got;
    }
    if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != sizeof(digest))
        goto out;
    sp_hex_encode(digest, sizeof(digest), hex);
    rc = 0;
out:
    EVP_MD_CTX_free(md);
    return rc;
}

/* prev for a line appended to fd: the hash of its last line, or all zeros when empty. */
static int audit_prev_of_fd(int fd, char hex[AUDIT_HASH_HEX], bool *torn)
{
    struct stat st;
    off_t start, end;
    *torn = false;
    if (fstat(fd, &st) < 0 || audit_find_last_line(fd, st.st_size, &start, &end, torn) < 0)
        return -1;
    if (st.st_size == 0) {
        memcpy(hex, audit_zero_hash, AUDIT_HASH_HEX);
        return 0;
    }
    return audit_hash_range(fd, start, end, hex);
}

/* The newest of this host's audit files whose name sorts before `current` (the date in the
 * name makes name order the day order). Empty when there is none. */
static int audit_find_previous_file(const char *current, char *out, size_t outlen)
{
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "audit-%s-", audit.host);
    size_t plen = strlen(prefix);
    DIR *d = opendir(audit.dir);
    if (!d)
        return -1;
    out[0] = '\0';
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        size_t len = strlen(name);
        /* prefix + YYYY-MM-DD.jsonl: exactly 16 more characters */
        if (len != plen + 16 || strncmp(name, prefix, plen) != 0 ||
            strcmp(name + len - 6, ".jsonl") != 0)
            continue;
        if (strcmp(name, current) < 0 && (out[0] == '\0' || strcmp(name, out) > 0))
            snprintf(out, outlen, "%s", name);
    }
    closedir(d);
    return 0;
}

/* The first line of a new day's file links to the last line of the previous file. Empty
 * files are passed over: sp_audit_open creates the day's file before any line is written, so
 * a writer started just before midnight leaves one behind. */
static int audit_prev_of_earlier_file(const char *current, char hex[AUDIT_HASH_HEX])
{
    char name[512], path[AUDIT_PATH_MAX + 512];
    char before[512];
    snprintf(before, sizeof(before), "%s", current);
    for (;;) {
        if (audit_find_previous_file(before, name, sizeof(name)) < 0)
            return -1;
        if (name[0] == '\0') {
            memcpy(hex, audit_zero_hash, AUDIT_HASH_HEX);
            return 0;
        }
        snprintf(path, sizeof(path), "%s/%s", audit.dir, name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        /* A writer still finishing a line there (across midnight) holds LOCK_EX. */
        struct stat st;
        bool torn;
        int rc = -1;
        if (flock(fd, LOCK_SH) == 0 && fstat(fd, &st) == 0)
            rc = st.st_size == 0 ? 1 : audit_prev_of_fd(fd, hex, &torn);
        close(fd);
        if (rc <= 0)
            return rc;
        snprintf(before, sizeof(before), "%s", name);
    }
}

/* The seq of the line after the last line of fd: the last line's "seq" + 1 when it has one,
 * else (a torn or foreign line) one more than the number of lines in the file. */
static int audit_next_seq(int fd, off_t start, off_t end, off_t size, int64_t *next_seq)
{
    if (end - start <= AUDIT_SEQ_LINE_MAX) {
        char *line = malloc((size_t)(end - start) + 1);
        if (!line)
            return -1;
        ssize_t got = end > start ? pread(fd, line, (size_t)(end - start), start) : 0;
        json_t *o = got == end - start ? json_loadb(line, (size_t)got, 0, NULL) : NULL;
        free(line);
        json_t *seq = json_object_get(o, "seq");
        bool known = json_is_integer(seq) && json_integer_value(seq) > 0;
        if (known)
            *next_seq = (int64_t)json_integer_value(seq) + 1;
        json_decref(o);
        if (known)
            return 0;
    }
    uint8_t block[4096];
    int64_t lines = 0;
    for (off_t pos = 0; pos < size;) {
        ssize_t got = pread(fd, block, sizeof(block), pos);
        if (got <= 0)
            return -1;
        for (ssize_t i = 0; i < got; i++)
            lines += block[i] == '\n';
        pos += got;
    }
    /* a torn last line has no newline yet but is about to get one */
    *next_seq = lines + 1 + (end == size && size > start ? 1 : 0);
    return 0;
}

/* prev and seq for a line appended to fd. */
static int audit_tail_of_fd(int fd, char hex[AUDIT_HASH_HEX], int64_t *next_seq, bool *torn)
{
    struct stat st;
    off_t start, end;
    *torn = false;
    *next_seq = 1;
    if (fstat(fd, &st) < 0 || audit_find_last_line(fd, st.st_size, &start, &end, torn) < 0)
        return -1;
    if (st.st_size == 0) {
        memcpy(hex, audit_zero_hash, AUDIT_HASH_HEX);
        return 0;
    }
    if (audit_hash_range(fd, start, end, hex) < 0)
        return -1;
    return audit_next_seq(fd, start, end, st.st_size, next_seq);
}

/* ---- checkpoints ---- */

static int audit_sign(const char *msg, size_t len, char sig_b64[AUDIT_SIG_B64])
{
    uint8_t sig[64];
    size_t siglen = sizeof(sig);
    int rc = -1;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (md && EVP_DigestSignInit(md, NULL, NULL, NULL, audit.signing_key) == 1 &&
        EVP_DigestSign(md, sig, &siglen, (const uint8_t *)msg, len) == 1 && siglen == 64) {
        sp_base64_encode(sig, siglen, sig_b64);
        rc = 0;
    }
    EVP_MD_CTX_free(md);
    return rc;
}

/* The checkpoint line for a file whose chain head is `prev` with seq-1 lines before it. */
static json_t *audit_checkpoint_event(const char *file, const char *prev, int64_t seq,
                                      const char *reason)
{
    json_t *ev = sp_audit_new(SP_AUDIT_CHECKPOINT, "checkpoint", true, "sallyport");
    if (!ev)
        return NULL;
    int64_t time_ms = json_integer_value(json_object_get(ev, "time"));
    json_t *cp = json_pack("{s:s, s:s, s:I, s:s}", "reason", reason, "file", file, "lines",
                           (json_int_t)(seq - 1), "head", prev);
    char msg[AUDIT_PATH_MAX + 512], sig[AUDIT_SIG_B64];
    int len = sp_audit_checkpoint_message(file, seq - 1, prev, time_ms, reason, msg, sizeof(msg));
    if (audit.signing_key) {
        if (len < 0 || audit_sign(msg, (size_t)len, sig) < 0) {
            json_decref(cp);
            json_decref(ev);
            return NULL;
        }
        json_object_set_new(cp, "key_id", json_string(audit.key_id));
        json_object_set_new(cp, "signature", json_string(sig));
    }
    json_object_set_new(ev, "message", json_string("audit chain checkpoint"));
    json_object_set_new(ev, "unmapped", json_pack("{s:o}", "checkpoint", cp));
    return ev;
}

/* Public key id: the first 8 bytes of SHA-256 of the raw Ed25519 public key, in hex. */
static int audit_key_id(EVP_PKEY *key, char out[AUDIT_KEY_ID_HEX])
{
    uint8_t raw[32], digest[32];
    size_t rawlen = sizeof(raw);
    unsigned int dlen = 0;
    if (EVP_PKEY_get_raw_public_key(key, raw, &rawlen) != 1 || rawlen != 32 ||
        EVP_Digest(raw, rawlen, digest, &dlen, EVP_sha256(), NULL) != 1)
        return -1;
    sp_hex_encode(digest, 8, out);
    return 0;
}

static int audit_load_signing_key(const char *path, char *err, size_t errlen)
{
    char rerr[512];
    size_t len = 0;
    char *pem = sp_read_file(path, AUDIT_KEY_FILE_MAX, true, &len, rerr, sizeof(rerr));
    if (!pem) {
        snprintf(err, errlen, "audit: signing_key_file: %s", rerr);
        return -1;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    OPENSSL_cleanse(pem, len);
    free(pem);
    if (!key || EVP_PKEY_get_id(key) != EVP_PKEY_ED25519) {
        snprintf(err, errlen,
                 "audit: signing_key_file %s is not an Ed25519 private key in PEM form "
                 "(make one with: openssl genpkey -algorithm ed25519 -out FILE)",
                 path);
        EVP_PKEY_free(key);
        return -1;
    }
    if (audit_key_id(key, audit.key_id) < 0) {
        snprintf(err, errlen, "audit: cannot read the public half of %s", path);
        EVP_PKEY_free(key);
        return -1;
    }
    audit.signing_key = key;
    return 0;
}

/* ---- writing one line ---- */

/* Serialises the event (or, with event NULL, a checkpoint for checkpoint_reason) with its chain
 * link and appends it. On failure (-1), err says what failed on which file; the event is left
 * without "prev" so it can be retried. -2 means the event itself cannot be written and retrying is
 * pointless. *written_checkpoint receives a checkpoint line as written (caller frees). */
static int audit_append(json_t *event, const char *checkpoint_reason, uint64_t dropped,
                        char **written_checkpoint, char *err, size_t errlen)
{
    char name[512], path[AUDIT_PATH_MAX + 512];
    char prev[AUDIT_HASH_HEX];
    const char *step = "open";
    char *text = NULL;
    json_t *checkpoint = NULL;
    bool torn = false;
    int64_t seq = 1;
    int rc = -1;

    if (audit_file_name(name, sizeof(name), time(NULL)) < 0) {
        snprintf(err, errlen, "audit file name too long for host %s", audit.host);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", audit.dir, name);
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        goto out;
    step = "lock";
    if (flock(fd, LOCK_EX) < 0)
        goto out;
    step = "read the last line of";
    struct stat st;
    if (fstat(fd, &st) < 0)
        goto out;
    if (st.st_size > 0) {
        if (audit_tail_of_fd(fd, prev, &seq, &torn) < 0)
            goto out;
    } else {
        step = "read the previous audit file before";
        if (audit_prev_of_earlier_file(name, prev) < 0)
            goto out;
    }

    if (!event) {
        checkpoint = audit_checkpoint_event(name, prev, seq, checkpoint_reason);
        if (!checkpoint) {
            snprintf(err, errlen, "audit: cannot build or sign a checkpoint for %s", path);
            rc = -2;
            goto out_close;
        }
        event = checkpoint;
    }
    json_object_set_new(event, "seq", json_integer((json_int_t)seq));
    json_object_set_new(event, "prev", json_string(prev));
    if (dropped > 0)
        json_object_set_new(event, "dropped_before", json_integer((json_int_t)dropped));
    text = json_dumps(event, JSON_COMPACT);
    json_object_del(event, "seq");
    json_object_del(event, "prev");
    json_object_del(event, "dropped_before");
    if (!text) {
        snprintf(err, errlen, "audit: an event cannot be serialised as JSON; dropped");
        rc = -2;
        goto out_close;
    }
    step = "write";
    if (torn && sp_write_all(fd, "\n", 1) < 0)
        goto out;
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: the line is written in one write(2) */
    if (sp_write_all(fd, text, len + 1) < 0)
        goto out;
    text[len] = '\0';
    step = "fsync";
    if (!audit.opt.fsync_batch || checkpoint) {
        if (fsync(fd) < 0)
            goto out;
    } else if (audit.sync_due_us == 0 || strcmp(audit.unsynced, path) != 0) {
        /* a day change leaves the old file to be synced first */
        if (audit.sync_due_us != 0 && strcmp(audit.unsynced, path) != 0 && fsync(fd) < 0)
            goto out;
        snprintf(audit.unsynced, sizeof(audit.unsynced), "%s", path);
        audit.sync_due_us = sp_mono_us() + audit.opt.batch_us;
    }
    if (checkpoint) {
        *written_checkpoint = text;
        text = NULL;
    }
    rc = 0;
out:
    if (rc == -1)
        snprintf(err, errlen, "audit: %s %s: %s", step, path, strerror(errno));
out_close:
    if (fd >= 0)
        close(fd); /* releases the lock */
    free(text);
    json_decref(checkpoint);
    return rc;
}

/* Batch mode: the deferred fsync of the file written last. */
static void audit_sync_pending(void)
{
    if (audit.sync_due_us == 0)
        return;
    int fd = open(audit.unsynced, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0)
        sp_error("audit: fsync %s: %s", audit.unsynced, strerror(errno));
    if (fd >= 0)
        close(fd);
    audit.sync_due_us = 0;
}

/* The chain head leaves the host: syslog usually forwards LOG_AUTHPRIV elsewhere. */
static void audit_checkpoint_to_syslog(const char *line)
{
    if (!audit.opt.checkpoints_to_syslog)
        return;
    openlog("sallyport", LOG_PID | LOG_NDELAY, LOG_AUTHPRIV);
    syslog(LOG_AUTHPRIV | LOG_INFO, "sallyport-audit-checkpoint %s", line);
    closelog();
}

/* ---- the writer thread ---- */

static void audit_pop_locked(void)
{
    json_decref(audit.queue[audit.head]);
    audit.queue[audit.head] = NULL;
    audit.head = (audit.head + 1) % AUDIT_QUEUE_MAX;
    audit.count--;
}

/* At shutdown the trail may still be unwritable: the remaining events are lost, loudly,
 * rather than hanging the process. */
static void audit_drop_remaining_locked(void)
{
    size_t lost = audit.count;
    while (audit.count > 0)
        audit_pop_locked();
    sp_error("audit: %zu events not written at shutdown (%llu dropped earlier)", lost,
             (unsigned long long)audit.dropped);
}

static void audit_deadline(struct timespec *ts, int64_t mono_us)
{
    ts->tv_sec = (time_t)(mono_us / 1000000);
    ts->tv_nsec = (long)(mono_us % 1000000) * 1000;
}

/* The earliest timer the writer must wake for; 0 = none. */
static int64_t audit_next_timer_locked(void)
{
    int64_t next = audit.sync_due_us;
    if (audit.checkpoint_due_us && (!next || audit.checkpoint_due_us < next))
        next = audit.checkpoint_due_us;
    return next;
}

/* Sleeps until there is work or a timer is due. Returns with the lock held. */
static void audit_wait_locked(void)
{
    while (audit.count == 0 && !audit.stopping) {
        int64_t next = audit_next_timer_locked();
        if (!next) {
            pthread_cond_wait(&audit.cond, &audit.lock);
            continue;
        }
        if (sp_mono_us() >= next)
            return;
        struct timespec ts;
        audit_deadline(&ts, next);
        pthread_cond_timedwait(&audit.cond, &audit.lock, &ts);
    }
}

/* Writes one item (event, or checkpoint when NULL). 0 done, -1 retry later. */
static int audit_write_item(json_t *event, const char *checkpoint_reason, uint64_t dropped,
                            bool *failing, unsigned long *failures)
{
    char err[AUDIT_PATH_MAX + 700];
    char *checkpoint_line = NULL;
    int rc = audit_append(event, checkpoint_reason, dropped, &checkpoint_line, err, sizeof(err));
    if (rc == 0 && checkpoint_line) {
        audit_checkpoint_to_syslog(checkpoint_line);
        free(checkpoint_line);
    }
    if (rc == -2) {
        sp_error("%s", err);
        return -2;
    }
    if (rc == 0) {
        if (*failing)
            sp_info("audit: writing resumed after %lu failed attempts", *failures);
        *failing = false;
        *failures = 0;
        return 0;
    }
    (*failures)++;
    if (!*failing)
        sp_error("%s; keeping events queued and retrying every %ds", err, AUDIT_RETRY_SECONDS);
    *failing = true;
    return -1;
}

/* Timers run on the writer thread, outside the lock. */
static void audit_run_timers(bool *failing, unsigned long *failures)
{
    int64_t now = sp_mono_us();
    if (audit.sync_due_us && now >= audit.sync_due_us)
        audit_sync_pending();
    if (audit.checkpoint_due_us && now >= audit.checkpoint_due_us) {
        int rc = audit_write_item(NULL, "interval", 0, failing, failures);
        audit.checkpoint_due_us =
            now + (rc == -1 ? AUDIT_RETRY_SECONDS * 1000000LL : audit.opt.checkpoint_interval_us);
    }
}

static void audit_retry_wait(void)
{
    struct timespec ts;
    audit_deadline(&ts, sp_mono_us() + AUDIT_RETRY_SECONDS * 1000000LL);
    pthread_mutex_lock(&audit.lock);
    if (!audit.stopping)
        pthread_cond_timedwait(&audit.cond, &audit.lock, &ts);
    pthread_mutex_unlock(&audit.lock);
}

static void *audit_writer_main(void *arg)
{
    (void)arg;
    bool failing = false;
    unsigned long failures = 0;

    pthread_mutex_lock(&audit.lock);
    for (;;) {
        audit_wait_locked();
        if (audit.count == 0 && !audit.stopping) {
            pthread_mutex_unlock(&audit.lock);
            audit_run_timers(&failing, &failures);
            pthread_mutex_lock(&audit.lock);
            continue;
        }
        if (audit.count == 0)
            break;
        json_t *event = audit.queue[audit.head];
        uint64_t dropped = event ? audit.dropped : 0;
        pthread_mutex_unlock(&audit.lock);

        int rc = audit_write_item(event, "requested", dropped, &failing, &failures);

        pthread_mutex_lock(&audit.lock);
        if (rc == -2) {
            audit.dropped += event ? 1 : 0;
            audit_pop_locked();
            continue;
        }
        if (rc == 0) {
            audit.dropped -= dropped;
            audit_pop_locked();
            continue;
        }
        if (audit.stopping) {
            audit_drop_remaining_locked();
            break;
        }
        pthread_mutex_unlock(&audit.lock);
        audit_retry_wait();
        pthread_mutex_lock(&audit.lock);
    }
    pthread_mutex_unlock(&audit.lock);
    /* The closing checkpoint: a trail that ends with one was stopped cleanly. */
    if (audit.opt.checkpoint_interval_us > 0 && !failing)
        audit_write_item(NULL, "shutdown", 0, &failing, &failures);
    audit_sync_pending();
    return NULL;
}

/* ---- public API ---- */

/* Fail at startup, where an operator sees it, rather than on the first event. */
static int audit_check_writable(char *err, size_t errlen)
{
    char name[512], path[AUDIT_PATH_MAX + 512];
    if (audit_file_name(name, sizeof(name), time(NULL)) < 0) {
        snprintf(err, errlen, "audit file name too long for host %s", audit.host);
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", audit.dir, name);
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "audit: open %s: %s", path, strerror(errno));
        return -1;
    }
    close(fd);
    return 0;
}

/* The writer waits on the monotonic clock: a wall-clock step must not delay a checkpoint. */
static int audit_init_cond(void)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0)
        return -1;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&audit.cond, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

static int audit_set_options(const sp_audit_options *opt, char *err, size_t errlen)
{
    memset(&audit.opt, 0, sizeof(audit.opt));
    if (opt)
        audit.opt = *opt;
    audit.opt.signing_key_file = NULL; /* not kept: the caller owns the string */
    if (audit.opt.fsync_batch && audit.opt.batch_us <= 0) {
        snprintf(err, errlen, "audit: batch fsync needs a positive batch interval");
        return -1;
    }
    EVP_PKEY_free(audit.signing_key);
    audit.signing_key = NULL;
    if (opt && opt->signing_key_file &&
        audit_load_signing_key(opt->signing_key_file, err, errlen) < 0)
        return -1;
    audit.sync_due_us = 0;
    audit.checkpoint_due_us =
        audit.opt.checkpoint_interval_us > 0 ? sp_mono_us() + audit.opt.checkpoint_interval_us : 0;
    return 0;
}

int sp_audit_open(const char *dir, const sp_audit_options *opt, char *err, size_t errlen)
{
    pthread_mutex_lock(&audit.lock);
    bool running = audit.running;
    pthread_mutex_unlock(&audit.lock);
    if (running) {
        snprintf(err, errlen, "audit: already open on %s", audit.dir);
        return -1;
    }
    if (snprintf(audit.dir, sizeof(audit.dir), "%s", dir) >= (int)sizeof(audit.dir)) {
        snprintf(err, errlen, "audit: directory path too long");
        return -1;
    }
    if (sp_mkdirs(dir, 0700) < 0) {
        snprintf(err, errlen, "audit: create directory %s: %s", dir, strerror(errno));
        return -1;
    }
    audit_read_host(audit.host, sizeof(audit.host));
    if (audit_check_writable(err, errlen) < 0 || audit_set_options(opt, err, errlen) < 0)
        return -1;
    if (audit_init_cond() < 0) {
        snprintf(err, errlen, "audit: cannot set up the writer's condition variable");
        return -1;
    }

    pthread_mutex_lock(&audit.lock);
    audit.stopping = false;
    audit.head = 0;
    audit.count = 0;
    int rc = pthread_create(&audit.thread, NULL, audit_writer_main, NULL);
    if (rc == 0)
        audit.running = true;
    pthread_mutex_unlock(&audit.lock);
    if (rc != 0) {
        snprintf(err, errlen, "audit: start writer thread: %s", strerror(rc));
        return -1;
    }
    return 0;
}

void sp_audit_close(void)
{
    pthread_mutex_lock(&audit.lock);
    if (!audit.running) {
        pthread_mutex_unlock(&audit.lock);
        return;
    }
    audit.stopping = true;
    pthread_cond_broadcast(&audit.cond);
    pthread_mutex_unlock(&audit.lock);
    pthread_join(audit.thread, NULL);
    pthread_mutex_lock(&audit.lock);
    audit.running = false;
    pthread_mutex_unlock(&audit.lock);
    EVP_PKEY_free(audit.signing_key);
    audit.signing_key = NULL;
}

/* Queues item (an event, or NULL for a checkpoint); takes the lock. */
static void audit_enqueue(json_t *item)
{
    pthread_mutex_lock(&audit.lock);
    if (!audit.running || audit.stopping) {
        if (!audit.warned_not_open)
            sp_error("audit: event emitted while the audit trail is not open; dropped");
        audit.warned_not_open = true;
        audit.dropped += item ? 1 : 0;
        json_decref(item);
    } else if (audit.count == AUDIT_QUEUE_MAX) {
        /* Counted and reported as "dropped_before" on the next line written. */
        audit.dropped += item ? 1 : 0;
        json_decref(item);
    } else {
        audit.queue[(audit.head + audit.count) % AUDIT_QUEUE_MAX] = item;
        audit.count++;
        pthread_cond_signal(&audit.cond);
    }
    pthread_mutex_unlock(&audit.lock);
}

void sp_audit_emit(json_t *event)
{
    if (!event)
        return;
    size_t removed = sp_audit_strip_phi(event);
    if (removed > 0) {
        /* A caller broke the rule; the event still counts, without the fields. */
        json_t *unmapped = json_object_get(event, "unmapped");
        if (!json_is_object(unmapped)) {
            unmapped = json_object();
            json_object_set_new(event, "unmapped", unmapped);
        }
        json_object_set_new(unmapped, "phi_fields_removed", json_integer((json_int_t)removed));
        pthread_mutex_lock(&audit.lock);
        bool warned = audit.warned_phi;
        audit.warned_phi = true;
        pthread_mutex_unlock(&audit.lock);
        if (!warned)
            sp_error("audit: an event carried %zu field(s) that may hold PHI; removed them "
                     "(a bug: report it)",
                     removed);
    }
    audit_enqueue(event);
}

void sp_audit_request_checkpoint(void)
{
    audit_enqueue(NULL);
}
