/*
 * Transport benchmarks (issue 5), measured side by side in one run; figures go into
 * docs/benchmarks.md. Not a timed test: it prints what it measured.
 *
 *   bench_net [upload|clients|all] [--mib N] [--clients N]
 *
 * upload:  one client uploads an N MiB (default 256) bit mask to a server in another process
 *          over mutually authenticated TLS 1.3 on loopback until the server's Receipt, in five
 *          rounds of: three uploads (1) as fedprune-client sends it (the digest comes from the
 *          mask file, chunks straight from its mapping) to fp_srv as the round server runs it
 *          (order, sizes, declared digests; nothing hashed on arrival) -- the figure of the
 *          target; one upload (2) as (1) plus the one check of every byte against its digest
 *          that the round server's store step makes (BLAKE2b-256 on the threadpool) before the
 *          Receipt; one upload (3) from a producer without a digest, so the sender hashes while
 *          sending. Each upload of (1) is divided by OpenSSL's single-core AES-128-GCM
 *          throughput measured just before it (`openssl speed -evp aes-128-gcm -seconds 1`,
 *          16 KiB column; EVP in this process as a cross-check), per busiest process (bytes
 *          per CPU-second, the unit `openssl speed` uses; CPU of every thread from
 *          /proc/PID/task/TID/schedstat) and by the wall clock; the target takes the median.
 * clients: N (default 1000) mTLS clients in one process on one loop connect to a server in
 *          another process and heartbeat; reports handshakes per second and the server's RSS
 *          per idle connection (VmRSS before and after, from /proc).
 *
 * Certificates are made in a temporary directory with the OpenSSL API.
 */
#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sodium.h>
#include <uv.h>

#include "err.h"
#include "link.h"
#include "log.h"
#include "srv.h"
#include "tls.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
	fprintf(stderr, "bench_net: %s: %s\n", what, fp_err_last());
	exit(1);
}

/* --- certificates --- */

struct pki {
	char dir[64];
	char ca[96], scrt[96], skey[96], ccrt[96], ckey[96];
	X509 *ca_cert;
	EVP_PKEY *ca_key;
};

static void add_ext(X509 *issuer, X509 *x, int nid, const char *v)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;

	X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
	ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, v);
	if (!ex || X509_add_ext(x, ex, -1) != 1)
		die("certificate extension");
	X509_EXTENSION_free(ex);
}

