/* Writes the recording fuzz seeds (tests/fuzz/corpus/fuzz_recording/) in the current format, under
 * the fixed master key of fuzz_recording_keys.h and a throwaway signing key. Not part of the
 * build; run after a format change:
 *   cc -I. tests/fuzz/make_recording_seeds.c build/libsallyport_core.a $(pkg-config --libs \
 *      libuv openssl libzstd sqlite3 inih jansson libpq) -lpthread -lm -o /tmp/seeds &&
 *   /tmp/seeds tests/fuzz/corpus/fuzz_recording */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "recorder/keys.h"
#include "recorder/rec.h"
#include "tests/fuzz/fuzz_recording_keys.h"

#define T0 1796300000000000LL

static char *signing_pem(void)
{
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL);
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    char *pem = strndup(data, (size_t)len);
    BIO_free(bio);
    EVP_PKEY_free(pk);
    return pem;
}

/* One seed: the script's events over three chunks; cut bytes off the end when cut > 0. */
static int write_seed(const char *dir, const char *name, size_t max_text, bool seal, long cut)
{
    char err[256];
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    sp_rec_meta meta = {.session_id = name,
                        .kind = "postgres",
                        .identity = "alice",
                        .target = "clinic",
                        .database = "clinic",
                        .db_user = "sp_alice",
                        .client_addr = "127.0.0.1:5000",
                        .started_at = T0};
    sp_rec *r = sp_rec_create("/tmp/sp-fuzz-seeds", &meta, max_text, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    char path[512];
    snprintf(path, sizeof(path), "%s", sp_rec_path(r));
    sp_rec_eventv(r, SP_EV_SESSION_START, T0, "application_name", "psql", NULL);
    sp_rec_eventv(r, SP_EV_QUERY, T0 + 10, "select * from patients where name = 'é'", NULL);
    sp_rec_eventv(r, SP_EV_ROWS, T0 + 20, "3", NULL);
    sp_rec_eventv(r, SP_EV_COMPLETE, T0 + 30, "SELECT 3", "3", NULL);
    sp_rec_flush(r, cctx, NULL);
    sp_rec_eventv(r, SP_EV_PARSE, T0 + 40, "s1", "select $1::int", NULL);
    sp_rec_eventv(r, SP_EV_BIND, T0 + 50, "", "s1", "1", "42", NULL);
    sp_rec_eventv(r, SP_EV_EXECUTE, T0 + 60, "", "0", NULL);
    sp_rec_eventv(r, SP_EV_ERROR, T0 + 70, "42501", "permission denied", NULL);
    sp_rec_flush(r, cctx, NULL);
    sp_rec_eventv(r, SP_EV_NOTE, T0 + 80, "recording gap", NULL);
    sp_rec_eventv(r, SP_EV_READY, T0 + 90, "I", NULL);
    sp_rec_close_sync(r, cctx, "client closed the connection");
    ZSTD_freeCCtx(cctx);
    FILE *in = fopen(path, "rb");
    fseek(in, 0, SEEK_END);
    long len = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *data = malloc((size_t)len);
    if (fread(data, 1, (size_t)len, in) != (size_t)len)
        return -1;
    fclose(in);
    unlink(path);
    if (!seal) {
        uint64_t off = 0;
        for (int i = 0; i < 8; i++)
            off = off << 8 | (uint8_t)data[len - 16 + i];
        len = (long)off;
    }
    len -= cut;
    char out[512];
    snprintf(out, sizeof(out), "%s/%s.spr", dir, name);
    FILE *o = fopen(out, "wb");
    fwrite(data, 1, (size_t)len, o);
    fclose(o);
    free(data);
    return 0;
}

int main(int argc, char **argv)
{
    char err[256];
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    char *pem = signing_pem();
    if (sp_rec_keys_load_text(FUZZ_MASTER_KEYS, pem, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    free(pem);
    int rc = write_seed(argv[1], "sealed-simple", 1024, true, 0) |
             write_seed(argv[1], "sealed-cut-fields", 8, true, 0) |
             write_seed(argv[1], "unsealed", 1024, false, 0) |
             write_seed(argv[1], "unsealed-torn-chunk", 1024, false, 7) |
             write_seed(argv[1], "sealed-torn-trailer", 1024, true, 20);
    return rc ? 1 : 0;
}
