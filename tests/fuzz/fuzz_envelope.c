/*
 * Fuzz the server's dispatch: the input is the plaintext a client sends after the TLS
 * handshake, fed to a socket-less server connection (fp_srv_attach_virtual) in pieces. It runs
 * through framing, decoding, validation, the Hello/Welcome state machine, heartbeats, chunked
 * uploads with digests, commits, upload queries and errors. Byte 0: bit 0 sends a valid Hello
 * first, the rest seeds the split sizes. Every run ends with a clean server stop and
 * uv_loop_close() == 0 (anything else aborts).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "frame.h"
#include "log.h"
#include "srv.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int discard(void *ud, const uint8_t *p, size_t n)
{
	(void)ud;
	(void)p;
	(void)n;
	return 0;
}

static void done(struct fp_srv *srv, void *ud)
{
	(void)srv;
	*(int *)ud = 1;
}

/* A Hello frame from "fuzzer", protocol version 1. */
static const uint8_t hello[] = { 0,   0,   0,	16,  0x08, 0x01, 0x52, 0x0c, 0x0a, 0x06,
				 'f', 'u', 'z', 'z', 'e',  'r',	 0x10, 0x01, 0x40, 0x05 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fp_srv_cfg cfg = { 0 };
	struct fp_srv *srv = NULL;
	struct fp_conn *c = NULL;
	uv_loop_t loop;
	int stopped = 0;
	uint32_t rng;
	size_t pos = 1;

	if (size < 1)
		return 0;
	fp_log_set_level(FP_LOG_OFF);
	if (uv_loop_init(&loop) != 0)
		abort();
	cfg.conn.max_frame = 64u << 10;
	cfg.chunk_bytes = 4096;
	cfg.max_upload = 1u << 20;
	if (fp_srv_start(&loop, &cfg, NULL, &srv) != 0)
		abort();
	if (fp_srv_attach_virtual(srv, NULL, discard, NULL, &c) != 0)
		abort();
	if (data[0] & 1)
		fp_conn_inject(c, hello, sizeof(hello));
	rng = data[0] * 2654435761u + 7;
	while (pos < size) {
		size_t piece;

		rng = rng * 1103515245u + 12345u;
		piece = 1 + (rng >> 16) % 301;
		if (piece > size - pos)
			piece = size - pos;
		if (fp_conn_inject(c, data + pos, piece) != 0)
			break; /* the server closed the connection */
		pos += piece;
	}
	fp_srv_stop(srv, done, &stopped);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (!stopped || uv_loop_close(&loop) != 0)
		abort();
	return 0;
}