static X509 *cert(EVP_PKEY *k, const char *cn, X509 *issuer, EVP_PKEY *ikey, int kind)
{
	static long serial = 1;
	X509 *x = X509_new();
	X509_NAME *n = X509_NAME_new();

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, k);
	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, n);
	X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : n);
	X509_NAME_free(n);
	if (kind == 0) {
		add_ext(NULL, x, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(NULL, x, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(issuer, x, NID_basic_constraints, "CA:FALSE");
		add_ext(issuer, x, NID_ext_key_usage, kind == 1 ? "serverAuth" : "clientAuth");
		if (kind == 1)
			add_ext(issuer, x, NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1");
	}
	if (X509_sign(x, ikey ? ikey : k, EVP_sha256()) <= 0)
		die("X509_sign");
	return x;
}

static void save(const char *crt_path, X509 *x, const char *key_path, EVP_PKEY *k)
{
	FILE *f = fopen(crt_path, "w");

	if (!f || PEM_write_X509(f, x) != 1 || fclose(f) != 0)
		die(crt_path);
	if (!key_path)
		return;
	f = fopen(key_path, "w");
	if (!f || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0)
		die(key_path);
}

static void pki_make(struct pki *p)
{
	EVP_PKEY *ck = EVP_EC_gen("P-256"), *sk = EVP_EC_gen("P-256"), *lk = EVP_EC_gen("P-256");
	X509 *ca, *s, *c;

	snprintf(p->dir, sizeof(p->dir), "/tmp/fp-bench-XXXXXX");
	if (!mkdtemp(p->dir) || !ck || !sk || !lk)
		die("pki");
	snprintf(p->ca, sizeof(p->ca), "%s/ca.crt", p->dir);
	snprintf(p->scrt, sizeof(p->scrt), "%s/server.crt", p->dir);
	snprintf(p->skey, sizeof(p->skey), "%s/server.key", p->dir);
	snprintf(p->ccrt, sizeof(p->ccrt), "%s/client.crt", p->dir);
	snprintf(p->ckey, sizeof(p->ckey), "%s/client.key", p->dir);
	ca = cert(ck, "bench CA", NULL, NULL, 0);
	s = cert(sk, "localhost", ca, ck, 1);
	c = cert(lk, "bench-client", ca, ck, 2);
	save(p->ca, ca, NULL, NULL);
	save(p->scrt, s, p->skey, sk);
	save(p->ccrt, c, p->ckey, lk);
	p->ca_cert = ca;
	p->ca_key = ck;
	X509_free(s);
	X509_free(c);
	EVP_PKEY_free(sk);
	EVP_PKEY_free(lk);
}

/* A client certificate with CN "bench-client-<i>" and its context. */
static SSL_CTX *client_ctx_n(struct pki *p, int i)
{
	char cn[64], crt[128], key[128];
	EVP_PKEY *k = EVP_EC_gen("P-256");
	struct fp_tls_opts o = { .cert = crt, .key = key, .ca = p->ca };
	SSL_CTX *ctx;
	X509 *x;

	if (!k)
		die("EVP_EC_gen");
	snprintf(cn, sizeof(cn), "bench-client-%d", i);
	snprintf(crt, sizeof(crt), "%s/c%d.crt", p->dir, i);
	snprintf(key, sizeof(key), "%s/c%d.key", p->dir, i);
	x = cert(k, cn, p->ca_cert, p->ca_key, 2);
	save(crt, x, key, k);
	if (fp_tls_ctx_new(&o, &ctx) < 0)
		die("client context");
	unlink(crt);
	unlink(key);
	X509_free(x);
	EVP_PKEY_free(k);
	return ctx;
}

static void pki_remove(struct pki *p)
{
	unlink(p->ca);
	unlink(p->scrt);
	unlink(p->skey);
	unlink(p->ccrt);
	unlink(p->ckey);
	rmdir(p->dir);
	X509_free(p->ca_cert);
	EVP_PKEY_free(p->ca_key);
}

static SSL_CTX *ctx_for(struct pki *p, bool server)
{
	struct fp_tls_opts o = { .server = server,
				 .cert = server ? p->scrt : p->ccrt,
				 .key = server ? p->skey : p->ckey,
				 .ca = p->ca };
	SSL_CTX *ctx;

	if (fp_tls_ctx_new(&o, &ctx) < 0)
		die("TLS context");
	return ctx;
}

/* --- the server process --- */

static volatile sig_atomic_t child_stop;

static void on_child_signal(int s)
{
	(void)s;
	child_stop = 1;
}

static volatile sig_atomic_t child_report;
static int report_fd = -1;

static void on_child_usr1(int s)
{
	(void)s;
	child_report = 1;
}

static void child_poll(uv_timer_t *t)
{
	if (child_report) {
		struct mallinfo2 mi = mallinfo2();
		uint64_t inuse = mi.uordblks + mi.hblkhd;

		child_report = 0;
		if (write(report_fd, &inuse, sizeof(inuse)) != sizeof(inuse))
			_exit(1);
	}
	if (!child_stop)
		return;
	fp_srv_stop(t->data, NULL, NULL);
	uv_close((uv_handle_t *)t, NULL);
}

static int discard_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *c)
{
	(void)srv;
	(void)s;
	(void)c;
	return 0;
}

/*
 * Verifying server (--verify variant): keeps what arrives, as the round server keeps its part
 * files, and at Commit checks it against the declared digest on the libuv threadpool, as the
 * round server's store step does, before it answers. One tensor, as the benchmark sends.
 */
static bool verify_mode;
static uv_loop_t *child_loop; /* the server child's loop */

static struct {
	uint8_t *buf; /* (cap) bytes received of the tensor */
	size_t len, cap;
	uint8_t want[FP_DIGEST_BYTES];
	struct fp_session *s;
	uv_work_t w;
	bool ok;
} vs;

static int keep_chunk(struct fp_srv *srv, struct fp_session *s, const Fedprune__TensorChunk *c)
{
	(void)srv;
	(void)s;
	if (c->offset == 0)
		vs.len = 0;
	if (c->offset + c->data.len > vs.cap) {
		size_t cap = (size_t)c->total_bytes;
		uint8_t *nb = realloc(vs.buf, cap);

		if (!nb)
			return FEDPRUNE__ERROR_CODE__ERROR_INTERNAL;
		vs.buf = nb;
		vs.cap = cap;
	}
	memcpy(vs.buf + c->offset, c->data.data, c->data.len);
	vs.len = (size_t)(c->offset + c->data.len);
	return 0;
}

static void verify_run(uv_work_t *w)
{
	uint8_t got[FP_DIGEST_BYTES];

	(void)w;
	crypto_generichash(got, sizeof(got), vs.buf, vs.len, NULL, 0);
	vs.ok = sodium_memcmp(got, vs.want, sizeof(got)) == 0;
}

static void verify_done(uv_work_t *w, int status)
{
	(void)w;
	fp_session_commit_done(
		vs.s, status == 0 && vs.ok ? 0 : FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH,
		status == 0 && vs.ok ? NULL : "digest mismatch");
}

static int verify_commit(struct fp_srv *srv, struct fp_session *s, const Fedprune__Commit *c)
{
	(void)c;
	if (s->rx.n != 1 || !s->rx.t[0].complete)
		return FEDPRUNE__ERROR_CODE__ERROR_INTERNAL;
	memcpy(vs.want, s->rx.t[0].digest, FP_DIGEST_BYTES);
	vs.s = s;
	vs.w.data = NULL;
	if (uv_queue_work(child_loop, &vs.w, verify_run, verify_done) < 0)
		return FEDPRUNE__ERROR_CODE__ERROR_INTERNAL;
	return FP_SRV_COMMIT_LATER;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static int report_rd = -1; /* parent's end: heap bytes in use, after SIGUSR1 to the server */

/* Heap bytes the server process has in use (malloc's view, not RSS). */
static uint64_t server_heap(pid_t pid)
{
	uint64_t v = 0;

	kill(pid, SIGUSR1);
	if (read(report_rd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

/* Fork a server on 127.0.0.1:port; writes its port to the pipe and runs until SIGTERM. */
static pid_t spawn_server(struct pki *p, uint32_t max_clients, int *ret_port)
{
	int fds[2], rep[2];
	pid_t pid;

	if (pipe(fds) < 0 || pipe(rep) < 0)
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		struct fp_srv_ops ops = { .on_chunk = discard_chunk };

		if (verify_mode) {
			ops.on_chunk = keep_chunk;
			ops.on_commit = verify_commit;
		}
		struct fp_srv_cfg cfg = { 0 };
		struct fp_srv *srv;
		uv_loop_t loop;
		uv_timer_t poll;
		int port;

		close(fds[0]);
		close(rep[0]);
		report_fd = rep[1];
		raise_nofile();
		signal(SIGTERM, on_child_signal);
		signal(SIGUSR1, on_child_usr1);
		signal(SIGPIPE, SIG_IGN);
		uv_loop_init(&loop);
		child_loop = &loop;
		cfg.listen = "127.0.0.1";
		cfg.max_clients = max_clients;
		cfg.tls = ctx_for(p, true);
		cfg.conn.max_frame = 4u << 20;
		cfg.conn.handshake_ms = 60000;
		cfg.conn.idle_ms = 120000;
		cfg.conn.msg_ms = 60000;
		cfg.conn.wq_high = 1u << 20;
		cfg.conn.wq_low = 256u << 10;
		cfg.heartbeat_ms = 1000;
		cfg.chunk_bytes = 1u << 20;
		if (fp_srv_start(&loop, &cfg, &ops, &srv) < 0)
			die("server");
		port = fp_srv_port(srv);
		if (write(fds[1], &port, sizeof(port)) != sizeof(port))
			_exit(1);
		close(fds[1]);
		uv_timer_init(&loop, &poll);
		poll.data = srv;
		uv_timer_start(&poll, child_poll, 50, 50);
		uv_run(&loop, UV_RUN_DEFAULT);
		SSL_CTX_free(cfg.tls);
		_exit(uv_loop_close(&loop) == 0 ? 0 : 3);
	}
	close(fds[1]);
	close(rep[1]);
	if (report_rd >= 0)
		close(report_rd);
	report_rd = rep[0];
	if (read(fds[0], ret_port, sizeof(*ret_port)) != sizeof(*ret_port))
		die("server did not start");
	close(fds[0]);
	return pid;
}

static double cpu_of(const struct rusage *ru)
{
	return (double)ru->ru_utime.tv_sec + (double)ru->ru_utime.tv_usec * 1e-6 +
	       (double)ru->ru_stime.tv_sec + (double)ru->ru_stime.tv_usec * 1e-6;
}

static double self_cpu(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return cpu_of(&ru);
}

/* SIGTERM the server, wait for it; *ret_cpu = the CPU seconds it used (may be NULL). */
static int stop_server_cpu(pid_t pid, double *ret_cpu)
{
	struct rusage ru;
	int st = 0;

	kill(pid, SIGTERM);
	memset(&ru, 0, sizeof(ru));
	wait4(pid, &st, 0, &ru);
	if (ret_cpu)
		*ret_cpu = cpu_of(&ru);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int stop_server(pid_t pid)
{
	return stop_server_cpu(pid, NULL);
}

/* CPU seconds a process (all its threads) has run so far: the sum of the first field of
 * /proc/PID/task/TID/schedstat (nanoseconds on a CPU), finer than /proc/PID/stat's ticks. */
static double proc_cpu(pid_t pid)
{
	char path[64], line[128];
	struct dirent *de;
	double sum = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((de = readdir(d))) {
		char p2[320];
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p2, sizeof(p2), "/proc/%d/task/%s/schedstat", (int)pid, de->d_name);
		f = fopen(p2, "r");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f))
			sum += strtod(line, NULL) * 1e-9;
		fclose(f);
	}
	closedir(d);
	return sum;
}

static long vmrss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* --- AES-128-GCM reference throughput --- */

static double openssl_speed(int seconds)
{
	char cmd[96];
	FILE *f;

	snprintf(cmd, sizeof(cmd), "openssl speed -evp aes-128-gcm -seconds %d 2>/dev/null",
		 seconds);
	f = popen(cmd, "r");
	char line[512];
	double v = 0;

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		char *last;

		if (strncmp(line, "AES-128-GCM", 11) != 0)
			continue;
		last = strrchr(line, ' ');
		if (last)
			v = strtod(last + 1, NULL) * 1000.0; /* "4284895.82k": 1000s of bytes/s */
	}
	pclose(f);
	return v;
}

static double self_cpu(void);

/* AES-128-GCM over 16 KiB records for 3 CPU-seconds of this process (CPU time, like
 * `openssl speed`, so other load on the machine does not count). */
static double evp_speed(void)
{
	static uint8_t in[16384], out[16384 + 16];
	uint8_t key[16] = { 1 }, iv[12] = { 2 }, tag[16];
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	double c0 = self_cpu(), t;
	uint64_t bytes = 0;
	int n;

	EVP_EncryptInit_ex(ctx, EVP_aes_128_gcm(), NULL, key, iv);
	do {
		for (int i = 0; i < 256; i++) {
			iv[0]++; /* a new nonce per record, as TLS does; the key schedule stays */
			EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv);
			EVP_EncryptUpdate(ctx, out, &n, in, sizeof(in));
			EVP_EncryptFinal_ex(ctx, out + n, &n);
			EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, tag);
			bytes += sizeof(in);
		}
		t = self_cpu() - c0;
	} while (t < 3.0);
	EVP_CIPHER_CTX_free(ctx);
	return (double)bytes / t;
}

