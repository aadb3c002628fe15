/*
 * Local differential privacy of a client's mask before it leaves the machine (docs/privacy.md):
 * per-bit randomized response (or optimal unary encoding) through the permanent-response memo,
 * so the same true mask is always sent with the same randomized bits, and an account of how
 * much privacy the client has spent.
 *
 * Files in the client's state directory:
 *   ldp/memo-<first 16 hex of the true mask's digest>.fpldp   the memo of one true mask
 *   ldp/account.json     {"responses": fresh randomizations, "rounds": submissions,
 *                         "total_epsilon": sum of epsilon over fresh responses}
 * The total is basic sequential composition over fresh responses: an upper bound on the loss
 * of any one weight's decision (a repeated submission of an unchanged mask adds nothing).
 */
#ifndef FP_PRIVATIZE_H
#define FP_PRIVATIZE_H

#include <stdbool.h>
#include <stdint.h>

/* What was done, for Commit.privacy (LdpReport) and the logs. */
struct fp_privatize_result {
	int mech;	  /* enum fp_ldp_mech */
	double eps;	  /* as requested */
	double eps_bit;	  /* achieved loss of one bit */
	double p, q;	  /* achieved P(1 -> 1), P(0 -> 1) */
	bool fresh;	  /* a new randomization (false: the memo's) */
	uint32_t rounds;  /* submissions made with local DP so far, this one included */
	double total_eps; /* composed loss over fresh responses so far */
};

/*
 * Randomize the mask file `in` (the true local mask; mask.h format) with mechanism mech
 * (FP_LDP_RR_SYM or FP_LDP_RR_OUE) and eps into the mask file `out` (written atomically),
 * through the memo and account in ldp_dir (created, mode 0700). model_digest identifies the
 * model (borrowed). Randomness: libsodium's CSPRNG. Fills *ret. Returns 0 or a negative errno
 * with fp_err_last() naming the file (a malformed memo is an error, never silently replaced).
 */
int fp_privatize_mask(const char *in, const char *out, const char *ldp_dir,
		      const uint8_t model_digest[32], int mech, double eps,
		      struct fp_privatize_result *ret);

#endif
