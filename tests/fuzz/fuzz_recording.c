/* libFuzzer target: the recording reader must never crash, over-read or loop on any input.
 * Seeds in tests/fuzz/corpus/fuzz_recording/ are small valid recordings (sealed, unsealed) written
 * under FUZZ_MASTER_KEYS by tests/fuzz/make_recording_seeds.c, so the fuzzer reaches
 * decryption, decompression and event decoding (fuzzing builds skip the authentication
 * checks, see rec_read.c). */
#include <stddef.h>
#include <stdint.h>

#include "recorder/keys.h"
#include "recorder/rec.h"
#include "tests/fuzz/fuzz_recording_keys.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    return sp_rec_keys_load_text(FUZZ_MASTER_KEYS, NULL, err, sizeof(err));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    sp_rec_reader *r = sp_rec_reader_open_mem(data, size, err, sizeof(err));
    if (!r)
        return 0;
    const sp_rec_header *h = sp_rec_reader_header(r);
    volatile size_t sink = h->session_id[0] + h->identity[0];
    sp_rec_ev ev;
    while (sp_rec_reader_next(r, &ev, err, sizeof(err)) == 1) {
        /* touch every byte the reader hands out, so ASan checks the bounds */
        for (size_t i = 0; i < ev.n_fields; i++) {
            const uint8_t *p = ev.fields[i].data;
            for (size_t j = 0; j < ev.fields[i].len; j++)
                sink += p[j];
        }
    }
    const char *reason = NULL;
    enum sp_rec_state st = sp_rec_reader_state(r, &reason);
    if (st == SP_REC_SEALED && reason)
        sink += (size_t)reason[0];
    sink += sp_rec_reader_note(r)[0];
    (void)sink;
    sp_rec_reader_close(r);
    return 0;
}
