/* Operator log: one line per event on stderr, `time level [prefix] message`.
 * Never pass secrets or PHI (statement text, parameters, terminal data) to it. */
#ifndef SP_COMMON_LOG_H
#define SP_COMMON_LOG_H

enum sp_log_level { SP_LOG_DEBUG, SP_LOG_INFO, SP_LOG_WARN, SP_LOG_ERROR };

void sp_log_set_level(enum sp_log_level level);
int sp_log_parse_level(const char *s, enum sp_log_level *out);
void sp_log(enum sp_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sp_debug(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)
#define sp_info(...) sp_log(SP_LOG_INFO, __VA_ARGS__)
#define sp_warn(...) sp_log(SP_LOG_WARN, __VA_ARGS__)
#define sp_error(...) sp_log(SP_LOG_ERROR, __VA_ARGS__)

#endif
