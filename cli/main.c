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
static cli_opt opts_verify[] = {
    {.name = "all"}, {.name = "json"}, {.name = "public-key", .has_value = true}};
static cli_opt opts_sessions[] = {
    {.name = "live"}, {.name = "json"}, {.name = "limit", .has_value = true}};

static cli_opt opts_replay[] = {{.name = "json"},
                                {.name = "from", .has_value = true},
                                {.name = "speed", .has_value = true},
                                {.name = "idle-limit", .has_value = true},
                                {.name = "no-wait"}};
static cli_opt opts_export[] = {{.name = "format", .has_value = true},
                                {.name = "output", .short_name = 'o', .has_value = true}};
static cli_opt opts_audit_verify[] = {{.name = "json"},
                                      {.name = "public-key", .has_value = true},
                                      {.name = "checkpoints", .has_value = true}};

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
     .synopsis =
         "SESSION [--from HH:MM:SS] [--json] [--speed N] [--idle-limit SECONDS] [--no-wait]",
     .summary = "show a session: query timeline or terminal",
     .help = "Show the recording of SESSION (an id, or a unique start or end of one), then\n"
             "how the session ended and whether the recording is sealed. Recordings hold\n"
             "PHI: each viewing is recorded in the audit trail.\n"
             "\n"
             "A PostgreSQL session prints its query timeline: each statement with its time\n"
             "offset, duration and outcome.\n"
             "\n"
             "An SSH session plays its terminal output to standard output with the recorded\n"
             "timing, as the user's terminal showed it. With --no-wait it prints a\n"
             "transcript at once: the output as text, and the other events (channels, pty,\n"
             "exec command lines, typed input when recorded, resizes, exit status, SFTP\n"
             "operations, forwards) as lines like \"[00:00:03.120 ch0 exec] ls -la\" on\n"
             "standard error. Control characters are escaped in both (\\e, \\r, \\x07), so\n"
             "the session's output cannot move the cursor over an event line or hide one.\n"
             "\n"
             "Options:\n"
             "  --from HH:MM:SS        PostgreSQL: start at this offset from the session start\n"
             "                         (also 42m, 90s); seeks by the recording's index\n"
             "  --json                 JSON lines instead of text (an SSH session: the\n"
             "                         raw event list, as `export --format json`)\n"
             "  --speed N              SSH: play N times as fast (default 1)\n"
             "  --idle-limit SECONDS   SSH: no pause longer than SECONDS\n"
             "  --no-wait              SSH: a transcript, at once, with the other events",
     .audited = true,
     .needs_store = true,
     .run = cmd_replay,
     OPTS(opts_replay)},

    {.name = "export",
     .synopsis = "SESSION --format asciicast|json [-o FILE]",
     .summary = "write a session's recording as asciicast or JSON",
     .help = "Write the recording of SESSION in a format other tools read, to FILE\n"
             "(created 0600; it holds what the recording holds) or standard output.\n"
             "Each export is recorded in the audit trail.\n"
             "\n"
             "  asciicast  asciicast v2, the terminal of an SSH session, for `asciinema\n"
             "             play` and asciinema-player: output (\"o\"), typed input (\"i\",\n"
             "             when recorded) and resizes (\"r\"). Bytes that are not UTF-8\n"
             "             show as U+FFFD, as a terminal shows them.\n"
             "  json       every event of any recording, one JSON object per line, with\n"
             "             every field; bytes that are not UTF-8 are written \\xNN and\n"
             "             the field's index is listed in \"escaped\".\n"
             "\n"
             "Options:\n"
             "  --format asciicast|json  the format (required)\n"
             "  -o, --output FILE        write to FILE instead of standard output\n"
             "\n"
             "Example:\n"
             "  sallyport export 0190a1b2 --format asciicast -o session.cast\n"
             "  asciinema play session.cast",
     .audited = true,
     .needs_store = true,
     .run = cmd_export,
     OPTS(opts_export)},

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

    {.name = "audit verify",
     .synopsis = "[FILE...] [--public-key FILE] [--checkpoints SYSLOG] [--json]",
     .summary = "check the audit trail's chain and signed checkpoints",
     .help = "Check the audit trail: every line's link to the line before it (across files),\n"
             "every line's number, and every checkpoint's line count, head and Ed25519\n"
             "signature. Reports the first break: the file, the line, and whether a line\n"
             "was edited, deleted, reordered, the trail cut, or a checkpoint forged.\n"
             "Without FILE, verifies every audit-*.jsonl file in audit_dir. Files are taken\n"
             "per host, in date order. Exit status 1 on any break.\n"
             "\n"
             "Options:\n"
             "  --public-key FILE     the gateway's Ed25519 public key (PEM); default: the\n"
             "                        public half of signing_key_file. Without either,\n"
             "                        signatures are not checked (and the output says so)\n"
             "  --checkpoints SYSLOG  a log holding the checkpoints sent to syslog: each must\n"
             "                        be in the trail, which detects a trail cut after one\n"
             "  --json                one JSON object instead of text\n"
             "\n"
             "Example:\n"
             "  sallyport audit verify --checkpoints /var/log/auth.log",
     .run = cmd_audit_verify,
     OPTS(opts_audit_verify)},
    {.name = "verify",
     .synopsis = "SESSION... | --all [--json] [--public-key FILE]",
     .summary = "check recordings are complete and untampered",
     .help = "Check each recording against its signed trailer, its hash chain and the\n"
             "sessions index, and report one of:\n"
             "  sealed-ok        signed trailer good, every chunk present and in order\n"
             "  unsealed-intact  no trailer (live, or the gateway stopped), every chunk\n"
             "                   present is authentic and as many as the index recorded\n"
             "  missing          in the sessions index, not on disk\n"
             "  tampered         with the first bad chunk and why (altered, missing,\n"
             "                   duplicated or reordered chunks, a cut file)\n"
             "  unsigned         an old format-1 recording: never verifies as ok\n"
             "Integrity needs only the gateway's public key; with the master key readable\n"
             "every chunk is also decrypted. Each check is recorded in the audit trail.\n"
             "Exit status 1 if any recording is not sealed-ok or unsealed-intact.\n"
             "\n"
             "Options:\n"
             "  --all              every session in the index\n"
             "  --public-key FILE  the PEM public key from `sallyport keys show` (default:\n"
             "                     derived from signing_key_file)\n"
             "  --json             one JSON array instead of text",
     .audited = true,
     .needs_store = true,
     .run = cmd_verify,
     OPTS(opts_verify)},

    {.name = "keys init",
     .synopsis = "",
     .summary = "create the recording master key and signing key",
     .help = "Create master_key_file (a 32-byte master key with its id) and\n"
             "signing_key_file (an Ed25519 private key, PEM), each mode 0600, whichever\n"
             "does not exist yet; existing files are checked and kept. The gateway refuses\n"
             "to start without both: every recording is encrypted and signed.",
     .audited = true,
     .needs_store = true,
     .run = cmd_keys_init,
     OPTS(opts_none)},

    {.name = "keys rotate",
     .synopsis = "",
     .summary = "add a new master key and make it current",
     .help = "Append a new master key to master_key_file and make it the current one. Old\n"
             "keys stay in the file so old recordings still open; nothing is re-encrypted.\n"
             "The gateway uses the new key for recordings started after its next start.",
     .audited = true,
     .needs_store = true,
     .run = cmd_keys_rotate,
     OPTS(opts_none)},

    {.name = "keys show",
     .synopsis = "[--json]",
     .summary = "print the signing public key and the master key ids",
     .help = "Print the public half of the signing key (PEM) with its id, for auditors\n"
             "who run `sallyport verify --public-key`, and the ids of the master keys\n"
             "(never the keys).\n"
             "\n"
             "Options:\n"
             "  --json  one JSON object instead of text",
     .needs_store = true,
     .run = cmd_keys_show,
     OPTS(opts_json)},

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
    fprintf(out, "sallyport: a recorded, least-privilege gateway to PostgreSQL databases"
                 " and SSH hosts.\n"
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
