#include "auth/store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sp_store {
    sqlite3 *db;
    pthread_mutex_t mu;
};

bool sp_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= SP_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

int sp_store_open(const char *path, sp_store **out, char *err, size_t errlen)
{
    sp_store *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&s->mu, NULL);
    int rc = sqlite3_open_v2(
        path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "cannot open store %s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        sp_store_close(s);
        return -1;
    }
    sqlite3_busy_timeout(s->db, 5000);
    char *msg = NULL;
    if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;", NULL, NULL, &msg) !=
        SQLITE_OK) {
        snprintf(err, errlen, "cannot set up store %s: %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sp_store_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void sp_store_close(sp_store *s)
{
    if (!s)
        return;
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

sqlite3 *sp_store_lock(sp_store *s)
{
    pthread_mutex_lock(&s->mu);
    return s->db;
}

void sp_store_unlock(sp_store *s)
{
    pthread_mutex_unlock(&s->mu);
}
