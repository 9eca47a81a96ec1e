/* sallyport: one binary, subcommands. main() finds the command words, then hands the rest of
 * argv to the command's own parser (so -c FILE may come before or after them). */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "proxy/server.h"

#ifndef SP_VERSION
#define SP_VERSION "0.1.0"
#endif

static cli_opt opts_none[] = {{.name = "unused"}};
static cli_opt opts_json[] = {{.name = "json"}};
static cli_opt opts_identity_add[] = {
    {.name = "kind", .has_value = true},
    {.name = "owner", .has_value = true},
    {.name = "purpose", .has_value = true},
};
static cli_opt opts_reason[] = {{.name = "reason", .has_value = true}};
static cli_opt opts_grant[] = {{.name = "ttl", .has_value = true},
                               {.name = "reason", .has_value = true}};
static cli_opt opts_cred_issue[] = {
    {.name = "ttl", .has_value = true}, {.name = "ssh-key", .has_value = true}, {.name = "force"}};
static cli_opt opts_ca_show[] = {{.name = "target-ca"}, {.name = "user-ca"}};
static cli_opt opts_sessions[] = {
    {.name = "live"}, {.name = "json"}, {.name = "limit", .has_value = true}};

static int cmd_version(cli_ctx *ctx, cli_args *a);
static int cmd_serve(cli_ctx *ctx, cli_args *a);

#define OPTS(o) .opts = o, .nopts = sizeof(o) / sizeof(o[0])

