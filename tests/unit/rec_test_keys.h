/* Recording keys for unit tests: a master key file and a signing key in a temporary directory,
 * loaded into the recorder's process-wide context (as `sallyport serve` does at start). */
#ifndef SP_TESTS_REC_TEST_KEYS_H
#define SP_TESTS_REC_TEST_KEYS_H

#include <stdio.h>
#include <stdlib.h>

#include "common/config.h"
#include "recorder/keys.h"

typedef struct rec_test_keys {
    char dir[64];
    char master[128];
    char signing[128];
} rec_test_keys;

static rec_test_keys test_keys;

static int rec_test_keys_setup(void **state)
{
    (void)state;
    char err[512];
    bool made_master, made_signing;
    snprintf(test_keys.dir, sizeof(test_keys.dir), "/tmp/sp-test-keys-XXXXXX");
    if (!mkdtemp(test_keys.dir))
        return -1;
    snprintf(test_keys.master, sizeof(test_keys.master), "%s/master.keys", test_keys.dir);
    snprintf(test_keys.signing, sizeof(test_keys.signing), "%s/signing.pem", test_keys.dir);
    if (sp_keys_init_files(test_keys.master, test_keys.signing, &made_master, &made_signing, err,
                           sizeof(err)) < 0) {
        fprintf(stderr, "test keys: %s\n", err);
        return -1;
    }
    sp_config cfg = {
        .path = "test", .master_key_file = test_keys.master, .signing_key_file = test_keys.signing};
    if (sp_rec_keys_init(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "test keys: %s\n", err);
        return -1;
    }
    return 0;
}

static int rec_test_keys_teardown(void **state)
{
    (void)state;
    char cmd[128];
    sp_rec_keys_clear();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", test_keys.dir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
