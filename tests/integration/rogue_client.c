/*
 * A misbehaving client for the round tests: it connects like fedprune-client (mTLS, Hello),
 * waits for the RoundSpec and then submits the tensors of a mask file given on the command
 * line, whatever the specification says (e.g. a mask of the wrong density), and prints the
 * server's answer:
 *   receipt accepted=<0|1> reason=<text>     the Receipt of the Commit
 *   error code=<CODE> message=<text>          each Error the server sent
 * Exit status: 0 when the submission was accepted, 3 when refused, 1 on any other failure.
 *
 * Usage: rogue_client HOST PORT CA CERT KEY MASKFILE [--lie-digest]
 *
 * --lie-digest: declare a wrong digest for the first tensor (its bytes are the file's).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "envelope.h"
#include "err.h"
#include "link.h"
#include "mask.h"
#include "tls.h"
#include "upload.h"

struct rogue {
	struct fp_link *link;
	struct fp_mask_reader *mr;
	int fd;
	size_t n;
	struct fp_tensor_src *src; /* (n) */
	uint64_t (*shape)[2];	   /* (n) */
	uint8_t (*digest)[32];	   /* (n) */
	bool uploading;
	Fedprune__Commit extra; /* tokens and seconds of the Commit */
	int status;		/* exit status */
};

static struct rogue rogue;

static int read_tensor(void *ud, uint64_t off, uint8_t *buf, size_t len)
{
	const struct fp_mask_info *in = ud;

	if (pread(rogue.fd, buf, len, (off_t)(in->offset + off)) != (ssize_t)len)
		return -EIO;
	return 0;
}

static void stopped(struct fp_link *l, void *ud)
{
	(void)l;
	(void)ud;
}

static void uploaded(struct fp_link *l, int status, const char *reason, const Fedprune__Receipt *rc,
		     void *ud)
{
	(void)ud;
	printf("receipt accepted=%d reason=%s\n", rc ? rc->accepted : 0,
	       rc ? rc->reason : (reason ? reason : fp_strerror(status)));
	fflush(stdout);
	rogue.status = status == 0 && rc && rc->accepted ? 0 : (rc ? 3 : 1);
	fp_link_stop(l, stopped, NULL);
}

static void on_msg(struct fp_link *l, const Fedprune__Envelope *e)
{
	if (e->msg_case == FEDPRUNE__ENVELOPE__MSG_ERROR) {
		printf("error code=%s message=%s\n", fp_error_code_name(e->error->code),
		       e->error->message);
		fflush(stdout);
		return;
	}
	if (e->msg_case != FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC || rogue.uploading)
		return;
	rogue.uploading = true;
	rogue.extra.tokens = 1024;
	rogue.extra.seconds = 1.0;
	if (fp_link_upload(l, e->round_spec->round_id, rogue.src, rogue.n, &rogue.extra, uploaded,
			   NULL) < 0) {
		fprintf(stderr, "rogue_client: upload: %s\n", fp_err_last());
		rogue.status = 1;
		fp_link_stop(l, stopped, NULL);
	}
}

static void on_down(struct fp_link *l, const char *reason, bool fatal)
{
	if (!fatal)
		return;
	fprintf(stderr, "rogue_client: %s\n", reason);
	rogue.status = 1;
	fp_link_stop(l, stopped, NULL);
}

int main(int argc, char **argv)
{
	struct fp_tls_opts to = { 0 };
	struct fp_link_ops ops = { .on_msg = on_msg, .on_down = on_down };
	struct fp_link_cfg lc = { 0 };
	SSL_CTX *tls = NULL;
	uv_loop_t loop;
	int r;

	if (argc != 7 && !(argc == 8 && strcmp(argv[7], "--lie-digest") == 0)) {
		fprintf(stderr, "usage: rogue_client HOST PORT CA CERT KEY MASKFILE "
				"[--lie-digest]\n");
		return 2;
	}
	rogue.status = 1;
	fedprune__commit__init(&rogue.extra);
	r = fp_mask_reader_open(argv[6], &rogue.mr);
	rogue.fd = open(argv[6], O_RDONLY);
	if (r < 0 || rogue.fd < 0) {
		fprintf(stderr, "rogue_client: %s\n", fp_err_last());
		return 1;
	}
	rogue.n = fp_mask_reader_count(rogue.mr);
	rogue.src = calloc(rogue.n, sizeof(*rogue.src));
	rogue.shape = calloc(rogue.n, sizeof(*rogue.shape));
	rogue.digest = calloc(rogue.n, sizeof(*rogue.digest));
	if (!rogue.src || !rogue.shape || !rogue.digest)
		return 1;
	for (size_t i = 0; i < rogue.n; i++) {
		const struct fp_mask_info *in = fp_mask_reader_info(rogue.mr, i);

		rogue.shape[i][0] = in->dims[0];
		rogue.shape[i][1] = in->ndim > 1 ? in->dims[1] : 1;
		if (pread(rogue.fd, rogue.digest[i], 32, (off_t)(in->offset + in->nbytes)) != 32)
			return 1;
		rogue.src[i] = (struct fp_tensor_src){
			.name = in->name,
			.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS,
			.shape = rogue.shape[i],
			.ndim = 2,
			.total_bytes = in->nbytes,
			.read = read_tensor,
			.ud = (void *)in,
			.digest = rogue.digest[i],
		};
	}
	if (argc == 8 && rogue.n)
		rogue.digest[0][0] ^= 1;
	to.cert = argv[4];
	to.key = argv[5];
	to.ca = argv[3];
	if (fp_tls_ctx_new(&to, &tls) < 0) {
		fprintf(stderr, "rogue_client: %s\n", fp_err_last());
		return 1;
	}
	uv_loop_init(&loop);
	lc.host = argv[1];
	lc.port = (uint16_t)strtoul(argv[2], NULL, 10);
	lc.tls = tls;
	lc.conn = (struct fp_conn_opts){ .max_frame = 4u << 20,
					 .handshake_ms = 10000,
					 .idle_ms = 30000,
					 .msg_ms = 30000,
					 .wq_high = 1u << 20,
					 .wq_low = 256u << 10,
					 .linger_ms = 1000 };
	lc.heartbeat_ms = 1000;
	lc.backoff_base_ms = 100;
	lc.backoff_cap_ms = 1000;
	lc.local_tokens = 1;
	lc.capacity = 1;
	if (fp_link_start(&loop, &lc, &ops, &rogue.link) < 0) {
		fprintf(stderr, "rogue_client: %s\n", fp_err_last());
		return 1;
	}
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	SSL_CTX_free(tls);
	fp_mask_reader_free(rogue.mr);
	close(rogue.fd);
	free(rogue.src);
	free(rogue.shape);
	free(rogue.digest);
	return rogue.status;
}
