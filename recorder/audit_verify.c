/* The audit trail verifier: a line reader (bounded lines, SHA-256 of each line as stored,
 * its JSON) and the chain checks over what it read. */
#include "recorder/audit_verify.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "recorder/audit.h"

#define LINE_MAX_BYTES (1024 * 1024)
#define KEY_ID_HEX 17
#define REASON_MAX 512
#define PATH_BUF 4096

/* What the reader keeps of one line. */
typedef struct line_info {
    uint8_t hash[32];
    uint8_t prev[32];
    bool has_prev;
    int64_t seq; /* 0 when absent */
    bool is_checkpoint;
    char issue_kind[24]; /* a break found in the line itself; "" = none */
    char issue[REASON_MAX];
} line_info;

typedef struct file_lines {
    line_info *v;
    size_t n, cap;
} file_lines;

typedef struct verify_state {
    const uint8_t *public_key;
    json_t *report;
    json_t *checkpoints; /* [{"file", "lines", "head"}] seen in the trail */
    bool broken;
    /* the chain so far (one host) */
    bool has_tail;
    uint8_t tail[32];
    bool tail_is_checkpoint;
    char tail_file[512];
    size_t tail_line;
} verify_state;

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static void add_note(verify_state *st, const char *fmt, const char *a, long n)
{
    char text[REASON_MAX + 600];
    snprintf(text, sizeof(text), fmt, a, n);
    json_array_append_new(json_object_get(st->report, "notes"), json_string(text));
}

static void set_break(verify_state *st, const char *file, size_t line, const char *kind,
                      const char *reason)
{
    if (st->broken)
        return;
    st->broken = true;
    json_object_set_new(st->report, "ok", json_false());
    json_object_set_new(st->report, "break",
                        json_pack("{s:s, s:I, s:s, s:s}", "file", file, "line", (json_int_t)line,
                                  "kind", kind, "reason", reason));
}

static bool hex32_decode(const char *hex, uint8_t out[32])
{
    if (!hex || strlen(hex) != 64)
        return false;
    for (size_t i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char c = hex[2 * i + (size_t)j];
            unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                                                : 16;
            if (d == 16)
                return false;
            v = v * 16 + d;
        }
        out[i] = (uint8_t)v;
    }
    return true;
}

static void issue(line_info *li, const char *kind, const char *fmt, long a, long b)
{
    snprintf(li->issue_kind, sizeof(li->issue_kind), "%s", kind);
    snprintf(li->issue, sizeof(li->issue), fmt, a, b);
}

/* ---- checkpoints ---- */

static bool signature_valid(const uint8_t *public_key, const char *msg, size_t len,
                            const char *sig_b64)
{
    uint8_t sig[96];
    long siglen = sig_b64 ? sp_base64_decode(sig_b64, strlen(sig_b64), sig, sizeof(sig)) : -1;
    if (siglen != 64)
        return false;
    EVP_PKEY *key =
        EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, public_key, SP_AUDIT_PUBKEY_LEN);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool ok = key && md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, key) == 1 &&
              EVP_DigestVerify(md, sig, 64, (const uint8_t *)msg, len) == 1;
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(key);
    return ok;
}

static void key_id_of(const uint8_t *public_key, char out[KEY_ID_HEX])
{
    uint8_t digest[32];
    unsigned int dlen = 0;
    EVP_Digest(public_key, SP_AUDIT_PUBKEY_LEN, digest, &dlen, EVP_sha256(), NULL);
    sp_hex_encode(digest, 8, out);
}

