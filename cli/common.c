#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "common/util.h"

static void vreport(const cli_ctx *ctx, const char *fmt, va_list ap)
{
    fprintf(stderr, "sallyport: %s: ", ctx->command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_fail(const cli_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ctx, fmt, ap);
    va_end(ap);
    return CLI_FAIL;
}

int cli_usage(const cli_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vreport(ctx, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'sallyport %s --help'.\n", ctx->command);
    return CLI_USAGE;
}

static cli_opt *find_opt(cli_args *a, const char *name, size_t len)
{
    for (size_t i = 0; i < a->nopts; i++) {
        if (strlen(a->opts[i].name) == len && strncmp(a->opts[i].name, name, len) == 0)
            return &a->opts[i];
    }
    return NULL;
}

/* -X VALUE, for the options the table gives a short name. */
static int parse_short_option(cli_ctx *ctx, int argc, char **argv, int *i, cli_args *out)
{
    const char *arg = argv[*i];
    for (size_t k = 0; arg[2] == '\0' && k < out->nopts; k++) {
        cli_opt *o = &out->opts[k];
        if (o->short_name == 0 || o->short_name != arg[1])
            continue;
        if (!o->has_value) {
            o->value = "";
            return CLI_OK;
        }
        if (*i + 1 >= argc)
            return cli_usage(ctx, "%s needs a value", arg);
        o->value = argv[++*i];
        return CLI_OK;
    }
    return cli_usage(ctx, "unknown option %s", arg);
}

/* -c/--config and --help are accepted by every command; the rest come from the table. */
static int parse_option(cli_ctx *ctx, int argc, char **argv, int *i, cli_args *out)
{
    const char *arg = argv[*i];
    if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
        out->help = true;
        return CLI_OK;
    }
    if (strcmp(arg, "-c") == 0 || strcmp(arg, "--config") == 0) {
        if (*i + 1 >= argc)
            return cli_usage(ctx, "%s needs a configuration file", arg);
        out->config_path = argv[++*i];
        return CLI_OK;
    }
    if (strncmp(arg, "--config=", 9) == 0) {
        out->config_path = arg + 9;
        return CLI_OK;
    }
    if (strncmp(arg, "--", 2) != 0)
        return parse_short_option(ctx, argc, argv, i, out);
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    cli_opt *o = find_opt(out, name, eq ? (size_t)(eq - name) : strlen(name));
    if (!o)
        return cli_usage(ctx, "unknown option %s", arg);
    if (!o->has_value) {
        if (eq)
            return cli_usage(ctx, "--%s takes no value", o->name);
        o->value = "";
        return CLI_OK;
    }
    if (eq) {
        o->value = eq + 1;
    } else {
        if (*i + 1 >= argc)
            return cli_usage(ctx, "--%s needs a value", o->name);
        o->value = argv[++*i];
    }
    return CLI_OK;
}

int cli_parse(cli_ctx *ctx, int argc, char **argv, cli_args *out)
{
    bool options_done = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (!options_done && strcmp(arg, "--") == 0) {
            options_done = true;
            continue;
        }
        if (!options_done && arg[0] == '-' && arg[1] != '\0') {
            int rc = parse_option(ctx, argc, argv, &i, out);
            if (rc != CLI_OK)
                return rc;
            continue;
        }
        if (out->npos >= CLI_MAX_POSITIONAL)
            return cli_usage(ctx, "too many arguments (at \"%s\")", arg);
        out->pos[out->npos++] = arg;
    }
    if (!out->config_path) {
        const char *env = getenv("SALLYPORT_CONFIG");
        out->config_path = env && *env ? env : SP_DEFAULT_CONFIG;
    }
    return CLI_OK;
}

int cli_need_args(const cli_ctx *ctx, const cli_args *a, int n, const char *what)
{
    if (a->npos < n)
        return cli_usage(ctx, "missing %s", what);
    if (a->npos > n)
        return cli_usage(ctx, "unexpected argument \"%s\"", a->pos[n]);
    return CLI_OK;
}

const char *cli_opt_value(const cli_args *a, const char *name)
{
    for (size_t i = 0; i < a->nopts; i++) {
        if (strcmp(a->opts[i].name, name) == 0)
            return a->opts[i].value;
    }
    return NULL;
}

bool cli_flag(const cli_args *a, const char *name)
{
    return cli_opt_value(a, name) != NULL;
}

