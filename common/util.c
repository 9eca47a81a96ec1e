#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int64_t sp_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t sp_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int sp_parse_duration(const char *s, int64_t *out_us)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0)
        return -1;
    double mult;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mult = 1e6;
    else if (strcmp(end, "ms") == 0)
        mult = 1e3;
    else if (strcmp(end, "m") == 0)
        mult = 60e6;
    else if (strcmp(end, "h") == 0)
        mult = 3600e6;
    else if (strcmp(end, "d") == 0)
        mult = 86400e6;
    else
        return -1;
    double us = v * mult;
    if (us > 9.0e18)
        return -1;
    *out_us = (int64_t)us;
    return 0;
}

void sp_format_duration(int64_t us, char *out, size_t outlen)
{
    static const struct {
        int64_t unit;
        const char *suffix;
    } units[] = {{86400000000LL, "d"}, {3600000000LL, "h"}, {60000000LL, "m"}, {1000000LL, "s"}};
    for (size_t i = 0; i < SP_ARRAY_LEN(units); i++) {
        if (us >= units[i].unit && us % units[i].unit == 0) {
            snprintf(out, outlen, "%lld%s", (long long)(us / units[i].unit), units[i].suffix);
            return;
        }
    }
    snprintf(out, outlen, "%lldms", (long long)(us / 1000));
}

void sp_format_time(int64_t us, char *out, size_t outlen)
{
    time_t sec = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%06lldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long long)(us % 1000000));
}

int sp_random_bytes(void *p, size_t n)
{
    return RAND_bytes(p, (int)n) == 1 ? 0 : -1;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t sp_base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64[(v >> 18) & 63];
        out[o++] = b64[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long sp_base64_decode(const char *in, size_t n, uint8_t *out, size_t outlen)
{
    if (n % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = in[i + k];
            if (c == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else {
                if (pad)
                    return -1;
                v[k] = b64_value(c);
                if (v[k] < 0)
                    return -1;
            }
        }
        uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | v[3];
        size_t bytes = 3 - (size_t)pad;
        if (o + bytes > outlen)
            return -1;
        out[o++] = (uint8_t)(w >> 16);
        if (bytes > 1)
            out[o++] = (uint8_t)(w >> 8);
        if (bytes > 2)
            out[o++] = (uint8_t)w;
    }
    return (long)o;
}

void sp_hex_encode(const uint8_t *in, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void sp_uuid7(char out[SP_UUID_LEN])
{
    uint8_t u[16];
    uint64_t ms = (uint64_t)(sp_now_us() / 1000);
    if (sp_random_bytes(u, sizeof(u)) < 0) {
        /* RAND_bytes failing means the process cannot mint secrets either; abort loudly. */
        abort();
    }
    for (int i = 0; i < 6; i++)
        u[i] = (uint8_t)(ms >> (40 - 8 * i));
    u[6] = (uint8_t)(0x70 | (u[6] & 0x0f));
    u[8] = (uint8_t)(0x80 | (u[8] & 0x3f));
    char h[33];
    sp_hex_encode(u, 16, h);
    snprintf(out, SP_UUID_LEN, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

char **sp_split_list(const char *s, size_t *count)
{
    size_t n = 1, len = strlen(s);
    for (const char *p = s; *p; p++)
        n += *p == ',';
    /* pointers + one copy of the text */
    char **list = malloc((n + 1) * sizeof(char *) + len + 1);
    if (!list)
        return NULL;
    char *text = (char *)(list + n + 1);
    memcpy(text, s, len + 1);
    size_t k = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        char *e = tok + strlen(tok);
        while (e > tok && isspace((unsigned char)e[-1]))
            *--e = '\0';
        if (*tok)
            list[k++] = tok;
    }
    list[k] = NULL;
    if (count)
        *count = k;
    return list;
}

bool sp_list_contains(char *const *list, const char *s)
{
    for (; list && *list; list++)
        if (strcmp(*list, s) == 0)
            return true;
    return false;
}

char *sp_read_file(const char *path, size_t max, bool owner_only, size_t *len, char *errbuf,
                   size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(errbuf, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    char *data = NULL;
    if (fstat(fd, &st) < 0) {
        snprintf(errbuf, errlen, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    if (owner_only && (st.st_mode & 077)) {
        snprintf(errbuf, errlen, "%s is accessible by group or others (mode %03o); chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
        goto out;
    }
    if ((size_t)st.st_size > max) {
        snprintf(errbuf, errlen, "%s is larger than %zu bytes", path, max);
        goto out;
    }
    data = malloc((size_t)st.st_size + 1);
    if (!data) {
        snprintf(errbuf, errlen, "out of memory reading %s", path);
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, data + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            snprintf(errbuf, errlen, "cannot read %s: %s", path, r ? strerror(errno) : "short");
            free(data);
            data = NULL;
            goto out;
        }
        got += (size_t)r;
    }
    data[got] = '\0';
    if (len)
        *len = got;
out:
    close(fd);
    return data;
}

int sp_write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        n -= (size_t)w;
    }
    return 0;
}

int sp_mkdirs(const char *path, unsigned mode)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

char *sp_path_relative_to(const char *base_file, const char *path)
{
    if (path[0] == '/' || !base_file)
        return strdup(path);
    const char *slash = strrchr(base_file, '/');
    if (!slash)
        return strdup(path);
    size_t dlen = (size_t)(slash - base_file);
    char *out = malloc(dlen + 1 + strlen(path) + 1);
    if (!out)
        return NULL;
    memcpy(out, base_file, dlen);
    out[dlen] = '/';
    strcpy(out + dlen + 1, path);
    return out;
}

bool sp_memeq_ct(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool sp_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if ((c & 0xe0) == 0xc0) {
            need = 1;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            need = 2;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + need >= n)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}
