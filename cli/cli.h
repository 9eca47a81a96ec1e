/* Shared by the CLI's command files: the command table, argument parsing, opening the
 * configuration/store/audit trail, and how errors are reported.
 *
 * Exit statuses: 0 done, 1 an operational failure (store, file, refusal), 2 a usage error.
 * Errors go to stderr as "sallyport: <command>: <what and why>". */
#ifndef SP_CLI_CLI_H
#define SP_CLI_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/store.h"
#include "common/config.h"
#include "recorder/audit.h"

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

/* The CLI's actor name in the audit trail (DESIGN.md: "Who is acting"). */
#define CLI_ACTOR "local-admin"

#define CLI_MAX_POSITIONAL 4

typedef struct cli_opt {
    const char *name; /* long name without dashes: "ttl" for --ttl */
    bool has_value;
    const char *value; /* set by cli_parse; "" for a flag that was given */
} cli_opt;

typedef struct cli_args {
    const char *pos[CLI_MAX_POSITIONAL];
    int npos;
    cli_opt *opts;
    size_t nopts;
    const char *config_path; /* -c / --config, else $SALLYPORT_CONFIG, else the default */
    bool help;
} cli_args;

typedef struct cli_ctx {
    const char *command; /* "identity add": names the command in error messages */
    const struct cli_command *cmd;
    sp_config *cfg;
    sp_store *store;
    bool audit_open;
} cli_ctx;

typedef struct cli_command {
    const char *name;     /* "identity add" */
    const char *synopsis; /* arguments after the name */
    const char *summary;  /* one line for the overview */
    const char *help;     /* the body of --help */
    bool audited;         /* opens the audit trail (commands that change state or read PHI) */
    bool needs_store;
    int (*run)(cli_ctx *ctx, cli_args *a);
    cli_opt *opts; /* template, copied per run */
    size_t nopts;
} cli_command;

extern const cli_command cli_commands[];
extern const size_t cli_n_commands;

/* Parse argv (the command words already removed) against the command's options. Returns
 * CLI_OK or CLI_USAGE (message printed). */
int cli_parse(cli_ctx *ctx, int argc, char **argv, cli_args *out);
/* Exactly n positional arguments; `what` names the missing ones ("NAME"). */
int cli_need_args(const cli_ctx *ctx, const cli_args *a, int n, const char *what);
const char *cli_opt_value(const cli_args *a, const char *name);
bool cli_flag(const cli_args *a, const char *name);

void cli_print_help(const cli_command *cmd, FILE *out);

/* Loads the configuration, opens the store (creating its directory 0700) and, for audited
 * commands, the audit trail. Returns CLI_OK or CLI_FAIL (message printed). */
int cli_open(cli_ctx *ctx, const cli_args *a);
void cli_close(cli_ctx *ctx);

int cli_fail(const cli_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int cli_usage(const cli_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A duration option ("15m"); CLI_USAGE on a malformed one. *us untouched when absent. */
int cli_duration_opt(const cli_ctx *ctx, const cli_args *a, const char *name, int64_t *us,
                     bool *given);
/* Reason text: required and non-empty when `required`. */
int cli_reason_opt(const cli_ctx *ctx, const cli_args *a, bool required, const char **reason);

/* "2026-12-03T14:17:15Z" (seconds) for tables; "-" for 0. */
void cli_time_short(int64_t us, char *out, size_t outlen);
/* JSON string with RFC 3339 microseconds, or null for 0. */
json_t *cli_time_json(int64_t us);
/* Prints a JSON document (steals the reference) followed by a newline. */
int cli_print_json(const cli_ctx *ctx, json_t *doc);

/* Audit event with the CLI as actor; the caller adds fields and emits. */
json_t *cli_audit_event(enum sp_audit_class cls, const char *activity, bool success);

/* The command runners, one file per area. */
int cmd_identity_add(cli_ctx *ctx, cli_args *a);
int cmd_identity_list(cli_ctx *ctx, cli_args *a);
int cmd_identity_show(cli_ctx *ctx, cli_args *a);
int cmd_identity_disable(cli_ctx *ctx, cli_args *a);
int cmd_identity_enable(cli_ctx *ctx, cli_args *a);
int cmd_grant(cli_ctx *ctx, cli_args *a);
int cmd_revoke(cli_ctx *ctx, cli_args *a);
int cmd_grants(cli_ctx *ctx, cli_args *a);
int cmd_cred_issue(cli_ctx *ctx, cli_args *a);
int cmd_cred_revoke(cli_ctx *ctx, cli_args *a);
int cmd_cred_list(cli_ctx *ctx, cli_args *a);
int cmd_sessions(cli_ctx *ctx, cli_args *a);
int cmd_kill(cli_ctx *ctx, cli_args *a);
int cmd_replay(cli_ctx *ctx, cli_args *a);
int cmd_ca_init(cli_ctx *ctx, cli_args *a);
int cmd_ca_show(cli_ctx *ctx, cli_args *a);

#endif
