/*
 * Streaming check of a submitted mask against the round's pruning rule (see maskcheck.h).
 *
 * ROW, N:M and LAYER are one walk over "groups" that are consecutive in the bit stream:
 * cols bits (a row), m bits (an N:M group: cols % m == 0, so groups never straddle rows) or
 * rows * cols bits (the layer). The walk keeps the bits left in the current group and its
 * count; a chunk is cut at group ends and each piece popcounted (byte head, 64-bit words,
 * byte tail), so a group may start at any bit of any chunk. COLUMN keeps one counter per
 * column and the column of the next bit; whole 64-column words of a row are added to 8
 * bit-sliced counters per word (a ripple-carry add of 64 one-bit numbers), other bits one by
 * one to their column's counter.
 */
#include "maskcheck.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "mask.h"

static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return v;
}

/* Little-endian load of up to 8 bytes (avail of them exist at p), zero-filled. */
static inline uint64_t load_upto64(const uint8_t *p, size_t avail)
{
	uint64_t v = 0;

	if (avail >= 8)
		return load64(p);
	for (size_t i = 0; i < avail; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/* ---- popcount of whole bytes, with and without the POPCNT instruction ---- */

static inline __attribute__((always_inline)) uint64_t pop_bytes_body(const uint8_t *p, size_t n)
{
	uint64_t a = 0, b = 0, c = 0, d = 0;
	size_t i = 0;

	for (; i + 32 <= n; i += 32) {
		a += (uint64_t)__builtin_popcountll(load64(p + i));
		b += (uint64_t)__builtin_popcountll(load64(p + i + 8));
		c += (uint64_t)__builtin_popcountll(load64(p + i + 16));
		d += (uint64_t)__builtin_popcountll(load64(p + i + 24));
	}
	for (; i + 8 <= n; i += 8)
		a += (uint64_t)__builtin_popcountll(load64(p + i));
	for (; i < n; i++)
		b += (uint64_t)__builtin_popcount(p[i]);
	return a + b + c + d;
}

static uint64_t pop_bytes_sw(const uint8_t *p, size_t n)
{
	return pop_bytes_body(p, n);
}

#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("popcnt"))) static uint64_t pop_bytes_hw(const uint8_t *p, size_t n)
{
	return pop_bytes_body(p, n);
}
#endif

static uint64_t (*pick_pop(void))(const uint8_t *, size_t)
{
#if defined(__x86_64__) || defined(__i386__)
	if (__builtin_cpu_supports("popcnt"))
		return pop_bytes_hw;
#endif
	return pop_bytes_sw;
}

/* Set bits among bits [b, e) of p (bit offsets from p, any alignment). */
static uint64_t pop_range(const struct fp_maskcheck *mc, const uint8_t *p, uint64_t b, uint64_t e)
{
	uint64_t n = 0;

	if (b >= e)
		return 0;
	if (b & 7) {
		unsigned sh = (unsigned)(b & 7);
		uint64_t take = min_u64(8 - sh, e - b);

		n += (uint64_t)__builtin_popcount((unsigned)(p[b >> 3] >> sh) & ((1u << take) - 1));
		b += take;
	}
	if (e - b >= 8) {
		size_t nb = (size_t)((e - b) >> 3);

		n += mc->pop(p + (b >> 3), nb);
		b += (uint64_t)nb * 8;
	}
	if (b < e)
		n += (uint64_t)__builtin_popcount(p[b >> 3] & ((1u << (e - b)) - 1));
	return n;
}

/*
 * Per-field bit counts of x cut into fields of m bits (m a power of two <= 64): each field
 * holds the number of set bits it had (at most m, which fits in m bits).
 */
static inline __attribute__((always_inline)) uint64_t field_counts(uint64_t x, unsigned m)
{
	if (m >= 2)
		x = x - ((x >> 1) & 0x5555555555555555ull);
	if (m >= 4)
		x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
	if (m >= 8)
		x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
	if (m >= 16)
		x = (x + (x >> 8)) & 0x00ff00ff00ff00ffull;
	if (m >= 32)
		x = (x + (x >> 16)) & 0x0000ffff0000ffffull;
	if (m >= 64)
		x = (x + (x >> 32)) & 0xffffffffull;
	return x;
}

static void fail_group(struct fp_maskcheck *mc, uint64_t index, uint64_t count)
{
	mc->bad = true;
	mc->bad_index = index;
	mc->bad_count = count;
}

/*
 * Bits of p from b (a byte boundary) on, in blocks of 512 while every field of m bits (a
 * constant after inlining) counts as in target; stops at the first block with a mismatch.
 * Returns the bit offset reached.
 */
static inline __attribute__((always_inline)) uint64_t
nm_blocks(const uint8_t *p, uint64_t b, uint64_t nb, unsigned m, uint64_t target)
{
	while (nb - b >= 512) {
		const uint8_t *q = p + (b >> 3);
		uint64_t acc = 0;

		for (int t = 0; t < 8; t++)
			acc |= field_counts(load64(q + 8 * t), m) ^ target;
		if (acc)
			break;
		b += 512;
	}
	return b;
}

/*
 * N:M with m a power of two, at the start of a group on a byte boundary of p: whole 64-bit
 * words of 64 / m groups each. Returns the bit offset reached.
 */
static uint64_t nm_words(struct fp_maskcheck *mc, const uint8_t *p, uint64_t b, uint64_t nb)
{
	unsigned m = mc->m;
	uint64_t fmask = m == 64 ? ~0ull : (1ull << m) - 1;
	uint64_t ones = ~0ull / fmask; /* 1 at the low bit of every field */
	uint64_t target = ones * mc->need, b0 = b;

	switch (m) { /* constant m: the field count folds to a few operations */
	case 1:
		b = nm_blocks(p, b, nb, 1, target);
		break;
	case 2:
		b = nm_blocks(p, b, nb, 2, target);
		break;
	case 4:
		b = nm_blocks(p, b, nb, 4, target);
		break;
	case 8:
		b = nm_blocks(p, b, nb, 8, target);
		break;
	case 16:
		b = nm_blocks(p, b, nb, 16, target);
		break;
	case 32:
		b = nm_blocks(p, b, nb, 32, target);
		break;
	default:
		b = nm_blocks(p, b, nb, 64, target);
		break;
	}
	mc->seg_index += (b - b0) / m;
	/* word by word: the rest, and the block with a mismatch if any */
	while (nb - b >= 64) {
		uint64_t x = field_counts(load64(p + (b >> 3)), m);
		uint64_t d = x ^ target;

		if (d) {
			unsigned f = (unsigned)__builtin_ctzll(d) / m;

			fail_group(mc, mc->seg_index + f, (x >> (f * m)) & fmask);
			return b;
		}
		mc->seg_index += 64 / m;
		b += 64;
	}
	return b;
}

/* ROW, N:M, LAYER: the first nb bits of p continue the stream. */
static void feed_groups(struct fp_maskcheck *mc, const uint8_t *p, uint64_t nb)
{
	bool swar = mc->group == FP_GROUP_NM && mc->m <= 64 && !(mc->m & (mc->m - 1));
	uint64_t b = 0;

	while (b < nb && !mc->bad) {
		uint64_t take;

		if (swar && mc->seg_left == mc->m && !(b & 7) && nb - b >= 64) {
			b = nm_words(mc, p, b, nb);
			continue;
		}
		take = min_u64(mc->seg_left, nb - b);
		mc->seg_count += pop_range(mc, p, b, b + take);
		b += take;
		mc->seg_left -= take;
		if (mc->seg_left)
			break;
		if (mc->seg_count != mc->need) {
			fail_group(mc, mc->seg_index, mc->seg_count);
			break;
		}
		mc->seg_index++;
		mc->seg_count = 0;
		mc->seg_left = mc->seg_len;
	}
}

/* cnt[t] += bit b + t of p for every t < e - b (p has plen bytes, e <= 8 * plen). */
static void add_bits(uint64_t *cnt, const uint8_t *p, size_t plen, uint64_t b, uint64_t e)
{
	while (b < e) {
		unsigned sh = (unsigned)(b & 7);
		uint64_t take = min_u64(64 - sh, e - b);
		size_t byte = (size_t)(b >> 3);
		uint64_t w = load_upto64(p + byte, plen - byte) >> sh;

		if (take < 64)
			w &= (1ull << take) - 1;
		while (w) {
			cnt[__builtin_ctzll(w)]++;
			w &= w - 1;
		}
		cnt += take;
		b += take;
	}
}

/* Add the 64 one-bit counts of x to the bit-sliced counters pl[0..7] (pl[k]: bit k of each). */
static inline void planes_add(uint64_t *pl, uint64_t x)
{
	for (int k = 0; k < 8 && x; k++) {
		uint64_t carry = pl[k] & x;

		pl[k] ^= x;
		x = carry;
	}
}

/* Move the bit-sliced counts into col_count and clear them. */
static void planes_flush(struct fp_maskcheck *mc)
{
	size_t nw = mc->cols / 64;

	for (size_t w = 0; w < nw; w++) {
		uint64_t *pl = mc->planes + 8 * w;

		for (unsigned t = 0; t < 64; t++) {
			uint64_t c = 0;

			for (unsigned k = 0; k < 8; k++)
				c |= (pl[k] >> t & 1) << k;
			mc->col_count[64 * w + t] += c;
		}
		memset(pl, 0, 8 * sizeof(*pl));
	}
	mc->rows_unflushed = 0;
}

/*
 * COLUMN: the first nb bits of p (plen bytes) continue the stream. Whole 64-column words of
 * a row go into the bit-sliced counters (flushed every 255 rows, so they never overflow);
 * other bits (a word cut by a chunk end, the last cols % 64 columns) go to col_count one by
 * one.
 */
static void feed_cols(struct fp_maskcheck *mc, const uint8_t *p, size_t plen, uint64_t nb)
{
	uint64_t b = 0;

	while (b < nb) {
		uint64_t take;

		while (mc->planes && !(mc->col & 63) && mc->col + 64 <= mc->cols && nb - b >= 64) {
			unsigned sh = (unsigned)(b & 7);
			const uint8_t *q = p + (b >> 3);
			uint64_t w = load64(q);

			if (sh)
				w = w >> sh | (uint64_t)q[8] << (64 - sh);
			planes_add(mc->planes + 8 * (mc->col / 64), w);
			b += 64;
			mc->col += 64;
		}
		take = min_u64(min_u64(64 - (mc->col & 63), mc->cols - mc->col), nb - b);
		add_bits(mc->col_count + mc->col, p, plen, b, b + take);
		b += take;
		mc->col += take;
		if (mc->col == mc->cols) {
			mc->col = 0;
			if (mc->planes && ++mc->rows_unflushed == 255)
				planes_flush(mc);
		}
	}
}

/* The verdict for the state in mc, with its detail. */
static int report(const struct fp_maskcheck *mc)
{
	const char *nm = mc->name;

	if (mc->overfed)
		return fp_err_detail(-EINVAL,
				     "mask check: tensor '%s': %llu bytes fed, more than the %llu "
				     "bytes of its (%zu, %zu) mask",
				     nm, (unsigned long long)mc->overfed,
				     (unsigned long long)mc->nbytes, mc->rows, mc->cols);
	if (mc->fed < mc->nbytes)
		return fp_err_detail(-EINVAL,
				     "mask check: tensor '%s': only %llu of the %llu bytes of its "
				     "(%zu, %zu) mask received",
				     nm, (unsigned long long)mc->fed,
				     (unsigned long long)mc->nbytes, mc->rows, mc->cols);
	if (mc->bad_padding)
		return fp_err_detail(
			-EINVAL,
			"mask check: tensor '%s': padding bits of the last byte are set "
			"(byte 0x%02x, %llu weights)",
			nm, mc->pad_byte, (unsigned long long)mc->nbits);
	if (!mc->bad)
		return 0;
	switch (mc->group) {
	case FP_GROUP_ROW:
		return fp_err_detail(
			-EDOM,
			"mask check: tensor '%s': row %llu has %llu pruned, required %llu "
			"(row rule, sparsity %g, %zu columns)",
			nm, (unsigned long long)mc->bad_index, (unsigned long long)mc->bad_count,
			(unsigned long long)mc->need, mc->sparsity, mc->cols);
	case FP_GROUP_COLUMN:
		return fp_err_detail(
			-EDOM,
			"mask check: tensor '%s': column %llu has %llu pruned, required "
			"%llu (column rule, sparsity %g, %zu rows)",
			nm, (unsigned long long)mc->bad_index, (unsigned long long)mc->bad_count,
			(unsigned long long)mc->need, mc->sparsity, mc->rows);
	case FP_GROUP_NM: {
		uint64_t flat = mc->bad_index * mc->m;
		uint64_t j = flat % mc->cols;

		return fp_err_detail(-EDOM,
				     "mask check: tensor '%s': N:M group at row %llu, columns "
				     "%llu..%llu has %llu pruned, required %u (%u:%u)",
				     nm, (unsigned long long)(flat / mc->cols),
				     (unsigned long long)j, (unsigned long long)(j + mc->m - 1),
				     (unsigned long long)mc->bad_count, mc->n, mc->n, mc->m);
	}
	case FP_GROUP_LAYER:
	default:
		return fp_err_detail(
			-EDOM,
			"mask check: tensor '%s': the layer has %llu pruned, required %llu "
			"(layer rule, sparsity %g, %llu weights)",
			nm, (unsigned long long)mc->bad_count, (unsigned long long)mc->need,
			mc->sparsity, (unsigned long long)mc->nbits);
	}
}

/* Validate the arguments and fill the rule and the walk state; allocates nothing. */
static int setup(struct fp_maskcheck *mc, size_t rows, size_t cols, enum fp_group group,
		 double sparsity, unsigned nm_n, unsigned nm_m, const char *name)
{
	size_t nbits;

	memset(mc, 0, sizeof(*mc));
	mc->name = name ? name : "matrix";
	mc->rows = rows;
	mc->cols = cols;
	mc->group = group;
	mc->pop = pick_pop();
	if (!rows || !cols)
		return fp_err_detail(-EINVAL, "mask check: tensor '%s': empty shape (%zu, %zu)",
				     mc->name, rows, cols);
	if (!fp_mul_ok(rows, cols, &nbits) || (uint64_t)nbits > FP_MASKCHECK_MAX_BITS)
		return fp_err_detail(-EINVAL,
				     "mask check: tensor '%s': shape (%zu, %zu) has more than 2^53 "
				     "weights",
				     mc->name, rows, cols);
	mc->nbits = nbits;
	mc->nbytes = fp_mask_bytes(nbits);
	if (group == FP_GROUP_NM) {
		if (!nm_n || !nm_m || nm_n > nm_m)
			return fp_err_detail(-EINVAL,
					     "mask check: tensor '%s': bad N:M pattern %u:%u",
					     mc->name, nm_n, nm_m);
		if (cols % nm_m)
			return fp_err_detail(
				-EINVAL,
				"mask check: tensor '%s': %zu columns are not a multiple "
				"of M = %u (%u:%u)",
				mc->name, cols, nm_m, nm_n, nm_m);
		mc->n = nm_n;
		mc->m = nm_m;
		mc->need = nm_n;
		mc->seg_len = nm_m;
	} else {
		struct fp_select_spec sp;

		if (group != FP_GROUP_ROW && group != FP_GROUP_LAYER && group != FP_GROUP_COLUMN)
			return fp_err_detail(-EINVAL,
					     "mask check: tensor '%s': unknown comparison group %d",
					     mc->name, (int)group);
		if (fp_select_spec_init(&sp, group, sparsity, rows, cols) < 0)
			return fp_err_detail(-EINVAL,
					     "mask check: tensor '%s': sparsity %g outside [0, 1]",
					     mc->name, sparsity);
		mc->sparsity = sparsity;
		mc->need = sp.k;
		mc->seg_len = group == FP_GROUP_ROW ? cols : group == FP_GROUP_LAYER ? nbits : 0;
	}
	mc->seg_left = mc->seg_len;
	return 0;
}

int fp_maskcheck_init(struct fp_maskcheck *mc, size_t rows, size_t cols, enum fp_group group,
		      double sparsity, unsigned nm_n, unsigned nm_m, const char *name)
{
	int r = setup(mc, rows, cols, group, sparsity, nm_n, nm_m, name);

	if (r < 0)
		goto fail;
	if (name) {
		mc->name_buf = fp_strdup(name);
		if (!mc->name_buf) {
			r = -ENOMEM;
			goto fail;
		}
		mc->name = mc->name_buf;
	}
	if (group == FP_GROUP_COLUMN) {
		mc->col_count = fp_callocarray(cols, sizeof(*mc->col_count));
		if (!mc->col_count) {
			r = -ENOMEM;
			goto fail;
		}
		if (cols >= 64) {
			mc->planes = fp_callocarray(cols / 64 * 8, sizeof(*mc->planes));
			if (!mc->planes) {
				r = -ENOMEM;
				goto fail;
			}
		}
	}
	return 0;
fail:
	/* keep the object inert: finish and feed on it fail */
	free(mc->name_buf);
	free(mc->col_count);
	free(mc->planes);
	memset(mc, 0, sizeof(*mc));
	return r;
}

int fp_maskcheck_feed(struct fp_maskcheck *mc, const uint8_t *bytes, size_t len)
{
	uint64_t pos, nb;

	if (!mc->nbits)
		return fp_err_detail(-EINVAL, "mask check: not initialised");
	if (mc->finished)
		return fp_err_detail(-EINVAL, "mask check: tensor '%s': bytes fed after finish",
				     mc->name);
	if (mc->overfed)
		return report(mc);
	if (len > mc->nbytes - mc->fed) {
		mc->overfed = len > UINT64_MAX - mc->fed ? UINT64_MAX : mc->fed + len;
		return report(mc);
	}
	if (!len)
		return 0;
	pos = mc->fed * 8;
	nb = min_u64((uint64_t)len * 8, mc->nbits - pos);
	if (!mc->bad) {
		if (mc->group == FP_GROUP_COLUMN)
			feed_cols(mc, bytes, len, nb);
		else
			feed_groups(mc, bytes, nb);
	}
	mc->fed += len;
	if (mc->fed == mc->nbytes && mc->nbits % 8) {
		uint8_t last = bytes[len - 1];

		if (last >> (mc->nbits % 8)) {
			mc->bad_padding = true;
			mc->pad_byte = last;
		}
	}
	return 0;
}

bool fp_maskcheck_failed(const struct fp_maskcheck *mc)
{
	return mc->bad || mc->bad_padding || mc->overfed;
}

int fp_maskcheck_finish(struct fp_maskcheck *mc)
{
	if (!mc->nbits)
		return fp_err_detail(-EINVAL, "mask check: not initialised");
	if (!mc->finished && mc->group == FP_GROUP_COLUMN && mc->fed == mc->nbytes) {
		if (mc->planes)
			planes_flush(mc);
		for (size_t j = 0; j < mc->cols; j++)
			if (mc->col_count[j] != mc->need) {
				fail_group(mc, j, mc->col_count[j]);
				break;
			}
	}
	mc->finished = true;
	return report(mc);
}

void fp_maskcheck_destroy(struct fp_maskcheck *mc)
{
	if (!mc)
		return;
	free(mc->name_buf);
	free(mc->col_count);
	free(mc->planes);
	memset(mc, 0, sizeof(*mc));
}

int fp_maskcheck_naive(const uint8_t *bits, size_t nbytes, size_t rows, size_t cols,
		       enum fp_group group, double sparsity, unsigned nm_n, unsigned nm_m,
		       const char *name)
{
	struct fp_maskcheck c;
	int r = setup(&c, rows, cols, group, sparsity, nm_n, nm_m, name);

	if (r < 0)
		return r;
	if (nbytes > c.nbytes) {
		c.overfed = nbytes;
		return report(&c);
	}
	c.fed = nbytes;
	if (nbytes < c.nbytes)
		return report(&c);
	for (uint64_t p = c.nbits; p < 8 * c.nbytes; p++)
		if (fp_mask_get(bits, p)) {
			c.bad_padding = true;
			c.pad_byte = bits[c.nbytes - 1];
			return report(&c);
		}
	switch (group) {
	case FP_GROUP_ROW:
		for (size_t i = 0; i < rows && !c.bad; i++) {
			uint64_t cnt = 0;

			for (size_t j = 0; j < cols; j++)
				cnt += fp_mask_get(bits, (uint64_t)i * cols + j);
			if (cnt != c.need)
				fail_group(&c, i, cnt);
		}
		break;
	case FP_GROUP_COLUMN:
		for (size_t j = 0; j < cols && !c.bad; j++) {
			uint64_t cnt = 0;

			for (size_t i = 0; i < rows; i++)
				cnt += fp_mask_get(bits, (uint64_t)i * cols + j);
			if (cnt != c.need)
				fail_group(&c, j, cnt);
		}
		break;
	case FP_GROUP_NM:
		for (size_t i = 0; i < rows && !c.bad; i++)
			for (size_t j = 0; j < cols && !c.bad; j += nm_m) {
				uint64_t cnt = 0;

				for (size_t t = 0; t < nm_m; t++)
					cnt += fp_mask_get(bits, (uint64_t)i * cols + j + t);
				if (cnt != c.need)
					fail_group(&c, ((uint64_t)i * cols + j) / nm_m, cnt);
			}
		break;
	case FP_GROUP_LAYER:
	default: {
		uint64_t cnt = 0;

		for (uint64_t p = 0; p < c.nbits; p++)
			cnt += fp_mask_get(bits, p);
		if (cnt != c.need)
			fail_group(&c, 0, cnt);
		break;
	}
	}
	return report(&c);
}
