/*
 * Sample envelopes with every field set (see net_msgs.h).
 */
#include "test.h"

#include "net_msgs.h"

#include <stdlib.h>
#include <string.h>

const fp_msg_t fp_test_msg_types[] = {
	FEDPRUNE__ENVELOPE__MSG_HELLO,	       FEDPRUNE__ENVELOPE__MSG_WELCOME,
	FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC,    FEDPRUNE__ENVELOPE__MSG_CHUNK,
	FEDPRUNE__ENVELOPE__MSG_COMMIT,	       FEDPRUNE__ENVELOPE__MSG_RECEIPT,
	FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER,  FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST,
	FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT,   FEDPRUNE__ENVELOPE__MSG_HEARTBEAT,
	FEDPRUNE__ENVELOPE__MSG_ERROR,	       FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY,
	FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS, FEDPRUNE__ENVELOPE__MSG_SECAGG_KEYS,
};
const size_t fp_test_n_msg_types = sizeof(fp_test_msg_types) / sizeof(fp_test_msg_types[0]);

uint8_t *fp_test_pack(const Fedprune__Envelope *e, size_t *len)
{
	uint8_t *p;

	*len = fedprune__envelope__get_packed_size(e);
	p = malloc(*len ? *len : 1);
	assert_non_null(p);
	assert_int_equal(fedprune__envelope__pack(e, p), *len);
	return p;
}

