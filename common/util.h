/* Small helpers with no dependency on any part: time, durations, encodings, randomness,
 * identifiers, lists and files. */
#ifndef SP_COMMON_UTIL_H
#define SP_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Wall-clock microseconds since the epoch, and a monotonic clock in microseconds. */
int64_t sp_now_us(void);
int64_t sp_mono_us(void);

/* "30s", "15m", "8h", "2d", "500ms" or a plain number of seconds -> microseconds.
 * -1 on a malformed or negative value. */
int sp_parse_duration(const char *s, int64_t *out_us);
/* Renders a duration as the shortest exact form ("15m", "90s"). */
void sp_format_duration(int64_t us, char *out, size_t outlen);
/* RFC 3339 UTC with microseconds: 2026-12-03T14:17:15.123456Z (out >= 32 bytes). */
void sp_format_time(int64_t us, char *out, size_t outlen);

/* Cryptographically secure random bytes (OpenSSL); -1 if the RNG failed. */
int sp_random_bytes(void *p, size_t n);

/* Base64 (standard alphabet, padded). Encode returns chars written (NUL added; out must hold
 * 4*ceil(n/3)+1). Decode returns bytes written, or -1 on bad input or short out. */
size_t sp_base64_encode(const uint8_t *in, size_t n, char *out);
long sp_base64_decode(const char *in, size_t n, uint8_t *out, size_t outlen);
/* Lower-case hex; out must hold 2n+1. */
void sp_hex_encode(const uint8_t *in, size_t n, char *out);

/* A time-ordered session id: UUIDv7 text form, 36 chars + NUL. */
#define SP_UUID_LEN 37
void sp_uuid7(char out[SP_UUID_LEN]);

/* Comma-separated list with surrounding spaces trimmed; empty items dropped.
 * Returns a NULL-terminated array of strings in one allocation (free() once), *count set. */
char **sp_split_list(const char *s, size_t *count);
bool sp_list_contains(char *const *list, const char *s);

/* Read a whole (small) file. With owner_only, refuse a file readable by group or others.
 * Returns malloc'd NUL-terminated contents, or NULL with errbuf filled. */
char *sp_read_file(const char *path, size_t max, bool owner_only, size_t *len, char *errbuf,
                   size_t errlen);
/* write(2) all n bytes, retrying short writes and EINTR; -1 with errno on failure. */
int sp_write_all(int fd, const void *p, size_t n);
/* mkdir -p with the given mode. */
int sp_mkdirs(const char *path, unsigned mode);
/* Resolve `path` relative to the directory of `base_file` unless absolute. malloc'd. */
char *sp_path_relative_to(const char *base_file, const char *path);

/* Constant-time comparison. */
bool sp_memeq_ct(const void *a, const void *b, size_t n);
/* Is s a valid UTF-8 string without NUL (n bytes)? */
bool sp_utf8_valid(const uint8_t *s, size_t n);

#endif
