/*
 * Hugging Face output directories (see hfout.h).
 */
#include "hfout.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "alloc.h"
#include "dtype.h"
#include "err.h"
#include "fileio.h"

#define CHUNK (64u << 10) /* bytes converted per writer call */

struct entry {
	const struct fp_st_tensor *t;
	long group;
	size_t pos; /* source position, for a stable order */
};

struct shard {
	char *name;		/* base name, also the output name */
	struct fp_st_writer *w; /* NULL once closed */
	struct entry *ents;	/* (n) in write order */
	size_t n, next;
};

struct skipped {
	char *name;
	const char *reason;
};

struct fp_hfout {
	const struct fp_st_model *src;
	char *out;
	char *tmp;
	struct shard *shards; /* (nshards) */
	size_t nshards;
	struct skipped *skip; /* (nskip) */
	size_t nskip;
	long done; /* last group written */
	bool finished;
	bool failed;
	uint8_t *buf; /* (CHUNK) conversion buffer */
};

long fp_hfout_layer_of(const char *name)
{
	static const char pre[] = "model.layers.";
	const char *p;
	long v = 0;

	if (strncmp(name, pre, sizeof(pre) - 1) != 0)
		return FP_HFOUT_OTHER;
	p = name + sizeof(pre) - 1;
	if (*p < '0' || *p > '9' || (*p == '0' && p[1] >= '0' && p[1] <= '9'))
		return FP_HFOUT_OTHER;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (*p - '0');
		if (v > INT32_MAX)
			return FP_HFOUT_OTHER;
	}
	return *p == '.' ? v : FP_HFOUT_OTHER;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && strcmp(s + a - b, suffix) == 0;
}

