/* Audit events in OCSF 1.8.0 shape: the (class, activity) table, the common fields, and the
 * guard that keeps PHI-bearing fields out of the trail. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "recorder/audit.h"

#define AUDIT_OCSF_VERSION "1.8.0"
#define AUDIT_CODE_MAX 48
#define OCSF_OTHER 99
#define OCSF_SEVERITY_INFORMATIONAL 1
#define OCSF_STATUS_SUCCESS 1
#define OCSF_STATUS_FAILURE 2

/* Activity ids and names as the OCSF 1.8.0 classes define them (schema.ocsf.io). */
static const sp_audit_activity_info activities[SP_AUDIT_N_ACTIVITIES] = {
    [SP_AUDIT_ACCOUNT_CREATE] = {SP_AUDIT_ACCOUNT_CHANGE, 1, "Create"},
    [SP_AUDIT_ACCOUNT_ENABLE] = {SP_AUDIT_ACCOUNT_CHANGE, 2, "Enable"},
    [SP_AUDIT_ACCOUNT_PASSWORD_CHANGE] = {SP_AUDIT_ACCOUNT_CHANGE, 3, "Password Change"},
    [SP_AUDIT_ACCOUNT_DISABLE] = {SP_AUDIT_ACCOUNT_CHANGE, 5, "Disable"},
    [SP_AUDIT_ACCOUNT_DELETE] = {SP_AUDIT_ACCOUNT_CHANGE, 6, "Delete"},
    [SP_AUDIT_ACCOUNT_ISSUE_CREDENTIAL] = {SP_AUDIT_ACCOUNT_CHANGE, OCSF_OTHER, "Issue Credential"},
    [SP_AUDIT_ACCOUNT_REVOKE_CREDENTIAL] = {SP_AUDIT_ACCOUNT_CHANGE, OCSF_OTHER,
                                            "Revoke Credential"},
    [SP_AUDIT_AUTH_LOGON] = {SP_AUDIT_AUTHENTICATION, 1, "Logon"},
    [SP_AUDIT_AUTH_LOGOFF] = {SP_AUDIT_AUTHENTICATION, 2, "Logoff"},
    [SP_AUDIT_SESSION_ASSIGN_PRIVILEGES] = {SP_AUDIT_AUTHORIZE_SESSION, 1, "Assign Privileges"},
    [SP_AUDIT_SESSION_ASSIGN_GROUPS] = {SP_AUDIT_AUTHORIZE_SESSION, 2, "Assign Groups"},
    [SP_AUDIT_ACCESS_ASSIGN_PRIVILEGES] = {SP_AUDIT_USER_ACCESS, 1, "Assign Privileges"},
    [SP_AUDIT_ACCESS_REVOKE_PRIVILEGES] = {SP_AUDIT_USER_ACCESS, 2, "Revoke Privileges"},
    [SP_AUDIT_SSH_OPEN] = {SP_AUDIT_SSH_ACTIVITY, 1, "Open"},
    [SP_AUDIT_SSH_CLOSE] = {SP_AUDIT_SSH_ACTIVITY, 2, "Close"},
    [SP_AUDIT_SSH_RESET] = {SP_AUDIT_SSH_ACTIVITY, 3, "Reset"},
    [SP_AUDIT_SSH_FAIL] = {SP_AUDIT_SSH_ACTIVITY, 4, "Fail"},
    [SP_AUDIT_SSH_REFUSE] = {SP_AUDIT_SSH_ACTIVITY, 5, "Refuse"},
    [SP_AUDIT_SSH_RECORDING_GAP] = {SP_AUDIT_SSH_ACTIVITY, OCSF_OTHER, "Recording Gap"},
    [SP_AUDIT_APP_START] = {SP_AUDIT_APPLICATION_LIFECYCLE, 3, "Start"},
    [SP_AUDIT_APP_STOP] = {SP_AUDIT_APPLICATION_LIFECYCLE, 4, "Stop"},
    [SP_AUDIT_APP_RELOAD] = {SP_AUDIT_APPLICATION_LIFECYCLE, OCSF_OTHER, "Reload Configuration"},
    [SP_AUDIT_APP_CREATE_KEY] = {SP_AUDIT_APPLICATION_LIFECYCLE, OCSF_OTHER, "Create Key"},
    [SP_AUDIT_APP_RECORDING_SEAL] = {SP_AUDIT_APPLICATION_LIFECYCLE, OCSF_OTHER, "Seal Recording"},
    [SP_AUDIT_APP_STORE_OUTAGE] = {SP_AUDIT_APPLICATION_LIFECYCLE, OCSF_OTHER, "Store Outage"},
    [SP_AUDIT_DATASTORE_READ] = {SP_AUDIT_DATASTORE_ACTIVITY, 1, "Read"},
    [SP_AUDIT_DATASTORE_CONNECT] = {SP_AUDIT_DATASTORE_ACTIVITY, 3, "Connect"},
    [SP_AUDIT_DATASTORE_RECORDING_GAP] = {SP_AUDIT_DATASTORE_ACTIVITY, OCSF_OTHER, "Recording Gap"},
    [SP_AUDIT_DATASTORE_EXPORT] = {SP_AUDIT_DATASTORE_ACTIVITY, OCSF_OTHER, "Export"},
    [SP_AUDIT_CHECKPOINT] = {SP_AUDIT_BASE_EVENT, OCSF_OTHER, "Checkpoint"},
};

