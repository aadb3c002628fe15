/*
 * Configuration shared by both daemons' transports: the [tls] and [net] sections of their
 * INI files (keys, defaults, bounds in one place), the allowlist file, and the reconnect
 * backoff. A daemon embeds struct fp_net_cfg in its config struct and puts
 * FP_NET_CFG_KEYS(its struct, member, "server" or "client") into its key table.
 */
#ifndef FP_NETCFG_H
#define FP_NETCFG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "conn.h"
#include "fp_config.h"
#include "frame.h"

struct fp_net_cfg {
	char *cert;	       /* [tls] cert: PEM certificate of this daemon */
	char *key;	       /* [tls] key: its private key */
	char *ca;	       /* [tls] ca: the federation CA */
	bool insecure;	       /* [tls] insecure: plaintext, no authentication (dev only) */
	uint64_t max_frame;    /* [net] max_frame */
	uint64_t handshake_ms; /* [net] handshake_timeout */
	uint64_t idle_ms;      /* [net] idle_timeout */
	uint64_t msg_ms;       /* [net] message_deadline */
	uint64_t heartbeat_ms; /* [net] heartbeat */
	uint64_t wq_high;      /* [net] write_high_water */
	uint64_t wq_low;       /* [net] write_low_water */
};

/* One key per line reads better than what the formatter makes of this macro. */
/* clang-format off */
#define FP_NET_CFG_KEYS(T, m, role)                                                               \
	{ "tls", "cert", FP_CFG_STR, offsetof(T, m.cert), .def = FP_SYSCONFDIR "/tls/" role ".crt", \
	  .max = 4096, .help = "PEM certificate of this " role " (signed by the federation CA)" },  \
	{ "tls", "key", FP_CFG_STR, offsetof(T, m.key), .def = FP_SYSCONFDIR "/tls/" role ".key",   \
	  .max = 4096, .help = "PEM private key of the certificate (mode 0600)" },                  \
	{ "tls", "ca", FP_CFG_STR, offsetof(T, m.ca), .def = FP_SYSCONFDIR "/tls/ca.crt",           \
	  .max = 4096, .help = "PEM certificate of the federation CA that signs every peer" },      \
	{ "tls", "insecure", FP_CFG_BOOL, offsetof(T, m.insecure), .def = "false",                  \
	  .help = "plaintext without authentication, for development; also needs --insecure" },     \
	{ "net", "max_frame", FP_CFG_SIZE, offsetof(T, m.max_frame), .def = "4MiB",                 \
	  .min = FP_FRAME_MAX_MIN, .max = FP_FRAME_MAX_LIMIT,                                       \
	  .help = "largest message accepted; longer frames close the connection" },                 \
	{ "net", "handshake_timeout", FP_CFG_MSEC, offsetof(T, m.handshake_ms), .def = "10s",       \
	  .min = 100, .max = 600000, .help = "TCP + TLS + Hello/Welcome must finish within this" },  \
	{ "net", "idle_timeout", FP_CFG_MSEC, offsetof(T, m.idle_ms), .def = "90s", .min = 100,     \
	  .max = 86400000, .help = "a peer silent for this long is dropped" },                      \
	{ "net", "message_deadline", FP_CFG_MSEC, offsetof(T, m.msg_ms), .def = "60s",              \
	  .min = 100, .max = 3600000,                                                               \
	  .help = "a message, once its first byte arrived, must be complete within this" },         \
	{ "net", "heartbeat", FP_CFG_MSEC, offsetof(T, m.heartbeat_ms), .def = "30s", .min = 10,     \
	  .max = 3600000, .help = "heartbeat interval (the server's value is sent to clients)" },   \
	{ "net", "write_high_water", FP_CFG_SIZE, offsetof(T, m.wq_high), .def = "1MiB",            \
	  .min = 4096, .max = 1u << 30,                                                             \
	  .help = "uploads pause while this much is queued for the socket" },                       \
	{ "net", "write_low_water", FP_CFG_SIZE, offsetof(T, m.wq_low), .def = "256KiB", .min = 0,  \
	  .max = 1u << 30, .help = "uploads resume when the queue has fallen to this" }
/* clang-format on */

/*
 * Check what the table cannot: low water below high water, idle timeout longer than the
 * heartbeat. Returns 0 or -EINVAL with a detail naming the keys.
 */
int fp_net_cfg_check(const struct fp_net_cfg *n);

/* Fill connection options from the configuration. */
void fp_net_conn_opts(const struct fp_net_cfg *n, struct fp_conn_opts *o);

/*
 * Decide whether insecure mode is on: it needs both the --insecure flag and [tls] insecure =
 * true. Returns 1 (insecure), 0 (TLS), or -EINVAL with a detail when only one is given.
 */
int fp_net_insecure(const struct fp_net_cfg *n, bool flag);

struct fp_allowlist {
	char **ids; /* (n) sorted, owned */
	size_t n;
};

/*
 * Load an allowlist file: one identity per line; blank lines and lines starting with '#'
 * are ignored; surrounding spaces are trimmed. Any other line that is not a valid identity
 * is an error naming the file and line. Returns 0 or -errno (detail set); free with
 * fp_allowlist_free.
 */
int fp_allowlist_load(const char *path, struct fp_allowlist *a);

/* As fp_allowlist_load, from text (len bytes); name is used in messages. */
int fp_allowlist_parse(const char *name, const char *text, size_t len, struct fp_allowlist *a);

/* True if id is in a. */
bool fp_allowlist_has(const struct fp_allowlist *a, const char *id);

void fp_allowlist_free(struct fp_allowlist *a);

/*
 * Reconnect delay with exponential backoff and full jitter: a value in [0, min(cap, base *
 * 2^attempt)] chosen by rnd (a uniformly random 64-bit number). attempt counts from 0.
 */
uint64_t fp_backoff_ms(uint64_t base_ms, uint64_t cap_ms, unsigned attempt, uint64_t rnd);

#endif