static char *path_join(const char *dir, const char *name)
{
	char *p = NULL;

	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	return p;
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* ---- small files ---- */

static int add_skipped(struct fp_hfout *o, const char *name, const char *reason)
{
	struct skipped *s = fp_reallocarray(o->skip, o->nskip + 1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	o->skip = s;
	s[o->nskip].name = strdup(name);
	if (!s[o->nskip].name)
		return -ENOMEM;
	s[o->nskip++].reason = reason;
	return 0;
}

static const char SHARD[] = "rewritten shard";

/* Why name is not copied (SHARD: it is rewritten), or NULL to copy it. */
static const char *skip_reason(const struct fp_hfout *o, const char *name)
{
	static const char *const weights[] = { ".safetensors", ".bin", ".pt",	   ".pth",
					       ".ckpt",	       ".h5",  ".msgpack", ".gguf",
					       ".onnx",	       ".pkl", ".npz" };

	if (name[0] == '.')
		return "hidden";
	for (size_t i = 0; i < o->nshards; i++)
		if (strcmp(name, o->shards[i].name) == 0)
			return SHARD;
	for (size_t i = 0; i < sizeof(weights) / sizeof(weights[0]); i++)
		if (ends_with(name, weights[i]))
			return "weights";
	if (strcmp(name, "model.safetensors.index.json") == 0)
		return o->nshards > 1 ? NULL : "unused index";
	if (ends_with(name, ".index.json"))
		return "index of other weights";
	if (ends_with(name, ".fpmask") || strcmp(name, "report.json") == 0)
		return "pruning output";
	return NULL;
}

static int copy_file(const char *from, const char *to)
{
	struct fp_atomic_file out = { .fd = -1 };
	char *buf = malloc(CHUNK);
	size_t size;
	int in = -1, r;

	if (!buf)
		return -ENOMEM;
	r = fp_open_regular(from, FP_HFOUT_MAX_SMALL, &in, &size); /* never blocks on a FIFO */
	if (r < 0)
		goto out;
	r = fp_atomic_open(&out, to, 0666);
	if (r < 0)
		goto out;
	for (;;) {
		ssize_t n = read(in, buf, CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = fp_err_detail(-errno, "%s: read: %s", from, strerror(errno));
			goto out;
		}
		if (n == 0)
			break;
		r = fp_atomic_write(&out, buf, (size_t)n);
		if (r < 0)
			goto out;
	}
	r = fp_atomic_commit(&out);
out:
	fp_atomic_abort(&out);
	if (in >= 0)
		close(in);
	free(buf);
	return r;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int copy_small_files(struct fp_hfout *o, const char *src_dir)
{
	DIR *d = opendir(src_dir);
	struct dirent *e;
	char **names = NULL;
	size_t n = 0;
	int r = 0;

	if (!d)
		return fp_err_detail(-errno, "%s: %s", src_dir, strerror(errno));
	/* collect first: copy in name order, so a failure is reproducible */
	while ((e = readdir(d)) != NULL) {
		char **nn;

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		nn = fp_reallocarray(names, n + 1, sizeof(*names));
		if (!nn) {
			r = -ENOMEM;
			goto out;
		}
		names = nn;
		names[n] = strdup(e->d_name);
		if (!names[n]) {
			r = -ENOMEM;
			goto out;
		}
		n++;
	}
	qsort(names, n, sizeof(*names), cmp_names);
	for (size_t i = 0; i < n && r == 0; i++) {
		const char *why = skip_reason(o, names[i]);
		char *from = path_join(src_dir, names[i]), *to = path_join(o->tmp, names[i]);
		struct stat st;

		if (!from || !to) {
			r = -ENOMEM;
		} else if (stat(from, &st) < 0) {
			r = add_skipped(o, names[i], "cannot stat (broken link?)");
		} else if (!S_ISREG(st.st_mode)) {
			r = add_skipped(o, names[i],
					S_ISDIR(st.st_mode) ? "directory" : "not a file");
		} else if (why == SHARD) {
			r = 0;
		} else if (why) {
			r = add_skipped(o, names[i], why);
		} else if ((uint64_t)st.st_size > FP_HFOUT_MAX_SMALL) {
			r = add_skipped(o, names[i], "too large");
		} else {
			r = copy_file(from, to);
		}
		free(from);
		free(to);
	}
out:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return r;
}

/* ---- output directory ---- */

/* ---- shards ---- */

static int cmp_entries(const void *pa, const void *pb)
{
	const struct entry *a = pa, *b = pb;
	size_t sa = fp_dtype_size(a->t->dtype), sb = fp_dtype_size(b->t->dtype);

	if (a->group != b->group)
		return a->group < b->group ? -1 : 1;
	if (sa != sb)
		return sa > sb ? -1 : 1;
	return a->pos < b->pos ? -1 : a->pos > b->pos;
}

static int index_shards(struct fp_hfout *o)
{
	size_t n = fp_st_model_shard_count(o->src);

	o->shards = fp_callocarray(n ? n : 1, sizeof(*o->shards));
	if (!o->shards)
		return -ENOMEM;
	o->nshards = n;
	for (size_t i = 0; i < n; i++) {
		const struct fp_st_file *f = fp_st_model_shard(o->src, i);
		struct shard *sh = &o->shards[i];
		size_t cnt = fp_st_count(f);

		sh->name = strdup(base_name(fp_st_path(f)));
		sh->ents = fp_callocarray(cnt ? cnt : 1, sizeof(*sh->ents));
		if (!sh->name || !sh->ents)
			return -ENOMEM;
		sh->n = cnt;
		for (size_t j = 0; j < cnt; j++) {
			sh->ents[j].t = fp_st_at(f, j);
			sh->ents[j].group = fp_hfout_layer_of(sh->ents[j].t->name);
			sh->ents[j].pos = j;
		}
		qsort(sh->ents, cnt, sizeof(*sh->ents), cmp_entries);
	}
	return 0;
}

static int open_writer(struct fp_hfout *o, size_t i)
{
	const struct fp_st_file *f = fp_st_model_shard(o->src, i);
	struct shard *sh = &o->shards[i];
	size_t nmeta = fp_st_metadata_count(f);
	struct fp_st_decl *decls = fp_callocarray(sh->n ? sh->n : 1, sizeof(*decls));
	const char **meta = fp_callocarray(2 * nmeta + 3, sizeof(*meta));
	char *path = path_join(o->tmp, sh->name);
	int r = -ENOMEM;

	if (!decls || !meta || !path)
		goto out;
	for (size_t j = 0; j < sh->n; j++) {
		const struct fp_st_tensor *t = sh->ents[j].t;

		decls[j].name = t->name;
		decls[j].dtype = t->dtype;
		decls[j].ndim = t->ndim;
		memcpy(decls[j].shape, t->shape, sizeof(decls[j].shape));
	}
	for (size_t k = 0; k < nmeta; k++)
		meta[2 * k] = fp_st_metadata_at(f, k, &meta[2 * k + 1]);
	if (!nmeta) {
		meta[0] = "format";
		meta[1] = "pt";
	}
	r = fp_st_writer_open(path, decls, sh->n, meta, &sh->w);
out:
	free(decls);
	free(meta);
	free(path);
	return r;
}

static void hfout_free(struct fp_hfout *o)
{
	for (size_t i = 0; i < o->nshards; i++) {
		fp_st_writer_abort(o->shards[i].w);
		free(o->shards[i].name);
		free(o->shards[i].ents);
	}
	free(o->shards);
	for (size_t i = 0; i < o->nskip; i++)
		free(o->skip[i].name);
	free(o->skip);
	free(o->out);
	free(o->tmp);
	free(o->buf);
	free(o);
}

void fp_hfout_abort(struct fp_hfout *o)
{
	if (!o)
		return;
	for (size_t i = 0; i < o->nshards; i++) {
		fp_st_writer_abort(o->shards[i].w);
		o->shards[i].w = NULL;
	}
	if (o->tmp)
		fp_dir_remove_flat(o->tmp);
	hfout_free(o);
}

int fp_hfout_open(const struct fp_st_model *src, const char *src_dir, const char *out_dir,
		  struct fp_hfout **ret)
{
	struct fp_hfout *o = calloc(1, sizeof(*o));
	size_t len;
	int r;

	if (!o)
		return -ENOMEM;
	o->src = src;
	o->done = FP_HFOUT_OTHER - 1;
	o->out = strdup(out_dir);
	o->buf = malloc(CHUNK);
	if (!o->out || !o->buf) {
		r = -ENOMEM;
		goto fail;
	}
	len = strlen(o->out);
	while (len > 1 && o->out[len - 1] == '/')
		o->out[--len] = '\0';
	if (!len) {
		r = fp_err_detail(-EINVAL, "empty output directory name");
		goto fail;
	}
	r = fp_dir_check_new(o->out);
	if (r < 0)
		goto fail;
	r = index_shards(o);
	if (r < 0)
		goto fail;
	r = fp_dir_make_tmp(o->out, &o->tmp);
	if (r < 0)
		goto fail;
	r = copy_small_files(o, src_dir);
	if (r < 0)
		goto fail;
	for (size_t i = 0; i < o->nshards && r == 0; i++)
		r = open_writer(o, i);
	if (r < 0)
		goto fail;
	*ret = o;
	return 0;
fail:
	fp_hfout_abort(o);
	return r;
}

const char *fp_hfout_tmpdir(const struct fp_hfout *o)
{
	return o->tmp;
}

size_t fp_hfout_skipped_count(const struct fp_hfout *o)
{
	return o->nskip;
}

const char *fp_hfout_skipped(const struct fp_hfout *o, size_t i, const char **ret_reason)
{
	if (i >= o->nskip)
		return NULL;
	if (ret_reason)
		*ret_reason = o->skip[i].reason;
	return o->skip[i].name;
}

/* ---- tensors ---- */

static void put_le16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	put_le16(p, (uint16_t)v);
	put_le16(p + 2, (uint16_t)(v >> 16));
}

/* Convert v (t->numel) to t's dtype in chunks and append it to w. */
static int put_converted(struct fp_hfout *o, struct fp_st_writer *w, const struct fp_st_tensor *t,
			 const float *v)
{
	size_t es = fp_dtype_size(t->dtype), per = CHUNK / es;

	if (t->dtype != FP_DT_F32 && t->dtype != FP_DT_F16 && t->dtype != FP_DT_BF16)
		return fp_err_detail(-ENOTSUP, "tensor '%s': cannot store new values as %s",
				     t->name, fp_dtype_name(t->dtype));
	for (uint64_t i0 = 0; i0 < t->numel; i0 += per) {
		size_t m = t->numel - i0 < per ? (size_t)(t->numel - i0) : per;
		int r;

		for (size_t i = 0; i < m; i++) {
			float x = v[i0 + i];

			if (t->dtype == FP_DT_F32)
				put_le32(o->buf + 4 * i, fp_f32_bits(x));
			else if (t->dtype == FP_DT_F16)
				put_le16(o->buf + 2 * i, fp_f32_to_f16(x));
			else
				put_le16(o->buf + 2 * i, fp_f32_to_bf16(x));
		}
		r = fp_st_writer_write(w, o->buf, m * es);
		if (r < 0)
			return r;
	}
	return 0;
}

static int put_tensor(struct fp_hfout *o, struct shard *sh, const struct fp_st_tensor *t,
		      fp_hfout_fn fn, void *ctx)
{
	const float *v = NULL;
	int r = fn ? fn(ctx, t, &v) : 0;

	if (r < 0)
		return r;
	if (v)
		return put_converted(o, sh->w, t, v);
	r = t->nbytes ? fp_st_writer_write(sh->w, t->data, t->nbytes) : 0;
	fp_st_release(t);
	return r;
}

int fp_hfout_write(struct fp_hfout *o, long upto, fp_hfout_fn fn, void *ctx)
{
	int r = 0;

	if (o->failed || o->finished)
		return fp_err_detail(-EINVAL, "%s: output already %s", o->out,
				     o->failed ? "failed" : "finished");
	if (upto <= o->done)
		return 0;
	for (size_t i = 0; i < o->nshards && r == 0; i++) {
		struct shard *sh = &o->shards[i];

		while (r == 0 && sh->next < sh->n && sh->ents[sh->next].group <= upto) {
			r = put_tensor(o, sh, sh->ents[sh->next].t, fn, ctx);
			sh->next++;
		}
	}
	if (r < 0)
		o->failed = true;
	else
		o->done = upto;
	return r;
}

int fp_hfout_finish(struct fp_hfout *o, fp_hfout_fn fn, void *ctx)
{
	int r = fp_hfout_write(o, LONG_MAX, fn, ctx);

	for (size_t i = 0; i < o->nshards && r == 0; i++) {
		r = fp_st_writer_close(o->shards[i].w);
		o->shards[i].w = NULL;
	}
	if (r < 0)
		o->failed = true;
	else
		o->finished = true;
	return r;
}

int fp_hfout_commit(struct fp_hfout *o)
{
	int r;

	if (!o->finished || o->failed) {
		r = fp_err_detail(-EINVAL, "%s: output not finished", o->out);
		goto fail;
	}
	r = fp_dir_publish(o->tmp, o->out);
	if (r < 0)
		goto fail;
	hfout_free(o);
	return 0;
fail:
	fp_hfout_abort(o);
	return r;
}

/* ---- digest of the source ---- */

static int read_full(int fd, void *buf, size_t len, uint64_t off, const char *path)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fp_err_detail(-errno, "%s: read: %s", path, strerror(errno));
		if (n == 0)
			return fp_err_detail(-EIO, "%s: file shrank while reading its header",
					     path);
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

static int digest_shard(crypto_generichash_state *st, const char *path, uint8_t *buf)
{
	const char *name = base_name(path);
	uint8_t head[8], sz[8];
	uint64_t hlen = 0, off = 8;
	struct stat s;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fp_err_detail(-errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &s) < 0) {
		r = fp_err_detail(-errno, "%s: %s", path, strerror(errno));
		goto out;
	}
	r = read_full(fd, head, sizeof(head), 0, path);
	if (r < 0)
		goto out;
	for (int i = 7; i >= 0; i--)
		hlen = hlen << 8 | head[i];
	if (hlen > FP_ST_MAX_HEADER || hlen > (uint64_t)s.st_size - 8) {
		r = fp_err_detail(-EBADMSG, "%s: header: length %" PRIu64 " out of range", path,
				  hlen);
		goto out;
	}
	for (int i = 0; i < 8; i++)
		sz[i] = (uint8_t)((uint64_t)s.st_size >> (8 * i));
	crypto_generichash_update(st, (const uint8_t *)name, strlen(name) + 1);
	crypto_generichash_update(st, sz, sizeof(sz));
	crypto_generichash_update(st, head, sizeof(head));
	while (off < 8 + hlen) {
		size_t m = 8 + hlen - off < CHUNK ? (size_t)(8 + hlen - off) : CHUNK;

		r = read_full(fd, buf, m, off, path);
		if (r < 0)
			goto out;
		crypto_generichash_update(st, buf, m);
		off += m;
	}
out:
	close(fd);
	return r;
}

int fp_hfout_source_digest(const struct fp_st_model *src, uint8_t out[32])
{
	crypto_generichash_state st;
	uint8_t *buf = malloc(CHUNK);
	int sodium_ok = sodium_init(); /* idempotent; BLAKE2b works without it too */
	int r = 0;

	(void)sodium_ok;
	if (!buf)
		return -ENOMEM;
	crypto_generichash_init(&st, NULL, 0, 32);
	for (size_t i = 0; i < fp_st_model_shard_count(src) && r == 0; i++)
		r = digest_shard(&st, fp_st_path(fp_st_model_shard(src, i)), buf);
	if (r == 0)
		crypto_generichash_final(&st, out, 32);
	free(buf);
	return r;
}

/* ---- applying a mask file ---- */

/* s with control bytes replaced by '?', cut to fit buf (for messages). */
static const char *printable(const char *s, char *buf, size_t len)
{
	size_t i = 0;

	for (; s[i] && i + 1 < len; i++)
		buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
	buf[i] = '\0';
	return buf;
}

static void shape_str(const uint64_t *dims, unsigned ndim, char *buf, size_t len)
{
	size_t o = 0;
	int n = snprintf(buf, len, "[");

	o = n > 0 ? (size_t)n : 0;
	for (unsigned i = 0; i < ndim && o < len; i++) {
		n = snprintf(buf + o, len - o, "%s%" PRIu64, i ? ", " : "", dims[i]);
		o += n > 0 ? (size_t)n : 0;
	}
	if (o < len)
		snprintf(buf + o, len - o, "]");
}

int fp_hfout_check_mask(const struct fp_mask_set *ms, const struct fp_st_model *src,
			const char *label)
{
	char name[160], a[FP_MASK_MAX_DIMS * 22 + 4], b[FP_ST_MAX_DIMS * 22 + 4];

	for (size_t i = 0; i < ms->count; i++) {
		const struct fp_mask_info *in = &ms->info[i];
		const struct fp_st_tensor *t = fp_st_model_find(src, in->name);
		bool same;

		if (!t)
			return fp_err_detail(-EINVAL, "%s: tensor '%s': not in the model", label,
					     printable(in->name, name, sizeof(name)));
		if (t->dtype != FP_DT_F32 && t->dtype != FP_DT_F16 && t->dtype != FP_DT_BF16)
			return fp_err_detail(-EINVAL,
					     "%s: tensor '%s': the model's tensor is %s, not a "
					     "float tensor",
					     label, printable(in->name, name, sizeof(name)),
					     fp_dtype_name(t->dtype));
		same = t->ndim == in->ndim;
		for (unsigned d = 0; same && d < t->ndim; d++)
			same = t->shape[d] == in->dims[d];
		if (!same) {
			shape_str(in->dims, in->ndim, a, sizeof(a));
			shape_str(t->shape, t->ndim, b, sizeof(b));
			return fp_err_detail(-EINVAL,
					     "%s: tensor '%s': mask shape %s does not match the "
					     "model's %s",
					     label, printable(in->name, name, sizeof(name)), a, b);
		}
	}
	return 0;
}

struct apply_ctx {
	const struct fp_mask_set *ms;
	const struct fp_mask_info **sorted; /* (ms->count) by name */
	float *buf;			    /* (cap) */
	size_t cap;
	struct fp_hfout_apply_stats st;
};

static int cmp_info(const void *a, const void *b)
{
	return strcmp((*(const struct fp_mask_info *const *)a)->name,
		      (*(const struct fp_mask_info *const *)b)->name);
}

static int apply_fn(void *ctx, const struct fp_st_tensor *t, const float **ret)
{
	struct apply_ctx *c = ctx;
	struct fp_mask_info key = { .name = t->name }, *pkey = &key;
	const struct fp_mask_info **hit;
	const uint8_t *bits;
	int r;

	hit = bsearch(&pkey, c->sorted, c->ms->count, sizeof(*c->sorted), cmp_info);
	if (!hit)
		return 0;
	bits = c->ms->bits[*hit - c->ms->info];
	if (t->numel > c->cap) {
		float *nb = fp_reallocarray(c->buf, t->numel, sizeof(float));

		if (!nb)
			return fp_err_detail(-ENOMEM, "tensor '%s': out of memory", t->name);
		c->buf = nb;
		c->cap = t->numel;
	}
	r = fp_st_to_f32(t, c->buf);
	fp_st_release(t);
	if (r < 0)
		return r;
	fp_mask_apply(c->buf, bits, 1, t->numel);
	c->st.masked++;
	c->st.numel += t->numel;
	c->st.pruned += fp_mask_count(bits, t->numel);
	for (size_t i = 0; i < t->numel; i++)
		c->st.zeros += c->buf[i] == 0.0f;
	*ret = c->buf;
	return 0;
}

int fp_hfout_apply_mask(const char *src_dir, const struct fp_mask_set *ms, const char *label,
			const char *out_dir, struct fp_hfout_apply_stats *ret)
{
	struct apply_ctx c = { .ms = ms };
	struct fp_st_model *src = NULL;
	struct fp_hfout *o = NULL;
	int r;

	r = fp_st_model_open(src_dir, &src);
	if (r < 0)
		goto out;
	r = fp_hfout_check_mask(ms, src, label);
	if (r < 0)
		goto out;
	c.sorted = fp_callocarray(ms->count ? ms->count : 1, sizeof(*c.sorted));
	if (!c.sorted) {
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ms->count; i++)
		c.sorted[i] = &ms->info[i];
	qsort(c.sorted, ms->count, sizeof(*c.sorted), cmp_info);
	r = fp_hfout_open(src, src_dir, out_dir, &o);
	if (r < 0)
		goto out;
	r = fp_hfout_finish(o, apply_fn, &c);
	if (r < 0)
		goto out;
	r = fp_hfout_commit(o);
	o = NULL;
	if (r == 0 && ret)
		*ret = c.st;
out:
	fp_hfout_abort(o);
	free(c.sorted);
	free(c.buf);
	fp_st_model_close(src);
	return r;
}