/* Field names that hold statement text, parameters or terminal data in OCSF or in our own
 * recordings; none belongs in the audit trail, at any depth. */
static const char *const forbidden_fields[] = {
    "query_info",  "query",    "statement", "sql",   "params", "parameters",
    "bind_values", "terminal", "tty_data",  "stdin", "stdout", "raw_data",
};

const sp_audit_activity_info *sp_audit_activity_lookup(enum sp_audit_activity activity)
{
    if ((int)activity < 0 || activity >= SP_AUDIT_N_ACTIVITIES)
        return NULL;
    return &activities[activity];
}

static const char *class_name(enum sp_audit_class cls)
{
    switch (cls) {
    case SP_AUDIT_BASE_EVENT:
        return "Base Event";
    case SP_AUDIT_ACCOUNT_CHANGE:
        return "Account Change";
    case SP_AUDIT_AUTHENTICATION:
        return "Authentication";
    case SP_AUDIT_AUTHORIZE_SESSION:
        return "Authorize Session";
    case SP_AUDIT_USER_ACCESS:
        return "User Access Management";
    case SP_AUDIT_SSH_ACTIVITY:
        return "SSH Activity";
    case SP_AUDIT_APPLICATION_LIFECYCLE:
        return "Application Lifecycle";
    case SP_AUDIT_DATASTORE_ACTIVITY:
        return "Datastore Activity";
    }
    return "Unknown";
}

static const char *category_name(int category_uid)
{
    switch (category_uid) {
    case 0:
        return "Uncategorized";
    case 3:
        return "Identity & Access Management";
    case 4:
        return "Network Activity";
    case 6:
        return "Application Activity";
    }
    return "Unknown";
}