/* --- upload --- */

struct up_state {
	bool ready, done;
	int status;
	double t0, t1;
	const uint8_t *pattern; /* (1 MiB) */
	struct fp_link *l;
};

static int produce(void *ud, uint64_t off, uint8_t *buf, size_t len)
{
	const uint8_t *pat = ud;

	/* A fast producer: the mask is already computed (a repeating 1 MiB pattern here). */
	while (len) {
		size_t o = (size_t)(off & ((1u << 20) - 1)), n = (1u << 20) - o;

		if (n > len)
			n = len;
		memcpy(buf, pat + o, n);
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

static void up_ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	struct up_state *s = fp_link_data(l);

	(void)w;
	s->ready = true;
}

static void up_done(struct fp_link *l, int status, const char *reason, const Fedprune__Receipt *rc,
		    void *ud)
{
	struct up_state *s = ud;

	(void)l;
	(void)rc;
	s->t1 = now_s();
	s->done = true;
	s->status = status;
	if (status < 0)
		fprintf(stderr, "upload failed: %s\n", reason);
}

static void link_stopped(struct fp_link *l, void *ud)
{
	(void)l;
	*(bool *)ud = true;
}

struct up_result {
	double secs;	   /* wall clock, upload call to Receipt */
	double cpu_client; /* CPU seconds of the client process during the upload */
	double cpu_server; /* CPU seconds of the server process (all threads) during the upload */
};

static double upload_once(struct pki *p, uint64_t mib, bool precomputed, struct up_result *res)
{
	double c0, s0;
	uint64_t bits = mib * 8 * (1u << 20);
	uint64_t shape[2] = { 32768, bits / 32768 };
	uint8_t *pattern = malloc(1u << 20), *whole = NULL, digest[32];
	struct fp_link_ops ops = { .on_ready = up_ready };
	struct fp_link_cfg cfg = { 0 };
	struct fp_tensor_src src = { 0 };
	struct up_state s = { 0 };
	uv_loop_t loop;
	bool stopped = false;
	int port, st;
	pid_t pid;

	randombytes_buf(pattern, 1u << 20);
	if (precomputed) {
		crypto_generichash_state h;

		crypto_generichash_init(&h, NULL, 0, 32);
		for (uint64_t i = 0; i < mib; i++)
			crypto_generichash_update(&h, pattern, 1u << 20);
		crypto_generichash_final(&h, digest, 32);
		src.digest = digest;
		/* As fedprune-client: the mask file is mapped, chunks go out from the page
		 * cache. Here the mask is in memory (touched before the clock starts). */
		whole = malloc(mib << 20);
		if (!whole)
			die("malloc");
		for (uint64_t i = 0; i < mib; i++)
			memcpy(whole + (i << 20), pattern, 1u << 20);
		src.bytes = whole;
	}
	pid = spawn_server(p, 16, &port);
	uv_loop_init(&loop);
	cfg.host = "127.0.0.1";
	cfg.port = (uint16_t)port;
	cfg.tls = ctx_for(p, false);
	cfg.client_id = "bench-client";
	cfg.conn.max_frame = 4u << 20;
	cfg.conn.handshake_ms = 60000;
	cfg.conn.idle_ms = 120000;
	cfg.conn.msg_ms = 60000;
	cfg.conn.wq_high = 1u << 20;
	cfg.conn.wq_low = 256u << 10;
	cfg.heartbeat_ms = 1000;
	cfg.backoff_base_ms = 50;
	cfg.backoff_cap_ms = 500;
	cfg.data = &s;
	if (fp_link_start(&loop, &cfg, &ops, &s.l) < 0)
		die("link");
	while (!s.ready)
		uv_run(&loop, UV_RUN_ONCE);
	src.name = "model.layers.0.mlp.up_proj.weight";
	src.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
	src.shape = shape;
	src.ndim = 2;
	src.total_bytes = mib << 20;
	src.read = produce;
	src.ud = pattern;
	s.t0 = now_s();
	c0 = self_cpu();
	s0 = proc_cpu(pid);
	if (fp_link_upload(s.l, 1, &src, 1, NULL, up_done, &s) < 0)
		die("upload");
	while (!s.done)
		uv_run(&loop, UV_RUN_ONCE);
	res->cpu_client = self_cpu() - c0;
	res->cpu_server = proc_cpu(pid) - s0;
	fp_link_stop(s.l, link_stopped, &stopped);
	while (!stopped)
		uv_run(&loop, UV_RUN_ONCE);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		fprintf(stderr, "client loop did not close cleanly\n");
	st = stop_server(pid);
	if (st != 0)
		fprintf(stderr, "server exited with %d\n", st);
	SSL_CTX_free(cfg.tls);
	free(pattern);
	free(whole);
	if (s.status < 0)
		exit(1);
	res->secs = s.t1 - s.t0;
	return (double)(mib << 20) / res->secs;
}

static bool no_ref; /* --no-ref: skip the reference measurements (for profiling) */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

#define UP_ROUNDS    5 /* rounds of: (reference, upload (1)) three times, then (2) and (3) */
#define V0_PER_ROUND 3
#define V0_N	     (UP_ROUNDS * V0_PER_ROUND)

/* Print the runs of one variant and its median and best ratios; sorts the ratio arrays. */
static void report_variant(const char *what, const struct up_result *r, const double *aes, int n,
			   uint64_t mib, double *ratio_cpu, double *ratio_wall)
{
	double bytes = (double)(mib << 20);

	printf("%s\n", what);
	for (int k = 0; k < n; k++) {
		double busiest =
			r[k].cpu_client > r[k].cpu_server ? r[k].cpu_client : r[k].cpu_server;

		ratio_wall[k] = aes[k] > 0 ? bytes / r[k].secs / aes[k] : 0;
		ratio_cpu[k] = aes[k] > 0 ? bytes / busiest / aes[k] : 0;
		printf("  wall %.3f s: %7.1f MB/s, ratio %.3f | CPU s: client %.3f, server %.3f -> "
		       "%7.1f MB/s per busiest process, ratio %.3f (AES-GCM %.1f MB/s)\n",
		       r[k].secs, bytes / r[k].secs / 1e6, ratio_wall[k], r[k].cpu_client,
		       r[k].cpu_server, bytes / busiest / 1e6, ratio_cpu[k], aes[k] / 1e6);
	}
	qsort(ratio_cpu, (size_t)n, sizeof(double), cmp_double);
	qsort(ratio_wall, (size_t)n, sizeof(double), cmp_double);
	printf("  of %d uploads: median ratio %.3f per busiest process, %.3f wall; best %.3f per "
	       "busiest process, %.3f wall\n",
	       n, ratio_cpu[n / 2], ratio_wall[n / 2], ratio_cpu[n - 1], ratio_wall[n - 1]);
}

static void bench_upload(struct pki *p, uint64_t mib)
{
	static const char *what[3] = {
		"upload as fedprune-client sends it (digests from the mask file), server as the "
		"round server runs the transport (no hashing on arrival):",
		"the same, and before its Receipt the server checks the bytes against the digest "
		"once (BLAKE2b-256 on the threadpool, as the round server's store step does):",
		"a producer without a digest: the sender hashes while sending:",
	};
	double aes0[V0_N] = { 0 }, aes[UP_ROUNDS] = { 0 }, aes_sorted[V0_N], aes_evp, b2;
	double load[3] = { 0 }, ratio_cpu[V0_N], ratio_wall[V0_N], c2[UP_ROUNDS], w2[UP_ROUNDS];
	struct up_result r0[V0_N], r[2][UP_ROUNDS];
	uint8_t *buf = malloc(64u << 20), out[32];
	double t0;

	printf("== upload of a %llu MiB mask over mTLS 1.3 on loopback (client and server in "
	       "separate processes)\n",
	       (unsigned long long)mib);
	memset(buf, 7, 64u << 20);
	aes_evp = no_ref ? 0 : evp_speed();
	t0 = self_cpu();
	crypto_generichash(out, 32, buf, 64u << 20, NULL, 0);
	b2 = (double)(64u << 20) / (self_cpu() - t0);
	free(buf);
	/* Every upload of the first variant is compared with AES-GCM measured just before it
	 * (`openssl speed`, 1 s), under the same load; the other two variants once per round,
	 * with the last reference of the round. */
	for (int k = 0; k < UP_ROUNDS; k++) {
		for (int j = 0; j < V0_PER_ROUND; j++) {
			int i = k * V0_PER_ROUND + j;

			aes0[i] = no_ref ? 0 : openssl_speed(1);
			upload_once(p, mib, true, &r0[i]);
		}
		aes[k] = aes0[k * V0_PER_ROUND + V0_PER_ROUND - 1];
		verify_mode = true;
		upload_once(p, mib, true, &r[0][k]);
		verify_mode = false;
		upload_once(p, mib, false, &r[1][k]);
	}
	getloadavg(load, 3);
	memcpy(aes_sorted, aes0, sizeof(aes_sorted));
	qsort(aes_sorted, V0_N, sizeof(double), cmp_double);
	printf("openssl speed -evp aes-128-gcm -seconds 1 (16 KiB), before each of the %d uploads "
	       "of the first variant: %.1f .. %.1f MB/s (median %.1f)\n",
	       V0_N, aes_sorted[0] / 1e6, aes_sorted[V0_N - 1] / 1e6, aes_sorted[V0_N / 2] / 1e6);
	printf("EVP AES-128-GCM in this process (16 KiB, 3 CPU-s):  %8.1f MB/s\n", aes_evp / 1e6);
	printf("BLAKE2b-256 (libsodium, 64 MiB, CPU time):          %8.1f MB/s\n", b2 / 1e6);
	printf("load average after the runs: %.2f (cores: %ld)\n", load[0],
	       sysconf(_SC_NPROCESSORS_ONLN));
	report_variant(what[0], r0, aes0, V0_N, mib, ratio_cpu, ratio_wall);
	report_variant(what[1], r[0], aes, UP_ROUNDS, mib, c2, w2);
	report_variant(what[2], r[1], aes, UP_ROUNDS, mib, c2, w2);
	printf("target (issue 5): upload (first variant) >= 0.4 of AES-128-GCM: median of %d: "
	       "%.3f per busiest process (%s), %.3f wall (%s)\n",
	       V0_N, ratio_cpu[V0_N / 2], ratio_cpu[V0_N / 2] >= 0.4 ? "met" : "not met",
	       ratio_wall[V0_N / 2], ratio_wall[V0_N / 2] >= 0.4 ? "met" : "not met");
}

/* --- many clients --- */

struct many {
	int ready;
	int n;
	double t_all;
};

static void many_ready(struct fp_link *l, const Fedprune__Welcome *w)
{
	struct many *m = fp_link_data(l);

	(void)w;
	if (++m->ready == m->n)
		m->t_all = now_s();
}

static void bench_clients(struct pki *p, int n)
{
	struct fp_link **links = calloc((size_t)n, sizeof(*links));
	SSL_CTX **ctxs = calloc((size_t)n, sizeof(*ctxs));
	struct fp_link_ops ops = { .on_ready = many_ready };
	struct fp_link_cfg cfg = { 0 };
	struct many m = { .n = n };
	double c0, s0, cpu_c, cpu_s;
	uint64_t heap0, heap1;
	long rss0, rss1, rss_warm;
	uint64_t echoes0 = 0, echoes1 = 0;
	int port;
	double t0, t_wait;
	uv_loop_t loop;
	pid_t pid;

	printf("\n== %d concurrent mTLS clients on one loop, server in another process\n", n);
	raise_nofile();
	pid = spawn_server(p, (uint32_t)n + 16, &port);
	uv_loop_init(&loop);
	for (int i = 0; i < n; i++)
		ctxs[i] = client_ctx_n(p, i);
	cfg.host = "127.0.0.1";
	cfg.port = (uint16_t)port;
	cfg.conn.max_frame = 4u << 20;
	cfg.conn.handshake_ms = 120000;
	cfg.conn.idle_ms = 120000;
	cfg.conn.msg_ms = 60000;
	cfg.conn.wq_high = 1u << 20;
	cfg.conn.wq_low = 256u << 10;
	cfg.heartbeat_ms = 1000;
	cfg.backoff_base_ms = 100;
	cfg.backoff_cap_ms = 1000;
	cfg.data = &m;
	/* Warm the server (first handshake initialises OpenSSL's tables), then measure. */
	m.n = 1;
	cfg.tls = ctxs[0];
	if (fp_link_start(&loop, &cfg, &ops, &links[0]) < 0)
		die("link");
	while (m.ready < 1)
		uv_run(&loop, UV_RUN_ONCE);
	usleep(200000);
	rss_warm = vmrss_kib(pid);
	heap0 = server_heap(pid);
	m.n = n;
	t0 = now_s();
	c0 = self_cpu();
	s0 = proc_cpu(pid);
	for (int i = 1; i < n; i++) {
		cfg.tls = ctxs[i];
		if (fp_link_start(&loop, &cfg, &ops, &links[i]) < 0)
			die("link");
	}
	rss0 = rss_warm;
	while (m.ready < n)
		uv_run(&loop, UV_RUN_ONCE);
	cpu_c = self_cpu() - c0;
	cpu_s = proc_cpu(pid) - s0;
	/* Every client heartbeats: wait three intervals and count the answers. */
	for (int i = 0; i < n; i++)
		echoes0 += fp_link_stats(links[i])->echoes;
	t_wait = now_s();
	while (now_s() - t_wait < 3.2)
		uv_run(&loop, UV_RUN_ONCE);
	for (int i = 0; i < n; i++)
		echoes1 += fp_link_stats(links[i])->echoes;
	rss1 = vmrss_kib(pid);
	heap1 = server_heap(pid);

	printf("all %d connected after %.2f s: %.0f handshakes/s wall (TCP + TLS 1.3 mutual + "
	       "Hello/Welcome)\n",
	       n, m.t_all - t0, (double)(n - 1) / (m.t_all - t0));
	printf("CPU s for the %d handshakes: server %.2f (%.0f handshakes per server CPU-second), "
	       "clients %.2f\n",
	       n - 1, cpu_s, (double)(n - 1) / cpu_s, cpu_c);
	printf("heartbeats answered in 3.2 s: %llu (%.2f per client; interval 1 s)\n",
	       (unsigned long long)(echoes1 - echoes0), (double)(echoes1 - echoes0) / n);
	printf("server VmRSS: %ld KiB with 1 client, %ld KiB with %d: %.1f KiB per idle "
	       "connection\n",
	       rss0, rss1, n, (double)(rss1 - rss0) / (n - 1));
	printf("server heap in use (malloc): %.1f KiB per idle connection\n",
	       (double)(heap1 - heap0) / 1024.0 / (n - 1));
	for (int i = 0; i < n; i++)
		fp_link_stop(links[i], NULL, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&loop) != 0)
		fprintf(stderr, "client loop did not close cleanly\n");
	printf("server exit status after SIGTERM: %d\n", stop_server(pid));
	for (int i = 0; i < n; i++)
		SSL_CTX_free(ctxs[i]);
	free(ctxs);
	free(links);
}

int main(int argc, char **argv)
{
	const char *what = "all";
	uint64_t mib = 256;
	int clients = 1000;
	struct pki p;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
			mib = strtoull(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--no-ref") == 0)
			no_ref = true;
		else if (strcmp(argv[i], "--clients") == 0 && i + 1 < argc)
			clients = (int)strtol(argv[++i], NULL, 10);
		else
			what = argv[i];
	}
	if (mib < 1 || mib > 4096 || clients < 2 || clients > 20000) {
		fprintf(stderr, "usage: bench_net [upload|clients|all] [--mib 1..4096] "
				"[--clients 2..20000] [--no-ref]\n");
		return 2;
	}
	if (sodium_init() < 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	fp_log_set_level(getenv("FP_BENCH_LOG") ? FP_LOG_DEBUG : FP_LOG_ERROR);
	pki_make(&p);
	if (strcmp(what, "upload") == 0 || strcmp(what, "all") == 0)
		bench_upload(&p, mib);
	if (strcmp(what, "clients") == 0 || strcmp(what, "all") == 0)
		bench_clients(&p, clients);
	pki_remove(&p);
	return 0;
}
