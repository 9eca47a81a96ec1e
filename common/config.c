#include "common/config.h"

#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

typedef struct parse_ctx {
    sp_config *c;
    char *err;
    size_t errlen;
    const char *file;
    int line_err; /* first error already reported */
    char msg[512];
} parse_ctx;

/* inih as Debian builds it gives handlers no line number; it returns the line of the first
 * entry a handler refused, and load() puts it in front of the message kept here. */
static int fail(parse_ctx *p, int line, const char *fmt, const char *a, const char *b)
{
    (void)line;
    if (!p->line_err) {
        snprintf(p->msg, sizeof(p->msg), fmt, a, b);
        p->line_err = 1;
    }
    return 0;
}

static char *path_value(parse_ctx *p, const char *v)
{
    return sp_path_relative_to(p->c->path, v);
}

static int set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    return *dst != NULL;
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
        *out = true;
    else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
        *out = false;
    else
        return -1;
    return 0;
}

static int parse_hostport(const char *v, char **host, int *port)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v)
        return -1;
    char *end;
    long pn = strtol(colon + 1, &end, 10);
    if (*end || pn < 0 || pn > 65535 || end == colon + 1)
        return -1;
    const char *h = v;
    size_t hl = (size_t)(colon - v);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') { /* [::1]:5433 */
        h++;
        hl -= 2;
    }
    free(*host);
    *host = strndup(h, hl);
    *port = (int)pn;
    return *host ? 0 : -1;
}

static int parse_size(const char *v, size_t *out)
{
    char *end;
    unsigned long long n = strtoull(v, &end, 10);
    if (end == v)
        return -1;
    if (!strcmp(end, "k") || !strcmp(end, "K") || !strcmp(end, "KiB"))
        n *= 1024;
    else if (!strcmp(end, "M") || !strcmp(end, "MiB"))
        n *= 1024 * 1024;
    else if (*end)
        return -1;
    *out = (size_t)n;
    return 0;
}

static sp_target *section_target(parse_ctx *p, const char *name)
{
    sp_config *c = p->c;
    for (size_t i = 0; i < c->n_targets; i++)
        if (!strcmp(c->targets[i].name, name))
            return &c->targets[i];
    sp_target *t = realloc(c->targets, (c->n_targets + 1) * sizeof(*t));
    if (!t)
        return NULL;
    c->targets = t;
    t = &c->targets[c->n_targets++];
    memset(t, 0, sizeof(*t));
    t->name = strdup(name);
    t->kind = SP_TARGET_POSTGRES;
    t->upstream_tls = SP_UTLS_VERIFY_FULL;
    t->connect_timeout = 10 * 1000000LL;
    return t;
}

static sp_role *section_role(parse_ctx *p, const char *name)
{
    sp_config *c = p->c;
    for (size_t i = 0; i < c->n_roles; i++)
        if (!strcmp(c->roles[i].name, name))
            return &c->roles[i];
    sp_role *r = realloc(c->roles, (c->n_roles + 1) * sizeof(*r));
    if (!r)
        return NULL;
    c->roles = r;
    r = &c->roles[c->n_roles++];
    memset(r, 0, sizeof(*r));
    r->name = strdup(name);
    r->max_ttl = 8 * 3600 * 1000000LL;
    r->recording = SP_REC_STRICT;
    return r;
}

static int set_list(char ***dst, const char *v)
{
    free(*dst);
    *dst = sp_split_list(v, NULL);
    return *dst != NULL;
}

