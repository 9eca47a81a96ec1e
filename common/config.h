/* sallyport.ini, loaded with inih into one immutable snapshot.
 *
 * A snapshot is built whole, validated, and only then swapped in (SIGHUP), so a worker never
 * sees half a configuration; sessions keep a reference to the snapshot they started under.
 * Relative paths are resolved against the directory of the configuration file.
 * Every key is documented in conf/sallyport.ini. */
#ifndef SP_COMMON_CONFIG_H
#define SP_COMMON_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum sp_target_kind { SP_TARGET_POSTGRES, SP_TARGET_SSH, SP_TARGET_TLS };
enum sp_upstream_tls { SP_UTLS_VERIFY_FULL, SP_UTLS_VERIFY_CA, SP_UTLS_REQUIRE, SP_UTLS_DISABLE };
enum sp_recording_policy { SP_REC_STRICT, SP_REC_BEST_EFFORT };
enum sp_forwarding { SP_FWD_NONE, SP_FWD_LOCAL, SP_FWD_AGENT };
enum sp_audit_fsync { SP_AUDIT_FSYNC_LINE, SP_AUDIT_FSYNC_BATCH };

typedef struct sp_target {
    char *name;
    enum sp_target_kind kind;
    char *host; /* from address = host:port */
    int port;
    char *database; /* default database */
    enum sp_upstream_tls upstream_tls;
    char *upstream_ca;       /* CA file for verify-full / verify-ca; NULL = system store */
    char *upstream_cert;     /* client certificate the gateway presents upstream (PEM) */
    char *upstream_key;      /* its key (owner-only) */
    char *admin_dsn_file;    /* file holding the libpq DSN of the minting admin (owner-only) */
    char *reassign_owner;    /* objects owned by a dropped ephemeral role go to this role */
    int64_t connect_timeout; /* us */
    char *host_key;          /* ssh: the target's host public key, OpenSSH one-line form */
    char *host_key_file;     /* ssh: or a file holding it (a .pub file, a known_hosts line) */
} sp_target;

typedef struct sp_role {
    char *name;
    char **targets;       /* NULL-terminated */
    char **databases;     /* NULL-terminated; empty = each target's default database only */
    char **db_roles;      /* NULL-terminated */
    int64_t max_ttl;      /* us: longest credential or grant under this role */
    int64_t idle_timeout; /* us; 0 = none */
    bool record_params;
    enum sp_recording_policy recording;
    char **logins;                 /* ssh: NULL-terminated list of logins on the targets */
    enum sp_forwarding forwarding; /* ssh: none (default), local, agent */
    bool record_input;             /* ssh: keep what the user types (default no: sudo passwords) */
    char **env;                    /* ssh: environment variables a client may pass */
} sp_role;

typedef struct sp_config {
    char *path; /* the file it was read from */

    /* [sallyport] */
    char *pg_listen_host;
    int pg_listen_port; /* 0 = no PostgreSQL listener */
    char *ssh_listen_host;
    int ssh_listen_port;     /* 0 = no SSH listener */
    char *ssh_host_key;      /* the gateway's SSH host key (OpenSSH private key file) */
    char *ssh_user_ca_key;   /* signs the user certificates `cred issue --ssh-key` writes */
    char *ssh_target_ca_key; /* signs the per-session certificates for targets */
    char *ssh_banner;        /* shown before login */
    int64_t ssh_keepalive;   /* us between keepalives; 0 = none */
    char *tls_cert;
    char *tls_key;
    int workers;      /* 0 = one per core */
    char *store;      /* "sqlite:PATH" */
    char *store_path; /* PATH of the sqlite store */
    char *recordings_dir;
    char *audit_dir;
    enum sp_audit_fsync audit_fsync;   /* line (default): fsync each audit line */
    int64_t audit_batch;               /* us: batch mode fsyncs a line within this long */
    int64_t audit_checkpoint_interval; /* us between signed audit checkpoints */
    char *gateway_secret_file;         /* 32+ random bytes, owner-only: fake salts, internal keys */
    char *master_key_file;  /* recording master keys (owner-only; `sallyport keys init`) */
    char *signing_key_file; /* Ed25519 key (owner-only PEM): recording trailers, audit
                             * checkpoints */
    int64_t flush_interval; /* us */
    int max_client_conn;
    int64_t handshake_timeout;  /* us: TLS + startup + authentication */
    int64_t drain_timeout;      /* us: SIGTERM grace for live sessions */
    char *session_notice;       /* NOTICE sent after login */
    char *managed_group;        /* group role every ephemeral role belongs to */
    int64_t lease_idle;         /* us: drop a lease unused this long */
    int64_t default_cred_ttl;   /* us */
    size_t max_message_size;    /* largest buffered protocol message (startup, auth) */
    size_t record_max_text;     /* statement/parameter text kept per event */
    int64_t store_outage_grace; /* us */
    char *log_level;

    sp_target *targets;
    size_t n_targets;
    sp_role *roles;
    size_t n_roles;

    atomic_int refs;
} sp_config;

/* Load and validate. On error returns NULL and writes "FILE:LINE: what" to errbuf. */
sp_config *sp_config_load(const char *path, char *errbuf, size_t errlen);
/* Load from text (tests, fuzzing); base_path is used for relative paths and messages. */
sp_config *sp_config_load_string(const char *text, const char *base_path, char *errbuf,
                                 size_t errlen);
void sp_config_ref(sp_config *c);
void sp_config_unref(sp_config *c);

const sp_target *sp_config_target(const sp_config *c, const char *name);
const sp_role *sp_config_role(const sp_config *c, const char *name);

/* Where the CLI looks when -c is not given: $SALLYPORT_CONFIG, else this. */
#define SP_DEFAULT_CONFIG "/etc/sallyport/sallyport.ini"

#endif
