/* Configuration: an SSH target's pinned host key, given inline or read from a file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/config.h"

#define KEY "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOe1o2Tq6cXw0bCq2h8Rr0m3n8e4Z0f7pJqYyW3mQm9v"

typedef struct fixture {
    char dir[64];
    char key_path[128];
    char err[512];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/sp-config-test-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->key_path, sizeof(f->key_path), "%s/host.pub", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    unlink(f->key_path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_key_file(const fixture *f, const char *text)
{
    FILE *fp = fopen(f->key_path, "w");
    assert_non_null(fp);
    assert_int_equal(fputs(text, fp) >= 0, 1);
    assert_int_equal(fclose(fp), 0);
}

/* A configuration with one SSH target whose host key lines are `target_keys`. */
static sp_config *load_with(fixture *f, const char *target_keys)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "[sallyport]\nstore = sqlite:state.db\nrecordings_dir = rec\naudit_dir = audit\n"
             "[target host1]\nkind = ssh\naddress = 127.0.0.1:22\n%s\n",
             target_keys);
    char base[160];
    snprintf(base, sizeof(base), "%s/sallyport.ini", f->dir);
    return sp_config_load_string(text, base, f->err, sizeof(f->err));
}

static const char *host_key_of(const sp_config *c)
{
    return c->targets[0].host_key;
}

static void test_inline_host_key(void **state)
{
    fixture *f = *state;
    sp_config *c = load_with(f, "host_key = " KEY);
    assert_non_null(c);
    assert_string_equal(host_key_of(c), KEY);
    sp_config_unref(c);
}

static void test_host_key_file_pub_form(void **state)
{
    fixture *f = *state;
    write_key_file(f, KEY " root@target\n");
    sp_config *c = load_with(f, "host_key_file = host.pub"); /* relative to the config */
    assert_non_null(c);
    assert_string_equal(host_key_of(c), KEY);
    sp_config_unref(c);
}

static void test_host_key_file_known_hosts_form(void **state)
{
    fixture *f = *state;
    write_key_file(f, "# pinned by config management\n"
                      "@cert-authority *.example ssh-ed25519 AAAAother\n"
                      "[127.0.0.1]:22 " KEY "\n");
    sp_config *c = load_with(f, "host_key_file = host.pub");
    assert_non_null(c);
    assert_string_equal(host_key_of(c), KEY);
    sp_config_unref(c);
}

static void test_host_key_file_errors(void **state)
{
    fixture *f = *state;
    assert_null(load_with(f, "host_key_file = missing.pub"));
    assert_non_null(strstr(f->err, "missing.pub"));
    assert_non_null(strstr(f->err, "No such file"));

    write_key_file(f, "# nothing here\nnot a key\n");
    assert_null(load_with(f, "host_key_file = host.pub"));
    assert_non_null(strstr(f->err, "holds no"));

    write_key_file(f, KEY "\n");
    assert_null(load_with(f, "host_key = " KEY "\nhost_key_file = host.pub"));
    assert_non_null(strstr(f->err, "both host_key and host_key_file"));

    assert_null(load_with(f, ""));
    assert_non_null(strstr(f->err, "needs host_key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_inline_host_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_key_file_pub_form, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_key_file_known_hosts_form, setup, teardown),
        cmocka_unit_test_setup_teardown(test_host_key_file_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
