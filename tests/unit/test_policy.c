/* The policy decision, one row per case. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/policy.h"

#define S(x) ((int64_t)(x)*1000000)
#define NOW S(100000)

static const char CONFIG[] = "[sallyport]\n"
                             "store = sqlite:state.db\n"
                             "recordings_dir = rec\n"
                             "audit_dir = audit\n"
                             "[target main]\n"
                             "kind = postgres\n"
                             "address = 127.0.0.1:5432\n"
                             "database = app\n"
                             "[target other]\n"
                             "kind = postgres\n"
                             "address = 127.0.0.1:5433\n"
                             "database = otherdb\n"
                             "[role reader]\n"
                             "targets = main\n"
                             "max_ttl = 8h\n"
                             "[role analyst]\n"
                             "targets = main\n"
                             "databases = app, reports\n"
                             "max_ttl = 1h\n"
                             "[role elsewhere]\n"
                             "targets = other\n";

/* Who exists and what they hold, the same for every row. */
typedef struct grant_spec {
    const char *identity;
    const char *role;
    int64_t expires_at; /* 0 = until revoked */
    bool revoked;
} grant_spec;

static const grant_spec GRANTS[] = {
    {"alice", "reader", 0, false},
    {"bob", "reader", NOW - S(1), false},     /* expired */
    {"carol", "elsewhere", 0, false},         /* other target only */
    {"dave", "reader", NOW + S(60), false},   /* two allowing bindings: */
    {"dave", "analyst", NOW + S(600), false}, /* this one expires last */
    {"dave", "reader", NOW + S(300), false},
    {"erin", "reader", 0, false},     /* disabled below */
    {"frank", "reader", 0, true},     /* revoked */
    {"gina", "ghost-role", 0, false}, /* role not in the configuration */
    {"hank", "elsewhere", 0, false},  /* target miss, then database miss: */
    {"hank", "reader", 0, false},     /* database-not-in-role is reported */
};

static const char *const IDENTITIES[] = {"alice", "bob",  "carol", "dave", "erin",
                                         "frank", "gina", "hank",  "ivan"};

typedef struct policy_case {
    const char *name;
    const char *identity;
    const char *target;
    const char *database;
    bool allowed;
    const char *reason;
    const char *role; /* when allowed */
    const char *database_chosen;
    int64_t expires_at; /* when allowed */
} policy_case;

static const policy_case CASES[] = {
    {.name = "unknown identity",
     .identity = "nobody",
     .target = "main",
     .reason = "unknown-identity"},
    {.name = "disabled identity wins over its allowing binding",
     .identity = "erin",
     .target = "main",
     .reason = "identity-disabled"},
    {.name = "unknown target",
     .identity = "alice",
     .target = "nowhere",
     .reason = "unknown-target"},
    {.name = "no binding at all", .identity = "ivan", .target = "main", .reason = "no-binding"},
    {.name = "expired binding", .identity = "bob", .target = "main", .reason = "no-binding"},
    {.name = "revoked binding", .identity = "frank", .target = "main", .reason = "no-binding"},
    {.name = "role missing from configuration",
     .identity = "gina",
     .target = "main",
     .reason = "no-binding"},
    {.name = "target not in role",
     .identity = "carol",
     .target = "main",
     .reason = "target-not-in-role"},
    {.name = "database not in role (defaults only)",
     .identity = "alice",
     .target = "main",
     .database = "reports",
     .reason = "database-not-in-role"},
    {.name = "most specific refusal",
     .identity = "hank",
     .target = "main",
     .database = "secret",
     .reason = "database-not-in-role"},
    {.name = "default database when none given",
     .identity = "alice",
     .target = "main",
     .allowed = true,
     .reason = "allowed",
     .role = "reader",
     .database_chosen = "app"},
    {.name = "default database when empty",
     .identity = "alice",
     .target = "main",
     .database = "",
     .allowed = true,
     .reason = "allowed",
     .role = "reader",
     .database_chosen = "app"},
    {.name = "default database named explicitly",
     .identity = "alice",
     .target = "main",
     .database = "app",
     .allowed = true,
     .reason = "allowed",
     .role = "reader",
     .database_chosen = "app"},
    {.name = "listed database",
     .identity = "dave",
     .target = "main",
     .database = "reports",
     .allowed = true,
     .reason = "allowed",
     .role = "analyst",
     .database_chosen = "reports",
     .expires_at = NOW + S(600)},
    {.name = "latest-expiring binding wins",
     .identity = "dave",
     .target = "main",
     .allowed = true,
     .reason = "allowed",
     .role = "analyst",
     .database_chosen = "app",
     .expires_at = NOW + S(600)},
    {.name = "other target's default database",
     .identity = "carol",
     .target = "other",
     .allowed = true,
     .reason = "allowed",
     .role = "elsewhere",
     .database_chosen = "otherdb"},
};