/* Checks a checkpoint's own claims; the line is number `line` of its file. */
static void check_checkpoint(verify_state *st, json_t *o, json_t *cp, line_info *li, size_t line)
{
    const char *file = json_string_value(json_object_get(cp, "file"));
    const char *head = json_string_value(json_object_get(cp, "head"));
    const char *reason = json_string_value(json_object_get(cp, "reason"));
    const char *prev = json_string_value(json_object_get(o, "prev"));
    json_t *lines = json_object_get(cp, "lines");
    json_t *time = json_object_get(o, "time");
    if (!file || !head || !reason || !json_is_integer(lines) || !json_is_integer(time)) {
        issue(li, "malformed", "line %ld is a checkpoint without file, lines, head or time%.0ld",
              (long)line, 0);
        return;
    }
    json_array_append_new(st->checkpoints,
                          json_pack("{s:s, s:O, s:s}", "file", file, "lines", lines, "head", head));
    if (json_integer_value(lines) != (json_int_t)line - 1) {
        issue(li, "deleted",
              "the checkpoint at line %ld says %ld lines come before it: lines were deleted or "
              "inserted before it",
              (long)line, (long)json_integer_value(lines));
        return;
    }
    if (!prev || strcmp(prev, head) != 0) {
        issue(li, "edited", "the checkpoint at line %ld names a head other than its prev%.0ld",
              (long)line, 0);
        return;
    }
    if (!st->public_key)
        return;
    const char *sig = json_string_value(json_object_get(cp, "signature"));
    const char *key_id = json_string_value(json_object_get(cp, "key_id"));
    char mine[KEY_ID_HEX], msg[1024];
    key_id_of(st->public_key, mine);
    if (!sig) {
        issue(li, "bad-signature",
              "the checkpoint at line %ld is not signed, but a public key was given%.0ld",
              (long)line, 0);
        return;
    }
    if (key_id && strcmp(key_id, mine) != 0) {
        issue(li, "bad-signature",
              "the checkpoint at line %ld was signed by another key (not the one given)%.0ld",
              (long)line, 0);
        return;
    }
    int len = sp_audit_checkpoint_message(file, json_integer_value(lines), head,
                                          json_integer_value(time), reason, msg, sizeof(msg));
    if (len < 0 || !signature_valid(st->public_key, msg, (size_t)len, sig))
        issue(li, "bad-signature",
              "the signature of the checkpoint at line %ld does not verify: the checkpoint was "
              "edited or forged%.0ld",
              (long)line, 0);
}

/* ---- the line reader ---- */

static void read_line(verify_state *st, const char *text, size_t len, line_info *li, size_t line)
{
    unsigned int dlen = 0;
    EVP_Digest(text, len, li->hash, &dlen, EVP_sha256(), NULL);
    json_error_t jerr;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        issue(li, "malformed", "line %ld is not a JSON object (torn by a crash, or edited)%.0ld",
              (long)line, 0);
        json_decref(o);
        return;
    }
    li->has_prev = hex32_decode(json_string_value(json_object_get(o, "prev")), li->prev);
    json_t *seq = json_object_get(o, "seq");
    li->seq = json_is_integer(seq) && json_integer_value(seq) > 0 ? json_integer_value(seq) : 0;
    if (!li->has_prev)
        issue(li, "malformed", "line %ld has no valid prev (64 hex digits)%.0ld", (long)line, 0);
    json_t *cp = json_object_get(json_object_get(o, "unmapped"), "checkpoint");
    const char *code =
        json_string_value(json_object_get(json_object_get(o, "metadata"), "event_code"));
    li->is_checkpoint = code && strcmp(code, "checkpoint") == 0 && json_is_object(cp);
    if (li->is_checkpoint && !li->issue_kind[0])
        check_checkpoint(st, o, cp, li, line);
    json_decref(o);
}

/* Reads every line of fp; a line longer than LINE_MAX_BYTES is an issue, not a crash. */
static int read_lines(verify_state *st, FILE *fp, file_lines *fl)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t got;
    while ((got = getline(&buf, &cap, fp)) > 0) {
        if (fl->n == fl->cap) {
            size_t ncap = fl->cap ? fl->cap * 2 : 256;
            line_info *nv = realloc(fl->v, ncap * sizeof(*nv));
            if (!nv) {
                free(buf);
                return -1;
            }
            fl->v = nv;
            fl->cap = ncap;
        }
        line_info *li = &fl->v[fl->n++];
        memset(li, 0, sizeof(*li));
        size_t len = (size_t)got;
        if (buf[len - 1] == '\n')
            len--;
        if (len > LINE_MAX_BYTES)
            issue(li, "malformed", "line %ld is longer than %ld bytes", (long)fl->n,
                  (long)LINE_MAX_BYTES);
        else
            read_line(st, buf, len, li, fl->n);
    }
    free(buf);
    return ferror(fp) ? -1 : 0;
}

/* ---- the chain checks ---- */

static long find_hash(const file_lines *fl, const uint8_t h[32])
{
    for (size_t j = 0; j < fl->n; j++) {
        if (memcmp(fl->v[j].hash, h, 32) == 0)
            return (long)j + 1;
    }
    return 0;
}

