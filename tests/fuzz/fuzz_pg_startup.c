/* libFuzzer: startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/pgproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a heap copy of exactly `size` bytes, so any over-read hits the redzone */
    uint8_t *p = malloc(size ? size : 1);
    if (!p)
        return 0;
    memcpy(p, data, size);
    sp_pg_startup s;
    const char *why = NULL;
    long rc = sp_pg_read_startup(p, size, &s, &why);
    if (rc == SP_PG_BAD && !why)
        abort();
    if (rc > 0) {
        if ((size_t)rc > size || s.n_params > SP_PG_MAX_PARAMS)
            abort();
        for (size_t i = 0; i < s.n_params; i++) {
            if (s.params[i].key[0] == '\0')
                abort();
            if (sp_pg_startup_param(&s, s.params[i].key) == NULL)
                abort();
            (void)strlen(s.params[i].value);
        }
        /* what was parsed must rebuild into a packet that parses the same way */
        if (s.code == SP_PG_PROTO_V3) {
            sp_buf b;
            sp_pg_startup again;
            sp_buf_init(&b, 2 * SP_PG_STARTUP_MAX);
            if (sp_pg_put_startup(&b, s.params, s.n_params) != 0 ||
                sp_pg_read_startup(b.data, b.len, &again, &why) != (long)b.len ||
                again.n_params != s.n_params)
                abort();
            sp_buf_free(&b);
        }
    }
    free(p);
    return 0;
}
