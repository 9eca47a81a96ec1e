#include "auth/policy.h"

#include <stdio.h>
#include <string.h>

#include "common/util.h"

/* More live bindings than this for one identity is a configuration smell, not a use case; the
 * extra ones are not considered (the store returns them oldest first). */
#define POLICY_MAX_BINDINGS 64

static int deny(sp_decision *out, const char *reason)
{
    out->allowed = false;
    out->role = NULL;
    out->target = NULL;
    snprintf(out->reason, sizeof(out->reason), "%s", reason);
    return 0;
}

/* A role that lists no databases allows only each target's default database. */
static bool role_allows_database(const sp_role *role, const sp_target *target, const char *db)
{
    if (target->kind == SP_TARGET_SSH)
        return sp_list_contains(role->logins, db);
    if (!role->databases || !role->databases[0])
        return target->database && strcmp(db, target->database) == 0;
    return sp_list_contains(role->databases, db);
}

/* Does binding `b` expire after `than` (0 = never, which is latest)? */
static bool expires_later(int64_t b, int64_t than)
{
    if (than == 0)
        return false;
    return b == 0 || b > than;
}

int sp_policy_decide(sp_store *s, const sp_config *cfg, const char *identity, const char *target,
                     const char *database, int64_t now, sp_decision *out, char *err, size_t errlen)
{
    sp_identity id;
    sp_binding bindings[POLICY_MAX_BINDINGS];
    size_t n = 0;
    memset(out, 0, sizeof(*out));

    int rc = sp_store_identity_get(s, identity, &id, err, errlen);
    if (rc == SP_STORE_NOT_FOUND)
        return deny(out, "unknown-identity");
    if (rc < 0) {
        deny(out, "store-error");
        return -1;
    }
    if (id.disabled)
        return deny(out, "identity-disabled");

    const sp_target *t = sp_config_target(cfg, target);
    if (!t)
        return deny(out, "unknown-target");
    const char *db = database && *database ? database : t->database;
    if (!db || strlen(db) >= sizeof(out->database))
        return deny(out, t->kind == SP_TARGET_SSH ? "login-not-in-role" : "database-not-in-role");

    if (sp_store_bindings_live(s, identity, now, bindings, POLICY_MAX_BINDINGS, &n, err, errlen) <
        0) {
        deny(out, "store-error");
        return -1;
    }

    /* The most specific refusal is reported: a role that reaches the target but not the
     * database says more than one that does not reach the target at all. */
    const char *refusal = "no-binding";
    const sp_binding *best = NULL;
    const sp_role *best_role = NULL;
    for (size_t i = 0; i < n; i++) {
        const sp_role *role = sp_config_role(cfg, bindings[i].role);
        if (!role)
            continue; /* role removed from the configuration: the binding grants nothing */
        if (!sp_list_contains(role->targets, t->name)) {
            if (strcmp(refusal, "no-binding") == 0)
                refusal = "target-not-in-role";
            continue;
        }
        if (!role_allows_database(role, t, db)) {
            refusal = t->kind == SP_TARGET_SSH ? "login-not-in-role" : "database-not-in-role";
            continue;
        }
        if (!best || expires_later(bindings[i].expires_at, best->expires_at)) {
            best = &bindings[i];
            best_role = role;
        }
    }
    if (!best)
        return deny(out, refusal);

    out->allowed = true;
    snprintf(out->reason, sizeof(out->reason), "allowed");
    out->role = best_role;
    out->target = t;
    snprintf(out->database, sizeof(out->database), "%s", db);
    out->binding_id = best->id;
    out->binding_expires_at = best->expires_at;
    return 0;
}