/* RFC 3339 with milliseconds, matching the precision of "time". */
static void format_time_ms(int64_t ms, char *out, size_t outlen)
{
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* Event codes are a fixed vocabulary in the code; this keeps free text (which could carry a
 * statement) from ever reaching the trail through them. */
static bool code_valid(const char *code)
{
    size_t n = code ? strlen(code) : 0;
    if (n == 0 || n > AUDIT_CODE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = code[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

json_t *sp_audit_new(enum sp_audit_activity activity, const char *code, bool success,
                     const char *actor)
{
    static const sp_audit_activity_info unknown = {SP_AUDIT_BASE_EVENT, 0, "Unknown"};
    const sp_audit_activity_info *a = sp_audit_activity_lookup(activity);
    if (!a)
        a = &unknown;
    int64_t ms = sp_now_us() / 1000;
    char dt[80], type_name[128];
    format_time_ms(ms, dt, sizeof(dt));
    snprintf(type_name, sizeof(type_name), "%s: %s", class_name(a->class_uid), a->activity_name);
    int category = (int)a->class_uid / 1000;
    json_t *ev =
        json_pack("{s:I, s:s, s:i, s:s, s:i, s:s, s:i, s:s, s:I, s:s, s:s, s:i, s:i, s:s, "
                  "s:{s:{s:s}}, s:{s:{s:s, s:s}, s:s, s:s}}",
                  "time", (json_int_t)ms, "time_dt", dt, "class_uid", (int)a->class_uid,
                  "class_name", class_name(a->class_uid), "category_uid", category, "category_name",
                  category_name(category), "activity_id", a->activity_id, "activity_name",
                  a->activity_name, "type_uid", (json_int_t)a->class_uid * 100 + a->activity_id,
                  "type_name", type_name, "status", success ? "Success" : "Failure", "status_id",
                  success ? OCSF_STATUS_SUCCESS : OCSF_STATUS_FAILURE, "severity_id",
                  OCSF_SEVERITY_INFORMATIONAL, "severity", "Informational", "actor", "user", "name",
                  actor ? actor : "unknown", "metadata", "product", "name", "sallyport",
                  "vendor_name", "sallyport", "version", AUDIT_OCSF_VERSION, "event_code",
                  code_valid(code) ? code : "invalid-code");
    /* Application Lifecycle requires the application it is about. */
    if (ev && a->class_uid == SP_AUDIT_APPLICATION_LIFECYCLE)
        json_object_set_new(
            ev, "app", json_pack("{s:s, s:s}", "name", "sallyport", "vendor_name", "sallyport"));
    return ev;
}

json_t *sp_audit_user(const char *name, const char *kind)
{
    int type_id = 0;
    const char *type = "Unknown";
    if (kind && strcmp(kind, "service") == 0) {
        type_id = 4;
        type = "Service";
    } else if (kind && strcmp(kind, "human") == 0) {
        type_id = 1;
        type = "User";
    }
    return json_pack("{s:s, s:s, s:i}", "name", name ? name : "unknown", "type", type, "type_id",
                     type_id);
}

void sp_audit_set_unmapped(json_t *event, const char *key, json_t *value)
{
    json_t *unmapped = json_object_get(event, "unmapped");
    if (!json_is_object(unmapped)) {
        unmapped = json_object();
        json_object_set_new(event, "unmapped", unmapped);
    }
    json_object_set_new(unmapped, key, value);
}

static bool field_forbidden(const char *key)
{
    for (size_t i = 0; i < SP_ARRAY_LEN(forbidden_fields); i++) {
        if (strcmp(key, forbidden_fields[i]) == 0)
            return true;
    }
    return false;
}

static size_t strip_value(json_t *v, int depth)
{
    size_t removed = 0;
    if (depth > 32) /* events are shallow; a deeper one is malformed, not worth walking */
        return 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *child;
        void *tmp;
        json_object_foreach_safe(v, tmp, key, child)
        {
            if (field_forbidden(key)) {
                json_object_del(v, key);
                removed++;
            } else {
                removed += strip_value(child, depth + 1);
            }
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) removed += strip_value(child, depth + 1);
    }
    return removed;
}

size_t sp_audit_strip_phi(json_t *event)
{
    return event ? strip_value(event, 0) : 0;
}

int sp_audit_checkpoint_message(const char *file, int64_t lines, const char *head, int64_t time_ms,
                                const char *reason, char *out, size_t outlen)
{
    int n = snprintf(out, outlen,
                     "sallyport audit checkpoint v1\nfile=%s\nlines=%lld\nhead=%s\ntime=%lld\n"
                     "reason=%s\n",
                     file, (long long)lines, head, (long long)time_ms, reason);
    return n < 0 || (size_t)n >= outlen ? -1 : n;
}
