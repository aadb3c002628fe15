/* Local DP of a client's mask; see privatize.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "alloc.h"
#include "err.h"
#include "fileio.h"
#include "ldp.h"
#include "mask.h"
#include "privatize.h"

/* The account: fresh responses, submissions, composed ε. A missing file is all zeros. */
struct account {
	uint64_t responses, rounds;
	double total_eps;
};

static int account_load(const char *path, struct account *a)
{
	char *buf = NULL;
	size_t len = 0;
	cJSON *j, *x, *y, *z;
	int e;

	memset(a, 0, sizeof(*a));
	e = fp_read_file(path, 1u << 16, &buf, &len);
	if (e == -ENOENT)
		return 0;
	if (e < 0)
		return e;
	j = cJSON_ParseWithLength(buf, len);
	free(buf);
	x = cJSON_GetObjectItemCaseSensitive(j, "responses");
	y = cJSON_GetObjectItemCaseSensitive(j, "rounds");
	z = cJSON_GetObjectItemCaseSensitive(j, "total_epsilon");
	if (!cJSON_IsNumber(x) || !cJSON_IsNumber(y) || !cJSON_IsNumber(z) ||
	    !(x->valuedouble >= 0) || !(y->valuedouble >= 0) || !(z->valuedouble >= 0) ||
	    x->valuedouble > 1e15 || y->valuedouble > 1e15 || z->valuedouble > 1e15) {
		cJSON_Delete(j);
		return fp_err_detail(-EINVAL,
				     "%s: not a privacy account (responses, rounds, "
				     "total_epsilon)",
				     path);
	}
	a->responses = (uint64_t)x->valuedouble;
	a->rounds = (uint64_t)y->valuedouble;
	a->total_eps = z->valuedouble;
	cJSON_Delete(j);
	return 0;
}

static int account_save(const char *path, const struct account *a)
{
	char text[256];
	int n;

	n = snprintf(text, sizeof(text),
		     "{\"responses\": %" PRIu64 ", \"rounds\": %" PRIu64
		     ", \"total_epsilon\": %.17g}\n",
		     a->responses, a->rounds, a->total_eps);
	return fp_write_file_atomic(path, text, (size_t)n, 0600);
}

/* The true mask's identity: the file's own trailing digest (over every byte before it). */
static int mask_digest(const char *path, uint8_t out[32])
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), e = 0;

	if (fd < 0)
		return fp_err_detail(-errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || st.st_size < 32 || pread(fd, out, 32, st.st_size - 32) != 32)
		e = fp_err_detail(-EIO, "%s: cannot read its digest", path);
	close(fd);
	return e;
}

int fp_privatize_mask(const char *in, const char *out, const char *ldp_dir,
		      const uint8_t model_digest[32], int mech, double eps,
		      struct fp_privatize_result *ret)
{
	struct fp_mask_set *ms = NULL;
	struct fp_ldp_mask_in *mi = NULL;
	struct fp_ldp_memo *memo = NULL;
	struct fp_mask_writer *w = NULL;
	struct fp_ldp_rng rng;
	struct fp_ldp_rr rr;
	struct account acct;
	uint8_t md[32];
	char hex[65], *memo_path = NULL, *acct_path = NULL;
	bool fresh = false, rng_on = false;
	int e;

	memset(ret, 0, sizeof(*ret));
	if (mech == FP_LDP_RR_SYM)
		e = fp_ldp_rr_sym(&rr, eps);
	else if (mech == FP_LDP_RR_OUE)
		e = fp_ldp_rr_oue(&rr, eps);
	else
		e = fp_err_detail(-EINVAL, "local DP mechanism %d: rr or oue only", mech);
	if (e < 0)
		return e;
	if (mkdir(ldp_dir, 0700) < 0 && errno != EEXIST)
		return fp_err_detail(-errno, "%s: %s", ldp_dir, strerror(errno));
	e = mask_digest(in, md);
	if (e < 0)
		return e;
	sodium_bin2hex(hex, sizeof(hex), md, sizeof(md));
	if (asprintf(&memo_path, "%s/memo-%.16s.fpldp", ldp_dir, hex) < 0 ||
	    asprintf(&acct_path, "%s/account.json", ldp_dir) < 0) {
		memo_path = acct_path = NULL;
		e = -ENOMEM;
		goto out;
	}
	e = account_load(acct_path, &acct);
	if (e == 0)
		e = fp_mask_set_load(in, &ms);
	if (e < 0)
		goto out;
	mi = fp_callocarray(ms->count, sizeof(*mi));
	if (!mi) {
		e = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ms->count; i++) {
		mi[i].name = ms->info[i].name;
		mi[i].nbits = ms->info[i].nbits;
		mi[i].bits = ms->bits[i];
	}
	e = fp_ldp_rng_init(&rng);
	if (e < 0)
		goto out;
	rng_on = true;
	e = fp_ldp_memo_respond(memo_path, model_digest, md, &rr, mi, ms->count, &rng, &memo,
				&fresh);
	if (e < 0)
		goto out;
	if (memo->count != ms->count) {
		e = fp_err_detail(-EINVAL, "%s: tensor count differs from %s", memo_path, in);
		goto out;
	}
	e = fp_mask_writer_open(out, ms->info, ms->count, &w);
	for (size_t i = 0; e == 0 && i < ms->count; i++)
		e = fp_mask_writer_add(w, memo->t[i].bits, (size_t)ms->info[i].nbytes);
	if (e == 0) {
		e = fp_mask_writer_close(w);
		w = NULL;
	}
	if (e < 0)
		goto out;
	acct.rounds++;
	if (fresh) {
		acct.responses++;
		acct.total_eps += eps;
	}
	e = account_save(acct_path, &acct);
	if (e < 0)
		goto out;
	ret->mech = mech;
	ret->eps = eps;
	ret->eps_bit = rr.eps_bit;
	ret->p = rr.p;
	ret->q = rr.q;
	ret->fresh = fresh;
	ret->rounds = acct.rounds > UINT32_MAX ? UINT32_MAX : (uint32_t)acct.rounds;
	ret->total_eps = acct.total_eps;
out:
	if (w)
		fp_mask_writer_abort(w);
	if (rng_on)
		fp_ldp_rng_clear(&rng);
	fp_ldp_memo_free(memo);
	fp_mask_set_free(ms);
	free(mi);
	free(memo_path);
	free(acct_path);
	return e;
}
