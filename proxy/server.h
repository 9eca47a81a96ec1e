/* `sallyport serve`: the gateway process. Loads the configuration, opens the store, audit
 * trail and keys, starts `workers` libuv loops accepting on SO_REUSEPORT listeners, reloads
 * on SIGHUP and drains on SIGTERM/SIGINT. Returns the process exit status. */
#ifndef SP_PROXY_SERVER_H
#define SP_PROXY_SERVER_H

int sp_serve(const char *config_path);

#endif
