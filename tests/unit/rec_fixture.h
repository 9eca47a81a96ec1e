/* A scratch directory and a zstd context: what every unit test that writes recordings needs.
 * Each test file's fixture embeds one and adds its own fields. */
#ifndef SP_TESTS_REC_FIXTURE_H
#define SP_TESTS_REC_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <zstd.h>

typedef struct rec_scratch {
    char dir[64];
    ZSTD_CCtx *cctx;
} rec_scratch;

/* /tmp/sp-test-NAME-XXXXXX; a test that cannot make it fails at once. */
static void rec_scratch_open(rec_scratch *r, const char *name)
{
    snprintf(r->dir, sizeof(r->dir), "/tmp/sp-test-%s-XXXXXX", name);
    assert_non_null(mkdtemp(r->dir));
    r->cctx = ZSTD_createCCtx();
    assert_non_null(r->cctx);
}

static void rec_scratch_close(rec_scratch *r)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", r->dir);
    assert_int_equal(system(cmd), 0);
    ZSTD_freeCCtx(r->cctx);
}

#endif