const cli_command cli_commands[] = {
    {.name = "serve",
     .synopsis = "[-c FILE]",
     .summary = "run the gateway",
     .help = "Run the gateway: listen for PostgreSQL clients, check each login against the\n"
             "policy in the configuration, relay and record sessions, and write the audit\n"
             "trail. Reloads the configuration on SIGHUP; drains sessions on SIGTERM.",
     .run = cmd_serve,
     OPTS(opts_none)},

    {.name = "identity add",
     .synopsis = "NAME --kind human|service --owner WHO --purpose TEXT",
     .summary = "register a person or a service account",
     .help = "Register an identity: a person (human) or a machine (service: a job, an\n"
             "integration). Every identity has an owner who answers for it and a purpose\n"
             "that says why it needs access; access reviews show both.\n"
             "NAME is 1 to 63 of A-Z a-z 0-9 _ . @ - and is the PostgreSQL user name\n"
             "clients log in with.\n"
             "\n"
             "Options:\n"
             "  --kind human|service  a person, or a machine identity\n"
             "  --owner WHO           the person or team accountable for it\n"
             "  --purpose TEXT        why it needs access\n"
             "\n"
             "Example:\n"
             "  sallyport identity add etl-nightly --kind service --owner data-team \\\n"
             "      --purpose \"nightly claims export\"",
     .audited = true,
     .needs_store = true,
     .run = cmd_identity_add,
     OPTS(opts_identity_add)},

    {.name = "identity list",
     .synopsis = "[--json]",
     .summary = "list identities",
     .help = "List every identity with its kind, status, owner, creation time and purpose.\n"
             "\n"
             "Options:\n"
             "  --json  one JSON array instead of a table",
     .needs_store = true,
     .run = cmd_identity_list,
     OPTS(opts_json)},

    {.name = "identity show",
     .synopsis = "NAME [--json]",
     .summary = "show one identity, its grants and live credentials",
     .help = "Show an identity, its live grants and its live credentials (ids and expiry\n"
             "only; secrets are never stored).\n"
             "\n"
             "Options:\n"
             "  --json  one JSON object instead of text",
     .needs_store = true,
     .run = cmd_identity_show,
     OPTS(opts_json)},

    {.name = "identity disable",
     .synopsis = "NAME --reason TEXT",
     .summary = "disable an identity and end its sessions",
     .help = "Disable an identity: it can no longer log in, and the gateway ends its live\n"
             "sessions within a few seconds. Grants and credentials are kept, so\n"
             "`sallyport identity enable` restores access as it was.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT  why (required; recorded in the audit trail)",
     .audited = true,
     .needs_store = true,
     .run = cmd_identity_disable,
     OPTS(opts_reason)},

    {.name = "identity enable",
     .synopsis = "NAME [--reason TEXT]",
     .summary = "enable a disabled identity",
     .help = "Enable a disabled identity again.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT  why (recorded in the audit trail)",
     .audited = true,
     .needs_store = true,
     .run = cmd_identity_enable,
     OPTS(opts_reason)},

    {.name = "grant",
     .synopsis = "IDENTITY ROLE --reason TEXT [--ttl DURATION]",
     .summary = "give an identity a role for a limited time",
     .help = "Bind IDENTITY to ROLE, a [role NAME] section of the configuration that says\n"
             "which targets, databases and database roles it reaches. The grant lasts the\n"
             "role's max_ttl, or --ttl if shorter (a longer --ttl is capped, with a note).\n"
             "Prints the binding id and when it expires.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT     why (required: a ticket, an incident; audited)\n"
             "  --ttl DURATION    how long, e.g. 30m, 8h, 2d (default: the role's max_ttl)\n"
             "\n"
             "Example:\n"
             "  sallyport grant alice claims-read --ttl 4h --reason \"INC-1234\"",
     .audited = true,
     .needs_store = true,
     .run = cmd_grant,
     OPTS(opts_grant)},

    {.name = "revoke",
     .synopsis = "IDENTITY ROLE --reason TEXT",
     .summary = "take a role away now",
     .help = "Revoke every live grant of ROLE to IDENTITY. Sessions that the grant allowed\n"
             "are ended by the gateway within a few seconds.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT  why (required; audited)",
     .audited = true,
     .needs_store = true,
     .run = cmd_revoke,
     OPTS(opts_reason)},

    {.name = "grants",
     .synopsis = "[IDENTITY] [--json]",
     .summary = "list live grants",
     .help = "List live grants (not revoked, not expired), of one identity or of all.\n"
             "A grant to a role no longer in the configuration is shown and flagged: it\n"
             "allows nothing.\n"
             "\n"
             "Options:\n"
             "  --json  one JSON array instead of a table",
     .needs_store = true,
     .run = cmd_grants,
     OPTS(opts_json)},

    {.name = "cred issue",
     .synopsis = "IDENTITY [--ttl DURATION] [--ssh-key FILE.pub [--force]]",
     .summary = "issue a short-lived token or SSH certificate",
     .help = "Issue a token (spt_<id>_<secret>) for IDENTITY, to be used as the password of a\n"
             "PostgreSQL client. The identity must be enabled and hold a live grant.\n"
             "The token is printed alone on the first line of standard output, so scripts\n"
             "can capture it; it is shown once and never stored (only a SCRAM verifier is).\n"
             "Its id and expiry go to standard error.\n"
             "The token's lifetime bounds when it can START a session; a running session\n"
             "lasts as long as the grant that allowed it.\n"
             "\n"
             "With --ssh-key, sign an OpenSSH user certificate for the public key in FILE.pub\n"
             "(ssh-ed25519, ecdsa-sha2-nistp256 or ssh-rsa) with the user CA\n"
             "(ssh_user_ca_key) instead, and write it beside the key as FILE-cert.pub, where\n"
             "ssh finds it. Its principal is IDENTITY; it is valid from a minute ago for the\n"
             "TTL, allows a PTY, and port or agent forwarding only if a role of IDENTITY\n"
             "does. Its path goes to standard output; its credential id (for cred revoke)\n"
             "and expiry to standard error.\n"
             "\n"
             "Options:\n"
             "  --ttl DURATION   lifetime (default: default_cred_ttl, 15m unless configured);\n"
             "                   capped at the longest max_ttl of the identity's roles\n"
             "  --ssh-key FILE   sign an SSH certificate for this public key (FILE.pub)\n"
             "  --force          with --ssh-key: replace an existing FILE-cert.pub\n"
             "\n"
             "Examples:\n"
             "  PGPASSWORD=$(sallyport cred issue alice --ttl 1h) \\\n"
             "      psql \"host=gateway port=6432 user=alice dbname=claims sslmode=require\"\n"
             "  sallyport cred issue alice --ssh-key ~/.ssh/id_ed25519.pub --ttl 8h",
     .audited = true,
     .needs_store = true,
     .run = cmd_cred_issue,
     OPTS(opts_cred_issue)},

    {.name = "cred revoke",
     .synopsis = "ID [--reason TEXT]",
     .summary = "revoke a credential and end its sessions",
     .help = "Revoke credential ID (as shown by `sallyport cred list`). It can no longer log\n"
             "in, and sessions it started are ended within a few seconds.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT  why (recorded in the audit trail)",
     .audited = true,
     .needs_store = true,
     .run = cmd_cred_revoke,
     OPTS(opts_reason)},

    {.name = "cred list",
     .synopsis = "[IDENTITY] [--json]",
     .summary = "list credentials (never secrets)",
     .help = "List credentials, of one identity or of all, newest first, with their status\n"
             "(live, expired, revoked). Secrets are never shown: they are not stored.\n"
             "\n"
             "Options:\n"
             "  --json  one JSON array instead of a table",
     .needs_store = true,
     .run = cmd_cred_list,
     OPTS(opts_json)},

    {.name = "sessions",
     .synopsis = "[--live] [--json] [--limit N]",
     .summary = "list recorded sessions",
     .help = "List sessions, most recent first: id, identity, target/database, start, end\n"
             "(or \"live\"), why it ended, and the number of recording chunks written.\n"
             "\n"
             "Options:\n"
             "  --live     only sessions still running\n"
             "  --limit N  at most N sessions (default 50; 0 for all)\n"
             "  --json     one JSON array instead of a table",
     .needs_store = true,
     .run = cmd_sessions,
     OPTS(opts_sessions)},

    {.name = "kill",
     .synopsis = "SESSION --reason TEXT",
     .summary = "end a live session",
     .help = "Ask the gateway that holds SESSION (an id, or a unique start or end of\n"
             "one) to end it; it does so within a second, and cancels the statement it\n"
             "was running. To keep the identity out, also revoke its grant or\n"
             "credential, or disable it.\n"
             "\n"
             "Options:\n"
             "  --reason TEXT  why (required; audited and shown as the end reason)",
     .audited = true,
     .needs_store = true,
     .run = cmd_kill,
     OPTS(opts_reason)},

    {.name = "replay",
     .synopsis = "SESSION [--json]",
     .summary = "show a session's query timeline",
     .help = "Print the recorded query timeline of SESSION (an id, or a unique start or end\n"
             "of one): each statement with its time offset, duration and outcome, then how the\n"
             "session ended and whether the recording is sealed. Recordings hold PHI:\n"
             "each viewing is recorded in the audit trail.\n"
             "\n"
             "Options:\n"
             "  --json  JSON lines instead of text",
     .audited = true,
     .needs_store = true,
     .run = cmd_replay,
     OPTS(opts_json)},

    {.name = "ca init",
     .synopsis = "",
     .summary = "create the SSH CA keys named in the configuration",
     .help = "Create the Ed25519 CA keys named by ssh_user_ca_key (signs the certificates\n"
             "`cred issue --ssh-key` writes) and ssh_target_ca_key (signs the per-session\n"
             "certificates the gateway presents to targets), owner-only PEM files, and print\n"
             "their public lines. A key that already exists is kept, never overwritten.\n"
             "Put the target CA line in each target's sshd TrustedUserCAKeys file.",
     .audited = true,
     .needs_store = true,
     .run = cmd_ca_init,
     OPTS(opts_none)},

    {.name = "ca show",
     .synopsis = "--target-ca | --user-ca",
     .summary = "print a CA's public key line",
     .help = "Print the public key line of one CA, in the form sshd reads.\n"
             "\n"
             "Options:\n"
             "  --target-ca  the line for a target sshd's TrustedUserCAKeys file\n"
             "  --user-ca    the CA of the certificates users present to the gateway (for\n"
             "               reference: only the gateway checks them)\n"
             "\n"
             "Example:\n"
             "  sallyport ca show --target-ca >> /etc/ssh/sallyport_ca.pub   # on the target",
     .run = cmd_ca_show,
     OPTS(opts_ca_show)},

    {.name = "version",
     .synopsis = "",
     .summary = "print the version",
     .help = "Print the version of sallyport.",
     .run = cmd_version,
     OPTS(opts_none)},
};
const size_t cli_n_commands = sizeof(cli_commands) / sizeof(cli_commands[0]);

