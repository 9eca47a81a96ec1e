/* Leases: short-lived upstream PostgreSQL roles.
 *
 * One ephemeral role per (identity, target, granted db_roles), created at first use through the
 * target's admin connection with a SCRAM verifier computed here (never a cleartext password),
 * member of the granted db_roles and of the managed group, VALID UNTIL the lease's end, with a
 * COMMENT naming the lease. Reused by later sessions while it lasts; dropped (backends
 * terminated, owned objects reassigned) when its access ends or after lease_idle unused.
 * The role's secret lives only in this process's memory; after a restart the gateway sets a
 * new verifier on a lease it still needs.
 *
 * All functions block (libpq, store): call them from the thread pool only. Thread-safe. */
#ifndef SP_AUTH_LEASE_H
#define SP_AUTH_LEASE_H

#include <stdint.h>

#include "auth/store.h"
#include "common/config.h"

typedef struct sp_lease_mgr sp_lease_mgr;

typedef struct sp_lease {
    int64_t id;
    char role_name[64]; /* the ephemeral role to log in as */
    /* Keys for SCRAM client authentication upstream (see auth/scram.h). */
    uint8_t salt[16];
    int iterations;
    uint8_t client_key[32];
    uint8_t server_key[32];
    int64_t valid_until; /* us */
} sp_lease;

sp_lease_mgr *sp_lease_mgr_new(sp_store *store);
void sp_lease_mgr_free(sp_lease_mgr *m);

/* Find or create the lease for (identity, target, db_roles), valid at least until
 * valid_until (extends VALID UNTIL when reusing), and count one more session on it. */
int sp_lease_acquire(sp_lease_mgr *m, const sp_config *cfg, const sp_target *t,
                     const char *identity, char *const *db_roles, int64_t valid_until,
                     sp_lease *out, char *err, size_t errlen);
/* The upstream refused the lease's credential (its password was changed behind the gateway):
 * forget the keys, so the next acquire sets a new verifier. Only takes a mutex: safe on a
 * loop thread. */
void sp_lease_invalidate(sp_lease_mgr *m, int64_t lease_id);
/* A session on the lease ended. */
void sp_lease_release(sp_lease_mgr *m, int64_t lease_id, int64_t now);
/* Drop every lease whose access ended (binding gone or expired, identity disabled, role or
 * target no longer in the configuration, valid_until passed) or unused for lease_idle. With
 * at_start, also drops ephemeral roles on each target that this store does not know as live
 * (members of the managed group carrying a sallyport lease comment). Calls fn for each drop
 * so the caller can audit it. Returns the number dropped, or -1. */
int sp_lease_sweep(sp_lease_mgr *m, const sp_config *cfg, int64_t now, bool at_start,
                   void (*fn)(const char *identity, const char *target, const char *role_name,
                              const char *why, void *arg),
                   void *arg, char *err, size_t errlen);

#endif