void cli_print_help(const cli_command *cmd, FILE *out)
{
    fprintf(out, "Usage: sallyport %s %s\n\n%s\n", cmd->name, cmd->synopsis, cmd->help);
    fprintf(out,
            "\nCommon options:\n"
            "  -c, --config FILE  configuration file (default: $SALLYPORT_CONFIG, else\n"
            "                     %s)\n"
            "  -h, --help         show this help\n",
            SP_DEFAULT_CONFIG);
}

/* The store's directory holds identities and verifiers: owner-only. */
static int ensure_store_dir(const cli_ctx *ctx, const char *store_path)
{
    char copy[1024];
    if (snprintf(copy, sizeof(copy), "%s", store_path) >= (int)sizeof(copy))
        return cli_fail(ctx, "store path %s is too long", store_path);
    const char *dir = dirname(copy);
    struct stat st;
    if (stat(dir, &st) == 0)
        return CLI_OK;
    if (sp_mkdirs(dir, 0700) < 0)
        return cli_fail(ctx, "cannot create the store directory %s: %s", dir, strerror(errno));
    return CLI_OK;
}

int cli_open(cli_ctx *ctx, const cli_args *a)
{
    char err[512];
    ctx->cfg = sp_config_load(a->config_path, err, sizeof(err));
    if (!ctx->cfg)
        return cli_fail(ctx, "%s", err);
    if (ensure_store_dir(ctx, ctx->cfg->store_path) != CLI_OK)
        return CLI_FAIL;
    if (sp_store_open(ctx->cfg->store_path, &ctx->store, err, sizeof(err)) < 0)
        return cli_fail(ctx, "%s", err);
    if (ctx->cmd->audited) {
        /* No audit trail, no change: a change nobody can account for is worse than none. */
        if (sp_audit_open(ctx->cfg->audit_dir, NULL, err, sizeof(err)) < 0)
            return cli_fail(ctx, "cannot open the audit trail in %s: %s", ctx->cfg->audit_dir, err);
        ctx->audit_open = true;
    }
    return CLI_OK;
}

void cli_close(cli_ctx *ctx)
{
    if (ctx->audit_open)
        sp_audit_close();
    ctx->audit_open = false;
    sp_store_close(ctx->store);
    ctx->store = NULL;
    if (ctx->cfg)
        sp_config_unref(ctx->cfg);
    ctx->cfg = NULL;
}

int cli_duration_opt(const cli_ctx *ctx, const cli_args *a, const char *name, int64_t *us,
                     bool *given)
{
    const char *v = cli_opt_value(a, name);
    *given = v != NULL;
    if (!v)
        return CLI_OK;
    int64_t parsed;
    if (sp_parse_duration(v, &parsed) < 0 || parsed <= 0)
        return cli_usage(ctx, "--%s \"%s\" is not a duration (examples: 90s, 15m, 8h, 2d)", name,
                         v);
    *us = parsed;
    return CLI_OK;
}

int cli_reason_opt(const cli_ctx *ctx, const cli_args *a, bool required, const char **reason)
{
    const char *v = cli_opt_value(a, "reason");
    if (required && (!v || !*v))
        return cli_usage(ctx, "--reason TEXT is required: the audit trail records why");
    if (v && strlen(v) > 255)
        return cli_usage(ctx, "--reason is longer than 255 characters");
    *reason = v ? v : "";
    return CLI_OK;
}

void cli_time_short(int64_t us, char *out, size_t outlen)
{
    if (us == 0) {
        snprintf(out, outlen, "-");
        return;
    }
    char full[40];
    sp_format_time(us, full, sizeof(full));
    /* drop the microseconds: ".123456Z" -> "Z" */
    char *dot = strchr(full, '.');
    if (dot)
        snprintf(dot, sizeof(full) - (size_t)(dot - full), "Z");
    snprintf(out, outlen, "%s", full);
}

json_t *cli_time_json(int64_t us)
{
    if (us == 0)
        return json_null();
    char text[40];
    sp_format_time(us, text, sizeof(text));
    return json_string(text);
}

int cli_print_json(const cli_ctx *ctx, json_t *doc)
{
    if (!doc)
        return cli_fail(ctx, "out of memory building JSON output");
    int rc = json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(doc);
    if (rc < 0 || fputc('\n', stdout) == EOF)
        return cli_fail(ctx, "cannot write JSON output: %s", strerror(errno));
    return CLI_OK;
}

json_t *cli_audit_event(enum sp_audit_activity activity, const char *code, bool success)
{
    return sp_audit_new(activity, code, success, CLI_ACTOR);
}