static int on_main(parse_ctx *p, int line, const char *k, const char *v)
{
    sp_config *c = p->c;
    int64_t d;
    if (!strcmp(k, "pg_listen")) {
        if (parse_hostport(v, &c->pg_listen_host, &c->pg_listen_port) < 0)
            return fail(p, line, "pg_listen: expected host:port, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "ssh_listen")) {
        if (parse_hostport(v, &c->ssh_listen_host, &c->ssh_listen_port) < 0)
            return fail(p, line, "ssh_listen: expected host:port, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "ssh_host_key")) {
        free(c->ssh_host_key);
        c->ssh_host_key = path_value(p, v);
    } else if (!strcmp(k, "ssh_user_ca_key")) {
        free(c->ssh_user_ca_key);
        c->ssh_user_ca_key = path_value(p, v);
    } else if (!strcmp(k, "ssh_target_ca_key")) {
        free(c->ssh_target_ca_key);
        c->ssh_target_ca_key = path_value(p, v);
    } else if (!strcmp(k, "ssh_banner")) {
        set_str(&c->ssh_banner, v);
    } else if (!strcmp(k, "ssh_keepalive")) {
        if (sp_parse_duration(v, &c->ssh_keepalive) < 0)
            return fail(p, line, "ssh_keepalive: expected a duration like 30s, got \"%s\"%s", v,
                        "");
    } else if (!strcmp(k, "tls_cert")) {
        free(c->tls_cert);
        c->tls_cert = path_value(p, v);
    } else if (!strcmp(k, "tls_key")) {
        free(c->tls_key);
        c->tls_key = path_value(p, v);
    } else if (!strcmp(k, "workers")) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 0 || n > 256)
            return fail(p, line, "workers: expected 0..256, got \"%s\"%s", v, "");
        c->workers = (int)n;
    } else if (!strcmp(k, "store")) {
        if (strncmp(v, "sqlite:", 7) != 0)
            return fail(p, line, "store: only sqlite:PATH is supported, got \"%s\"%s", v, "");
        set_str(&c->store, v);
        free(c->store_path);
        c->store_path = path_value(p, v + 7);
    } else if (!strcmp(k, "recordings_dir")) {
        free(c->recordings_dir);
        c->recordings_dir = path_value(p, v);
    } else if (!strcmp(k, "audit_dir")) {
        free(c->audit_dir);
        c->audit_dir = path_value(p, v);
    } else if (!strcmp(k, "signing_key_file")) {
        free(c->signing_key_file);
        c->signing_key_file = path_value(p, v);
    } else if (!strcmp(k, "audit_fsync")) {
        if (!strcmp(v, "line"))
            c->audit_fsync = SP_AUDIT_FSYNC_LINE;
        else if (!strcmp(v, "batch"))
            c->audit_fsync = SP_AUDIT_FSYNC_BATCH;
        else
            return fail(p, line, "audit_fsync: expected line or batch, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "gateway_secret_file")) {
        free(c->gateway_secret_file);
        c->gateway_secret_file = path_value(p, v);
    } else if (!strcmp(k, "master_key_file")) {
        free(c->master_key_file);
        c->master_key_file = path_value(p, v);
    } else if (!strcmp(k, "flush_interval") || !strcmp(k, "handshake_timeout") ||
               !strcmp(k, "drain_timeout") || !strcmp(k, "lease_idle") ||
               !strcmp(k, "default_cred_ttl") || !strcmp(k, "store_outage_grace") ||
               !strcmp(k, "audit_batch") || !strcmp(k, "audit_checkpoint_interval")) {
        if (sp_parse_duration(v, &d) < 0 || d <= 0)
            return fail(p, line, "%s: expected a duration like 30s, 15m, 8h, got \"%s\"", k, v);
        if (!strcmp(k, "flush_interval"))
            c->flush_interval = d;
        else if (!strcmp(k, "handshake_timeout"))
            c->handshake_timeout = d;
        else if (!strcmp(k, "drain_timeout"))
            c->drain_timeout = d;
        else if (!strcmp(k, "lease_idle"))
            c->lease_idle = d;
        else if (!strcmp(k, "default_cred_ttl"))
            c->default_cred_ttl = d;
        else if (!strcmp(k, "audit_batch"))
            c->audit_batch = d;
        else if (!strcmp(k, "audit_checkpoint_interval"))
            c->audit_checkpoint_interval = d;
        else
            c->store_outage_grace = d;
    } else if (!strcmp(k, "max_client_conn")) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*end || n < 1 || n > 1000000)
            return fail(p, line, "max_client_conn: expected 1..1000000, got \"%s\"%s", v, "");
        c->max_client_conn = (int)n;
    } else if (!strcmp(k, "session_notice")) {
        set_str(&c->session_notice, v);
    } else if (!strcmp(k, "managed_group")) {
        set_str(&c->managed_group, v);
    } else if (!strcmp(k, "max_message_size") || !strcmp(k, "record_max_text")) {
        size_t n;
        if (parse_size(v, &n) < 0 || n < 1024)
            return fail(p, line, "%s: expected a size of at least 1024 (e.g. 64k, 1M), got \"%s\"",
                        k, v);
        if (!strcmp(k, "max_message_size"))
            c->max_message_size = n;
        else
            c->record_max_text = n;
    } else if (!strcmp(k, "log_level")) {
        if (strcmp(v, "debug") && strcmp(v, "info") && strcmp(v, "warn") && strcmp(v, "error"))
            return fail(p, line, "log_level: expected debug|info|warn|error, got \"%s\"%s", v, "");
        set_str(&c->log_level, v);
    } else {
        return fail(p, line, "unknown key \"%s\" in [sallyport]%s", k, "");
    }
    return 1;
}