/* Line k's prev does not match the line before it: say what happened, at the right line. */
static void classify_link_break(verify_state *st, const char *file, const file_lines *fl, size_t k)
{
    char why[2 * sizeof(st->tail_file) + 400];
    const line_info *li = &fl->v[k - 1];
    long j = find_hash(fl, li->prev);
    if (j > (long)k) {
        snprintf(why, sizeof(why), "line %zu belongs after line %ld: lines were reordered", k, j);
        set_break(st, file, k, "reordered", why);
    } else if (j > 0 && j < (long)k - 1) {
        snprintf(why, sizeof(why),
                 "line %zu follows line %ld in the chain: lines %ld to %zu are out of place "
                 "(reordered or inserted)",
                 k, j, j + 1, k - 1);
        set_break(st, file, (size_t)j + 1, "reordered", why);
    } else if (k == 1) {
        snprintf(why, sizeof(why),
                 "the first line links to a line that is not the last line of %s: lines were "
                 "cut from the end of %s after line %zu%s, or that line was edited",
                 st->tail_file, st->tail_file, st->tail_line,
                 st->tail_is_checkpoint ? " (a checkpoint)" : "");
        set_break(st, file, 1, "cut", why);
    } else if (li->seq && fl->v[k - 2].seq && li->seq > fl->v[k - 2].seq + 1) {
        snprintf(why, sizeof(why), "%lld line(s) missing before line %zu: it says it is line %lld",
                 (long long)(li->seq - fl->v[k - 2].seq - 1), k, (long long)li->seq);
        set_break(st, file, k, "deleted", why);
    } else {
        snprintf(why, sizeof(why),
                 "line %zu was edited: its hash no longer matches the prev recorded by line %zu",
                 k - 1, k);
        set_break(st, file, k - 1, "edited", why);
    }
}

static void check_seq(verify_state *st, const char *file, const file_lines *fl, size_t k)
{
    const line_info *li = &fl->v[k - 1];
    if (!li->seq || li->seq == (int64_t)k)
        return;
    char why[REASON_MAX];
    if (li->seq > (int64_t)k)
        snprintf(why, sizeof(why), "%lld line(s) missing before line %zu: it says it is line %lld",
                 (long long)(li->seq - (int64_t)k), k, (long long)li->seq);
    else
        snprintf(why, sizeof(why), "line %zu says it is line %lld: lines were inserted before it",
                 k, (long long)li->seq);
    set_break(st, file, k, li->seq > (int64_t)k ? "deleted" : "reordered", why);
}

static void check_file(verify_state *st, const char *file, const file_lines *fl)
{
    static const uint8_t zeros[32];
    for (size_t k = 1; k <= fl->n && !st->broken; k++) {
        const line_info *li = &fl->v[k - 1];
        if (li->issue_kind[0]) {
            set_break(st, file, k, li->issue_kind, li->issue);
            break;
        }
        const uint8_t *expected = k > 1 ? fl->v[k - 2].hash : st->has_tail ? st->tail : NULL;
        if (!expected && find_hash(fl, li->prev) > 0) {
            classify_link_break(st, file, fl, k);
            break;
        }
        if (!expected) {
            if (memcmp(li->prev, zeros, 32) != 0)
                add_note(st,
                         "the chain starts in %s: its first line links to an earlier file not "
                         "given (archived or removed)%.0ld",
                         file, 0);
        } else if (memcmp(li->prev, expected, 32) != 0) {
            classify_link_break(st, file, fl, k);
            break;
        }
        check_seq(st, file, fl, k);
    }
    if (fl->n > 0) {
        memcpy(st->tail, fl->v[fl->n - 1].hash, 32);
        st->has_tail = true;
        st->tail_is_checkpoint = fl->v[fl->n - 1].is_checkpoint;
        snprintf(st->tail_file, sizeof(st->tail_file), "%s", file);
        st->tail_line = fl->n;
    }
}

static size_t count_checkpoints(const file_lines *fl)
{
    size_t n = 0;
    for (size_t i = 0; i < fl->n; i++)
        n += fl->v[i].is_checkpoint;
    return n;
}

/* One file of the current chain. */
static void verify_stream(verify_state *st, const char *path, FILE *fp, int *io_error)
{
    file_lines fl = {0};
    if (read_lines(st, fp, &fl) < 0)
        *io_error = errno ? errno : EIO;
    size_t cps = count_checkpoints(&fl);
    json_array_append_new(json_object_get(st->report, "files"),
                          json_pack("{s:s, s:I, s:I}", "path", path, "lines", (json_int_t)fl.n,
                                    "checkpoints", (json_int_t)cps));
    json_object_set_new(
        st->report, "lines",
        json_integer(json_integer_value(json_object_get(st->report, "lines")) + (json_int_t)fl.n));
    json_object_set_new(
        st->report, "checkpoints",
        json_integer(json_integer_value(json_object_get(st->report, "checkpoints")) +
                     (json_int_t)cps));
    if (!st->broken && fl.n > 0)
        check_file(st, base_name(path), &fl);
    free(fl.v);
}

