/*
 * `fedprune split`: divide a text file among N simulated clients, IID or non-IID, for
 * experiments (deploy/simulate.sh). The unit is a document: a run of non-blank lines with the
 * blank lines after it (or, with --unit line, one line), so every byte of the input lands in
 * exactly one output file and documents stay whole.
 *
 * Non-IID follows the usual Dirichlet label-skew partition: documents get a "class" (the input
 * cut into --classes contiguous byte ranges, standing for its topics), and each class is dealt
 * to the clients in proportions drawn from Dirichlet(alpha, ..., alpha): a small alpha gives
 * each client few classes, a large one approaches IID. --iid shuffles the documents and deals
 * them round-robin. Everything is determined by --seed. Clients below --min-bytes get
 * documents moved from the largest client, so none ends up without calibration text.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "alloc.h"
#include "cli.h"
#include "err.h"
#include "fileio.h"
#include "tool.h"

#define PROG FP_TOOL " split"

#define SPLIT_MAX_INPUT	  (1ull << 32) /* bytes read into memory at most */
#define SPLIT_MAX_CLIENTS 100000
#define SPLIT_MAX_CLASSES 4096

static void usage(void)
{
	printf("Usage: %s --in FILE --clients N (--iid | --alpha A) --out DIR [OPTIONS]\n"
	       "\n"
	       "Divide a text file among N clients, whole documents each (a document is a run of\n"
	       "non-blank lines and the blank lines after it). Writes DIR/client-1.txt ...\n"
	       "DIR/client-N.txt (the names gen-certs.sh --clients N gives the identities) and\n"
	       "prints one line per client: documents, bytes, number of classes it holds and the\n"
	       "share of its largest class. The files together hold every input byte once.\n"
	       "\n"
	       "Non-IID (--alpha): the input is cut into --classes contiguous ranges (its "
	       "topics);\n"
	       "each class is dealt to the clients in proportions drawn from Dirichlet(alpha).\n"
	       "Smaller alpha: more skew (0.1 gives most clients one or two classes).\n"
	       "\n"
	       "Options:\n"
	       "  -i, --in FILE         input text\n"
	       "  -n, --clients N       number of clients (1..%d)\n"
	       "      --iid             shuffle the documents and deal them round-robin\n"
	       "  -a, --alpha A         Dirichlet concentration (0.001..1000)\n"
	       "  -k, --classes K       classes for --alpha (default 10, 1..%d)\n"
	       "  -s, --seed S          random seed (default 0)\n"
	       "  -m, --min-bytes B     least bytes per client, moved from the largest (default\n"
	       "                        4096; 0 allows empty clients)\n"
	       "  -u, --unit U          paragraph (default) or line\n"
	       "  -o, --out DIR         output directory (created if missing)\n"
	       "  -h, --help            show this help and exit\n",
	       PROG, SPLIT_MAX_CLIENTS, SPLIT_MAX_CLASSES);
}

struct split_args {
	const char *in, *out;
	uint64_t clients, classes, seed, min_bytes;
	double alpha; /* 0 with --iid */
	bool iid, by_line;
};

struct doc {
	size_t off, len;
	uint32_t cls;
	uint32_t owner;
};

/* splitmix64: small, seedable, good enough for partitioning experiments. */
struct rng {
	uint64_t s;
};

static uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1): never 0, so logs and powers stay finite. */
static double rng_unit(struct rng *r)
{
	return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

/* Uniform integer in [0, n) without modulo bias (n > 0). */
static uint64_t rng_below(struct rng *r, uint64_t n)
{
	uint64_t lim = UINT64_MAX - UINT64_MAX % n, x;

	do
		x = rng_next(r);
	while (x >= lim);
	return x % n;
}

static double rng_normal(struct rng *r)
{
	return sqrt(-2.0 * log(rng_unit(r))) * cos(2.0 * M_PI * rng_unit(r));
}

/* Gamma(shape, 1): Marsaglia and Tsang; for shape < 1 via Gamma(shape + 1) * U^(1/shape). */
static double rng_gamma(struct rng *r, double shape)
{
	double boost = 1.0, d, c;

	if (shape < 1.0) {
		boost = pow(rng_unit(r), 1.0 / shape);
		shape += 1.0;
	}
	d = shape - 1.0 / 3.0;
	c = 1.0 / sqrt(9.0 * d);
	for (;;) {
		double x = rng_normal(r), v = 1.0 + c * x, u;

		if (v <= 0.0)
			continue;
		v = v * v * v;
		u = rng_unit(r);
		if (log(u) < 0.5 * x * x + d - d * v + d * log(v))
			return d * v * boost;
	}
}

/* p[0..n) ~ Dirichlet(alpha, ..., alpha). */
static void rng_dirichlet(struct rng *r, double alpha, double *p, size_t n)
{
	double sum = 0.0;

	for (size_t i = 0; i < n; i++) {
		p[i] = rng_gamma(r, alpha);
		sum += p[i];
	}
	if (!(sum > 0.0)) { /* every draw underflowed (tiny alpha): one client takes all */
		for (size_t i = 0; i < n; i++)
			p[i] = 0.0;
		p[rng_below(r, n)] = 1.0;
		return;
	}
	for (size_t i = 0; i < n; i++)
		p[i] /= sum;
}

static void shuffle(struct rng *r, size_t *v, size_t n)
{
	for (size_t i = n; i > 1; i--) {
		size_t j = (size_t)rng_below(r, i), t = v[i - 1];

		v[i - 1] = v[j];
		v[j] = t;
	}
}

/* Cut text into documents. *ret (caller frees) gets *ret_n entries in file order. */
static int find_docs(const char *text, size_t len, bool by_line, struct doc **ret, size_t *ret_n)
{
	struct doc *docs = NULL;
	size_t n = 0, cap = 0, pos = 0;

	while (pos < len) {
		size_t start = pos;
		bool content = false, gap = false;

		/* A document: blank lines, then non-blank lines (one with --unit line), then the
		 * blank lines after them, up to the next non-blank line. */
		while (pos < len) {
			const char *nl = memchr(text + pos, '\n', len - pos);
			size_t end = nl ? (size_t)(nl - text) + 1 : len;
			bool blank = true;

			for (size_t i = pos; i < end; i++)
				if (text[i] != '\n' && text[i] != '\r' && text[i] != ' ' &&
				    text[i] != '\t') {
					blank = false;
					break;
				}
			if (!blank && content && (gap || by_line))
				break; /* the next document starts here */
			gap |= blank && content;
			content |= !blank;
			pos = end;
		}
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 1024;
			struct doc *nd = fp_reallocarray(docs, ncap, sizeof(*docs));

			if (!nd) {
				free(docs);
				return -ENOMEM;
			}
			docs = nd;
			cap = ncap;
		}
		docs[n++] = (struct doc){ .off = start, .len = pos - start };
	}
	*ret = docs;
	*ret_n = n;
	return 0;
}

/* Deal documents to clients (docs[].owner) as args say. Returns 0 or -errno with a detail. */
static int partition(const struct split_args *a, struct doc *docs, size_t ndocs, size_t len)
{
	struct rng rng = { .s = a->seed };
	size_t *order = fp_mallocarray(ndocs, sizeof(*order));
	double *p = NULL;
	int r = 0;

	if (!order)
		return -ENOMEM;
	for (size_t d = 0; d < ndocs; d++) {
		/* The class of a document: which of the K equal byte ranges it starts in. */
		docs[d].cls = (uint32_t)((double)docs[d].off / (double)len * (double)a->classes);
		if (docs[d].cls >= a->classes)
			docs[d].cls = (uint32_t)a->classes - 1;
	}
	if (a->iid) {
		for (size_t d = 0; d < ndocs; d++)
			order[d] = d;
		shuffle(&rng, order, ndocs);
		for (size_t i = 0; i < ndocs; i++)
			docs[order[i]].owner = (uint32_t)(i % a->clients);
		goto out;
	}
	p = fp_mallocarray(a->clients, sizeof(*p));
	if (!p) {
		r = -ENOMEM;
		goto out;
	}
	for (uint32_t c = 0; c < a->classes; c++) {
		size_t n = 0, start = 0;
		double cum = 0.0;

		for (size_t d = 0; d < ndocs; d++)
			if (docs[d].cls == c)
				order[n++] = d;
		if (n == 0)
			continue;
		shuffle(&rng, order, n);
		rng_dirichlet(&rng, a->alpha, p, a->clients);
		for (size_t k = 0; k < a->clients; k++) {
			size_t end;

			cum += p[k];
			end = k + 1 == a->clients ? n : (size_t)(cum * (double)n + 0.5);
			if (end > n)
				end = n;
			for (size_t i = start; i < end; i++)
				docs[order[i]].owner = (uint32_t)k;
			if (end > start)
				start = end;
		}
	}
out:
	free(p);
	free(order);
	return r;
}