static int on_target(parse_ctx *p, int line, sp_target *t, const char *k, const char *v)
{
    if (!strcmp(k, "kind")) {
        if (!strcmp(v, "postgres"))
            t->kind = SP_TARGET_POSTGRES;
        else if (!strcmp(v, "ssh"))
            t->kind = SP_TARGET_SSH;
        else if (!strcmp(v, "tls"))
            t->kind = SP_TARGET_TLS;
        else
            return fail(p, line, "kind: expected postgres|ssh|tls, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "address")) {
        if (parse_hostport(v, &t->host, &t->port) < 0 || t->port == 0)
            return fail(p, line, "address: expected host:port, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "database")) {
        set_str(&t->database, v);
    } else if (!strcmp(k, "upstream_tls")) {
        static const char *const names[] = {"verify-full", "verify-ca", "require", "disable"};
        size_t i;
        for (i = 0; i < SP_ARRAY_LEN(names); i++)
            if (!strcmp(v, names[i]))
                break;
        if (i == SP_ARRAY_LEN(names))
            return fail(
                p, line,
                "upstream_tls: expected verify-full|verify-ca|require|disable, got \"%s\"%s", v,
                "");
        t->upstream_tls = (enum sp_upstream_tls)i;
    } else if (!strcmp(k, "upstream_ca")) {
        free(t->upstream_ca);
        t->upstream_ca = path_value(p, v);
    } else if (!strcmp(k, "upstream_cert")) {
        free(t->upstream_cert);
        t->upstream_cert = path_value(p, v);
    } else if (!strcmp(k, "upstream_key")) {
        free(t->upstream_key);
        t->upstream_key = path_value(p, v);
    } else if (!strcmp(k, "admin_dsn_file")) {
        free(t->admin_dsn_file);
        t->admin_dsn_file = path_value(p, v);
    } else if (!strcmp(k, "reassign_owner")) {
        set_str(&t->reassign_owner, v);
    } else if (!strcmp(k, "host_key")) {
        set_str(&t->host_key, v);
    } else if (!strcmp(k, "host_key_file")) {
        free(t->host_key_file);
        t->host_key_file = path_value(p, v);
    } else if (!strcmp(k, "connect_timeout")) {
        if (sp_parse_duration(v, &t->connect_timeout) < 0 || t->connect_timeout <= 0)
            return fail(p, line, "connect_timeout: expected a duration, got \"%s\"%s", v, "");
    } else {
        return fail(p, line, "unknown key \"%s\" in [target %s]", k, t->name);
    }
    return 1;
}

static int on_role(parse_ctx *p, int line, sp_role *r, const char *k, const char *v)
{
    if (!strcmp(k, "targets")) {
        set_list(&r->targets, v);
    } else if (!strcmp(k, "databases")) {
        set_list(&r->databases, v);
    } else if (!strcmp(k, "db_roles")) {
        set_list(&r->db_roles, v);
    } else if (!strcmp(k, "max_ttl") || !strcmp(k, "idle_timeout")) {
        int64_t d;
        if (sp_parse_duration(v, &d) < 0)
            return fail(p, line, "%s: expected a duration like 30s, 15m, 8h, got \"%s\"", k, v);
        if (!strcmp(k, "max_ttl"))
            r->max_ttl = d;
        else
            r->idle_timeout = d;
    } else if (!strcmp(k, "record_params")) {
        if (parse_bool(v, &r->record_params) < 0)
            return fail(p, line, "record_params: expected yes|no, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "logins")) {
        set_list(&r->logins, v);
    } else if (!strcmp(k, "env")) {
        set_list(&r->env, v);
    } else if (!strcmp(k, "record_input")) {
        if (parse_bool(v, &r->record_input) < 0)
            return fail(p, line, "record_input: expected yes|no, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "forwarding")) {
        if (!strcmp(v, "none"))
            r->forwarding = SP_FWD_NONE;
        else if (!strcmp(v, "local"))
            r->forwarding = SP_FWD_LOCAL;
        else if (!strcmp(v, "agent"))
            r->forwarding = SP_FWD_AGENT;
        else
            return fail(p, line, "forwarding: expected none|local|agent, got \"%s\"%s", v, "");
    } else if (!strcmp(k, "recording")) {
        if (!strcmp(v, "strict"))
            r->recording = SP_REC_STRICT;
        else if (!strcmp(v, "best_effort"))
            r->recording = SP_REC_BEST_EFFORT;
        else
            return fail(p, line, "recording: expected strict|best_effort, got \"%s\"%s", v, "");
    } else {
        return fail(p, line, "unknown key \"%s\" in [role %s]", k, r->name);
    }
    return 1;
}

static int on_entry(void *user, const char *section, const char *k, const char *v)
{
    const int line = 0;
    parse_ctx *p = user;
    if (p->line_err)
        return 0;
    if (!k) /* a section header alone (inih INI_CALL_HANDLER_ON_NEW_SECTION) */
        return 1;
    if (!strcmp(section, "sallyport"))
        return on_main(p, line, k, v);
    if (!strncmp(section, "target ", 7) && section[7]) {
        sp_target *t = section_target(p, section + 7);
        return t ? on_target(p, line, t, k, v) : fail(p, line, "out of memory%s%s", "", "");
    }
    if (!strncmp(section, "role ", 5) && section[5]) {
        sp_role *r = section_role(p, section + 5);
        return r ? on_role(p, line, r, k, v) : fail(p, line, "out of memory%s%s", "", "");
    }
    return fail(p, line, "unknown section [%s] (expected [sallyport], [target NAME], [role NAME])",
                section, "");
}

static void set_defaults(sp_config *c)
{
    c->flush_interval = 1000000;
    c->audit_fsync = SP_AUDIT_FSYNC_LINE;
    c->audit_batch = 100 * 1000;
    c->audit_checkpoint_interval = 5 * 60 * 1000000LL;
    c->max_client_conn = 1000;
    c->handshake_timeout = 10 * 1000000LL;
    c->drain_timeout = 30 * 1000000LL;
    c->lease_idle = 10 * 60 * 1000000LL;
    c->default_cred_ttl = 15 * 60 * 1000000LL;
    c->max_message_size = 1024 * 1024;
    c->record_max_text = 64 * 1024;
    c->store_outage_grace = 5 * 60 * 1000000LL;
    c->session_notice = strdup("this session is recorded by sallyport; access is monitored");
    c->managed_group = strdup("sallyport_managed");
    c->log_level = strdup("info");
    c->ssh_banner = strdup("Access to this system is monitored and recorded by sallyport.\n");
    c->ssh_keepalive = 30 * 1000000LL;
    atomic_init(&c->refs, 1);
}

static bool is_key_type(const char *f)
{
    return !strncmp(f, "ssh-", 4) || !strncmp(f, "ecdsa-", 6) || !strncmp(f, "sk-", 3);
}

/* The pinned host key from a file: the first line that holds "TYPE BASE64", either alone
 * (an ssh-keygen .pub file) or after host names (a known_hosts line; marker lines such as
 * @cert-authority are skipped: this pins one key). A public key, so no owner-only check;
 * read bounded, since a key line is short. */
static int load_host_key_file(sp_config *c, sp_target *t, char *err, size_t errlen)
{
    if (t->host_key) {
        snprintf(err, errlen, "%s: [target %s] has both host_key and host_key_file; keep one",
                 c->path, t->name);
        return -1;
    }
    FILE *f = fopen(t->host_key_file, "r");
    if (!f) {
        snprintf(err, errlen, "%s: [target %s] host_key_file %s: %s", c->path, t->name,
                 t->host_key_file, strerror(errno));
        return -1;
    }
    char line[8192];
    bool oom = false;
    while (!t->host_key && !oom && fgets(line, sizeof line, f)) {
        char *save = NULL, *fields[3] = {0};
        size_t n = 0;
        for (char *tok = strtok_r(line, " \t\r\n", &save); tok && n < 3;
             tok = strtok_r(NULL, " \t\r\n", &save))
            fields[n++] = tok;
        if (n == 0 || fields[0][0] == '#' || fields[0][0] == '@')
            continue;
        size_t at = is_key_type(fields[0]) ? 0 : 1;
        if (n < at + 2 || !is_key_type(fields[at]))
            continue;
        char joined[sizeof line + 1];
        snprintf(joined, sizeof joined, "%s %s", fields[at], fields[at + 1]);
        oom = !set_str(&t->host_key, joined);
    }
    fclose(f);
    if (!t->host_key) {
        snprintf(err, errlen, "%s: [target %s] host_key_file %s holds no \"TYPE BASE64\" key line",
                 c->path, t->name, t->host_key_file);
        return -1;
    }
    return 0;
}

static int validate(sp_config *c, char *err, size_t errlen)
{
    if (!c->store_path) {
        snprintf(err, errlen, "%s: [sallyport] store is required (e.g. store = sqlite:state.db)",
                 c->path);
        return -1;
    }
    if (!c->recordings_dir || !c->audit_dir) {
        snprintf(err, errlen, "%s: [sallyport] recordings_dir and audit_dir are required", c->path);
        return -1;
    }
    if (c->ssh_listen_port && (!c->ssh_host_key || !c->ssh_target_ca_key)) {
        snprintf(err, errlen, "%s: ssh_listen needs ssh_host_key and ssh_target_ca_key", c->path);
        return -1;
    }
    if (c->pg_listen_port && (!c->tls_cert || !c->tls_key)) {
        snprintf(err, errlen, "%s: pg_listen needs tls_cert and tls_key (TLS is required)",
                 c->path);
        return -1;
    }
    for (size_t i = 0; i < c->n_targets; i++) {
        sp_target *t = &c->targets[i];
        if (!t->host) {
            snprintf(err, errlen, "%s: [target %s] needs address = host:port", c->path, t->name);
            return -1;
        }
        if (!t->upstream_cert != !t->upstream_key) {
            snprintf(err, errlen, "%s: [target %s] upstream_cert and upstream_key go together",
                     c->path, t->name);
            return -1;
        }
        if (t->upstream_cert && t->upstream_tls == SP_UTLS_DISABLE) {
            snprintf(err, errlen,
                     "%s: [target %s] upstream_cert needs upstream_tls other than "
                     "disable",
                     c->path, t->name);
            return -1;
        }
        if (t->host_key_file && load_host_key_file(c, t, err, errlen) < 0)
            return -1;
        if (t->kind == SP_TARGET_SSH && !t->host_key) {
            snprintf(
                err, errlen,
                "%s: [target %s] needs host_key = the target's host public key, or host_key_file "
                "(ssh-keyscan it, check it, paste the line)",
                c->path, t->name);
            return -1;
        }
        if (t->kind == SP_TARGET_POSTGRES && !t->database) {
            snprintf(err, errlen, "%s: [target %s] needs database = NAME (its default)", c->path,
                     t->name);
            return -1;
        }
    }
    for (size_t i = 0; i < c->n_roles; i++) {
        sp_role *r = &c->roles[i];
        if (!r->targets || !r->targets[0]) {
            snprintf(err, errlen, "%s: [role %s] needs targets = NAME[, NAME...]", c->path,
                     r->name);
            return -1;
        }
        for (char **t = r->targets; *t; t++) {
            if (!sp_config_target(c, *t)) {
                snprintf(err, errlen, "%s: [role %s] names target \"%s\", which has no [target]",
                         c->path, r->name, *t);
                return -1;
            }
        }
        if (!r->databases)
            r->databases = sp_split_list("", NULL);
        if (!r->db_roles)
            r->db_roles = sp_split_list("", NULL);
        if (!r->logins)
            r->logins = sp_split_list("", NULL);
        if (!r->env)
            r->env = sp_split_list("", NULL);
    }
    return 0;
}

static sp_config *load(const char *path, const char *text, char *err, size_t errlen)
{
    sp_config *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    set_defaults(c);
    c->path = strdup(path);
    parse_ctx p = {.c = c, .err = err, .errlen = errlen, .file = path};
    int rc;
    if (text) {
        rc = ini_parse_string(text, on_entry, &p);
    } else {
        FILE *f = fopen(path, "r");
        if (!f) {
            snprintf(err, errlen, "cannot open configuration %s: %m", path);
            sp_config_unref(c);
            return NULL;
        }
        rc = ini_parse_file(f, on_entry, &p);
        fclose(f);
    }
    if (rc != 0 || p.line_err) {
        if (p.line_err)
            snprintf(err, errlen, "%s:%d: %s", path, rc, p.msg);
        else
            snprintf(err, errlen, "%s:%d: syntax error", path, rc);
        sp_config_unref(c);
        return NULL;
    }
    if (validate(c, err, errlen) < 0) {
        sp_config_unref(c);
        return NULL;
    }
    return c;
}

sp_config *sp_config_load(const char *path, char *errbuf, size_t errlen)
{
    return load(path, NULL, errbuf, errlen);
}

sp_config *sp_config_load_string(const char *text, const char *base_path, char *errbuf,
                                 size_t errlen)
{
    return load(base_path, text, errbuf, errlen);
}

void sp_config_ref(sp_config *c)
{
    atomic_fetch_add(&c->refs, 1);
}

void sp_config_unref(sp_config *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (size_t i = 0; i < c->n_targets; i++) {
        sp_target *t = &c->targets[i];
        free(t->name);
        free(t->host);
        free(t->database);
        free(t->upstream_ca);
        free(t->upstream_cert);
        free(t->upstream_key);
        free(t->admin_dsn_file);
        free(t->reassign_owner);
        free(t->host_key);
        free(t->host_key_file);
    }
    for (size_t i = 0; i < c->n_roles; i++) {
        sp_role *r = &c->roles[i];
        free(r->name);
        free(r->targets);
        free(r->databases);
        free(r->db_roles);
        free(r->logins);
        free(r->env);
    }
    free(c->targets);
    free(c->roles);
    free(c->path);
    free(c->pg_listen_host);
    free(c->ssh_listen_host);
    free(c->ssh_host_key);
    free(c->ssh_user_ca_key);
    free(c->ssh_target_ca_key);
    free(c->ssh_banner);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->store);
    free(c->store_path);
    free(c->recordings_dir);
    free(c->audit_dir);
    free(c->signing_key_file);
    free(c->gateway_secret_file);
    free(c->master_key_file);
    free(c->session_notice);
    free(c->managed_group);
    free(c->log_level);
    free(c);
}

const sp_target *sp_config_target(const sp_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_targets; i++)
        if (!strcmp(c->targets[i].name, name))
            return &c->targets[i];
    return NULL;
}

const sp_role *sp_config_role(const sp_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_roles; i++)
        if (!strcmp(c->roles[i].name, name))
            return &c->roles[i];
    return NULL;
}