typedef struct fixture {
    char dir[64];
    sp_store *s;
    sp_config *cfg;
    char err[256];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    char path[128];
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp_policy_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(path, sizeof(path), "%s/state.db", f->dir);
    assert_int_equal(sp_store_open(path, &f->s, f->err, sizeof(f->err)), 0);
    f->cfg = sp_config_load_string(CONFIG, "/tmp/policy-test.ini", f->err, sizeof(f->err));
    assert_non_null(f->cfg);
    for (size_t i = 0; i < sizeof(IDENTITIES) / sizeof(IDENTITIES[0]); i++)
        assert_int_equal(sp_store_identity_add(f->s, IDENTITIES[i], "human", "dba-team",
                                               "policy test", f->err, sizeof(f->err)),
                         0);
    for (size_t i = 0; i < sizeof(GRANTS) / sizeof(GRANTS[0]); i++) {
        const grant_spec *g = &GRANTS[i];
        assert_int_equal(sp_store_binding_add(f->s, g->identity, g->role, g->expires_at,
                                              "policy test", "local-admin", NULL, f->err,
                                              sizeof(f->err)),
                         0);
        if (g->revoked)
            assert_int_equal(sp_store_binding_revoke(f->s, g->identity, g->role, NOW - S(10),
                                                     f->err, sizeof(f->err)),
                             0);
    }
    assert_int_equal(sp_store_identity_set_disabled(f->s, "erin", true, f->err, sizeof(f->err)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    char cmd[160];
    sp_store_close(f->s);
    sp_config_unref(f->cfg);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void test_policy_table(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
        const policy_case *c = &CASES[i];
        sp_decision d;
        print_message("case: %s\n", c->name);
        assert_int_equal(sp_policy_decide(f->s, f->cfg, c->identity, c->target, c->database, NOW,
                                          &d, f->err, sizeof(f->err)),
                         0);
        assert_int_equal(d.allowed, c->allowed);
        assert_string_equal(d.reason, c->reason);
        if (!c->allowed) {
            assert_null(d.role);
            continue;
        }
        assert_non_null(d.role);
        assert_string_equal(d.role->name, c->role);
        assert_non_null(d.target);
        assert_string_equal(d.target->name, c->target);
        assert_string_equal(d.database, c->database_chosen);
        assert_int_equal(d.binding_expires_at, c->expires_at);
        assert_true(d.binding_id > 0);
    }
}

/* A binding that was live a moment ago is not after its expiry: decisions use `now`. */
static void test_decision_follows_now(void **state)
{
    fixture *f = *state;
    sp_decision d;
    assert_int_equal(
        sp_policy_decide(f->s, f->cfg, "bob", "main", NULL, NOW - S(2), &d, f->err, sizeof(f->err)),
        0);
    assert_true(d.allowed);
    assert_int_equal(
        sp_policy_decide(f->s, f->cfg, "bob", "main", NULL, NOW - S(1), &d, f->err, sizeof(f->err)),
        0);
    assert_false(d.allowed);
    assert_string_equal(d.reason, "no-binding");
}

static void test_store_error(void **state)
{
    fixture *f = *state;
    sp_decision d;
    sqlite3 *db = sp_store_lock(f->s);
    assert_int_equal(sqlite3_exec(db, "DROP TABLE bindings", NULL, NULL, NULL), SQLITE_OK);
    sp_store_unlock(f->s);
    assert_int_equal(
        sp_policy_decide(f->s, f->cfg, "alice", "main", NULL, NOW, &d, f->err, sizeof(f->err)), -1);
    assert_false(d.allowed);
    assert_string_equal(d.reason, "store-error");
    assert_true(strlen(f->err) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_policy_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_decision_follows_now, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_error, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
