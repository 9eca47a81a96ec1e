/* Worker lifecycle, for the server only. */
#ifndef SP_PROXY_WORKER_INTERNAL_H
#define SP_PROXY_WORKER_INTERNAL_H

#include "proxy/worker.h"

int sp_worker_init(sp_worker *w, struct sp_gateway *g, int index, const sp_config *cfg, char *err,
                   size_t errlen);
int sp_worker_start(sp_worker *w);
/* After SP_WMSG_STOP was posted: waits for the loop to finish and frees it. */
void sp_worker_join(sp_worker *w);

#endif