static int cmd_version(cli_ctx *ctx, cli_args *a)
{
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    printf("sallyport %s\n", SP_VERSION);
    return CLI_OK;
}

static int cmd_serve(cli_ctx *ctx, cli_args *a)
{
    int rc = cli_need_args(ctx, a, 0, "");
    if (rc != CLI_OK)
        return rc;
    return sp_serve(a->config_path);
}

static void print_overview(FILE *out)
{
    fprintf(out, "sallyport: a recorded, least-privilege gateway to PostgreSQL databases.\n"
                 "\n"
                 "Usage: sallyport COMMAND [ARGS] [-c FILE]\n"
                 "\n"
                 "Commands:\n");
    for (size_t i = 0; i < cli_n_commands; i++)
        fprintf(out, "  %-17s %s\n", cli_commands[i].name, cli_commands[i].summary);
    fprintf(out,
            "\n"
            "Every command reads the configuration from -c FILE, else $SALLYPORT_CONFIG,\n"
            "else %s.\n"
            "Run on the gateway host, the CLI acts as \"%s\" in the audit trail.\n"
            "Run 'sallyport COMMAND --help' for a command's options.\n"
            "Exit status: 0 done, 1 failed, 2 usage error.\n",
            SP_DEFAULT_CONFIG, CLI_ACTOR);
}

