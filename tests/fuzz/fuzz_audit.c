/* libFuzzer target: the audit line reader and chain checks must never crash, over-read or
 * loop on any input. Seeds in tests/fuzz/corpus/fuzz_audit/ are small trails (intact,
 * tampered, with checkpoints). */
#include <stddef.h>
#include <stdint.h>

#include "recorder/audit_verify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Any 32 bytes serve as a key: the signature path runs on every checkpoint. */
    static const uint8_t key[SP_AUDIT_PUBKEY_LEN] = {1, 2, 3};
    json_t *r =
        sp_audit_verify_mem("audit-fuzz-2000-01-01.jsonl", data, size, size % 2 ? key : NULL);
    json_decref(r);
    return 0;
}
