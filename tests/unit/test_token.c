/* Tokens: shape, issuing (only verifiers stored), verifying, TTL bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/scram.h"
#include "auth/token.h"

#define S(x) ((int64_t)(x)*1000000)
#define NOW S(50000)

typedef struct fixture {
    char dir[64];
    sp_store *s;
    char err[256];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char path[128];
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp_token_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(path, sizeof(path), "%s/state.db", f->dir);
    assert_int_equal(sp_store_open(path, &f->s, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_store_identity_add(f->s, "etl", "service", "data-team", "nightly ETL",
                                           f->err, sizeof(f->err)),
                     0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[160];
    sp_store_close(f->s);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void test_issue_shape_and_stored_keys(void **state)
{
    fixture *f = *state;
    char token[SP_TOKEN_MAX], id[SP_CRED_ID_LEN], parsed[SP_CRED_ID_LEN];
    assert_int_equal(sp_token_issue(f->s, "etl", S(900), NOW, token, id, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(strlen(token), 4 + 12 + 1 + 43);
    assert_memory_equal(token, "spt_", 4);
    assert_int_equal(strlen(id), 12);
    assert_memory_equal(token + 4, id, 12);
    assert_int_equal(token[16], '_');
    assert_null(strchr(token, '='));
    assert_int_equal(sp_token_parse_id(token, parsed), 0);
    assert_string_equal(parsed, id);

    /* the store holds exactly the keys derived from the whole token text */
    sp_identity ident;
    sp_token_verifier v[4];
    size_t n = 0;
    uint8_t stored[SP_SCRAM_KEYLEN], server[SP_SCRAM_KEYLEN];
    assert_int_equal(sp_store_identity_get(f->s, "etl", &ident, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_scram_derive(token, strlen(token), ident.salt, sizeof(ident.salt),
                                     ident.iterations, NULL, stored, server),
                     0);
    assert_int_equal(sp_store_tokens_live(f->s, "etl", NOW, v, 4, &n, f->err, sizeof(f->err)), 0);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, id);
    assert_memory_equal(v[0].stored_key, stored, sizeof(stored));
    assert_memory_equal(v[0].server_key, server, sizeof(server));
    assert_int_equal(v[0].expires_at, NOW + S(900));

    /* nothing in the store contains the secret */
    sqlite3 *db = sp_store_lock(f->s);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT count(*) FROM credentials WHERE "
                                        "instr(CAST(stored_key AS TEXT), ?1) OR "
                                        "instr(id, ?1) OR instr(identity, ?1)",
                                        -1, &st, NULL),
                     SQLITE_OK);
    sqlite3_bind_text(st, 1, token + 17, -1, SQLITE_TRANSIENT);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    sp_store_unlock(f->s);
}