/* Move documents from the largest client to any below min_bytes. */
static int rebalance(const struct split_args *a, struct doc *docs, size_t ndocs, size_t len)
{
	uint64_t *bytes = fp_callocarray(a->clients, sizeof(*bytes));
	int r = 0;

	if (!bytes)
		return -ENOMEM;
	if (a->min_bytes && a->min_bytes * a->clients > len) {
		r = fp_err_detail(-EINVAL,
				  "%s: %zu bytes cannot give %" PRIu64 " clients %" PRIu64
				  " bytes each (lower --min-bytes or --clients)",
				  a->in, len, a->clients, a->min_bytes);
		goto out;
	}
	for (size_t d = 0; d < ndocs; d++)
		bytes[docs[d].owner] += docs[d].len;
	for (uint64_t k = 0; k < a->clients; k++) {
		while (bytes[k] < a->min_bytes) {
			uint64_t big = 0;
			size_t pick = SIZE_MAX;

			for (uint64_t j = 1; j < a->clients; j++)
				if (bytes[j] > bytes[big])
					big = j;
			/* The largest client's last document that keeps it at or above the minimum
			 * (so no client is starved twice). */
			for (size_t d = ndocs; d-- > 0;) {
				if (docs[d].owner == big &&
				    bytes[big] - docs[d].len >= a->min_bytes) {
					pick = d;
					break;
				}
			}
			if (big == k || pick == SIZE_MAX) {
				r = fp_err_detail(-EINVAL,
						  "%s: cannot give client-%" PRIu64 " %" PRIu64
						  " bytes: documents too large or too few (try "
						  "--unit line or a smaller --min-bytes)",
						  a->in, k + 1, a->min_bytes);
				goto out;
			}
			docs[pick].owner = (uint32_t)k;
			bytes[big] -= docs[pick].len;
			bytes[k] += docs[pick].len;
		}
	}
out:
	free(bytes);
	return r;
}

/* Write DIR/client-K.txt for every client and print its line. */
static int write_outputs(const struct split_args *a, const char *text, const struct doc *docs,
			 size_t ndocs, double *ret_skew)
{
	uint64_t *hist = fp_callocarray(a->classes, sizeof(*hist));
	struct fp_atomic_file f = { 0 };
	size_t plen = strlen(a->out) + 32;
	char *path = malloc(plen);
	double skew = 0.0;
	int r = 0;

	if (!hist || !path) {
		r = -ENOMEM;
		goto out;
	}
	for (uint64_t k = 0; k < a->clients; k++) {
		uint64_t nd = 0, nb = 0, top = 0, ncls = 0;

		snprintf(path, plen, "%s/client-%" PRIu64 ".txt", a->out, k + 1);
		r = fp_atomic_open(&f, path, 0644);
		if (r < 0)
			goto out;
		memset(hist, 0, a->classes * sizeof(*hist));
		for (size_t d = 0; d < ndocs && r == 0; d++) {
			if (docs[d].owner != k)
				continue;
			r = fp_atomic_write(&f, text + docs[d].off, docs[d].len);
			nd++;
			nb += docs[d].len;
			hist[docs[d].cls]++;
		}
		if (r == 0)
			r = fp_atomic_commit(&f);
		if (r < 0) {
			fp_atomic_abort(&f);
			goto out;
		}
		for (uint64_t c = 0; c < a->classes; c++) {
			ncls += hist[c] > 0;
			if (hist[c] > top)
				top = hist[c];
		}
		skew += nd ? (double)top / (double)nd : 0.0;
		printf("client-%" PRIu64 " docs=%" PRIu64 " bytes=%" PRIu64 " classes=%" PRIu64
		       " top_class_share=%.3f\n",
		       k + 1, nd, nb, ncls, nd ? (double)top / (double)nd : 0.0);
	}
	*ret_skew = skew / (double)a->clients;
out:
	free(path);
	free(hist);
	return r;
}

