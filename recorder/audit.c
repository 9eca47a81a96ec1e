/* The audit trail writer: a bounded queue drained by one thread; each line is chained to the
 * previous one by SHA-256 and appended under flock so several processes share one chain. */
#include "recorder/audit.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define AUDIT_QUEUE_MAX 10000
#define AUDIT_RETRY_SECONDS 1
#define AUDIT_OCSF_VERSION "1.8.0"
#define AUDIT_HASH_HEX 65 /* 64 hex digits + NUL */
#define AUDIT_PATH_MAX 4096

static const char audit_zero_hash[AUDIT_HASH_HEX] =
    "0000000000000000000000000000000000000000000000000000000000000000";

/* Process-wide writer state; everything below `lock` is guarded by it. */
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
    char dir[AUDIT_PATH_MAX];
    char host[256];
} audit = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

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

/* ---- writing one line ---- */

/* Serialises the event with its chain link and appends it. On failure (-1), err says what
 * failed on which file, and the event is left without "prev" so it can be retried; -2 means
 * the event itself cannot be written and retrying is pointless. */
static int audit_append(json_t *event, uint64_t dropped, char *err, size_t errlen)
{
    char name[512], path[AUDIT_PATH_MAX + 512];
    char prev[AUDIT_HASH_HEX];
    const char *step = "open";
    char *text = NULL;
    bool torn = false;
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
        if (audit_prev_of_fd(fd, prev, &torn) < 0)
            goto out;
    } else {
        step = "read the previous audit file before";
        if (audit_prev_of_earlier_file(name, prev) < 0)
            goto out;
    }

    json_object_set_new(event, "prev", json_string(prev));
    if (dropped > 0)
        json_object_set_new(event, "dropped_before", json_integer((json_int_t)dropped));
    text = json_dumps(event, JSON_COMPACT);
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
    step = "fsync";
    if (fsync(fd) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        snprintf(err, errlen, "audit: %s %s: %s", step, path, strerror(errno));
out_close:
    if (fd >= 0)
        close(fd); /* releases the lock */
    free(text);
    return rc;
}

/* ---- the writer thread ---- */

static void audit_wait_retry(void)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += AUDIT_RETRY_SECONDS;
    pthread_mutex_lock(&audit.lock);
    if (!audit.stopping)
        pthread_cond_timedwait(&audit.cond, &audit.lock, &until);
    pthread_mutex_unlock(&audit.lock);
}

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

static void *audit_writer_main(void *arg)
{
    (void)arg;
    bool failing = false;
    unsigned long failures = 0;
    char err[AUDIT_PATH_MAX + 700];

    pthread_mutex_lock(&audit.lock);
    for (;;) {
        while (audit.count == 0 && !audit.stopping)
            pthread_cond_wait(&audit.cond, &audit.lock);
        if (audit.count == 0)
            break;
        json_t *event = audit.queue[audit.head];
        uint64_t dropped = audit.dropped;
        pthread_mutex_unlock(&audit.lock);

        int rc = audit_append(event, dropped, err, sizeof(err));

        pthread_mutex_lock(&audit.lock);
        if (rc == -2) {
            sp_error("%s", err);
            audit.dropped++;
            audit_pop_locked();
            continue;
        }
        if (rc == 0) {
            audit.dropped -= dropped;
            audit_pop_locked();
            if (failing)
                sp_info("audit: writing resumed after %lu failed attempts", failures);
            failing = false;
            failures = 0;
            continue;
        }
        failures++;
        if (!failing)
            sp_error("%s; keeping events queued and retrying every %ds", err, AUDIT_RETRY_SECONDS);
        failing = true;
        if (audit.stopping) {
            audit_drop_remaining_locked();
            break;
        }
        pthread_mutex_unlock(&audit.lock);
        audit_wait_retry();
        pthread_mutex_lock(&audit.lock);
    }
    pthread_mutex_unlock(&audit.lock);
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

int sp_audit_open(const char *dir, char *err, size_t errlen)
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
    if (audit_check_writable(err, errlen) < 0)
        return -1;

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
}

void sp_audit_emit(json_t *event)
{
    if (!event)
        return;
    pthread_mutex_lock(&audit.lock);
    if (!audit.running || audit.stopping) {
        if (!audit.warned_not_open)
            sp_error("audit: event emitted while the audit trail is not open; dropped");
        audit.warned_not_open = true;
        audit.dropped++;
        json_decref(event);
    } else if (audit.count == AUDIT_QUEUE_MAX) {
        /* Counted and reported as "dropped_before" on the next line written. */
        audit.dropped++;
        json_decref(event);
    } else {
        audit.queue[(audit.head + audit.count) % AUDIT_QUEUE_MAX] = event;
        audit.count++;
        pthread_cond_signal(&audit.cond);
    }
    pthread_mutex_unlock(&audit.lock);
}

static const char *audit_class_name(enum sp_audit_class cls)
{
    switch (cls) {
    case SP_AUDIT_ACCOUNT_CHANGE:
        return "Account Change";
    case SP_AUDIT_AUTHENTICATION:
        return "Authentication";
    case SP_AUDIT_AUTHORIZE_SESSION:
        return "Authorize Session";
    case SP_AUDIT_USER_ACCESS:
        return "User Access Management";
    case SP_AUDIT_SSH_ACTIVITY:
        return "SSH Activity";
    case SP_AUDIT_DATASTORE_ACTIVITY:
        return "Datastore Activity";
    }
    return "Unknown";
}

/* RFC 3339 with milliseconds, matching the precision of "time". */
static void audit_format_time_ms(int64_t ms, char *out, size_t outlen)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

json_t *sp_audit_new(enum sp_audit_class cls, const char *activity, bool success, const char *actor)
{
    int64_t ms = sp_now_us() / 1000;
    char dt[80];
    audit_format_time_ms(ms, dt, sizeof(dt));
    return json_pack("{s:I, s:s, s:i, s:s, s:i, s:s, s:s, s:i, s:i, s:{s:{s:s}}, "
                     "s:{s:{s:s, s:s}, s:s}}",
                     "time", (json_int_t)ms, "time_dt", dt, "class_uid", (int)cls, "class_name",
                     audit_class_name(cls), "category_uid", (int)cls / 1000, "activity_name",
                     activity ? activity : "Unknown", "status", success ? "Success" : "Failure",
                     "status_id", success ? 1 : 2, "severity_id", 1, "actor", "user", "name",
                     actor ? actor : "unknown", "metadata", "product", "name", "sallyport",
                     "vendor_name", "sallyport", "version", AUDIT_OCSF_VERSION);
}

json_t *sp_audit_user(const char *name, const char *kind)
{
    bool service = kind && strcmp(kind, "service") == 0;
    return json_pack("{s:s, s:s, s:i}", "name", name ? name : "unknown", "type",
                     service ? "service" : "human", "type_id", service ? 4 : 1);
}