static void test_tokens_differ(void **state)
{
    fixture *f = *state;
    char t1[SP_TOKEN_MAX], t2[SP_TOKEN_MAX], id1[SP_CRED_ID_LEN], id2[SP_CRED_ID_LEN];
    assert_int_equal(sp_token_issue(f->s, "etl", S(60), NOW, t1, id1, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_token_issue(f->s, "etl", S(60), NOW, t2, id2, f->err, sizeof(f->err)), 0);
    assert_string_not_equal(t1, t2);
    assert_string_not_equal(id1, id2);
}

static void test_verify(void **state)
{
    fixture *f = *state;
    char token[SP_TOKEN_MAX], id[SP_CRED_ID_LEN];
    assert_int_equal(sp_token_issue(f->s, "etl", S(900), NOW, token, id, f->err, sizeof(f->err)),
                     0);
    assert_int_equal(sp_token_verify(f->s, "etl", token, NOW + S(1), f->err, sizeof(f->err)), 0);

    /* one secret character changed */
    char forged[SP_TOKEN_MAX];
    memcpy(forged, token, sizeof(forged));
    forged[30] = forged[30] == 'A' ? 'B' : 'A';
    assert_int_equal(sp_token_verify(f->s, "etl", forged, NOW, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_non_null(strstr(f->err, "wrong secret"));

    /* expired: cannot start anything */
    assert_int_equal(sp_token_verify(f->s, "etl", token, NOW + S(900), f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);

    /* another identity's name with this token */
    assert_int_equal(
        sp_store_identity_add(f->s, "other", "service", "o", "p", f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_token_verify(f->s, "other", token, NOW, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);

    /* revoked */
    assert_int_equal(sp_store_cred_revoke(f->s, id, NOW, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_token_verify(f->s, "etl", token, NOW + S(1), f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
}

static void test_issue_refusals(void **state)
{
    fixture *f = *state;
    char token[SP_TOKEN_MAX], id[SP_CRED_ID_LEN];
    assert_int_equal(sp_token_issue(f->s, "ghost", S(60), NOW, token, id, f->err, sizeof(f->err)),
                     SP_STORE_NOT_FOUND);
    assert_int_equal(sp_token_issue(f->s, "etl", 0, NOW, token, id, f->err, sizeof(f->err)), -1);
    assert_int_equal(sp_store_identity_set_disabled(f->s, "etl", true, f->err, sizeof(f->err)), 0);
    assert_int_equal(sp_token_issue(f->s, "etl", S(60), NOW, token, id, f->err, sizeof(f->err)),
                     -1);
    assert_non_null(strstr(f->err, "disabled"));
    assert_string_equal(token, "");
}

typedef struct parse_case {
    const char *token;
    int rc;
} parse_case;

static void test_parse_id_shapes(void **state)
{
    (void)state;
    static const parse_case cases[] = {
        {"spt_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-", 0},
        {"spt_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA_", 0},
        {"spx_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1},
        {"spt_ABCDEFGHIJ12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1},
        {"spt_abcdefghij12-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1},
        {"spt_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", -1},
        {"spt_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1},
        {"spt_abcdefghij12_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", -1},
        {"hunter2", -1},
        {"", -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char id[SP_CRED_ID_LEN];
        print_message("case %zu: %s\n", i, cases[i].token);
        assert_int_equal(sp_token_parse_id(cases[i].token, id), cases[i].rc);
        if (cases[i].rc == 0)
            assert_string_equal(id, "abcdefghij12");
    }
    char id[SP_CRED_ID_LEN];
    assert_int_equal(sp_token_parse_id(NULL, id), -1);
}

static void test_max_ttl(void **state)
{
    fixture *f = *state;
    char err[256];
    int64_t max = -1;
    sp_config *cfg = sp_config_load_string("[sallyport]\nstore = sqlite:x.db\n"
                                           "recordings_dir = r\naudit_dir = a\n"
                                           "[target main]\nkind = postgres\n"
                                           "address = 127.0.0.1:5432\ndatabase = app\n"
                                           "[role short]\ntargets = main\nmax_ttl = 15m\n"
                                           "[role long]\ntargets = main\nmax_ttl = 8h\n",
                                           "/tmp/t.ini", err, sizeof(err));
    assert_non_null(cfg);
    assert_int_equal(sp_token_max_ttl(f->s, cfg, "etl", NOW, &max, err, sizeof(err)), 0);
    assert_int_equal(max, 0);
    assert_int_equal(
        sp_store_binding_add(f->s, "etl", "short", 0, "t", "local-admin", NULL, err, sizeof(err)),
        0);
    assert_int_equal(sp_store_binding_add(f->s, "etl", "long", NOW - 1, "t", "local-admin", NULL,
                                          err, sizeof(err)),
                     0);
    assert_int_equal(
        sp_store_binding_add(f->s, "etl", "gone", 0, "t", "local-admin", NULL, err, sizeof(err)),
        0);
    assert_int_equal(sp_token_max_ttl(f->s, cfg, "etl", NOW, &max, err, sizeof(err)), 0);
    assert_int_equal(max, S(15 * 60));
    assert_int_equal(sp_token_max_ttl(f->s, cfg, "etl", NOW - S(10), &max, err, sizeof(err)), 0);
    assert_int_equal(max, S(8 * 3600));
    sp_config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_issue_shape_and_stored_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens_differ, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify, setup, teardown),
        cmocka_unit_test_setup_teardown(test_issue_refusals, setup, teardown),
        cmocka_unit_test(test_parse_id_shapes),
        cmocka_unit_test_setup_teardown(test_max_ttl, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
