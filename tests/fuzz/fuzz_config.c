/* libFuzzer: sallyport.ini parsing and validation (sp_config_load_string). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 64 * 1024)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[512] = "";
    sp_config *c =
        sp_config_load_string(text, "/nonexistent/sallyport-fuzz/sallyport.ini", err, sizeof(err));
    if (c) {
        for (size_t i = 0; i < c->n_targets; i++)
            if (sp_config_target(c, c->targets[i].name) == NULL)
                abort();
        for (size_t i = 0; i < c->n_roles; i++)
            if (sp_config_role(c, c->roles[i].name) == NULL)
                abort();
        sp_config_unref(c);
    } else if (err[0] == '\0') {
        abort(); /* a refusal must say why */
    }
    free(text);
    return 0;
}