void fp_test_with_sample(fp_msg_t type, void (*fn)(const Fedprune__Envelope *e, void *ud), void *ud)
{
	static uint8_t digest[32], key[32], sig[64], data[1024];
	static char *caps[] = { "upload-resume", "scores-q8" };
	static char *tensors[] = { "model.layers.0.self_attn.q_proj.weight",
				   "model.layers.0.mlp.up_proj.weight" };
	static uint64_t shape[] = { 64, 128 };
	Fedprune__Envelope e = FEDPRUNE__ENVELOPE__INIT;
	Fedprune__Hello hello = FEDPRUNE__HELLO__INIT;
	Fedprune__Welcome welcome = FEDPRUNE__WELCOME__INIT;
	Fedprune__RoundSpec spec = FEDPRUNE__ROUND_SPEC__INIT;
	Fedprune__PrivacySpec priv = FEDPRUNE__PRIVACY_SPEC__INIT;
	Fedprune__TensorChunk chunk = FEDPRUNE__TENSOR_CHUNK__INIT;
	Fedprune__Commit commit = FEDPRUNE__COMMIT__INIT;
	Fedprune__LdpReport ldp = FEDPRUNE__LDP_REPORT__INIT;
	Fedprune__Receipt receipt = FEDPRUNE__RECEIPT__INIT;
	Fedprune__ResultOffer offer = FEDPRUNE__RESULT_OFFER__INIT;
	Fedprune__ResultRequest req = FEDPRUNE__RESULT_REQUEST__INIT;
	Fedprune__EvalReport eval = FEDPRUNE__EVAL_REPORT__INIT;
	Fedprune__Heartbeat hb = FEDPRUNE__HEARTBEAT__INIT;
	Fedprune__Error err = FEDPRUNE__ERROR__INIT;
	Fedprune__UploadQuery query = FEDPRUNE__UPLOAD_QUERY__INIT;
	Fedprune__UploadStatus status = FEDPRUNE__UPLOAD_STATUS__INIT;
	Fedprune__TensorStatus ts[2] = { FEDPRUNE__TENSOR_STATUS__INIT,
					 FEDPRUNE__TENSOR_STATUS__INIT };
	Fedprune__TensorStatus *tsp[2] = { &ts[0], &ts[1] };
	Fedprune__SecAggKeys keys = FEDPRUNE__SEC_AGG_KEYS__INIT;

	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 31 + 1);
	for (size_t i = 0; i < sizeof(digest); i++) {
		digest[i] = (uint8_t)(0xd0 + i);
		key[i] = (uint8_t)(0x40 + i);
	}
	for (size_t i = 0; i < sizeof(sig); i++)
		sig[i] = (uint8_t)(0x80 + i);
	ts[0].tensor = tensors[0];
	ts[0].received_bytes = 512;
	ts[0].total_bytes = 1024;
	ts[1].tensor = tensors[1];
	ts[1].received_bytes = 1024;
	ts[1].total_bytes = 1024;
	ts[1].complete = true;
	status.round_id = 3;
	status.tensors = tsp;
	status.n_tensors = 2;
	status.committed = true;

	e.version = FP_PROTO_VERSION;
	e.msg_case = type;
	switch (type) {
	case FEDPRUNE__ENVELOPE__MSG_HELLO:
		hello.client_id = "alice";
		hello.protocol_version = FP_PROTO_VERSION;
		hello.capabilities = caps;
		hello.n_capabilities = 2;
		hello.local_tokens = 123456;
		hello.capacity = 0.5;
		hello.model_digest.data = digest;
		hello.model_digest.len = 32;
		hello.software = "fedprune-test/1";
		hello.resume_round = 7;
		e.hello = &hello;
		break;
	case FEDPRUNE__ENVELOPE__MSG_WELCOME:
		welcome.identity = "alice";
		welcome.protocol_version = FP_PROTO_VERSION;
		welcome.capabilities = caps;
		welcome.n_capabilities = 2;
		welcome.max_frame_bytes = 4u << 20;
		welcome.heartbeat_ms = 1500;
		welcome.upload = &status;
		welcome.chunk_bytes = 65536;
		welcome.resumed = true;
		e.welcome = &welcome;
		break;
	case FEDPRUNE__ENVELOPE__MSG_ROUND_SPEC:
		priv.mechanism = FEDPRUNE__LDP_MECHANISM__LDP_GAUSSIAN;
		priv.max_epsilon = 1.0;
		priv.delta = 1e-5;
		priv.clip_low = -1;
		priv.clip_high = 1;
		spec.round_id = 3;
		spec.method = FEDPRUNE__METHOD__METHOD_WANDA;
		spec.sparsity = 0.5;
		spec.nm_n = 2;
		spec.nm_m = 4;
		spec.group = FEDPRUNE__GROUP__GROUP_ROW;
		spec.agg_group = FEDPRUNE__GROUP__GROUP_LAYER;
		spec.tie_break = FEDPRUNE__TIE_BREAK__TIE_BREAK_INDEX;
		spec.model_digest.data = digest;
		spec.model_digest.len = 32;
		spec.seed = 42;
		spec.nsamples = 128;
		spec.seqlen = 2048;
		spec.sequential = true;
		spec.iterative = true;
		spec.block = 5;
		spec.payload = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
		spec.privacy = &priv;
		spec.upload_deadline_ms = 600000;
		spec.chunk_bytes = 1u << 20;
		spec.weight_by_tokens = true;
		spec.weight_scaling = true;
		spec.tensors = tensors;
		spec.n_tensors = 2;
		spec.capacity = 0.75;
		e.round_spec = &spec;
		break;
	case FEDPRUNE__ENVELOPE__MSG_CHUNK:
		chunk.round_id = 3;
		chunk.tensor = tensors[1];
		chunk.kind = FEDPRUNE__PAYLOAD_KIND__PAYLOAD_MASK_BITS;
		chunk.shape = shape;
		chunk.n_shape = 2;
		chunk.offset = 0;
		chunk.data.data = data;
		chunk.data.len = sizeof(data);
		chunk.total_bytes = sizeof(data);
		chunk.tensor_digest.data = digest;
		chunk.tensor_digest.len = 32;
		chunk.scale = 0.25f;
		chunk.offset_value = -1.5f;
		e.chunk = &chunk;
		break;
	case FEDPRUNE__ENVELOPE__MSG_COMMIT:
		ldp.mechanism = FEDPRUNE__LDP_MECHANISM__LDP_RANDOMIZED_RESPONSE;
		ldp.epsilon = 2;
		ldp.delta = 1e-6;
		ldp.rounds = 3;
		ldp.total_epsilon = 6;
		ldp.total_delta = 3e-6;
		commit.round_id = 3;
		commit.submission_digest.data = digest;
		commit.submission_digest.len = 32;
		commit.tokens = 99999;
		commit.privacy = &ldp;
		commit.seconds = 12.5;
		e.commit = &commit;
		break;
	case FEDPRUNE__ENVELOPE__MSG_RECEIPT:
		receipt.round_id = 3;
		receipt.submission_digest.data = digest;
		receipt.submission_digest.len = 32;
		receipt.have_tensors = tensors;
		receipt.n_have_tensors = 2;
		receipt.accepted = true;
		receipt.reason = "fine";
		e.receipt = &receipt;
		break;
	case FEDPRUNE__ENVELOPE__MSG_RESULT_OFFER:
		offer.round_id = 3;
		offer.tensors = tensors;
		offer.n_tensors = 2;
		offer.personalised = true;
		offer.result_digest.data = digest;
		offer.result_digest.len = 32;
		e.result_offer = &offer;
		break;
	case FEDPRUNE__ENVELOPE__MSG_RESULT_REQUEST:
		req.round_id = 3;
		req.tensor = tensors[0];
		req.offset = 4096;
		e.result_request = &req;
		break;
	case FEDPRUNE__ENVELOPE__MSG_EVAL_REPORT:
		eval.round_id = 3;
		eval.perplexity = 12.25;
		eval.tokens = 50000;
		eval.dense_perplexity = 11.5;
		e.eval_report = &eval;
		break;
	case FEDPRUNE__ENVELOPE__MSG_HEARTBEAT:
		hb.seq = 9;
		hb.unix_ms = 1700000000123ull;
		hb.echo = false;
		e.heartbeat = &hb;
		break;
	case FEDPRUNE__ENVELOPE__MSG_ERROR:
		err.code = FEDPRUNE__ERROR_CODE__ERROR_DIGEST_MISMATCH;
		err.message = "tensor 'x': digest mismatch";
		err.fatal = false;
		e.error = &err;
		break;
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_QUERY:
		query.round_id = 3;
		e.upload_query = &query;
		break;
	case FEDPRUNE__ENVELOPE__MSG_UPLOAD_STATUS:
		e.upload_status = &status;
		break;
	case FEDPRUNE__ENVELOPE__MSG_SECAGG_KEYS:
		keys.public_key.data = key;
		keys.public_key.len = 32;
		keys.signature.data = sig;
		keys.signature.len = 64;
		e.secagg_keys = &keys;
		break;
	default:
		fail_msg("no sample for message type %d", type);
	}
	fn(&e, ud);
}

static void pack_cb(const Fedprune__Envelope *e, void *ud)
{
	void **out = ud;

	*(uint8_t **)out[0] = fp_test_pack(e, (size_t *)out[1]);
}

uint8_t *fp_test_sample(fp_msg_t type, size_t *len)
{
	uint8_t *p = NULL;
	void *out[2] = { &p, len };

	fp_test_with_sample(type, pack_cb, out);
	return p;
}