static json_t *new_report(verify_state *st, const uint8_t *public_key)
{
    memset(st, 0, sizeof(*st));
    st->public_key = public_key;
    st->checkpoints = json_array();
    st->report = json_pack("{s:b, s:[], s:i, s:i, s:s, s:n, s:[]}", "ok", 1, "files", "lines", 0,
                           "checkpoints", 0, "signatures", public_key ? "checked" : "not checked",
                           "break", "notes");
    return st->report;
}

/* ---- syslog copies of checkpoints ---- */

static bool trail_has_checkpoint(const verify_state *st, const char *file, json_int_t lines,
                                 const char *head)
{
    size_t i;
    json_t *cp;
    json_array_foreach(st->checkpoints, i, cp)
    {
        if (strcmp(json_string_value(json_object_get(cp, "file")), file) == 0 &&
            json_integer_value(json_object_get(cp, "lines")) == lines &&
            strcmp(json_string_value(json_object_get(cp, "head")), head) == 0)
            return true;
    }
    return false;
}

/* The verified file named `file` (base name): its line count, or -1 when not verified. */
static long verified_lines(const verify_state *st, const char *file)
{
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(st->report, "files"), i, f)
    {
        if (strcmp(base_name(json_string_value(json_object_get(f, "path"))), file) == 0)
            return (long)json_integer_value(json_object_get(f, "lines"));
    }
    return -1;
}

static void check_syslog_line(verify_state *st, const char *syslog_path, const char *json_text,
                              size_t line_no)
{
    json_t *o = json_loads(json_text, 0, NULL);
    json_t *cp = json_object_get(json_object_get(o, "unmapped"), "checkpoint");
    const char *file = json_string_value(json_object_get(cp, "file"));
    const char *head = json_string_value(json_object_get(cp, "head"));
    json_t *lines = json_object_get(cp, "lines");
    if (!file || !head || !json_is_integer(lines)) {
        json_decref(o);
        return;
    }
    json_int_t n = json_integer_value(lines);
    long have = verified_lines(st, file);
    char why[PATH_BUF + 2 * REASON_MAX];
    if (have < 0) {
        add_note(st, "syslog holds a checkpoint for %s, which was not verified%.0ld", file, 0);
    } else if (!trail_has_checkpoint(st, file, n, head)) {
        if (have < (long)n + 1)
            snprintf(why, sizeof(why),
                     "syslog (%s line %zu) holds a checkpoint at line %lld of %s, which has only "
                     "%ld lines: the trail was cut after line %ld",
                     syslog_path, line_no, (long long)n + 1, file, have, have);
        else
            snprintf(why, sizeof(why),
                     "syslog (%s line %zu) holds a checkpoint at line %lld of %s that the trail "
                     "does not: the trail was rewritten",
                     syslog_path, line_no, (long long)n + 1, file);
        set_break(st, file, (size_t)(have < (long)n + 1 ? have : n + 1), "cut", why);
    }
    json_decref(o);
}

static int check_syslog(verify_state *st, const char *path, char *err, size_t errlen)
{
    static const char marker[] = "sallyport-audit-checkpoint ";
    FILE *fp = fopen(path, "r");
    if (!fp) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    char *buf = NULL;
    size_t cap = 0, line_no = 0;
    while (getline(&buf, &cap, fp) > 0 && !st->broken) {
        line_no++;
        char *at = strstr(buf, marker);
        if (at)
            check_syslog_line(st, path, at + sizeof(marker) - 1, line_no);
    }
    free(buf);
    fclose(fp);
    return 0;
}

/* ---- files: order and grouping ---- */

/* audit-HOST-YYYY-MM-DD.jsonl -> host length; 0 when the name has another shape. */
static size_t host_len(const char *name)
{
    size_t n = strlen(name);
    if (n < 6 + 1 + 17 || strncmp(name, "audit-", 6) != 0 || strcmp(name + n - 6, ".jsonl") != 0)
        return 0;
    return n - 6 - 17; /* "-YYYY-MM-DD.jsonl" is 17 characters */
}

static int compare_paths(const void *a, const void *b)
{
    const char *na = base_name(*(const char *const *)a);
    const char *nb = base_name(*(const char *const *)b);
    size_t ha = host_len(na), hb = host_len(nb);
    int c = strncmp(na + 6, nb + 6, ha < hb ? ha : hb);
    if (ha && hb && c == 0 && ha != hb)
        return ha < hb ? -1 : 1;
    if (ha && hb && c != 0)
        return c;
    return strcmp(na, nb);
}