static bool is_help(const char *arg)
{
    return strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0 || strcmp(arg, "help") == 0;
}

/* Index of the next word that is not an option, skipping -c FILE pairs; argc if none. */
static int next_word(int argc, char **argv, int from)
{
    for (int i = from; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
            i++;
            continue;
        }
        if (argv[i][0] != '-')
            return i;
        return argc; /* another option before the command words: no command here */
    }
    return argc;
}

static bool is_group(const char *word)
{
    size_t n = strlen(word);
    for (size_t i = 0; i < cli_n_commands; i++) {
        if (strncmp(cli_commands[i].name, word, n) == 0 && cli_commands[i].name[n] == ' ')
            return true;
    }
    return false;
}

static void print_group(const char *group, FILE *out)
{
    size_t n = strlen(group);
    fprintf(out, "Usage: sallyport %s SUBCOMMAND [ARGS] [-c FILE]\n\nSubcommands:\n", group);
    for (size_t i = 0; i < cli_n_commands; i++) {
        if (strncmp(cli_commands[i].name, group, n) == 0 && cli_commands[i].name[n] == ' ')
            fprintf(out, "  %-10s %s\n", cli_commands[i].name + n + 1, cli_commands[i].summary);
    }
    fprintf(out, "\nRun 'sallyport %s SUBCOMMAND --help' for its options.\n", group);
}

static const cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < cli_n_commands; i++) {
        if (strcmp(cli_commands[i].name, name) == 0)
            return &cli_commands[i];
    }
    return NULL;
}

static int run_command(const cli_command *cmd, int argc, char **argv)
{
    cli_ctx ctx = {.command = cmd->name, .cmd = cmd};
    cli_opt opts[8];
    cli_args args = {.opts = opts, .nopts = cmd->nopts};
    memcpy(opts, cmd->opts, cmd->nopts * sizeof(cli_opt));
    if (cmd->opts == opts_none)
        args.nopts = 0;
    int rc = cli_parse(&ctx, argc, argv, &args);
    if (rc != CLI_OK)
        return rc;
    if (args.help) {
        cli_print_help(cmd, stdout);
        return CLI_OK;
    }
    if (cmd->needs_store && cli_open(&ctx, &args) != CLI_OK) {
        cli_close(&ctx);
        return CLI_FAIL;
    }
    rc = cmd->run(&ctx, &args);
    cli_close(&ctx);
    return rc;
}

/* Removes argv[i] (a command word) so the command's parser sees only its arguments. */
static void drop_arg(int *argc, char **argv, int i)
{
    memmove(&argv[i], &argv[i + 1], (size_t)(*argc - i) * sizeof(char *));
    (*argc)--;
}

int main(int argc, char **argv)
{
    /* Everything sallyport writes (store, recordings, audit trail, keys) is for its owner
     * only: the store holds credential verifiers, recordings hold PHI. */
    umask(077);
    int first = next_word(argc, argv, 1);
    if (first >= argc) {
        for (int i = 1; i < argc; i++) {
            if (is_help(argv[i])) {
                print_overview(stdout);
                return CLI_OK;
            }
            if (strcmp(argv[i], "--version") == 0)
                return run_command(find_command("version"), 0, argv);
        }
        print_overview(stderr);
        return CLI_USAGE;
    }
    if (is_help(argv[first])) {
        print_overview(stdout);
        return CLI_OK;
    }
    char name[64];
    snprintf(name, sizeof(name), "%s", argv[first]);
    drop_arg(&argc, argv, first);
    if (is_group(name)) {
        int second = next_word(argc, argv, first);
        if (second >= argc) {
            bool help = false;
            for (int i = 1; i < argc; i++)
                help = help || is_help(argv[i]);
            print_group(name, help ? stdout : stderr);
            return help ? CLI_OK : CLI_USAGE;
        }
        size_t len = strlen(name);
        snprintf(name + len, sizeof(name) - len, " %s", argv[second]);
        drop_arg(&argc, argv, second);
    }
    const cli_command *cmd = find_command(name);
    if (!cmd) {
        fprintf(stderr, "sallyport: unknown command \"%s\"; run 'sallyport --help' for the list\n",
                name);
        return CLI_USAGE;
    }
    return run_command(cmd, argc - 1, argv + 1);
}