static void parse_args(int argc, char **argv, struct split_args *a)
{
	static const struct option opts[] = {
		{ "in", required_argument, NULL, 'i' },
		{ "clients", required_argument, NULL, 'n' },
		{ "iid", no_argument, NULL, 'I' },
		{ "alpha", required_argument, NULL, 'a' },
		{ "classes", required_argument, NULL, 'k' },
		{ "seed", required_argument, NULL, 's' },
		{ "min-bytes", required_argument, NULL, 'm' },
		{ "unit", required_argument, NULL, 'u' },
		{ "out", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	*a = (struct split_args){ .classes = 10, .min_bytes = 4096 };
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":i:n:a:k:s:m:u:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'i':
			a->in = optarg;
			break;
		case 'n':
			a->clients = fp_cli_u64(PROG, "--clients", optarg, 1, SPLIT_MAX_CLIENTS);
			break;
		case 'I':
			a->iid = true;
			break;
		case 'a':
			a->alpha = fp_cli_double(PROG, "--alpha", optarg, 0.001, 1000.0);
			break;
		case 'k':
			a->classes = fp_cli_u64(PROG, "--classes", optarg, 1, SPLIT_MAX_CLASSES);
			break;
		case 's':
			a->seed = fp_cli_u64(PROG, "--seed", optarg, 0, UINT64_MAX);
			break;
		case 'm':
			a->min_bytes = fp_cli_u64(PROG, "--min-bytes", optarg, 0, SPLIT_MAX_INPUT);
			break;
		case 'u':
			if (strcmp(optarg, "line") == 0)
				a->by_line = true;
			else if (strcmp(optarg, "paragraph") != 0)
				fp_cli_fail(PROG, "--unit '%s' is not paragraph or line", optarg);
			break;
		case 'o':
			a->out = optarg;
			break;
		case 'h':
			usage();
			exit(0);
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if (optind < argc)
		fp_cli_fail(PROG, "unexpected argument '%s'", argv[optind]);
	if (!a->in)
		fp_cli_fail(PROG, "missing --in FILE");
	if (!a->out)
		fp_cli_fail(PROG, "missing --out DIR");
	if (!a->clients)
		fp_cli_fail(PROG, "missing --clients N");
	if (a->iid == (a->alpha > 0.0))
		fp_cli_fail(PROG, "give exactly one of --iid and --alpha A");
}

int fp_cmd_split(int argc, char **argv)
{
	struct split_args a;
	struct doc *docs = NULL;
	size_t len = 0, ndocs = 0;
	char *text = NULL;
	double skew = 0.0;
	int r;

	parse_args(argc, argv, &a);
	fp_err_clear();
	r = fp_read_file(a.in, SPLIT_MAX_INPUT, &text, &len);
	if (r < 0)
		goto out;
	if (len == 0) {
		r = fp_err_detail(-EINVAL, "%s: empty file", a.in);
		goto out;
	}
	r = find_docs(text, len, a.by_line, &docs, &ndocs);
	if (r < 0)
		goto out;
	if (ndocs < a.clients) {
		r = fp_err_detail(-EINVAL,
				  "%s: %zu documents for %" PRIu64 " clients (try --unit line)",
				  a.in, ndocs, a.clients);
		goto out;
	}
	if (mkdir(a.out, 0755) < 0 && errno != EEXIST) {
		r = fp_err_detail(-errno, "%s: cannot create: %s", a.out, strerror(errno));
		goto out;
	}
	r = partition(&a, docs, ndocs, len);
	if (r == 0)
		r = rebalance(&a, docs, ndocs, len);
	if (r == 0)
		r = write_outputs(&a, text, docs, ndocs, &skew);
	if (r < 0)
		goto out;
	printf("split: in=%s clients=%" PRIu64 " docs=%zu bytes=%zu mode=%s", a.in, a.clients,
	       ndocs, len, a.iid ? "iid" : "dirichlet");
	if (!a.iid)
		printf(" alpha=%g classes=%" PRIu64, a.alpha, a.classes);
	printf(" seed=%" PRIu64 " mean_top_class_share=%.3f out=%s\n", a.seed, skew, a.out);
out:
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
	free(docs);
	free(text);
	return r < 0 ? 1 : 0;
}