static bool same_host(const char *a, const char *b)
{
    const char *na = base_name(a), *nb = base_name(b);
    size_t ha = host_len(na), hb = host_len(nb);
    return ha == hb && strncmp(na, nb, 6 + ha) == 0;
}

json_t *sp_audit_verify(const sp_audit_verify_opts *o, char *err, size_t errlen)
{
    verify_state st;
    new_report(&st, o->public_key);
    const char **sorted = calloc(o->n_paths ? o->n_paths : 1, sizeof(*sorted));
    if (!sorted) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    memcpy(sorted, o->paths, o->n_paths * sizeof(*sorted));
    qsort(sorted, o->n_paths, sizeof(*sorted), compare_paths);
    for (size_t i = 0; i < o->n_paths; i++) {
        if (i > 0 && !same_host(sorted[i - 1], sorted[i]))
            st.has_tail = false; /* another host: another chain */
        FILE *fp = fopen(sorted[i], "r");
        if (!fp) {
            snprintf(err, errlen, "cannot read %s: %s", sorted[i], strerror(errno));
            goto fail;
        }
        int io_error = 0;
        verify_stream(&st, sorted[i], fp, &io_error);
        fclose(fp);
        if (io_error) {
            snprintf(err, errlen, "cannot read %s: %s", sorted[i], strerror(io_error));
            goto fail;
        }
    }
    if (o->syslog_path && check_syslog(&st, o->syslog_path, err, errlen) < 0)
        goto fail;
    if (!st.broken && st.has_tail && json_array_size(st.checkpoints) > 0 && !st.tail_is_checkpoint)
        add_note(&st,
                 "the trail ends in %s at line %ld with no checkpoint after it: lines after the "
                 "last checkpoint cannot be proven complete (compare with syslog: --checkpoints)",
                 st.tail_file, (long)st.tail_line);
    free(sorted);
    json_decref(st.checkpoints);
    return st.report;
fail:
    free(sorted);
    json_decref(st.checkpoints);
    json_decref(st.report);
    return NULL;
}

json_t *sp_audit_verify_mem(const char *name, const uint8_t *data, size_t len,
                            const uint8_t *public_key)
{
    verify_state st;
    new_report(&st, public_key);
    FILE *fp = len > 0 ? fmemopen((void *)data, len, "r") : NULL;
    if (fp) {
        int io_error = 0;
        verify_stream(&st, name, fp, &io_error);
        fclose(fp);
    }
    json_decref(st.checkpoints);
    return st.report;
}

int sp_audit_list_files(const char *dir, char ***paths, size_t *n, char *err, size_t errlen)
{
    *paths = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "cannot open the audit directory %s: %s", dir, strerror(errno));
        return -1;
    }
    size_t cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (host_len(de->d_name) == 0)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nv = realloc(*paths, cap * sizeof(char *));
            if (!nv) {
                rc = -1;
                break;
            }
            *paths = nv;
        }
        size_t len = strlen(dir) + strlen(de->d_name) + 2;
        char *p = malloc(len);
        if (!p) {
            rc = -1;
            break;
        }
        snprintf(p, len, "%s/%s", dir, de->d_name);
        (*paths)[(*n)++] = p;
    }
    closedir(d);
    if (rc < 0)
        snprintf(err, errlen, "out of memory listing %s", dir);
    return rc;
}

int sp_audit_load_public_key(const char *path, uint8_t out[SP_AUDIT_PUBKEY_LEN], char *err,
                             size_t errlen)
{
    char rerr[512];
    size_t len = 0;
    char *pem = sp_read_file(path, 16 * 1024, false, &len, rerr, sizeof(rerr));
    if (!pem) {
        snprintf(err, errlen, "%s", rerr);
        return -1;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    if (!key && bio) {
        (void)BIO_reset(bio);
        key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    }
    BIO_free(bio);
    OPENSSL_cleanse(pem, len);
    free(pem);
    size_t rawlen = SP_AUDIT_PUBKEY_LEN;
    int rc = -1;
    if (!key || EVP_PKEY_get_id(key) != EVP_PKEY_ED25519)
        snprintf(err, errlen, "%s holds no Ed25519 key in PEM form", path);
    else if (EVP_PKEY_get_raw_public_key(key, out, &rawlen) != 1 || rawlen != SP_AUDIT_PUBKEY_LEN)
        snprintf(err, errlen, "cannot read the public key in %s", path);
    else
        rc = 0;
    EVP_PKEY_free(key);
    return rc;
}
