/* The SFTP observer: arbitrary bytes in both directions must never read out of bounds. The
 * first byte of each slice says the direction and the slice length. */
#include <stddef.h>
#include <stdint.h>

#include "proxy/sftp_parse.h"

static void on_op(void *arg, const sp_sftp_op *op)
{
    size_t *n = arg;
    *n += op->bytes + (op->path[0] != 0) + (op->path2[0] != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t count = 0;
    sp_sftp p;
    sp_sftp_init(&p, on_op, &count);
    while (size > 0) {
        uint8_t ctl = data[0];
        data++;
        size--;
        size_t len = (size_t)(ctl & 0x7f) * 4 + 1;
        if (len > size)
            len = size;
        sp_sftp_feed(&p, (ctl & 0x80) != 0, data, len);
        data += len;
        size -= len;
    }
    sp_sftp_free(&p);
    return 0;
}
