/*
 * `fedprune compare A.fpmask B.fpmask [--json]`: agreement of two mask files, tensor by tensor
 * (pruned counts, intersection, Hamming distance, Jaccard index of the pruned sets) and in
 * total. Both files must hold the same tensors with the same shapes (in any order).
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "cli.h"
#include "err.h"
#include "mask.h"
#include "tool.h"

#define PROG FP_TOOL " compare"

static void usage(void)
{
	printf("Usage: %s [--json] A.fpmask B.fpmask\n"
	       "\n"
	       "Compare two mask files tensor by tensor: weights pruned in A, in B, in both,\n"
	       "the Hamming distance (pruned in exactly one) and the Jaccard index of the\n"
	       "pruned sets (both / either; 1 when neither prunes anything), then totals over\n"
	       "all tensors. Both files must name the same tensors with the same shapes.\n"
	       "\n"
	       "Options:\n"
	       "  --json      print one JSON object instead of a table\n"
	       "  -h, --help  show this help and exit\n",
	       PROG);
}

/* s with control bytes replaced, for messages (names come from a file). */
static const char *printable(const char *s, char *buf, size_t len)
{
	size_t i = 0;

	for (; s[i] && i + 1 < len; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
	return buf;
}

static const struct fp_mask_set *sort_set; /* for cmp_index (qsort has no context) */

static int cmp_index(const void *x, const void *y)
{
	return strcmp(sort_set->info[*(const size_t *)x].name,
		      sort_set->info[*(const size_t *)y].name);
}

/* Index in b (order: b's indices sorted by name) of the tensor called name, or -1. */
static long find(const struct fp_mask_set *b, const size_t *order, const char *name)
{
	size_t lo = 0, hi = b->count;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(b->info[order[mid]].name, name);

		if (c == 0)
			return (long)order[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* map[i] = index in b of a's tensor i; every tensor matched once with equal shapes. */
static int match(const struct fp_mask_set *a, const struct fp_mask_set *b, const char *pa,
		 const char *pb, size_t *map)
{
	size_t *order = NULL;
	char name[160];
	int r = 0;

	if (a->count != b->count)
		return fp_err_detail(-EINVAL, "%s has %zu tensors, %s has %zu", pa, a->count, pb,
				     b->count);
	order = calloc(b->count ? b->count : 1, sizeof(*order));
	if (!order)
		return -ENOMEM;
	for (size_t j = 0; j < b->count; j++)
		order[j] = j;
	sort_set = b;
	qsort(order, b->count, sizeof(*order), cmp_index);
	for (size_t i = 0; i < a->count && r == 0; i++) {
		const struct fp_mask_info *x = &a->info[i], *y;
		long j = find(b, order, x->name);
		bool same;

		if (j < 0) {
			r = fp_err_detail(-EINVAL, "tensor '%s' of %s is not in %s",
					  printable(x->name, name, sizeof(name)), pa, pb);
			break;
		}
		map[i] = (size_t)j;
		y = &b->info[j];
		same = x->ndim == y->ndim;
		for (unsigned d = 0; same && d < x->ndim; d++)
			same = x->dims[d] == y->dims[d];
		if (!same)
			r = fp_err_detail(-EINVAL, "tensor '%s': shapes differ between %s and %s",
					  printable(x->name, name, sizeof(name)), pa, pb);
	}
	free(order);
	return r;
}

static void add_cmp(struct fp_mask_cmp *t, const struct fp_mask_cmp *c)
{
	t->nbits += c->nbits;
	t->pruned_a += c->pruned_a;
	t->pruned_b += c->pruned_b;
	t->both += c->both;
	t->either += c->either;
	t->hamming += c->hamming;
	t->jaccard = t->either ? (double)t->both / (double)t->either : 1.0;
}

static cJSON *cmp_json(const char *name, const struct fp_mask_cmp *c)
{
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return NULL;
	if (name)
		cJSON_AddStringToObject(o, "name", name);
	cJSON_AddNumberToObject(o, "weights", (double)c->nbits);
	cJSON_AddNumberToObject(o, "pruned_a", (double)c->pruned_a);
	cJSON_AddNumberToObject(o, "pruned_b", (double)c->pruned_b);
	cJSON_AddNumberToObject(o, "both", (double)c->both);
	cJSON_AddNumberToObject(o, "hamming", (double)c->hamming);
	cJSON_AddNumberToObject(o, "jaccard", c->jaccard);
	return o;
}

static int print_json(const struct fp_mask_set *a, const char *pa, const char *pb,
		      const struct fp_mask_cmp *cmps, const struct fp_mask_cmp *tot)
{
	cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray();
	char *s = NULL;

	if (root && arr) {
		cJSON_AddStringToObject(root, "a", pa);
		cJSON_AddStringToObject(root, "b", pb);
		for (size_t i = 0; i < a->count; i++)
			cJSON_AddItemToArray(arr, cmp_json(a->info[i].name, &cmps[i]));
		cJSON_AddItemToObject(root, "tensors", arr);
		arr = NULL;
		cJSON_AddItemToObject(root, "totals", cmp_json(NULL, tot));
		s = cJSON_Print(root);
	}
	cJSON_Delete(arr);
	cJSON_Delete(root);
	if (!s)
		return -ENOMEM;
	printf("%s\n", s);
	free(s);
	return 0;
}

static void print_text(const struct fp_mask_set *a, const struct fp_mask_cmp *cmps,
		       const struct fp_mask_cmp *tot)
{
	char name[160];
	int w = 5;

	for (size_t i = 0; i < a->count; i++) {
		int n = (int)strlen(printable(a->info[i].name, name, sizeof(name)));

		w = n > w ? n : w;
	}
	printf("%-*s  %12s  %12s  %12s  %12s  %12s  %8s\n", w, "NAME", "WEIGHTS", "PRUNED_A",
	       "PRUNED_B", "BOTH", "HAMMING", "JACCARD");
	for (size_t i = 0; i < a->count; i++) {
		const struct fp_mask_cmp *c = &cmps[i];

		printf("%-*s  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64
		       "  %12" PRIu64 "  %8.6f\n",
		       w, printable(a->info[i].name, name, sizeof(name)), c->nbits, c->pruned_a,
		       c->pruned_b, c->both, c->hamming, c->jaccard);
	}
	printf("%-*s  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64 "  %12" PRIu64
	       "  %8.6f\n",
	       w, "TOTAL", tot->nbits, tot->pruned_a, tot->pruned_b, tot->both, tot->hamming,
	       tot->jaccard);
}

int fp_cmd_compare(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct fp_mask_set *a = NULL, *b = NULL;
	struct fp_mask_cmp *cmps = NULL, tot = { .jaccard = 1.0 };
	size_t *map = NULL;
	const char *pa, *pb;
	bool json = false;
	int c, r;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			usage();
			return 0;
		default:
			fp_cli_bad_option(PROG, c, argv);
		}
	}
	if (argc - optind < 2)
		fp_cli_fail(PROG, "need two mask files");
	if (argc - optind > 2)
		fp_cli_fail(PROG, "unexpected argument '%s'", argv[optind + 2]);
	pa = argv[optind];
	pb = argv[optind + 1];

	fp_err_clear();
	r = fp_mask_set_load(pa, &a);
	if (r < 0)
		goto out;
	r = fp_mask_set_load(pb, &b);
	if (r < 0)
		goto out;
	cmps = calloc(a->count ? a->count : 1, sizeof(*cmps));
	map = calloc(a->count ? a->count : 1, sizeof(*map));
	if (!cmps || !map) {
		r = -ENOMEM;
		goto out;
	}
	r = match(a, b, pa, pb, map);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < a->count; i++) {
		fp_mask_compare(a->bits[i], b->bits[map[i]], a->info[i].nbits, &cmps[i]);
		add_cmp(&tot, &cmps[i]);
	}
	if (json)
		r = print_json(a, pa, pb, cmps, &tot);
	else
		print_text(a, cmps, &tot);
	if (r == 0 && fflush(stdout) != 0)
		r = -EIO;
out:
	if (r < 0)
		fprintf(stderr, "%s: %s\n", PROG, *fp_err_last() ? fp_err_last() : fp_strerror(r));
	free(map);
	free(cmps);
	fp_mask_set_free(a);
	fp_mask_set_free(b);
	return r < 0 ? 1 : 0;
}
