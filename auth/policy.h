/* The policy decision: may IDENTITY reach TARGET/DATABASE now, and as what?
 *
 * Deny by default: allowed only if the identity exists, is not disabled, and holds a live
 * binding to a role (declared in the configuration) whose targets include TARGET and whose
 * databases include DATABASE (a role that lists no databases allows each target's default
 * database only). For an ssh target, DATABASE is the login on the target and must be listed
 * in the role's logins (there is no default login). When several bindings allow it, the one
 * expiring last wins. Blocking (reads the store): thread pool only in the gateway. */
#ifndef SP_AUTH_POLICY_H
#define SP_AUTH_POLICY_H

#include "auth/store.h"
#include "common/config.h"

typedef struct sp_decision {
    bool allowed;
    /* For the audit trail only, never for the client: "unknown-identity",
     * "identity-disabled", "unknown-target", "no-binding", "target-not-in-role",
     * "database-not-in-role", "login-not-in-role" (ssh), "store-error". */
    char reason[64];
    const sp_role *role; /* points into the config snapshot passed in; NULL when denied */
    const sp_target *target;
    char database[SP_NAME_MAX];
    int64_t binding_id;
    int64_t binding_expires_at; /* 0 = until revoked */
} sp_decision;

/* database may be NULL or "" for the target's default. Returns 0 (see out->allowed), or -1 when
 * the store failed (out->reason = "store-error", err filled). */
int sp_policy_decide(sp_store *s, const sp_config *cfg, const char *identity, const char *target,
                     const char *database, int64_t now, sp_decision *out, char *err, size_t errlen);

#endif
