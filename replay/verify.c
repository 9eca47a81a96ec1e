/* sallyport verify: a recording's integrity judged against the sessions index. The judgement
 * rests on the hash chain and the signed trailer (public key only); with the master key every
 * chunk is also decrypted, which also authenticates the last chunk of an unsealed file. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "recorder/rec.h"
#include "replay/replay.h"

#define CRASHED_REASON "gateway-crashed"

const char *sp_verify_status_name(enum sp_verify_status s)
{
    switch (s) {
    case SP_VERIFY_SEALED_OK:
        return "sealed-ok";
    case SP_VERIFY_UNSEALED_INTACT:
        return "unsealed-intact";
    case SP_VERIFY_MISSING:
        return "missing";
    case SP_VERIFY_TAMPERED:
        return "tampered";
    case SP_VERIFY_UNSIGNED:
        return "unsigned";
    }
    return "unknown";
}

static void tampered_at(sp_verify_result *out, uint64_t chunk, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void tampered_at(sp_verify_result *out, uint64_t chunk, const char *fmt, ...)
{
    out->status = SP_VERIFY_TAMPERED;
    out->has_bad_chunk = true;
    out->bad_chunk = chunk;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->detail, sizeof(out->detail), fmt, ap);
    va_end(ap);
}

/* Checked with the master key when it can be; otherwise (no key, or a key id not loaded) the
 * chain alone, and the detail says why the content was not checked. */
static int check(const char *path, sp_rec_check *c, char *why, size_t whylen)
{
    char err[512];
    if (sp_rec_check_file(path, true, c, err, sizeof(err)) == 0)
        return 0;
    snprintf(why, whylen, "%s", err);
    return sp_rec_check_file(path, false, c, err, sizeof(err)) == 0 ? 0 : -1;
}

static void judge_unsealed(const sp_rec_check *c, const sp_verify_expect *expect,
                           sp_verify_result *out)
{
    if ((int64_t)c->chunks < expect->chunk_count) {
        tampered_at(out, c->chunks,
                    "cut short: the file holds %lld whole chunks, the sessions index "
                    "recorded %lld",
                    (long long)c->chunks, (long long)expect->chunk_count);
        return;
    }
    if (expect->ended && strcmp(expect->end_reason, CRASHED_REASON) != 0) {
        tampered_at(out, c->chunks,
                    "no trailer although the session ended (%.100s): the file was cut after "
                    "its %lld whole chunks",
                    expect->end_reason, (long long)c->chunks);
        return;
    }
    out->status = SP_VERIFY_UNSEALED_INTACT;
    snprintf(out->detail, sizeof(out->detail), "%s%s", c->note,
             c->content_checked ? ""
                                : "; the last chunk is authenticated only with the master key");
}

void sp_verify_recording(const char *path, const sp_verify_expect *expect, sp_verify_result *out)
{
    memset(out, 0, sizeof(*out));
    struct stat st;
    if (stat(path, &st) < 0 && errno == ENOENT) {
        out->status = SP_VERIFY_MISSING;
        snprintf(out->detail, sizeof(out->detail), "%s does not exist", path);
        return;
    }
    sp_rec_check c;
    char why[512] = "";
    if (check(path, &c, why, sizeof(why)) < 0) {
        out->status = SP_VERIFY_TAMPERED;
        snprintf(out->detail, sizeof(out->detail), "not readable as a recording: %s", why);
        return;
    }
    out->chunks = c.chunks;
    out->content_checked = c.content_checked;
    snprintf(out->end_reason, sizeof(out->end_reason), "%.127s", c.end_reason);
    if (c.version == 1) {
        out->status = SP_VERIFY_UNSIGNED;
        snprintf(out->detail, sizeof(out->detail),
                 "format version 1: neither encrypted nor signed, so it cannot verify");
        return;
    }
    switch (c.state) {
    case SP_REC_DAMAGED:
        tampered_at(out, c.bad_chunk, "%s", c.note);
        break;
    case SP_REC_SEALED:
        if (c.signature != 1) {
            out->status = SP_VERIFY_TAMPERED;
            snprintf(out->detail, sizeof(out->detail), "signature not checked: no public key");
        } else if ((int64_t)c.chunks < expect->chunk_count) {
            tampered_at(out, c.chunks, "sealed with %lld chunks, the sessions index recorded %lld",
                        (long long)c.chunks, (long long)expect->chunk_count);
        } else {
            out->status = SP_VERIFY_SEALED_OK;
            snprintf(out->detail, sizeof(out->detail), "%s; signature good", c.note);
        }
        break;
    case SP_REC_UNSEALED:
        judge_unsealed(&c, expect, out);
        break;
    }
    if (why[0] && out->status != SP_VERIFY_TAMPERED) {
        size_t n = strlen(out->detail);
        snprintf(out->detail + n, sizeof(out->detail) - n, "; content not checked: %.300s", why);
    }
}
