/* A fuzz test of the whole C ABI: every function of include/adpo.h gets adversarial arguments
 * (NULL for each pointer, zero, huge and overflowing sizes, non-UTF-8 and huge strings,
 * malformed JSON, NaN and Inf, bad paths and files) from the table below, plus seeded random
 * cases. Each case runs in a forked child with a time limit; a case fails on a signal (crash),
 * on running past the limit (hang), on ADPO_STATUS_PANIC where the documented answer is an
 * error, on a wrong status, on an error without a message (or whose adpo_error_status differs),
 * and on anything printed to stderr that says "panicked".
 *
 *   fuzz_abi [RANDOM_CASES [SEED]]   runs the table and RANDOM_CASES random cases (default 200)
 *   fuzz_abi --list                  prints the fuzzed functions (check_coverage.py compares them
 *                                    with the header's exports)
 *   fuzz_abi --cases                 prints each table case as FUNCTION<tab>WHAT (check_coverage.py
 *                                    checks that every malformed-GGUF problem has its case)
 *   FUZZ_VERBOSE=1 fuzz_abi ...      also prints each passing case's status and message
 *
 * Fixtures come from $ADPO_FIXTURES (tests/fixtures/generated). Scratch files go to a fresh
 * directory under $TMPDIR. */
#define _POSIX_C_SOURCE 200809L
#include <adpo.h>
#include <dlpack.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define LIMIT_S 60 /* per case: loads a tiny model at most, on a busy 2-core machine */

/* What a case must return: a status, or one of these. */
#define ANY_ERROR (-1) /* any documented failure: not OK, not PANIC */
#define ANY (-2)       /* random input: OK or an error, never PANIC */
#define WRONG (-3)     /* returned by a case whose own check of an output failed */

typedef adpo_status (*case_fn)(adpo_error **err);
typedef struct {
    const char *fn;   /* the export under test */
    const char *what; /* the arguments */
    int want;
    case_fn run;
} fuzz_case;

/* ---------------------------------------------------------------- fixtures (made in the child) */

static char scratch[1024];
static uint64_t rng_state; /* the random case's seed */

static const char *fixture(const char *name) {
    static char buf[8][4096];
    static int next;
    const char *dir = getenv("ADPO_FIXTURES");
    char *out = buf[next++ % 8];
    snprintf(out, 4096, "%s/%s", dir ? dir : "tests/fixtures/generated", name);
    return out;
}

static const char *scratch_file(const char *name) {
    static char buf[8][4096];
    static int next;
    char *out = buf[next++ % 8];
    snprintf(out, 4096, "%s/%s", scratch, name);
    return out;
}

/* Fails the child loudly: a fixture that should load did not (not a finding of the fuzzer). */
static void setup_failed(const char *what, adpo_status st, adpo_error *err) {
    printf("setup failed: %s: status %d: %s\n", what, (int)st, adpo_error_message(err));
    fflush(stdout);
    _exit(3);
}

static adpo_objective *objective(const char *config) {
    adpo_objective *obj = NULL;
    adpo_error *err = NULL;
    adpo_status st = adpo_objective_new(config, &obj, &err);
    if (st != ADPO_STATUS_OK) setup_failed(config, st, err);
    return obj;
}

static adpo_model *load(const char *path) {
    adpo_model *m = NULL;
    adpo_error *err = NULL;
    adpo_status st = adpo_model_load(path, NULL, &m, &err);
    if (st != ADPO_STATUS_OK) setup_failed(path, st, err);
    return m;
}

static adpo_model *tiny_model(void) { return load(fixture("tiny/llama")); }
static adpo_model *hf_model(void) { return load(fixture("hf/llama_gqa2_untied_v97")); }

static adpo_tokenizer *tokenizer(void) {
    adpo_tokenizer *t = NULL;
    adpo_error *err = NULL;
    adpo_status st = adpo_tokenizer_load(fixture("tokenizers/qwen"), &t, &err);
    if (st != ADPO_STATUS_OK) setup_failed("tokenizer", st, err);
    return t;
}

static adpo_trainer *trainer_on(adpo_model *m, const char *config) {
    adpo_trainer *tr = NULL;
    adpo_error *err = NULL;
    adpo_status st = adpo_trainer_new(m, NULL, config, &tr, &err);
    if (st != ADPO_STATUS_OK) setup_failed(config, st, err);
    return tr;
}

static adpo_trainer *trainer(void) { return trainer_on(tiny_model(), "{\"optimizer\": {\"name\": \"sgd\", \"lr\": 0.1}}"); }

/* 4 candidates (groups {0, 0, 1, 1}) x 5 positions, ids below 8, the last 3 tokens scored. */
#define BN 4
#define BT 5
static const int64_t B_GROUPS[BN] = {0, 0, 1, 1};

static adpo_batch *batch_with(const int64_t *ids) {
    uint8_t loss[BN * BT];
    for (int i = 0; i < BN * BT; i++) loss[i] = (i % BT) >= 2;
    adpo_batch *b = NULL;
    adpo_error *err = NULL;
    adpo_status st = adpo_batch_new(BN, BT, ids, NULL, loss, B_GROUPS, &b, &err);
    if (st != ADPO_STATUS_OK) setup_failed("batch", st, err);
    return b;
}

static adpo_batch *batch(void) {
    int64_t ids[BN * BT];
    for (int i = 0; i < BN * BT; i++) ids[i] = (i * 5 + 1) % 8;
    adpo_batch *b = batch_with(ids);
    const double r[BN] = {1.0, 0.0, 0.5, -0.5};
    adpo_error *err = NULL;
    adpo_status st = adpo_batch_set_rewards(b, r, BN, &err);
    if (st != ADPO_STATUS_OK) setup_failed("rewards", st, err);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
        printf("setup failed: cannot write %s\n", path);
        _exit(3);
    }
}

/* The first `keep` bytes of fixture `name` in scratch file `out` (keep < 0: drop -keep bytes). */
static const char *truncated_copy(const char *name, long keep, const char *out) {
    FILE *f = fopen(name, "rb");
    if (!f) setup_failed(name, 0, NULL);
    static char data[1 << 22];
    size_t n = fread(data, 1, sizeof data, f);
    fclose(f);
    size_t k = keep < 0 ? n - (size_t)(-keep) : (size_t)keep;
    const char *path = scratch_file(out);
    write_bytes(path, data, k < n ? k : n);
    return path;
}

static char *huge_string(size_t n, char c) {
    char *s = malloc(n + 1);
    memset(s, c, n);
    s[n] = 0;
    return s;
}

/* A JSON object with one key of 1 MiB. */
static char *huge_key_json(void) {
    size_t n = 1 << 20;
    char *s = malloc(n + 16);
    strcpy(s, "{\"");
    memset(s + 2, 'k', n);
    strcpy(s + 2 + n, "\": 1}");
    return s;
}

/* 100,000 nested arrays: deeper than any JSON parser should recurse. */
static char *deep_json(void) {
    size_t d = 100000;
    char *s = malloc(2 * d + 1);
    memset(s, '[', d);
    memset(s + d, ']', d);
    s[2 * d] = 0;
    return s;
}

static const char NOT_UTF8[] = "\xff\xfe{\"tau\": 1}";
#define HUGE_N ((size_t)1 << 62) /* times 8 bytes is more than any buffer */

/* ---------------------------------------------------------------- errors and version */

static adpo_status c_error_message_null(adpo_error **e) {
    (void)e;
    const char *m = adpo_error_message(NULL);
    return m && m[0] == 0 ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_error_status_null(adpo_error **e) {
    (void)e;
    return adpo_error_status(NULL) == ADPO_STATUS_NULL_ARGUMENT ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_error_free_null(adpo_error **e) {
    (void)e;
    adpo_error_free(NULL);
    return ADPO_STATUS_OK;
}
static adpo_status c_version(adpo_error **e) {
    (void)e;
    const char *v = adpo_version();
    return v && strstr(v, "adpo") ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_abi(adpo_error **e) {
    (void)e;
    return adpo_abi_version() == ADPO_ABI_VERSION ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_cuda_count(adpo_error **e) {
    (void)e;
    return adpo_cuda_device_count() >= 0 ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_num_threads(adpo_error **e) {
    (void)e;
    return adpo_num_threads() >= 1 ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_threads_zero(adpo_error **e) { return adpo_set_num_threads(0, e); }
static adpo_status c_threads_neg(adpo_error **e) { return adpo_set_num_threads(INT32_MIN, e); }
static adpo_status c_threads_huge(adpo_error **e) { return adpo_set_num_threads(INT32_MAX, e); }
static adpo_status c_threads_null_err(adpo_error **e) {
    (void)e;
    return adpo_set_num_threads(-1, NULL) == ADPO_STATUS_INVALID_ARGUMENT ? ADPO_STATUS_OK : WRONG;
}
static adpo_status c_string_free_null(adpo_error **e) {
    (void)e;
    adpo_string_free(NULL);
    return ADPO_STATUS_OK;
}
static adpo_status c_test_panic(adpo_error **e) { return adpo_test_panic(e); }
static adpo_status c_has_mpi(adpo_error **e) {
    (void)e;
    bool b = adpo_has_mpi();
    return b == true || b == false ? ADPO_STATUS_OK : WRONG;
}

/* ---------------------------------------------------------------- objective */

static adpo_status obj_new(const char *cfg, adpo_error **e) {
    adpo_objective *o = NULL;
    adpo_status st = adpo_objective_new(cfg, &o, e);
    if (st != ADPO_STATUS_OK && o) return WRONG; /* outputs only on success */
    adpo_objective_free(o);
    return st;
}
static adpo_status c_obj_null_out(adpo_error **e) { return adpo_objective_new("{}", NULL, e); }
static adpo_status c_obj_null_cfg(adpo_error **e) { return obj_new(NULL, e); }
static adpo_status c_obj_open(adpo_error **e) { return obj_new("{", e); }
static adpo_status c_obj_array(adpo_error **e) { return obj_new("[]", e); }
static adpo_status c_obj_nan(adpo_error **e) { return obj_new("{\"tau\": NaN}", e); }
static adpo_status c_obj_big_number(adpo_error **e) { return obj_new("{\"tau\": 1e999}", e); }
static adpo_status c_obj_neg_tau(adpo_error **e) { return obj_new("{\"tau\": -1}", e); }
static adpo_status c_obj_unknown(adpo_error **e) { return obj_new("{\"tua\": 1}", e); }
static adpo_status c_obj_utf8(adpo_error **e) { return obj_new(NOT_UTF8, e); }
static adpo_status c_obj_huge_key(adpo_error **e) { return obj_new(huge_key_json(), e); }
static adpo_status c_obj_deep(adpo_error **e) { return obj_new(deep_json(), e); }
static adpo_status c_obj_wrong_type(adpo_error **e) { return obj_new("{\"loss\": 3, \"target\": []}", e); }
static adpo_status c_obj_free_null(adpo_error **e) {
    (void)e;
    adpo_objective_free(NULL);
    return ADPO_STATUS_OK;
}

static const double LP[4] = {-12.0, -15.5, -9.8, -20.1};
static const double AL[4] = {-12.5, -15.0, -10.4, -19.6};
static const double RW[4] = {1.0, 0.0, 0.5, -0.1};
static const int64_t GI[4] = {7, 7, 3, 3};

static adpo_status eval(adpo_objective *o, size_t n, const double *lp, const double *al, const double *rw,
                        const double *tg, const int64_t *g, double *loss, adpo_error **e) {
    double grad[4], scores[4];
    return adpo_objective_eval(o, n, lp, al, rw, tg, g, loss, grad, scores, e);
}
static double loss_;
static adpo_status c_eval_null_obj(adpo_error **e) { return eval(NULL, 4, LP, AL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_n0(adpo_error **e) { return eval(objective(NULL), 0, LP, AL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_huge_n(adpo_error **e) { return eval(objective(NULL), HUGE_N, LP, AL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_max_n(adpo_error **e) { return eval(objective(NULL), SIZE_MAX, LP, AL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_null_logp(adpo_error **e) { return eval(objective(NULL), 4, NULL, AL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_null_anchor(adpo_error **e) { return eval(objective(NULL), 4, LP, NULL, RW, NULL, GI, &loss_, e); }
static adpo_status c_eval_null_groups(adpo_error **e) { return eval(objective(NULL), 4, LP, AL, RW, NULL, NULL, &loss_, e); }
static adpo_status c_eval_null_loss(adpo_error **e) { return eval(objective(NULL), 4, LP, AL, RW, NULL, GI, NULL, e); }
static adpo_status c_eval_no_signal(adpo_error **e) { return eval(objective(NULL), 4, LP, AL, NULL, NULL, GI, &loss_, e); }
static adpo_status c_eval_both_signals(adpo_error **e) {
    const double q[4] = {0.5, 0.5, 0.5, 0.5};
    return eval(objective(NULL), 4, LP, AL, RW, q, GI, &loss_, e);
}
static adpo_status c_eval_nan(adpo_error **e) {
    const double lp[4] = {-1.0, NAN, -2.0, -3.0};
    return eval(objective(NULL), 4, lp, AL, RW, NULL, GI, &loss_, e);
}
static adpo_status c_eval_inf_reward(adpo_error **e) {
    const double rw[4] = {INFINITY, 0.0, -INFINITY, 1.0};
    return eval(objective(NULL), 4, LP, AL, rw, NULL, GI, &loss_, e);
}
static adpo_status c_eval_bad_targets(adpo_error **e) {
    const double q[4] = {-1.0, 2.0, 0.5, 0.5};
    return eval(objective(NULL), 4, LP, AL, NULL, q, GI, &loss_, e);
}
static adpo_status c_eval_extreme(adpo_error **e) {
    const double lp[4] = {-1e308, 1e308, -5e-324, 0.0};
    return eval(objective(NULL), 4, lp, AL, RW, NULL, GI, &loss_, e);
}
static adpo_status c_entropy_nan(adpo_error **e) {
    const double h[4] = {0.1, NAN, 0.2, 0.3};
    double grad[4], sc[4];
    return adpo_objective_eval_entropy(objective(NULL), 4, LP, AL, RW, NULL, GI, h, &loss_, grad, sc, e);
}
static adpo_status c_entropy_null(adpo_error **e) {
    return adpo_objective_eval_entropy(objective(NULL), 4, LP, AL, RW, NULL, GI, NULL, &loss_, NULL, NULL, e);
}
static adpo_status c_entropy_null_obj(adpo_error **e) {
    return adpo_objective_eval_entropy(NULL, 4, LP, AL, RW, NULL, GI, NULL, &loss_, NULL, NULL, e);
}

static const double TOK[8] = {-1, -2, -1, -2, -1, -2, -1, -2};
static const double MASK[8] = {0, 1, 0, 1, 0, 1, 0, 1};
static adpo_status tokens(adpo_objective *o, size_t n, size_t t, const double *mask, adpo_error **e) {
    double grad[8], adv[4];
    return adpo_objective_eval_tokens(o, n, t, TOK, TOK, NULL, mask, RW, GI, &loss_, grad, adv, e);
}
static adpo_status c_tokens_not_grpo(adpo_error **e) { return tokens(objective(NULL), 4, 2, MASK, e); }
static adpo_status c_tokens_null_obj(adpo_error **e) { return tokens(NULL, 4, 2, MASK, e); }
static adpo_status c_tokens_t0(adpo_error **e) { return tokens(objective("{\"loss\": \"grpo\"}"), 4, 0, MASK, e); }
static adpo_status c_tokens_overflow(adpo_error **e) {
    return tokens(objective("{\"loss\": \"grpo\"}"), (size_t)1 << 33, (size_t)1 << 33, MASK, e);
}
static adpo_status c_tokens_null_mask(adpo_error **e) { return tokens(objective("{\"loss\": \"grpo\"}"), 4, 2, NULL, e); }
static adpo_status c_tokens_bad_mask(adpo_error **e) {
    const double m[8] = {0, 2, 0, NAN, 0, 1, 0, 1};
    return tokens(objective("{\"loss\": \"grpo\"}"), 4, 2, m, e);
}

static adpo_status c_metrics_before(adpo_error **e) {
    adpo_objective_metrics m = {.struct_size = sizeof m};
    return adpo_objective_get_metrics(objective(NULL), &m, e);
}
static adpo_status c_metrics_null(adpo_error **e) { return adpo_objective_get_metrics(objective(NULL), NULL, e); }
static adpo_status c_metrics_null_obj(adpo_error **e) {
    adpo_objective_metrics m = {.struct_size = sizeof m};
    return adpo_objective_get_metrics(NULL, &m, e);
}
static adpo_status c_metrics_size0(adpo_error **e) {
    adpo_objective *o = objective(NULL);
    if (eval(o, 4, LP, AL, RW, NULL, GI, &loss_, NULL) != ADPO_STATUS_OK) return WRONG;
    adpo_objective_metrics m = {.struct_size = 0};
    return adpo_objective_get_metrics(o, &m, e);
}
static adpo_status c_mjson_before(adpo_error **e) {
    char *s = NULL;
    return adpo_objective_metrics_json(objective(NULL), &s, e);
}
static adpo_status c_mjson_null(adpo_error **e) { return adpo_objective_metrics_json(objective(NULL), NULL, e); }
static adpo_status c_mjson_null_obj(adpo_error **e) {
    char *s = NULL;
    return adpo_objective_metrics_json(NULL, &s, e);
}

/* ---------------------------------------------------------------- DLPack */

typedef struct {
    DLManagedTensorVersioned m;
    int64_t shape[8];
} dl;
static void dl_deleter(DLManagedTensorVersioned *self) { (void)self; }
static dl dls[5];
static double dl_data[5][4];

static DLManagedTensorVersioned *dl_vec(int i, uint8_t code, uint8_t bits, int64_t n) {
    dl *t = &dls[i];
    memset(t, 0, sizeof *t);
    t->m.version.major = DLPACK_MAJOR_VERSION;
    t->m.version.minor = DLPACK_MINOR_VERSION;
    t->m.deleter = dl_deleter;
    t->m.dl_tensor.data = dl_data[i];
    t->m.dl_tensor.device.device_type = kDLCPU;
    t->m.dl_tensor.ndim = 1;
    t->m.dl_tensor.dtype.code = code;
    t->m.dl_tensor.dtype.bits = bits;
    t->m.dl_tensor.dtype.lanes = 1;
    t->shape[0] = n;
    t->m.dl_tensor.shape = t->shape;
    for (int k = 0; k < 4; k++) dl_data[i][k] = code == kDLInt ? 0.0 : -1.0 - k;
    return &t->m;
}
/* A valid call's inputs, then `spoil` breaks input 0 (logp) or the call. */
static adpo_status dlpack_case(int spoil, adpo_error **e) {
    DLManagedTensorVersioned *lp = dl_vec(0, kDLFloat, 64, 4), *al = dl_vec(1, kDLFloat, 64, 4),
                             *rw = dl_vec(2, kDLFloat, 64, 4), *g = dl_vec(4, kDLInt, 64, 4);
    memset(dl_data[4], 0, sizeof dl_data[4]); /* group ids 0 */
    DLManagedTensorVersioned *grad = NULL;
    adpo_objective *o = objective(NULL);
    switch (spoil) {
    case 0: lp = NULL; break;
    case 1: lp->dl_tensor.dtype.code = kDLInt; lp->dl_tensor.dtype.bits = 8; break;
    case 2: lp->dl_tensor.ndim = 5; break;
    case 3: dls[0].shape[0] = -4; break;
    case 4: lp->dl_tensor.data = NULL; break;
    case 5: lp->version.major = 99; break;
    case 6: lp->dl_tensor.device.device_type = (DLDeviceType)99; break;
    case 7: dls[1].shape[0] = 3; break;
    case 8: dls[0].shape[0] = INT64_MAX; break;
    case 9: lp->dl_tensor.dtype.lanes = 4; break;
    case 10: o = NULL; break;
    case 11: return adpo_objective_eval_dlpack(o, lp, al, rw, NULL, g, NULL, &grad, e);
    case 12: return adpo_objective_eval_dlpack(o, lp, al, NULL, NULL, g, &loss_, &grad, e);
    case 13: lp->dl_tensor.ndim = -1; break;
    case 14: lp->dl_tensor.shape = NULL; break;
    case 15: dl_data[0][2] = NAN; break;
    }
    return adpo_objective_eval_dlpack(o, lp, al, rw, NULL, g, &loss_, &grad, e);
}
#define DLCASE(k) \
    static adpo_status c_dl##k(adpo_error **e) { return dlpack_case(k, e); }
DLCASE(0) DLCASE(1) DLCASE(2) DLCASE(3) DLCASE(4) DLCASE(5) DLCASE(6) DLCASE(7) DLCASE(8) DLCASE(9)
DLCASE(10) DLCASE(11) DLCASE(12) DLCASE(13) DLCASE(14) DLCASE(15)

/* ---------------------------------------------------------------- models */

static adpo_status model_load(const char *path, const char *device, adpo_error **e) {
    adpo_model *m = NULL;
    adpo_status st = adpo_model_load(path, device, &m, e);
    if (st != ADPO_STATUS_OK && m) return WRONG;
    adpo_model_free(m);
    return st;
}
static adpo_status model_load_opts(const char *path, const char *opts, adpo_error **e) {
    adpo_model *m = NULL;
    adpo_status st = adpo_model_load_options(path, opts, &m, e);
    if (st != ADPO_STATUS_OK && m) return WRONG;
    adpo_model_free(m);
    return st;
}
static adpo_status c_load_null(adpo_error **e) { return model_load(NULL, NULL, e); }
static adpo_status c_load_null_out(adpo_error **e) { return adpo_model_load(fixture("tiny/llama"), NULL, NULL, e); }
static adpo_status c_load_missing(adpo_error **e) { return model_load("/nonexistent/model.pt", NULL, e); }
static adpo_status c_load_empty_dir(adpo_error **e) { return model_load(scratch, NULL, e); }
static adpo_status c_load_dev_zero(adpo_error **e) { return model_load("/dev/zero", NULL, e); }
static adpo_status c_load_dev_null(adpo_error **e) { return model_load("/dev/null", NULL, e); }
static adpo_status c_load_fifo(adpo_error **e) {
    const char *p = scratch_file("fifo");
    if (mkfifo(p, 0600) != 0) return WRONG;
    return model_load(p, NULL, e);
}
static adpo_status c_load_utf8(adpo_error **e) { return model_load("/tmp/\xff\xfe.pt", NULL, e); }
static adpo_status c_load_huge_path(adpo_error **e) { return model_load(huge_string(1 << 20, 'p'), NULL, e); }
static adpo_status c_load_truncated_ts(adpo_error **e) {
    return model_load(truncated_copy(fixture("tiny_transformer.pt"), -200, "cut.pt"), NULL, e);
}
static adpo_status c_load_head_ts(adpo_error **e) {
    return model_load(truncated_copy(fixture("tiny_transformer.pt"), 30, "head.pt"), NULL, e);
}
static adpo_status c_load_garbage(adpo_error **e) {
    const char *p = scratch_file("garbage.pt");
    write_bytes(p, "PK\x03\x04 constants.pkl garbage", 29);
    return model_load(p, NULL, e);
}
static adpo_status c_load_bad_signature(adpo_error **e) { return model_load(fixture("bad_signature.pt"), NULL, e); }
static adpo_status c_load_bad_output(adpo_error **e) { return model_load(fixture("bad_output.pt"), NULL, e); }
static adpo_status c_load_device_tpu(adpo_error **e) { return model_load(fixture("tiny/llama"), "tpu", e); }
static adpo_status c_load_device_utf8(adpo_error **e) { return model_load(fixture("tiny/llama"), NOT_UTF8, e); }
static adpo_status c_load_device_cuda99(adpo_error **e) { return model_load(fixture("tiny/llama"), "cuda:99", e); }
static adpo_status c_load_device_cuda_huge(adpo_error **e) {
    return model_load(fixture("tiny/llama"), "cuda:99999999999999999999", e);
}

/* An HF directory in scratch: config.json from `config` (NULL: the fixture's) and the
 * fixture's weights cut to `keep` bytes (0: none). */
static const char *hf_dir(const char *config, long keep) {
    const char *dir = scratch_file("hf");
    mkdir(dir, 0700);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config) {
        write_bytes(path, config, strlen(config));
    } else {
        FILE *f = fopen(fixture("hf/llama_gqa2_untied_v97/config.json"), "rb");
        static char buf[1 << 16];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        write_bytes(path, buf, n);
    }
    if (keep) {
        truncated_copy(fixture("hf/llama_gqa2_untied_v97/model.safetensors"), keep, "hf/model.safetensors");
    }
    return dir;
}
static adpo_status c_hf_bad_json(adpo_error **e) { return model_load(hf_dir("{", 0), NULL, e); }
static adpo_status c_hf_not_object(adpo_error **e) { return model_load(hf_dir("[1, 2]", 0), NULL, e); }
static adpo_status c_hf_no_weights(adpo_error **e) { return model_load(hf_dir(NULL, 0), NULL, e); }
static adpo_status c_hf_truncated(adpo_error **e) { return model_load(hf_dir(NULL, -1000), NULL, e); }
static adpo_status c_hf_header_only(adpo_error **e) { return model_load(hf_dir(NULL, 8), NULL, e); }
static adpo_status c_hf_huge_dims(adpo_error **e) {
    return model_load(hf_dir("{\"model_type\": \"llama\", \"vocab_size\": 1000000000000, \"hidden_size\": "
                             "1000000000000, \"num_hidden_layers\": 1000000, \"num_attention_heads\": 1, "
                             "\"intermediate_size\": 1, \"max_position_embeddings\": 8}",
                             0),
                      NULL, e);
}
static adpo_status c_hf_negative_dims(adpo_error **e) {
    return model_load(hf_dir("{\"model_type\": \"llama\", \"vocab_size\": -5, \"hidden_size\": 0, "
                             "\"num_hidden_layers\": 1, \"num_attention_heads\": 0}",
                             0),
                      NULL, e);
}
static adpo_status c_hf_big_header(adpo_error **e) {
    /* A safetensors file whose header claims 2^62 bytes. */
    const char *dir = hf_dir(NULL, 0);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    unsigned char bytes[16] = {0, 0, 0, 0, 0, 0, 0, 0x40, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    write_bytes(path, bytes, sizeof bytes);
    return model_load(dir, NULL, e);
}
/* The fixture's weights under a config.json of its shapes with these heads and layers. */
static const char *hf_sized(const char *heads, const char *layers) {
    static char config[512];
    snprintf(config, sizeof config,
             "{\"model_type\": \"llama\", \"vocab_size\": 97, \"hidden_size\": 32, \"intermediate_size\": 64, "
             "\"num_attention_heads\": %s, \"num_key_value_heads\": 2, \"head_dim\": 8, "
             "\"num_hidden_layers\": %s, \"max_position_embeddings\": 128}",
             heads, layers);
    return hf_dir(config, 1L << 22);
}
static adpo_status c_hf_sized(adpo_error **e) { return model_load(hf_sized("4", "2"), NULL, e); }
static adpo_status c_hf_layers_1e7(adpo_error **e) { return model_load(hf_sized("4", "10000000"), NULL, e); }
static adpo_status c_hf_heads_wrap(adpo_error **e) { return model_load(hf_sized("4611686018427387908", "2"), NULL, e); }
/* The fixture with `file` replaced by a FIFO without a writer (target NULL) or a link to `target`. */
static const char *hf_replaced(const char *file, const char *target) {
    const char *dir = hf_dir(NULL, 1L << 22);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    unlink(path);
    if (target ? symlink(target, path) : mkfifo(path, 0600)) setup_failed(path, 0, NULL);
    return dir;
}
static adpo_status c_hf_fifo_config(adpo_error **e) { return model_load(hf_replaced("config.json", NULL), NULL, e); }
static adpo_status c_hf_fifo_generation(adpo_error **e) {
    return model_load(hf_replaced("generation_config.json", NULL), NULL, e);
}
static adpo_status c_hf_fifo_weights(adpo_error **e) { return model_load(hf_replaced("model.safetensors", NULL), NULL, e); }
static adpo_status c_hf_zero_config(adpo_error **e) { return model_load(hf_replaced("config.json", "/dev/zero"), NULL, e); }
static adpo_status c_hf_urandom_generation(adpo_error **e) {
    return model_load(hf_replaced("generation_config.json", "/dev/urandom"), NULL, e);
}
static adpo_status c_hf_index_escape(adpo_error **e) {
    const char *dir = hf_dir(NULL, 1L << 22);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    const char *index = "{\"weight_map\": {\"model.embed_tokens.weight\": \"../../../../../../etc/passwd\", "
                        "\"lm_head.weight\": \"/etc/passwd\"}}";
    write_bytes(path, index, strlen(index));
    return model_load(dir, NULL, e);
}
static adpo_status c_hf_nan_weight(adpo_error **e) {
    /* The last float32 of the data section (some tensor's last element) made NaN. */
    const char *dir = hf_dir(NULL, 1L << 22);
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    static const unsigned char nan[4] = {0xff, 0xff, 0xff, 0xff};
    FILE *f = fopen(path, "r+b");
    if (!f || fseek(f, -4, SEEK_END) != 0 || fwrite(nan, 1, 4, f) != 4 || fclose(f) != 0) setup_failed(path, 0, NULL);
    return model_load(dir, NULL, e);
}
static adpo_status c_opts_bad_json(adpo_error **e) { return model_load_opts(fixture("tiny/llama"), "{,}", e); }
static adpo_status c_opts_dtype(adpo_error **e) { return model_load_opts(fixture("tiny/llama"), "{\"dtype\": \"int8\"}", e); }
static adpo_status c_opts_ts_dtype(adpo_error **e) {
    return model_load_opts(fixture("tiny_transformer.pt"), "{\"dtype\": \"float64\"}", e);
}
static adpo_status c_opts_ts_lora(adpo_error **e) { return model_load_opts(fixture("tiny_transformer.pt"), "{\"lora\": {}}", e); }
static adpo_status c_opts_lora_r0(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"lora\": {\"r\": 0}}", e);
}
static adpo_status c_opts_lora_neg(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"lora\": {\"r\": -1, \"alpha\": NaN}}", e);
}
static adpo_status c_opts_lora_target(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"lora\": {\"target_modules\": [\"nothing\"]}}", e);
}
static adpo_status c_opts_lora_dropout(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"lora\": {\"dropout\": 0.5}}", e);
}
static adpo_status c_opts_adapter_missing(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"adapter\": \"/nonexistent\"}", e);
}
static adpo_status c_opts_both(adpo_error **e) {
    return model_load_opts(fixture("hf/llama_gqa2_untied_v97"), "{\"adapter\": \"/x\", \"lora\": {}}", e);
}
static adpo_status c_opts_utf8(adpo_error **e) { return model_load_opts(fixture("tiny/llama"), NOT_UTF8, e); }
static adpo_status c_opts_huge(adpo_error **e) { return model_load_opts(fixture("tiny/llama"), huge_key_json(), e); }
static adpo_status c_opts_null_path(adpo_error **e) { return model_load_opts(NULL, NULL, e); }

static adpo_status c_save_null(adpo_error **e) { return adpo_model_save(NULL, scratch_file("out"), e); }
static adpo_status c_save_null_dir(adpo_error **e) { return adpo_model_save(hf_model(), NULL, e); }
static adpo_status c_save_unwritable(adpo_error **e) { return adpo_model_save(hf_model(), "/nonexistent/dir/out", e); }
static adpo_status c_save_over_file(adpo_error **e) {
    const char *p = scratch_file("a_file");
    write_bytes(p, "x", 1);
    return adpo_model_save(hf_model(), p, e);
}
static adpo_status c_save_utf8(adpo_error **e) { return adpo_model_save(hf_model(), "/tmp/\xff", e); }
static adpo_status c_save_adapter_none(adpo_error **e) { return adpo_model_save_adapter(hf_model(), scratch_file("ad"), e); }
static adpo_status c_save_adapter_null(adpo_error **e) { return adpo_model_save_adapter(NULL, scratch_file("ad"), e); }
static adpo_status c_save_adapter_null_dir(adpo_error **e) { return adpo_model_save_adapter(tiny_model(), NULL, e); }
static adpo_status c_gguf_null(adpo_error **e) { return adpo_model_save_gguf(NULL, scratch_file("g.gguf"), NULL, e); }
static adpo_status c_gguf_null_path(adpo_error **e) { return adpo_model_save_gguf(hf_model(), NULL, NULL, e); }
static adpo_status c_gguf_unwritable(adpo_error **e) { return adpo_model_save_gguf(hf_model(), "/nonexistent/d/g.gguf", NULL, e); }
static adpo_status c_gguf_over_file(adpo_error **e) {
    const char *p = scratch_file("not_gguf");
    write_bytes(p, "x", 1);
    return adpo_model_save_gguf(hf_model(), p, NULL, e);
}
static adpo_status c_gguf_dir(adpo_error **e) { return adpo_model_save_gguf(hf_model(), scratch, NULL, e); }
static adpo_status c_gguf_utf8(adpo_error **e) { return adpo_model_save_gguf(hf_model(), "/tmp/\xff", NULL, e); }
static adpo_status c_gguf_bad_json(adpo_error **e) { return adpo_model_save_gguf(hf_model(), scratch_file("g.gguf"), "{\"dtype\":", e); }
static adpo_status c_gguf_dtype(adpo_error **e) { return adpo_model_save_gguf(hf_model(), scratch_file("g.gguf"), "{\"dtype\": \"q4_0\"}", e); }
static adpo_status c_gguf_unknown_key(adpo_error **e) { return adpo_model_save_gguf(hf_model(), scratch_file("g.gguf"), "{\"dtyp\": \"f16\"}", e); }
static adpo_status c_gguf_opts_utf8(adpo_error **e) { return adpo_model_save_gguf(hf_model(), scratch_file("g.gguf"), NOT_UTF8, e); }
static adpo_status c_gguf_adapter_none(adpo_error **e) { return adpo_model_save_adapter_gguf(hf_model(), scratch_file("a.gguf"), NULL, e); }
static adpo_status c_gguf_adapter_null(adpo_error **e) { return adpo_model_save_adapter_gguf(NULL, scratch_file("a.gguf"), NULL, e); }
static adpo_status c_gguf_adapter_null_path(adpo_error **e) { return adpo_model_save_adapter_gguf(hf_model(), NULL, NULL, e); }
static adpo_status c_gguf_adapter_dtype(adpo_error **e) { return adpo_model_save_adapter_gguf(hf_model(), scratch_file("a.gguf"), "{\"dtype\": 3}", e); }
static adpo_status c_vocab_null(adpo_error **e) {
    int64_t v;
    return adpo_model_vocab_size(NULL, &v, e);
}
static adpo_status c_vocab_null_out(adpo_error **e) { return adpo_model_vocab_size(tiny_model(), NULL, e); }
static adpo_status c_nparams_null(adpo_error **e) {
    size_t v;
    return adpo_model_num_params(NULL, &v, e);
}
static adpo_status c_nparams_null_out(adpo_error **e) { return adpo_model_num_params(tiny_model(), NULL, e); }
static adpo_status c_params_wrong_n(adpo_error **e) {
    double out[4];
    return adpo_model_get_params(tiny_model(), out, 4, e);
}
static adpo_status c_params_huge_n(adpo_error **e) {
    double out[4];
    return adpo_model_get_params(tiny_model(), out, SIZE_MAX, e);
}
static adpo_status c_params_null_out(adpo_error **e) {
    adpo_model *m = tiny_model();
    size_t n = 0;
    if (adpo_model_num_params(m, &n, NULL) != ADPO_STATUS_OK) return WRONG;
    return adpo_model_get_params(m, NULL, n, e);
}
static adpo_status c_params_null_model(adpo_error **e) {
    double out[4];
    return adpo_model_get_params(NULL, out, 4, e);
}
static adpo_status c_model_free_null(adpo_error **e) {
    (void)e;
    adpo_model_free(NULL);
    return ADPO_STATUS_OK;
}

/* ---------------------------------------------------------------- tokenizers */

static adpo_status tok_load(const char *path, adpo_error **e) {
    adpo_tokenizer *t = NULL;
    adpo_status st = adpo_tokenizer_load(path, &t, e);
    if (st != ADPO_STATUS_OK && t) return WRONG;
    adpo_tokenizer_free(t);
    return st;
}
static adpo_status c_tok_null(adpo_error **e) { return tok_load(NULL, e); }
static adpo_status c_tok_null_out(adpo_error **e) { return adpo_tokenizer_load(fixture("tokenizers/qwen"), NULL, e); }
static adpo_status c_tok_missing(adpo_error **e) { return tok_load("/nonexistent", e); }
static adpo_status c_tok_empty_dir(adpo_error **e) { return tok_load(scratch, e); }
static adpo_status c_tok_dev_zero(adpo_error **e) { return tok_load("/dev/zero", e); }
static adpo_status c_tok_garbage(adpo_error **e) {
    const char *p = scratch_file("tokenizer.json");
    write_bytes(p, "{\"model\": 3", 11);
    return tok_load(p, e);
}
static adpo_status c_tok_bad_config(adpo_error **e) {
    /* A good tokenizer.json beside a broken tokenizer_config.json. */
    FILE *f = fopen(fixture("tokenizers/qwen/tokenizer.json"), "rb");
    static char buf[1 << 23];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    write_bytes(scratch_file("tokenizer.json"), buf, n);
    write_bytes(scratch_file("tokenizer_config.json"), "{\"chat_template\": 5", 19);
    return tok_load(scratch, e);
}
static adpo_status c_tok_utf8(adpo_error **e) { return tok_load("\xff", e); }
/* A hostile tokenizer.json: only the named part, the rest left to tokenizers' defaults. */
static adpo_status tok_json(const char *json, adpo_error **e) {
    const char *p = scratch_file("tokenizer.json");
    write_bytes(p, json, strlen(json));
    return tok_load(p, e);
}
#define TOK_MODEL "\"model\": {\"type\": \"WordLevel\", \"vocab\": {\"a\": 0}, \"unk_token\": \"a\"}"
static adpo_status c_tok_template_token(adpo_error **e) {
    return tok_json("{" TOK_MODEL ", \"post_processor\": {\"type\": \"TemplateProcessing\", "
                    "\"single\": [{\"SpecialToken\": {\"id\": \"<x>\", \"type_id\": 0}}], "
                    "\"pair\": [], \"special_tokens\": {}}}", e);
}
static adpo_status c_tok_huge_trie(adpo_error **e) {
    /* base64 of the little-endian u32 2^31: a trie of 2 GiB announced, none there. */
    return tok_json("{" TOK_MODEL ", \"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAAgA==\"}}", e);
}
static adpo_status c_tok_replace_empty(adpo_error **e) {
    return tok_json("{" TOK_MODEL ", \"decoder\": {\"type\": \"Replace\", \"pattern\": {\"String\": \"\"}, \"content\": \"x\"}}", e);
}
static adpo_status c_tok_free_null(adpo_error **e) {
    (void)e;
    adpo_tokenizer_free(NULL);
    return ADPO_STATUS_OK;
}

static adpo_status encode(adpo_tokenizer *t, const char *text, int64_t *ids, size_t cap, size_t *len, adpo_error **e) {
    return adpo_tokenizer_encode(t, text, false, ids, cap, len, e);
}
static size_t len_;
static int64_t ids_[64];
static adpo_status c_enc_null_tok(adpo_error **e) { return encode(NULL, "hi", ids_, 64, &len_, e); }
static adpo_status c_enc_null_text(adpo_error **e) { return encode(tokenizer(), NULL, ids_, 64, &len_, e); }
static adpo_status c_enc_utf8(adpo_error **e) { return encode(tokenizer(), "\xc3\x28 bad", ids_, 64, &len_, e); }
static adpo_status c_enc_null_len(adpo_error **e) { return encode(tokenizer(), "hi", ids_, 64, NULL, e); }
static adpo_status c_enc_small_cap(adpo_error **e) { return encode(tokenizer(), "hello there world", ids_, 1, &len_, e); }
static adpo_status c_enc_null_ids(adpo_error **e) { return encode(tokenizer(), "hello", NULL, 64, &len_, e); }
static adpo_status c_enc_huge_cap_null(adpo_error **e) { return encode(tokenizer(), "hello", NULL, SIZE_MAX, &len_, e); }
static adpo_status c_enc_huge_text(adpo_error **e) {
    size_t n = 0;
    return encode(tokenizer(), huge_string(1 << 20, 'a'), NULL, 0, &n, e);
}
static adpo_status c_encb(size_t n, const char *const *texts, size_t *total, adpo_error **e) {
    size_t offs[4];
    return adpo_tokenizer_encode_batch(tokenizer(), texts, n, false, ids_, 64, offs, total, e);
}
static const char *const TEXTS_NULL1[2] = {"a", NULL};
static const char *const TEXTS_BAD[2] = {"a", "\xff"};
static const char *const TEXTS_OK[2] = {"a", "b"};
static adpo_status c_encb_null_texts(adpo_error **e) { return c_encb(2, NULL, &len_, e); }
static adpo_status c_encb_null_item(adpo_error **e) { return c_encb(2, TEXTS_NULL1, &len_, e); }
static adpo_status c_encb_utf8(adpo_error **e) { return c_encb(2, TEXTS_BAD, &len_, e); }
static adpo_status c_encb_huge_n(adpo_error **e) { return c_encb(SIZE_MAX, TEXTS_OK, &len_, e); }
static adpo_status c_encb_null_total(adpo_error **e) { return c_encb(2, TEXTS_OK, NULL, e); }
static adpo_status c_encb_null_tok(adpo_error **e) {
    size_t offs[3];
    return adpo_tokenizer_encode_batch(NULL, TEXTS_OK, 2, false, ids_, 64, offs, &len_, e);
}
static adpo_status decode(const int64_t *ids, size_t n, adpo_error **e) {
    char *s = NULL;
    adpo_status st = adpo_tokenizer_decode(tokenizer(), ids, n, false, &s, e);
    adpo_string_free(s);
    return st;
}
static const int64_t NEG_ID[2] = {1, -1};
static const int64_t BIG_ID[2] = {1, INT64_MAX};
static adpo_status c_dec_neg(adpo_error **e) { return decode(NEG_ID, 2, e); }
static adpo_status c_dec_big(adpo_error **e) { return decode(BIG_ID, 2, e); }
static adpo_status c_dec_null_ids(adpo_error **e) { return decode(NULL, 3, e); }
static adpo_status c_dec_huge_n(adpo_error **e) { return decode(NEG_ID, SIZE_MAX, e); }
static adpo_status c_dec_null_out(adpo_error **e) { return adpo_tokenizer_decode(tokenizer(), NEG_ID, 1, false, NULL, e); }
static adpo_status c_dec_null_tok(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_decode(NULL, NEG_ID, 1, false, &s, e);
}
static adpo_status decb(const int64_t *ids, const size_t *offs, size_t n, adpo_error **e) {
    char *out[4] = {0};
    return adpo_tokenizer_decode_batch(tokenizer(), ids, offs, n, false, out, e);
}
static const int64_t OK_IDS[4] = {1, 2, 3, 4};
static const size_t DEC_OFFS[3] = {0, 3, 2};
static const size_t HUGE_OFFS[3] = {0, 1, SIZE_MAX};
static const size_t START_OFFS[3] = {1, 2, 3};
static adpo_status c_decb_decreasing(adpo_error **e) { return decb(OK_IDS, DEC_OFFS, 2, e); }
static adpo_status c_decb_huge_offset(adpo_error **e) { return decb(OK_IDS, HUGE_OFFS, 2, e); }
static adpo_status c_decb_nonzero_start(adpo_error **e) { return decb(OK_IDS, START_OFFS, 2, e); }
static adpo_status c_decb_null_offs(adpo_error **e) { return decb(OK_IDS, NULL, 2, e); }
static adpo_status c_decb_huge_n(adpo_error **e) { return decb(OK_IDS, START_OFFS, SIZE_MAX, e); }
static adpo_status c_decb_null_out(adpo_error **e) {
    const size_t offs[3] = {0, 1, 2};
    return adpo_tokenizer_decode_batch(tokenizer(), OK_IDS, offs, 2, false, NULL, e);
}
static adpo_status c_decb_null_tok(adpo_error **e) {
    const size_t offs[3] = {0, 1, 2};
    char *out[2];
    return adpo_tokenizer_decode_batch(NULL, OK_IDS, offs, 2, false, out, e);
}
static adpo_status chat(const char *messages, const char *options, adpo_error **e) {
    char *s = NULL;
    adpo_status st = adpo_tokenizer_apply_chat_template_options(tokenizer(), messages, options, &s, e);
    adpo_string_free(s);
    return st;
}
static const char USER[] = "[{\"role\": \"user\", \"content\": \"hi\"}]";
static adpo_status c_chat_null(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_apply_chat_template(tokenizer(), NULL, true, &s, e);
}
static adpo_status c_chat_null_tok(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_apply_chat_template(NULL, USER, true, &s, e);
}
static adpo_status c_chat_null_out(adpo_error **e) { return adpo_tokenizer_apply_chat_template(tokenizer(), USER, true, NULL, e); }
static adpo_status c_chat_not_json(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_apply_chat_template(tokenizer(), "[{", true, &s, e);
}
static adpo_status c_chat_object(adpo_error **e) { return chat("{}", NULL, e); }
static adpo_status c_chat_role_type(adpo_error **e) { return chat("[{\"role\": 1, \"content\": \"x\"}]", NULL, e); }
static adpo_status c_chat_no_content(adpo_error **e) { return chat("[{\"role\": \"user\"}]", NULL, e); }
static adpo_status c_chat_deep(adpo_error **e) { return chat(deep_json(), NULL, e); }
static adpo_status c_chat_utf8(adpo_error **e) { return chat("[{\"role\": \"user\", \"content\": \"\xff\"}]", NULL, e); }
static adpo_status c_chat_opts_bad(adpo_error **e) { return chat(USER, "{\"tools\": 3}", e); }
static adpo_status c_chat_opts_docs(adpo_error **e) { return chat(USER, "{\"documents\": {}}", e); }
static adpo_status c_chat_opts_unknown(adpo_error **e) { return chat(USER, "{\"templat\": \"x\"}", e); }
static adpo_status c_chat_opts_syntax(adpo_error **e) { return chat(USER, "{\"template\": \"{% for %}\"}", e); }
static adpo_status c_chat_opts_raise(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ raise_exception('no') }}\"}", e);
}
static adpo_status c_chat_opts_range(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% for i in range(999999999999) %}x{% endfor %}\"}", e);
}
static adpo_status c_chat_opts_recursion(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}\"}", e);
}
static adpo_status c_chat_opts_big_string(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ 'x' * 100000000000 }}\"}", e);
}
static adpo_status c_chat_opts_utf8(adpo_error **e) { return chat(USER, NOT_UTF8, e); }
/* Templates that would run forever, allocate without bound or overflow the stack. */
static adpo_status c_chat_opts_loops(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\"}", e);
}
static adpo_status c_chat_opts_binary(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}\"}", e);
}
static adpo_status c_chat_opts_tojson_indent(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ messages|tojson(indent=10**12) }}\"}", e);
}
static adpo_status c_chat_opts_indent(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ 'a\\nb'|indent(10**12) }}\"}", e);
}
static adpo_status c_chat_opts_str_format(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ '{:>1000000000000}'.format(1) }}\"}", e);
}
static adpo_status c_chat_opts_printf(adpo_error **e) {
    return chat(USER, "{\"template\": \"{{ '%1000000000000d'|format(1) }}\"}", e);
}
static adpo_status c_chat_opts_doubling(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}\"}", e);
}
static adpo_status c_chat_opts_deep_print(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% set ns = namespace(l=[]) %}{% for i in range(30000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}\"}", e);
}
static adpo_status c_chat_opts_deep_tojson(adpo_error **e) {
    return chat(USER, "{\"template\": \"{% set ns = namespace(l=[]) %}{% for i in range(30000) %}{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l|tojson }}\"}", e);
}
static adpo_status c_chat_opts_null_tok(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_apply_chat_template_options(NULL, USER, NULL, &s, e);
}
static adpo_status c_eos_null_len(adpo_error **e) { return adpo_tokenizer_eos_ids(tokenizer(), ids_, 64, NULL, e); }
static adpo_status c_eos_null_tok(adpo_error **e) { return adpo_tokenizer_eos_ids(NULL, ids_, 64, &len_, e); }
static adpo_status c_eos_null_ids(adpo_error **e) { return adpo_tokenizer_eos_ids(tokenizer(), NULL, 5, &len_, e); }
static adpo_status c_tvocab_null(adpo_error **e) { return adpo_tokenizer_vocab_size(tokenizer(), NULL, e); }
static adpo_status c_tvocab_null_tok(adpo_error **e) {
    int64_t v;
    return adpo_tokenizer_vocab_size(NULL, &v, e);
}
static adpo_status c_t2id_missing(adpo_error **e) {
    int64_t id;
    return adpo_tokenizer_token_to_id(tokenizer(), "not-a-token-at-all-zzz", &id, e);
}
static adpo_status c_t2id_null(adpo_error **e) {
    int64_t id;
    return adpo_tokenizer_token_to_id(tokenizer(), NULL, &id, e);
}
static adpo_status c_t2id_utf8(adpo_error **e) {
    int64_t id;
    return adpo_tokenizer_token_to_id(tokenizer(), "\xff", &id, e);
}
static adpo_status c_t2id_null_out(adpo_error **e) { return adpo_tokenizer_token_to_id(tokenizer(), "a", NULL, e); }
static adpo_status c_t2id_null_tok(adpo_error **e) {
    int64_t id;
    return adpo_tokenizer_token_to_id(NULL, "a", &id, e);
}
static adpo_status c_special_bad(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_special_token(tokenizer(), "eos", &s, e);
}
static adpo_status c_special_null(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_special_token(tokenizer(), NULL, &s, e);
}
static adpo_status c_special_null_out(adpo_error **e) { return adpo_tokenizer_special_token(tokenizer(), "eos_token", NULL, e); }
static adpo_status c_special_null_tok(adpo_error **e) {
    char *s = NULL;
    return adpo_tokenizer_special_token(NULL, "eos_token", &s, e);
}

/* ---------------------------------------------------------------- batches */

static adpo_status batch_new(size_t n, size_t t, const int64_t *ids, const uint8_t *am, const uint8_t *lm,
                             const int64_t *g, adpo_error **e) {
    adpo_batch *b = NULL;
    adpo_status st = adpo_batch_new(n, t, ids, am, lm, g, &b, e);
    if (st != ADPO_STATUS_OK && b) return WRONG;
    adpo_batch_free(b);
    return st;
}
static const int64_t B_IDS[BN * BT] = {1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5};
static const uint8_t B_LOSS[BN * BT] = {0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1};
static adpo_status c_bnew_n0(adpo_error **e) { return batch_new(0, BT, B_IDS, NULL, B_LOSS, B_GROUPS, e); }
static adpo_status c_bnew_t0(adpo_error **e) { return batch_new(BN, 0, B_IDS, NULL, B_LOSS, B_GROUPS, e); }
static adpo_status c_bnew_overflow(adpo_error **e) {
    return batch_new((size_t)1 << 33, (size_t)1 << 33, B_IDS, NULL, B_LOSS, B_GROUPS, e);
}
static adpo_status c_bnew_huge(adpo_error **e) { return batch_new(HUGE_N, 1, B_IDS, NULL, B_LOSS, B_GROUPS, e); }
static adpo_status c_bnew_null_ids(adpo_error **e) { return batch_new(BN, BT, NULL, NULL, B_LOSS, B_GROUPS, e); }
static adpo_status c_bnew_null_loss(adpo_error **e) { return batch_new(BN, BT, B_IDS, NULL, NULL, B_GROUPS, e); }
static adpo_status c_bnew_null_groups(adpo_error **e) { return batch_new(BN, BT, B_IDS, NULL, B_LOSS, NULL, e); }
static adpo_status c_bnew_null_out(adpo_error **e) { return adpo_batch_new(BN, BT, B_IDS, NULL, B_LOSS, B_GROUPS, NULL, e); }
static adpo_status c_bnew_neg_id(adpo_error **e) {
    int64_t ids[BN * BT];
    memcpy(ids, B_IDS, sizeof ids);
    ids[7] = -3;
    return batch_new(BN, BT, ids, NULL, B_LOSS, B_GROUPS, e);
}
static adpo_status c_bnew_mask2(adpo_error **e) {
    uint8_t am[BN * BT];
    memset(am, 1, sizeof am);
    am[3] = 2;
    return batch_new(BN, BT, B_IDS, am, B_LOSS, B_GROUPS, e);
}
static adpo_status c_bnew_col0(adpo_error **e) {
    uint8_t lm[BN * BT];
    memcpy(lm, B_LOSS, sizeof lm);
    lm[0] = 1;
    return batch_new(BN, BT, B_IDS, NULL, lm, B_GROUPS, e);
}
static adpo_status set_f64(int which, const double *v, size_t len, int null_batch, adpo_error **e) {
    adpo_batch *b = null_batch ? NULL : batch();
    switch (which) {
    case 0: return adpo_batch_set_rewards(b, v, len, e);
    case 1: return adpo_batch_set_targets(b, v, len, e);
    case 2: return adpo_batch_set_old_logp(b, v, len, e);
    default: return adpo_batch_set_anchor_logp(b, v, len, e);
    }
}
static const double FOUR[4] = {0.5, 0.5, 0.25, 0.75};
static const double NAN4[4] = {0.5, NAN, 0.25, 0.75};
static const double INF4[4] = {0.5, 0.5, INFINITY, 0.75};
static const double NEG4[4] = {-0.5, 1.5, 0.25, 0.75};
static const double SUM4[4] = {0.5, 0.4, 0.25, 0.75};
#define SETCASES(w, name)                                                                                         \
    static adpo_status c_##name##_null_batch(adpo_error **e) { return set_f64(w, FOUR, 4, 1, e); }              \
    static adpo_status c_##name##_len(adpo_error **e) { return set_f64(w, FOUR, 3, 0, e); }                     \
    static adpo_status c_##name##_huge_len(adpo_error **e) { return set_f64(w, FOUR, SIZE_MAX, 0, e); }         \
    static adpo_status c_##name##_null(adpo_error **e) { return set_f64(w, NULL, 4, 0, e); }                    \
    static adpo_status c_##name##_nan(adpo_error **e) { return set_f64(w, NAN4, 4, 0, e); }                     \
    static adpo_status c_##name##_inf(adpo_error **e) { return set_f64(w, INF4, 4, 0, e); }
SETCASES(0, rewards)
SETCASES(1, targets)
SETCASES(2, old_logp)
SETCASES(3, anchor_logp)
static adpo_status c_targets_neg(adpo_error **e) { return set_f64(1, NEG4, 4, 0, e); }
static adpo_status c_targets_sum(adpo_error **e) { return set_f64(1, SUM4, 4, 0, e); }
static adpo_status c_old_logp_positive(adpo_error **e) { return set_f64(2, NEG4, 4, 0, e); }
static adpo_status c_shape_null(adpo_error **e) {
    size_t n;
    return adpo_batch_shape(NULL, &n, &n, e);
}
static adpo_status c_shape_null_out(adpo_error **e) {
    size_t n;
    return adpo_batch_shape(batch(), NULL, &n, e);
}
static adpo_status c_get_ids_len(adpo_error **e) {
    int64_t out[BN * BT];
    return adpo_batch_get_ids(batch(), out, 3, e);
}
static adpo_status c_get_ids_null(adpo_error **e) { return adpo_batch_get_ids(batch(), NULL, BN * BT, e); }
static adpo_status c_get_ids_null_batch(adpo_error **e) {
    int64_t out[BN * BT];
    return adpo_batch_get_ids(NULL, out, BN * BT, e);
}
static adpo_status c_completion_row(adpo_error **e) { return adpo_batch_get_completion(batch(), BN, ids_, 64, &len_, e); }
static adpo_status c_completion_huge_row(adpo_error **e) {
    return adpo_batch_get_completion(batch(), SIZE_MAX, ids_, 64, &len_, e);
}
static adpo_status c_completion_cap(adpo_error **e) { return adpo_batch_get_completion(batch(), 0, ids_, 1, &len_, e); }
static adpo_status c_completion_null_len(adpo_error **e) { return adpo_batch_get_completion(batch(), 0, ids_, 64, NULL, e); }
static adpo_status c_completion_null_batch(adpo_error **e) {
    return adpo_batch_get_completion(NULL, 0, ids_, 64, &len_, e);
}
static adpo_status c_loss_mask_len(adpo_error **e) {
    uint8_t out[BN * BT];
    return adpo_batch_get_loss_mask(batch(), out, BN * BT + 1, e);
}
static adpo_status c_loss_mask_null(adpo_error **e) { return adpo_batch_get_loss_mask(batch(), NULL, BN * BT, e); }
static adpo_status c_loss_mask_null_batch(adpo_error **e) {
    uint8_t out[BN * BT];
    return adpo_batch_get_loss_mask(NULL, out, BN * BT, e);
}
static adpo_status c_groups_len(adpo_error **e) {
    int64_t out[BN];
    return adpo_batch_get_group_ids(batch(), out, 0, e);
}
static adpo_status c_groups_null(adpo_error **e) { return adpo_batch_get_group_ids(batch(), NULL, BN, e); }
static adpo_status c_groups_null_batch(adpo_error **e) {
    int64_t out[BN];
    return adpo_batch_get_group_ids(NULL, out, BN, e);
}
static adpo_status c_get_old_logp_none(adpo_error **e) {
    double out[BN * BT];
    return adpo_batch_get_old_logp(batch(), out, BN * BT, e);
}
static adpo_status c_get_old_logp_len(adpo_error **e) {
    adpo_batch *b = batch();
    double v[BN] = {-1.0, -2.0, -0.5, -0.25}, out[BN * BT];
    adpo_status st = adpo_batch_set_old_logp(b, v, BN, e);
    return st != ADPO_STATUS_OK ? st : adpo_batch_get_old_logp(b, out, BN * BT, e);
}
static adpo_status c_get_old_logp_null(adpo_error **e) { return adpo_batch_get_old_logp(batch(), NULL, BN, e); }
static adpo_status c_get_old_logp_null_batch(adpo_error **e) {
    double out[BN];
    return adpo_batch_get_old_logp(NULL, out, BN, e);
}
/* Rollout records (src/ffi/rollout.rs). */
static adpo_status c_rollout_null_batch(adpo_error **e) {
    double v[BN * BT] = {0};
    return adpo_batch_set_rollout_logp(NULL, v, BN * BT, e);
}
static adpo_status c_rollout_null(adpo_error **e) { return adpo_batch_set_rollout_logp(batch(), NULL, BN * BT, e); }
static adpo_status c_rollout_len(adpo_error **e) { return adpo_batch_set_rollout_logp(batch(), FOUR, BN, e); }
static adpo_status c_rollout_huge(adpo_error **e) { return adpo_batch_set_rollout_logp(batch(), FOUR, SIZE_MAX, e); }
static adpo_status c_rollout_nan(adpo_error **e) {
    double v[BN * BT] = {0};
    v[7] = NAN;
    return adpo_batch_set_rollout_logp(batch(), v, BN * BT, e);
}
static adpo_status c_get_rollout_none(adpo_error **e) {
    double out[BN * BT];
    return adpo_batch_get_rollout_logp(batch(), out, BN * BT, e);
}
static adpo_status c_get_rollout_len(adpo_error **e) {
    adpo_batch *b = batch();
    double v[BN * BT] = {0}, out[BN * BT];
    adpo_status st = adpo_batch_set_rollout_logp(b, v, BN * BT, e);
    return st != ADPO_STATUS_OK ? st : adpo_batch_get_rollout_logp(b, out, BN, e);
}
static adpo_status c_get_rollout_null(adpo_error **e) { return adpo_batch_get_rollout_logp(batch(), NULL, BN * BT, e); }
static adpo_status c_get_rollout_null_batch(adpo_error **e) {
    double out[BN * BT];
    return adpo_batch_get_rollout_logp(NULL, out, BN * BT, e);
}
static const uint8_t FLAGS4[BN] = {0, 1, 0, 0};
static const uint8_t FLAGS4_BAD[BN] = {0, 2, 0, 0};
static adpo_status c_trunc_null_batch(adpo_error **e) { return adpo_batch_set_truncated(NULL, FLAGS4, BN, e); }
static adpo_status c_trunc_null(adpo_error **e) { return adpo_batch_set_truncated(batch(), NULL, BN, e); }
static adpo_status c_trunc_len(adpo_error **e) { return adpo_batch_set_truncated(batch(), FLAGS4, 3, e); }
static adpo_status c_trunc_two(adpo_error **e) { return adpo_batch_set_truncated(batch(), FLAGS4_BAD, BN, e); }
static adpo_status c_get_trunc_none(adpo_error **e) {
    uint8_t out[BN];
    return adpo_batch_get_truncated(batch(), out, BN, e);
}
static adpo_status c_get_trunc_len(adpo_error **e) {
    adpo_batch *b = batch();
    uint8_t out[BN];
    adpo_status st = adpo_batch_set_truncated(b, FLAGS4, BN, e);
    return st != ADPO_STATUS_OK ? st : adpo_batch_get_truncated(b, out, 2, e);
}
static adpo_status c_get_trunc_null(adpo_error **e) { return adpo_batch_get_truncated(batch(), NULL, BN, e); }
static adpo_status c_get_trunc_null_batch(adpo_error **e) {
    uint8_t out[BN];
    return adpo_batch_get_truncated(NULL, out, BN, e);
}
static adpo_status c_version_null_batch(adpo_error **e) { return adpo_batch_set_policy_version(NULL, 3, e); }
static adpo_status c_version_max(adpo_error **e) { return adpo_batch_set_policy_version(batch(), UINT64_MAX, e); }
static adpo_status c_get_version_none(adpo_error **e) {
    uint64_t v;
    return adpo_batch_get_policy_version(batch(), &v, e);
}
static adpo_status c_get_version_null(adpo_error **e) { return adpo_batch_get_policy_version(batch(), NULL, e); }
static adpo_status c_get_version_null_batch(adpo_error **e) {
    uint64_t v;
    return adpo_batch_get_policy_version(NULL, &v, e);
}
static adpo_status c_concat_null_out(adpo_error **e) {
    const adpo_batch *parts[1] = {batch()};
    return adpo_batch_concat(parts, 1, NULL, e);
}
static adpo_status concat(const adpo_batch *const *parts, size_t count, adpo_error **e) {
    adpo_batch *out = NULL;
    adpo_status st = adpo_batch_concat(parts, count, &out, e);
    if (st != ADPO_STATUS_OK && out) return WRONG;
    adpo_batch_free(out);
    return st;
}
static adpo_status c_concat_null_array(adpo_error **e) { return concat(NULL, 2, e); }
static adpo_status c_concat_zero(adpo_error **e) {
    const adpo_batch *parts[1] = {batch()};
    return concat(parts, 0, e);
}
static adpo_status c_concat_null_entry(adpo_error **e) {
    const adpo_batch *parts[2] = {batch(), NULL};
    return concat(parts, 2, e);
}
static adpo_status c_concat_twice(adpo_error **e) {
    adpo_batch *b = batch();
    const adpo_batch *parts[2] = {b, b};
    return concat(parts, 2, e);
}
static adpo_status c_concat_some_rewards(adpo_error **e) {
    const adpo_batch *parts[2] = {batch(), batch_with(B_IDS)}; /* rewards, none */
    return concat(parts, 2, e);
}
static adpo_status c_concat_huge(adpo_error **e) {
    const adpo_batch *parts[1] = {batch()};
    return concat(parts, SIZE_MAX, e);
}
static adpo_status c_overlong_null(adpo_error **e) { return adpo_soft_overlong_penalty(5, 20, 4, 1.0, NULL, e); }
static adpo_status c_overlong_buffer0(adpo_error **e) {
    double p;
    return adpo_soft_overlong_penalty(5, 20, 0, 1.0, &p, e);
}
static adpo_status c_overlong_buffer_big(adpo_error **e) {
    double p;
    return adpo_soft_overlong_penalty(5, 20, 21, 1.0, &p, e);
}
static adpo_status c_overlong_nan(adpo_error **e) {
    double p;
    return adpo_soft_overlong_penalty(5, 20, 4, NAN, &p, e);
}
static adpo_status c_overlong_huge(adpo_error **e) {
    double p;
    adpo_status st = adpo_soft_overlong_penalty(UINT64_MAX, UINT64_MAX, UINT64_MAX, 1.0, &p, e);
    return st == ADPO_STATUS_OK && p != -1.0 ? WRONG : st; /* at max_length: -factor */
}
static adpo_status c_batch_free_null(adpo_error **e) {
    (void)e;
    adpo_batch_free(NULL);
    return ADPO_STATUS_OK;
}

/* ---------------------------------------------------------------- trainer */

static adpo_status trainer_new(adpo_model *p, const char *cfg, adpo_error **e) {
    adpo_trainer *t = NULL;
    adpo_status st = adpo_trainer_new(p, NULL, cfg, &t, e);
    if (st != ADPO_STATUS_OK && t) return WRONG;
    adpo_trainer_free(t);
    return st;
}
static adpo_status c_tnew_null(adpo_error **e) { return trainer_new(NULL, NULL, e); }
static adpo_status c_tnew_null_out(adpo_error **e) { return adpo_trainer_new(tiny_model(), NULL, NULL, NULL, e); }
static adpo_status c_tnew_bad_json(adpo_error **e) { return trainer_new(tiny_model(), "{\"optimizer\": ", e); }
static adpo_status c_tnew_lr(adpo_error **e) { return trainer_new(tiny_model(), "{\"optimizer\": {\"name\": \"sgd\", \"lr\": 1e300}}", e); }
static adpo_status c_tnew_micro0(adpo_error **e) { return trainer_new(tiny_model(), "{\"micro_batch_rows\": 0}", e); }
static adpo_status c_tnew_neg_epochs(adpo_error **e) { return trainer_new(tiny_model(), "{\"epochs_per_batch\": -1}", e); }
static adpo_status c_tnew_ema(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"anchor\": {\"mode\": \"ema\", \"alpha\": 1.5}}", e);
}
static adpo_status c_tnew_window(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"anchor\": {\"mode\": \"kl_triggered\", \"window\": 0}}", e);
}
static adpo_status c_tnew_array(adpo_error **e) { return trainer_new(tiny_model(), "{\"anchor\": [\"ema\", 0.5]}", e); }
static adpo_status c_tnew_clip(adpo_error **e) { return trainer_new(tiny_model(), "{\"grad_clip\": -1}", e); }
static adpo_status c_tnew_schedule(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"schedule\": {\"name\": \"cosine\", \"total_steps\": 0}}", e);
}
static adpo_status c_tnew_backend(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"distributed\": {\"backend\": \"nccl\"}}", e);
}
static adpo_status c_tnew_bucket(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"distributed\": {\"bucket_mb\": 0}}", e);
}
static adpo_status c_tnew_filter_empty(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"filter_groups\": {}}", e);
}
static adpo_status c_tnew_rs_band(adpo_error **e) {
    return trainer_new(tiny_model(),
                       "{\"rollout_correction\": {\"rollout_rs\": \"token\", \"rollout_rs_threshold\": 0.5, "
                       "\"rollout_rs_threshold_lower\": 2}}",
                       e);
}
static adpo_status c_tnew_is_level(adpo_error **e) {
    return trainer_new(tiny_model(), "{\"rollout_correction\": {\"rollout_is\": \"tokens\"}}", e);
}
static adpo_status c_tnew_staleness(adpo_error **e) { return trainer_new(tiny_model(), "{\"max_staleness\": -1}", e); }
static adpo_status c_tnew_utf8(adpo_error **e) { return trainer_new(tiny_model(), NOT_UTF8, e); }
static adpo_status c_tnew_grpo_ref(adpo_error **e) { return trainer_new(tiny_model(), "{\"loss\": \"grpo\", \"beta_kl\": 0.1}", e); }
static adpo_status step(adpo_trainer *t, adpo_batch *b, adpo_error **e) {
    adpo_trainer_metrics m = {.struct_size = sizeof m};
    return adpo_trainer_step(t, b, &m, e);
}
static adpo_status c_step_null(adpo_error **e) { return step(NULL, batch(), e); }
static adpo_status c_step_null_batch(adpo_error **e) { return step(trainer(), NULL, e); }
static adpo_status c_step_no_rewards(adpo_error **e) { return step(trainer(), batch_with(B_IDS), e); }
static adpo_status c_step_big_ids(adpo_error **e) {
    int64_t ids[BN * BT];
    for (int i = 0; i < BN * BT; i++) ids[i] = 1000000000 + i;
    adpo_batch *b = batch_with(ids);
    const double r[BN] = {1, 0, 1, 0};
    adpo_batch_set_rewards(b, r, BN, NULL);
    return step(trainer(), b, e);
}
static adpo_status c_step_singletons(adpo_error **e) {
    const int64_t g[BN] = {0, 1, 2, 3};
    adpo_batch *b = NULL;
    if (adpo_batch_new(BN, BT, B_IDS, NULL, B_LOSS, g, &b, NULL) != ADPO_STATUS_OK) return WRONG;
    const double r[BN] = {1, 0, 1, 0};
    adpo_batch_set_rewards(b, r, BN, NULL);
    return step(trainer(), b, e);
}
static adpo_status c_step_size0(adpo_error **e) {
    adpo_trainer_metrics m = {.struct_size = 0};
    return adpo_trainer_step(trainer(), batch(), &m, e);
}
static adpo_status c_step_fixed_no_ref(adpo_error **e) {
    return step(trainer_on(tiny_model(), "{\"anchor\": {\"mode\": \"fixed\"}}"), batch(), e);
}
static adpo_status c_step_grpo_no_old(adpo_error **e) { return step(trainer_on(tiny_model(), "{\"loss\": \"grpo\"}"), batch(), e); }
static adpo_status c_step_huge_lr_nonfinite(adpo_error **e) {
    return step(trainer_on(tiny_model(), "{\"optimizer\": {\"name\": \"sgd\", \"lr\": 1000}, \"tau\": 1e-300}"), batch(), e);
}
static adpo_status c_tmjson_before(adpo_error **e) {
    char *s = NULL;
    return adpo_trainer_metrics_json(trainer(), &s, e);
}
static adpo_status c_tmjson_null(adpo_error **e) { return adpo_trainer_metrics_json(trainer(), NULL, e); }
static adpo_status c_tmjson_null_tr(adpo_error **e) {
    char *s = NULL;
    return adpo_trainer_metrics_json(NULL, &s, e);
}
static adpo_status c_slogp_len(adpo_error **e) {
    double out[BN];
    return adpo_trainer_sequence_logp(trainer(), batch(), out, BN - 1, e);
}
/* A step in two calls (src/ffi/split_step.rs). */
static adpo_status fb(adpo_trainer *t, adpo_batch *b, const double *g, size_t len, adpo_error **e) {
    adpo_trainer_metrics m = {.struct_size = sizeof m};
    return adpo_trainer_forward_backward(t, b, g, len, &m, e);
}
static double GRAD[BN * BT];
static adpo_status c_fb_null(adpo_error **e) { return fb(NULL, batch(), NULL, 0, e); }
static adpo_status c_fb_null_batch(adpo_error **e) { return fb(trainer(), NULL, NULL, 0, e); }
static adpo_status c_fb_len(adpo_error **e) { return fb(trainer(), batch(), GRAD, BN, e); }
static adpo_status c_fb_huge(adpo_error **e) { return fb(trainer(), batch(), GRAD, SIZE_MAX, e); }
static adpo_status c_fb_nan(adpo_error **e) {
    double g[BN * BT] = {0};
    g[6] = NAN;
    return fb(trainer(), batch(), g, BN * BT, e);
}
static adpo_status c_fb_metrics_size(adpo_error **e) {
    adpo_trainer_metrics m = {.struct_size = 3};
    return adpo_trainer_forward_backward(trainer(), batch(), NULL, 0, &m, e);
}
static adpo_status c_fb_then_step(adpo_error **e) {
    adpo_trainer *t = trainer();
    adpo_batch *b = batch();
    adpo_status st = fb(t, b, NULL, 0, e);
    return st != ADPO_STATUS_OK ? WRONG : step(t, b, e); /* would discard the gradient */
}
static adpo_status c_fbd_null(adpo_error **e) { return adpo_trainer_forward_backward_dlpack(NULL, batch(), NULL, NULL, e); }
static adpo_status c_fbd_null_batch(adpo_error **e) {
    return adpo_trainer_forward_backward_dlpack(trainer(), NULL, NULL, NULL, e);
}
static adpo_status c_fbd_builtin(adpo_error **e) {
    return adpo_trainer_forward_backward_dlpack(trainer(), batch(), NULL, NULL, e);
}
static adpo_status c_fbd_1d(adpo_error **e) {
    return adpo_trainer_forward_backward_dlpack(trainer(), batch(), dl_vec(0, kDLFloat, 64, 4), NULL, e);
}
static adpo_status c_fbd_int8(adpo_error **e) {
    return adpo_trainer_forward_backward_dlpack(trainer(), batch(), dl_vec(0, kDLInt, 8, 4), NULL, e);
}
static adpo_status c_optim_none(adpo_error **e) { return adpo_trainer_optim_step(trainer(), NULL, e); }
static adpo_status c_optim_null(adpo_error **e) { return adpo_trainer_optim_step(NULL, NULL, e); }
static adpo_status c_optim_after_fb(adpo_error **e) {
    adpo_trainer *t = trainer();
    adpo_status st = fb(t, batch(), GRAD, BN * BT, e);
    return st != ADPO_STATUS_OK ? WRONG : adpo_trainer_optim_step(t, NULL, e);
}
static adpo_status c_tlogp_len(adpo_error **e) {
    double out[BN * BT];
    return adpo_trainer_token_logp(trainer(), batch(), out, BN, e);
}
static adpo_status c_tlogp_null(adpo_error **e) { return adpo_trainer_token_logp(trainer(), batch(), NULL, BN * BT, e); }
static adpo_status c_tlogp_null_batch(adpo_error **e) {
    double out[BN * BT];
    return adpo_trainer_token_logp(trainer(), NULL, out, BN * BT, e);
}
static adpo_status c_tlogp_null_tr(adpo_error **e) {
    double out[BN * BT];
    return adpo_trainer_token_logp(NULL, batch(), out, BN * BT, e);
}
static adpo_status c_slogp_null(adpo_error **e) { return adpo_trainer_sequence_logp(trainer(), batch(), NULL, BN, e); }
static adpo_status c_slogp_null_batch(adpo_error **e) {
    double out[BN];
    return adpo_trainer_sequence_logp(trainer(), NULL, out, BN, e);
}
static adpo_status c_slogp_null_tr(adpo_error **e) {
    double out[BN];
    return adpo_trainer_sequence_logp(NULL, batch(), out, BN, e);
}
static adpo_status c_slogp_big_ids(adpo_error **e) {
    int64_t ids[BN * BT];
    for (int i = 0; i < BN * BT; i++) ids[i] = INT64_MAX - i;
    double out[BN];
    return adpo_trainer_sequence_logp(trainer(), batch_with(ids), out, BN, e);
}
static adpo_status c_trainer_free_null(adpo_error **e) {
    (void)e;
    adpo_trainer_free(NULL);
    return ADPO_STATUS_OK;
}
static const int64_t PROMPTS[4] = {1, 2, 3, 4};
static const size_t PLENS[2] = {2, 2};
static adpo_status sample(adpo_trainer *t, const int64_t *p, const size_t *l, size_t np, size_t k, const char *cfg,
                          adpo_error **e) {
    adpo_batch *b = NULL;
    adpo_status st = adpo_trainer_sample(t, p, l, np, k, cfg, &b, e);
    if (st != ADPO_STATUS_OK && b) return WRONG;
    adpo_batch_free(b);
    return st;
}
static adpo_status c_sample_null_tr(adpo_error **e) { return sample(NULL, PROMPTS, PLENS, 2, 2, NULL, e); }
static adpo_status c_sample_null_prompts(adpo_error **e) { return sample(trainer(), NULL, PLENS, 2, 2, NULL, e); }
static adpo_status c_sample_null_lens(adpo_error **e) { return sample(trainer(), PROMPTS, NULL, 2, 2, NULL, e); }
static adpo_status c_sample_n0(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 0, 2, NULL, e); }
static adpo_status c_sample_k0(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, 0, NULL, e); }
static adpo_status c_sample_huge_k(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, SIZE_MAX, NULL, e); }
static adpo_status c_sample_k30(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, (size_t)1 << 30, NULL, e); }
static adpo_status c_sample_huge_n(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, HUGE_N, 2, NULL, e); }
static adpo_status c_sample_len0(adpo_error **e) {
    const size_t l[2] = {0, 2};
    return sample(trainer(), PROMPTS, l, 2, 2, NULL, e);
}
static adpo_status c_sample_len_overflow(adpo_error **e) {
    const size_t l[2] = {SIZE_MAX, 2};
    return sample(trainer(), PROMPTS, l, 2, 2, NULL, e);
}
static adpo_status c_sample_bad_token(adpo_error **e) {
    const int64_t p[4] = {1, -1, 3, INT64_MAX};
    return sample(trainer(), p, PLENS, 2, 2, NULL, e);
}
static adpo_status c_sample_cfg(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, 2, "{\"temperature\": -1}", e); }
static adpo_status c_sample_top_p(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, 2, "{\"top_p\": 2}", e); }
static adpo_status c_sample_max_new(adpo_error **e) {
    return sample(trainer(), PROMPTS, PLENS, 2, 2, "{\"max_new_tokens\": 1000000000}", e);
}
static adpo_status c_sample_eos(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, 2, "{\"eos_id\": \"x\"}", e); }
static adpo_status c_sample_stop(adpo_error **e) {
    return sample(trainer(), PROMPTS, PLENS, 2, 2, "{\"stop_sequences\": [[]], \"pad_id\": -1}", e);
}
static adpo_status c_sample_utf8(adpo_error **e) { return sample(trainer(), PROMPTS, PLENS, 2, 2, NOT_UTF8, e); }
static adpo_status c_sample_null_out(adpo_error **e) {
    return adpo_trainer_sample(trainer(), PROMPTS, PLENS, 2, 2, NULL, NULL, e);
}
static adpo_status c_tsave_null(adpo_error **e) { return adpo_trainer_save(NULL, scratch_file("c"), e); }
static adpo_status c_tsave_null_path(adpo_error **e) { return adpo_trainer_save(trainer(), NULL, e); }
static adpo_status c_tsave_unwritable(adpo_error **e) { return adpo_trainer_save(trainer(), "/nonexistent/d/c", e); }
static adpo_status c_tsave_dir(adpo_error **e) { return adpo_trainer_save(trainer(), scratch, e); }
static adpo_status c_tsave_utf8(adpo_error **e) { return adpo_trainer_save(trainer(), "\xff", e); }
static adpo_status c_tload_null(adpo_error **e) { return adpo_trainer_load(NULL, scratch_file("c"), e); }
static adpo_status c_tload_null_path(adpo_error **e) { return adpo_trainer_load(trainer(), NULL, e); }
static adpo_status c_tload_missing(adpo_error **e) { return adpo_trainer_load(trainer(), "/nonexistent", e); }
static adpo_status c_tload_dir(adpo_error **e) { return adpo_trainer_load(trainer(), scratch, e); }
static adpo_status c_tload_dev_zero(adpo_error **e) { return adpo_trainer_load(trainer(), "/dev/zero", e); }
static adpo_status c_tload_truncated(adpo_error **e) {
    adpo_trainer *t = trainer();
    const char *p = scratch_file("ckpt");
    if (adpo_trainer_save(t, p, NULL) != ADPO_STATUS_OK) return WRONG;
    return adpo_trainer_load(t, truncated_copy(p, -100, "ckpt_cut"), e);
}
static adpo_status c_tload_flipped(adpo_error **e) {
    adpo_trainer *t = trainer();
    const char *p = scratch_file("ckpt");
    if (adpo_trainer_save(t, p, NULL) != ADPO_STATUS_OK) return WRONG;
    FILE *f = fopen(p, "r+b");
    fseek(f, -50, SEEK_END);
    fputc(0x5a, f);
    fclose(f);
    return adpo_trainer_load(t, p, e);
}
static adpo_status c_tload_big_header(adpo_error **e) {
    const char *p = scratch_file("big_header");
    unsigned char bytes[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    write_bytes(p, bytes, sizeof bytes);
    return adpo_trainer_load(trainer(), p, e);
}
static adpo_status c_tload_other_model(adpo_error **e) {
    /* A checkpoint of another architecture (the HF model's trainer) into the TorchScript one. */
    const char *p = scratch_file("hf_ckpt");
    if (adpo_trainer_save(trainer_on(hf_model(), NULL), p, NULL) != ADPO_STATUS_OK) return WRONG;
    return adpo_trainer_load(trainer(), p, e);
}
static adpo_status c_mpi_null(adpo_error **e) { return adpo_trainer_use_mpi(NULL, NULL, e); }
static int32_t failing_allreduce(void *u, void *b, size_t c, DLDataType d, DLDevice v) {
    (void)u, (void)b, (void)c, (void)d, (void)v;
    return 7;
}
static int userdata_frees;
static void count_free(void *u) {
    (void)u;
    userdata_frees++;
}
/* The documented ownership: free_userdata runs exactly once, also when the call fails. */
static adpo_status allreduce(adpo_trainer *t, int32_t rank, int32_t world, adpo_allreduce_fn f, adpo_error **e) {
    userdata_frees = 0;
    adpo_status st = adpo_trainer_use_allreduce(t, rank, world, f, &userdata_frees, count_free, e);
    if (st != ADPO_STATUS_OK && userdata_frees != 1) return WRONG;
    return st;
}
static adpo_status c_ar_null_tr(adpo_error **e) { return allreduce(NULL, 0, 2, failing_allreduce, e); }
static adpo_status c_ar_null_fn(adpo_error **e) { return allreduce(trainer(), 0, 2, NULL, e); }
static adpo_status c_ar_rank(adpo_error **e) { return allreduce(trainer(), 2, 2, failing_allreduce, e); }
static adpo_status c_ar_neg(adpo_error **e) { return allreduce(trainer(), -1, 2, failing_allreduce, e); }
static adpo_status c_ar_world0(adpo_error **e) { return allreduce(trainer(), 0, 0, failing_allreduce, e); }
static adpo_status c_ar_fails(adpo_error **e) { return allreduce(trainer(), 0, 2, failing_allreduce, e); }
static adpo_status c_world_null(adpo_error **e) {
    int32_t r, w;
    return adpo_trainer_world(NULL, &r, &w, e);
}
static adpo_status c_world_null_outs(adpo_error **e) { return adpo_trainer_world(trainer(), NULL, NULL, e); }

/* ---------------------------------------------------------------- seeded random cases */

static uint64_t next_u64(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ULL;
}
static uint64_t below(uint64_t n) { return next_u64() % n; }

static double random_double(void) {
    static const double special[] = {NAN, INFINITY, -INFINITY, 0.0, -0.0, 1e308, -1e308, 5e-324, 1.0, -1.0};
    if (below(4) == 0) return special[below(10)];
    return ((double)(next_u64() >> 11) / 9007199254740992.0 - 0.5) * 40.0;
}
static int64_t random_id(int64_t vocab) {
    switch (below(8)) {
    case 0: return -1 - (int64_t)below(3);
    case 1: return vocab + (int64_t)below(3);
    case 2: return below(2) ? INT64_MAX : INT64_MIN;
    default: return (int64_t)below((uint64_t)vocab);
    }
}
/* NULL, or a buffer of n random doubles. */
static double *random_doubles(size_t n, int null_chance) {
    if (null_chance && below(null_chance) == 0) return NULL;
    double *v = malloc((n + 1) * sizeof *v);
    for (size_t i = 0; i < n; i++) v[i] = random_double();
    return v;
}

/* A JSON text made of fragments: keys that exist, keys that do not, odd values, broken syntax. */
static char *random_json(const char *const *keys, size_t nkeys) {
    static const char *const values[] = {"1", "0", "-1", "1e308", "-1e999", "0.5", "\"x\"", "null", "true",
                                         "[]", "[1, 2]", "{}", "{\"mode\": \"ema\"}", "\"\xff\"", "99999999999999999999",
                                         "{\"name\": \"sgd\", \"lr\": -1}", "[[1], []]", "\"cosine\"", ""};
    size_t cap = 4096, len = 0;
    char *s = malloc(cap);
    len += (size_t)snprintf(s + len, cap - len, "{");
    int items = (int)below(4);
    for (int i = 0; i < items && len < cap - 200; i++) {
        const char *key = below(5) == 0 ? "no_such_key" : keys[below(nkeys)];
        len += (size_t)snprintf(s + len, cap - len, "%s\"%s\": %s", i ? ", " : "", key, values[below(19)]);
    }
    if (below(8) != 0) len += (size_t)snprintf(s + len, cap - len, "}");
    if (below(10) == 0 && len > 1) s[below(len)] = (char)below(256); /* a corrupted byte (0 ends it) */
    return s;
}

static const char *const OBJ_KEYS[] = {"loss", "tau", "beta_reward", "reward_transform", "target", "kde_bandwidth",
                                       "top1_smoothing", "adaptive_tau", "clip_log_ratio", "clip_score",
                                       "beta_anchor_kl", "pl_top_k", "clip_eps", "beta_kl", "seed"};
static const char *const TRAINER_KEYS[] = {"seq_logp", "micro_batch_rows", "logprob_chunk_rows", "epochs_per_batch",
                                           "anchor", "optimizer", "grad_clip", "schedule", "loss", "tau"};
static const char *const SAMPLE_KEYS[] = {"temperature", "top_k", "top_p", "max_new_tokens", "eos_id",
                                          "stop_sequences", "pad_id", "seed"};

static adpo_status r_objective_new(adpo_error **e) { return obj_new(random_json(OBJ_KEYS, 15), e); }

static adpo_status r_objective_eval(adpo_error **e) {
    size_t n = below(9);
    int64_t *g = malloc((n + 1) * sizeof *g);
    for (size_t i = 0; i < n; i++) g[i] = below(4) == 0 ? random_id(3) : (int64_t)below(3);
    double *lp = random_doubles(n, 12), *al = random_doubles(n, 12), *rw = random_doubles(n, 3),
           *tg = random_doubles(n, 2), *h = random_doubles(n, 2);
    double loss, *grad = random_doubles(n, 4), *sc = random_doubles(n, 4);
    adpo_objective *o = objective(below(3) ? NULL : "{\"loss\": \"pairwise\", \"target\": \"kde\"}");
    if (below(2)) return adpo_objective_eval(o, n, lp, al, rw, tg, below(12) ? g : NULL, &loss, grad, sc, e);
    adpo_objective *a = objective("{\"adaptive_tau\": {\"rule\": \"smooth_hybrid\", \"alpha\": 0.5, \"beta\": 1.0, \"tau_min\": 0.1, \"tau_max\": 5.0}}");
    return adpo_objective_eval_entropy(below(2) ? o : a, n, lp, al, rw, tg, g, h, &loss, grad, sc, e);
}

static adpo_status r_eval_tokens(adpo_error **e) {
    size_t n = below(6), t = below(5);
    double *lp = random_doubles(n * t, 12), *old = random_doubles(n * t, 12), *ref = random_doubles(n * t, 2);
    double *mask = malloc((n * t + 1) * sizeof *mask);
    for (size_t i = 0; i < n * t; i++) mask[i] = below(6) == 0 ? random_double() : (double)below(2);
    int64_t *g = malloc((n + 1) * sizeof *g);
    for (size_t i = 0; i < n; i++) g[i] = (int64_t)below(2);
    double loss, *grad = random_doubles(n * t, 4), *adv = random_doubles(n, 4);
    adpo_objective *o = objective(below(2) ? "{\"loss\": \"grpo\"}" : "{\"loss\": \"grpo\", \"beta_kl\": 0.1}");
    return adpo_objective_eval_tokens(o, n, t, lp, old, ref, mask, random_doubles(n, 12), g, &loss, grad, adv, e);
}

/* A random batch (or its refusal) on the TorchScript model's vocabulary, then a step or a
 * scoring on it, with random rewards, targets and log-probs. */
static adpo_status r_batch_step(adpo_error **e) {
    adpo_model *m = tiny_model();
    int64_t vocab = 0;
    adpo_model_vocab_size(m, &vocab, NULL);
    size_t n = 1 + below(6), t = 1 + below(6);
    int64_t *ids = malloc(n * t * sizeof *ids), *g = malloc(n * sizeof *g);
    uint8_t *am = malloc(n * t), *lm = malloc(n * t);
    for (size_t i = 0; i < n * t; i++) {
        ids[i] = below(10) ? (int64_t)below((uint64_t)vocab) : random_id(vocab);
        am[i] = below(12) ? 1 : (uint8_t)below(3);
        lm[i] = i % t == 0 ? (below(15) == 0) : (below(8) == 0 ? (uint8_t)below(3) : (uint8_t)below(2));
    }
    for (size_t i = 0; i < n; i++) g[i] = (int64_t)below(3);
    adpo_batch *b = NULL;
    adpo_status st = adpo_batch_new(n, t, ids, below(2) ? am : NULL, lm, g, &b, e);
    if (st != ADPO_STATUS_OK) return st;
    adpo_error *ignored = NULL;
    if (below(3)) adpo_batch_set_rewards(b, random_doubles(n, 8), n, &ignored);
    if (below(4) == 0) adpo_batch_set_targets(b, random_doubles(n, 8), n, &ignored);
    if (below(4) == 0) adpo_batch_set_old_logp(b, random_doubles(n * t, 8), below(2) ? n : n * t, &ignored);
    if (below(4) == 0) adpo_batch_set_anchor_logp(b, random_doubles(n, 8), n, &ignored);
    adpo_error_free(ignored);
    adpo_trainer *tr = trainer_on(m, random_json(TRAINER_KEYS, 10)[0] == '{' && below(2) ? "{\"micro_batch_rows\": 2}" : NULL);
    if (below(3) == 0) {
        double *out = malloc(n * sizeof *out);
        return adpo_trainer_sequence_logp(tr, b, out, n, e);
    }
    adpo_trainer_metrics mt = {.struct_size = sizeof mt};
    return adpo_trainer_step(tr, b, below(2) ? &mt : NULL, e);
}

static adpo_status r_trainer_new(adpo_error **e) { return trainer_new(tiny_model(), random_json(TRAINER_KEYS, 10), e); }

static adpo_status r_sample(adpo_error **e) {
    adpo_trainer *tr = trainer_on(below(2) ? tiny_model() : hf_model(), NULL);
    size_t np = below(4), k = below(4);
    size_t *lens = malloc((np + 1) * sizeof *lens), total = 0;
    for (size_t i = 0; i < np; i++) total += lens[i] = below(4);
    int64_t *p = malloc((total + 1) * sizeof *p);
    for (size_t i = 0; i < total; i++) p[i] = below(8) ? (int64_t)below(16) : random_id(16);
    char *cfg = random_json(SAMPLE_KEYS, 8);
    if (strstr(cfg, "max_new_tokens")) cfg = "{\"max_new_tokens\": 3}"; /* bounded: a fuzz case, not a load test */
    return sample(tr, p, lens, np, k, below(3) ? cfg : NULL, e);
}

static adpo_status r_tokenizer(adpo_error **e) {
    adpo_tokenizer *t = tokenizer();
    size_t n = below(40);
    switch (below(4)) {
    case 0: {
        char *s = malloc(n + 1);
        for (size_t i = 0; i < n; i++) s[i] = (char)(1 + below(255));
        s[n] = 0;
        return adpo_tokenizer_encode(t, s, below(2), ids_, 64, &len_, e);
    }
    case 1: {
        int64_t vocab = 0;
        adpo_tokenizer_vocab_size(t, &vocab, NULL);
        int64_t *ids = malloc((n + 1) * sizeof *ids);
        for (size_t i = 0; i < n; i++) ids[i] = below(6) ? (int64_t)below((uint64_t)vocab) : random_id(vocab);
        char *s = NULL;
        adpo_status st = adpo_tokenizer_decode(t, ids, n, below(2), &s, e);
        adpo_string_free(s);
        return st;
    }
    case 2: {
        static const char *const frags[] = {"[", "]", "{", "}", ",", "\"role\"", ":", "\"user\"", "\"content\"",
                                            "\"hi\"", "null", "\"tool_calls\"", "[]", "1", "\"\\u0000\""};
        char s[1024] = "";
        for (size_t i = 0; i < n; i++) strcat(s, frags[below(15)]);
        char *out = NULL;
        adpo_status st = adpo_tokenizer_apply_chat_template(t, s, below(2), &out, e);
        adpo_string_free(out);
        return st;
    }
    default: {
        static const char *const names[] = {"eos_token", "bos_token", "pad_token", "x", "", "<|im_end|>"};
        char *out = NULL;
        adpo_status st = below(2) ? adpo_tokenizer_special_token(t, names[below(6)], &out, e)
                                  : adpo_tokenizer_token_to_id(t, names[below(6)], ids_, e);
        if (st == ADPO_STATUS_OK) adpo_string_free(out);
        return st;
    }
    }
}

static adpo_status r_threads(adpo_error **e) {
    static const int32_t v[] = {0, -1, 4097, INT32_MAX, INT32_MIN, 1, 2};
    return adpo_set_num_threads(v[below(7)], e);
}

/* ---------------------------------------------------------------- GGUF files */

/* The tiny Q4_0 llama of tests/fixtures/make_gguf.py, edited in memory and written to scratch. */
static unsigned char gguf_buf[1 << 20];
static size_t gguf_len;

static void gguf_read(void) {
    FILE *f = fopen(fixture("gguf/types/Q4_0.gguf"), "rb");
    if (!f) setup_failed("gguf/types/Q4_0.gguf (run make fixtures)", 0, NULL);
    gguf_len = fread(gguf_buf, 1, sizeof gguf_buf, f);
    fclose(f);
    if (gguf_len < 64 || gguf_len == sizeof gguf_buf) setup_failed("gguf fixture size", 0, NULL);
}

/* The offset just after the first occurrence of string `s` in the file. */
static size_t gguf_after(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i + n <= gguf_len; i++)
        if (memcmp(gguf_buf + i, s, n) == 0) return i + n;
    setup_failed(s, 0, NULL);
    return 0;
}

static void put_u32(size_t at, uint32_t v) { memcpy(gguf_buf + at, &v, 4); } /* little-endian hosts */
static void put_u64(size_t at, uint64_t v) { memcpy(gguf_buf + at, &v, 8); }

static const char *gguf_written(size_t len) {
    const char *p = scratch_file("model.gguf");
    write_bytes(p, gguf_buf, len);
    return p;
}
static const char *gguf_edited(void) { return gguf_written(gguf_len); }

/* token_embd.weight's description: n_dims (u32) right after its name, then dims, type, offset. */
static size_t embd_info(void) { return gguf_after("token_embd.weight"); }

static adpo_status g_ok(adpo_error **e) { gguf_read(); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_cut(adpo_error **e) { gguf_read(); return model_load(gguf_written(gguf_len - 1000), NULL, e); }
static adpo_status g_header(adpo_error **e) { gguf_read(); return model_load(gguf_written(20), NULL, e); }
static adpo_status g_magic(adpo_error **e) { gguf_read(); memcpy(gguf_buf, "GGUX", 4); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_v1(adpo_error **e) { gguf_read(); put_u32(4, 1); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_v99(adpo_error **e) { gguf_read(); put_u32(4, 99); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_tensors(adpo_error **e) { gguf_read(); put_u64(8, (uint64_t)1 << 62); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_kvs(adpo_error **e) { gguf_read(); put_u64(16, (uint64_t)1 << 62); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_key_len(adpo_error **e) { gguf_read(); put_u64(24, (uint64_t)1 << 60); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_not_utf8(adpo_error **e) {
    gguf_read();
    gguf_buf[gguf_after("general.architecture") + 12] = 0xff; /* type (4), length (8), then "llama" */
    return model_load(gguf_edited(), NULL, e);
}
static adpo_status g_value_type(adpo_error **e) {
    gguf_read();
    put_u32(gguf_after("general.architecture"), 99);
    return model_load(gguf_edited(), NULL, e);
}
static adpo_status g_array_len(adpo_error **e) {
    gguf_read();
    put_u64(gguf_after("tokenizer.ggml.tokens") + 8, (uint64_t)1 << 40); /* after type 9, item type 8 */
    return model_load(gguf_edited(), NULL, e);
}
static adpo_status g_dims(adpo_error **e) { gguf_read(); put_u32(embd_info(), 9); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_shape(adpo_error **e) { gguf_read(); put_u64(embd_info() + 4, 128); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_type_iq(adpo_error **e) { gguf_read(); put_u32(embd_info() + 20, 16); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_type_unknown(adpo_error **e) { gguf_read(); put_u32(embd_info() + 20, 999); return model_load(gguf_edited(), NULL, e); }
static adpo_status g_offset(adpo_error **e) {
    gguf_read();
    put_u64(embd_info() + 24, (uint64_t)1 << 40);
    return model_load(gguf_edited(), NULL, e);
}
static adpo_status g_offset_wrap(adpo_error **e) {
    gguf_read();
    put_u64(embd_info() + 24, UINT64_MAX - 31);
    return model_load(gguf_edited(), NULL, e);
}
static adpo_status g_tok_ok(adpo_error **e) { gguf_read(); return tok_load(gguf_edited(), e); }
static adpo_status g_tok_cut(adpo_error **e) { gguf_read(); return tok_load(gguf_written(200), e); }
static adpo_status g_tok_not_utf8(adpo_error **e) {
    gguf_read();
    gguf_buf[gguf_after("general.architecture") + 12] = 0xff;
    return tok_load(gguf_edited(), e);
}
static adpo_status g_tok_array_len(adpo_error **e) {
    gguf_read();
    put_u64(gguf_after("tokenizer.ggml.tokens") + 8, (uint64_t)1 << 40);
    return tok_load(gguf_edited(), e);
}

/* Random bytes of the fixture changed (mostly in its header and descriptions, where the
 * structure is), loaded as a model or a tokenizer: an error or a model, never a crash. */
static adpo_status r_gguf(adpo_error **e) {
    gguf_read();
    size_t edits = 1 + below(8), span = below(4) ? 4096 : gguf_len;
    for (size_t i = 0; i < edits; i++) gguf_buf[below(span)] = (unsigned char)below(256);
    size_t len = below(4) ? gguf_len : below(gguf_len);
    return below(2) ? model_load(gguf_written(len), NULL, e) : tok_load(gguf_written(len), e);
}

typedef struct {
    const char *fn;
    case_fn run;
} generator;
static const generator GENERATORS[] = {
    {"adpo_objective_new", r_objective_new}, {"adpo_objective_eval", r_objective_eval},
    {"adpo_objective_eval_tokens", r_eval_tokens}, {"adpo_trainer_step", r_batch_step},
    {"adpo_trainer_new", r_trainer_new}, {"adpo_trainer_sample", r_sample},
    {"adpo_tokenizer_encode", r_tokenizer}, {"adpo_set_num_threads", r_threads},
    {"adpo_model_load", r_gguf},
};
#define N_GENERATORS (sizeof GENERATORS / sizeof GENERATORS[0])

/* ---------------------------------------------------------------- the adversarial table */

#define E ANY_ERROR
#define OK ADPO_STATUS_OK
#define NUL ADPO_STATUS_NULL_ARGUMENT
#define INV ADPO_STATUS_INVALID_ARGUMENT
#define CFG ADPO_STATUS_INVALID_CONFIG
#define SHP ADPO_STATUS_SHAPE_MISMATCH
#define NF ADPO_STATUS_NON_FINITE
#define UNS ADPO_STATUS_UNSUPPORTED
#define IO ADPO_STATUS_IO
#define CKP ADPO_STATUS_CHECKPOINT
#define MDL ADPO_STATUS_MODEL
static const fuzz_case CASES[] = {
    {"adpo_error_message", "NULL err", OK, c_error_message_null},
    {"adpo_error_status", "NULL err", OK, c_error_status_null},
    {"adpo_error_free", "NULL", OK, c_error_free_null},
    {"adpo_version", "()", OK, c_version},
    {"adpo_abi_version", "()", OK, c_abi},
    {"adpo_cuda_device_count", "()", OK, c_cuda_count},
    {"adpo_num_threads", "()", OK, c_num_threads},
    {"adpo_set_num_threads", "0", INV, c_threads_zero},
    {"adpo_set_num_threads", "INT32_MIN", INV, c_threads_neg},
    {"adpo_set_num_threads", "INT32_MAX", INV, c_threads_huge},
    {"adpo_set_num_threads", "-1 with NULL err", OK, c_threads_null_err},
    {"adpo_string_free", "NULL", OK, c_string_free_null},
    {"adpo_test_panic", "(its documented PANIC, silent on stderr)", ADPO_STATUS_PANIC, c_test_panic},
    {"adpo_has_mpi", "()", OK, c_has_mpi},
    {"adpo_objective_new", "NULL out", NUL, c_obj_null_out},
    {"adpo_objective_new", "NULL config (defaults)", OK, c_obj_null_cfg},
    {"adpo_objective_new", "unclosed JSON", CFG, c_obj_open},
    {"adpo_objective_new", "an array", CFG, c_obj_array},
    {"adpo_objective_new", "NaN literal", CFG, c_obj_nan},
    {"adpo_objective_new", "1e999", CFG, c_obj_big_number},
    {"adpo_objective_new", "tau -1", CFG, c_obj_neg_tau},
    {"adpo_objective_new", "unknown key", CFG, c_obj_unknown},
    {"adpo_objective_new", "non-UTF-8", INV, c_obj_utf8},
    {"adpo_objective_new", "1 MiB key", CFG, c_obj_huge_key},
    {"adpo_objective_new", "100k nested arrays", CFG, c_obj_deep},
    {"adpo_objective_new", "wrong types", CFG, c_obj_wrong_type},
    {"adpo_objective_free", "NULL", OK, c_obj_free_null},
    {"adpo_objective_eval", "NULL obj", NUL, c_eval_null_obj},
    {"adpo_objective_eval", "n = 0", E, c_eval_n0},
    {"adpo_objective_eval", "n = 2^62", E, c_eval_huge_n},
    {"adpo_objective_eval", "n = SIZE_MAX", E, c_eval_max_n},
    {"adpo_objective_eval", "NULL logp", NUL, c_eval_null_logp},
    {"adpo_objective_eval", "NULL anchor_logp", NUL, c_eval_null_anchor},
    {"adpo_objective_eval", "NULL group_ids", NUL, c_eval_null_groups},
    {"adpo_objective_eval", "NULL out_loss", NUL, c_eval_null_loss},
    {"adpo_objective_eval", "neither rewards nor targets", E, c_eval_no_signal},
    {"adpo_objective_eval", "both rewards and targets", E, c_eval_both_signals},
    {"adpo_objective_eval", "NaN logp", NF, c_eval_nan},
    {"adpo_objective_eval", "Inf rewards", NF, c_eval_inf_reward},
    {"adpo_objective_eval", "negative targets", E, c_eval_bad_targets},
    {"adpo_objective_eval", "+-1e308 logp", ANY, c_eval_extreme},
    {"adpo_objective_eval_entropy", "NaN entropy", NF, c_entropy_nan},
    {"adpo_objective_eval_entropy", "NULL entropy (as eval)", OK, c_entropy_null},
    {"adpo_objective_eval_entropy", "NULL obj", NUL, c_entropy_null_obj},
    {"adpo_objective_eval_tokens", "loss not grpo", E, c_tokens_not_grpo},
    {"adpo_objective_eval_tokens", "NULL obj", NUL, c_tokens_null_obj},
    {"adpo_objective_eval_tokens", "t = 0", E, c_tokens_t0},
    {"adpo_objective_eval_tokens", "n * t overflows", E, c_tokens_overflow},
    {"adpo_objective_eval_tokens", "NULL mask", NUL, c_tokens_null_mask},
    {"adpo_objective_eval_tokens", "mask 2 and NaN", E, c_tokens_bad_mask},
    {"adpo_objective_get_metrics", "before any eval", INV, c_metrics_before},
    {"adpo_objective_get_metrics", "NULL out", NUL, c_metrics_null},
    {"adpo_objective_get_metrics", "NULL obj", NUL, c_metrics_null_obj},
    {"adpo_objective_get_metrics", "struct_size 0", INV, c_metrics_size0},
    {"adpo_objective_metrics_json", "before any eval", INV, c_mjson_before},
    {"adpo_objective_metrics_json", "NULL out", NUL, c_mjson_null},
    {"adpo_objective_metrics_json", "NULL obj", NUL, c_mjson_null_obj},
    {"adpo_objective_eval_dlpack", "NULL logp", NUL, c_dl0},
    {"adpo_objective_eval_dlpack", "int8 logp", UNS, c_dl1},
    {"adpo_objective_eval_dlpack", "ndim 5", E, c_dl2},
    {"adpo_objective_eval_dlpack", "negative shape", E, c_dl3},
    {"adpo_objective_eval_dlpack", "NULL data", NUL, c_dl4},
    {"adpo_objective_eval_dlpack", "DLPack major 99", UNS, c_dl5},
    {"adpo_objective_eval_dlpack", "device type 99", UNS, c_dl6},
    {"adpo_objective_eval_dlpack", "anchor of another length", SHP, c_dl7},
    {"adpo_objective_eval_dlpack", "shape INT64_MAX", E, c_dl8},
    {"adpo_objective_eval_dlpack", "4 lanes", UNS, c_dl9},
    {"adpo_objective_eval_dlpack", "NULL obj", NUL, c_dl10},
    {"adpo_objective_eval_dlpack", "NULL out_loss", NUL, c_dl11},
    {"adpo_objective_eval_dlpack", "no rewards or targets", E, c_dl12},
    {"adpo_objective_eval_dlpack", "ndim -1", E, c_dl13},
    {"adpo_objective_eval_dlpack", "NULL shape", E, c_dl14},
    {"adpo_objective_eval_dlpack", "NaN logp", NF, c_dl15},
    {"adpo_model_load", "NULL path", NUL, c_load_null},
    {"adpo_model_load", "NULL out", NUL, c_load_null_out},
    {"adpo_model_load", "missing file", MDL, c_load_missing},
    {"adpo_model_load", "empty directory", E, c_load_empty_dir},
    {"adpo_model_load", "/dev/zero", E, c_load_dev_zero},
    {"adpo_model_load", "/dev/null", E, c_load_dev_null},
    {"adpo_model_load", "a FIFO (no writer)", E, c_load_fifo},
    {"adpo_model_load", "non-UTF-8 path", INV, c_load_utf8},
    {"adpo_model_load", "1 MiB path", E, c_load_huge_path},
    {"adpo_model_load", "TorchScript without its end (no torchscript feature)", UNS, c_load_truncated_ts},
    {"adpo_model_load", "30 bytes of TorchScript", E, c_load_head_ts},
    {"adpo_model_load", "zip magic and garbage", E, c_load_garbage},
    {"adpo_model_load", "TorchScript, bad forward signature (no torchscript feature)", UNS, c_load_bad_signature},
    {"adpo_model_load", "TorchScript, bad output shape (no torchscript feature)", UNS, c_load_bad_output},
    {"adpo_model_load", "device tpu", INV, c_load_device_tpu},
    {"adpo_model_load", "non-UTF-8 device", INV, c_load_device_utf8},
    {"adpo_model_load", "device cuda:99", E, c_load_device_cuda99},
    {"adpo_model_load", "device cuda:10^20", E, c_load_device_cuda_huge},
    {"adpo_model_load", "HF: config.json unclosed", E, c_hf_bad_json},
    {"adpo_model_load", "HF: config.json an array", E, c_hf_not_object},
    {"adpo_model_load", "HF: no weights", E, c_hf_no_weights},
    {"adpo_model_load", "HF: weights cut short", CKP, c_hf_truncated},
    {"adpo_model_load", "HF: 8 bytes of weights", CKP, c_hf_header_only},
    {"adpo_model_load", "HF: 10^12 hidden size", E, c_hf_huge_dims},
    {"adpo_model_load", "HF: negative and zero sizes", E, c_hf_negative_dims},
    {"adpo_model_load", "HF: safetensors header of 2^62 bytes", CKP, c_hf_big_header},
    {"adpo_model_load", "HF: the fixture's sizes restated", OK, c_hf_sized},
    {"adpo_model_load", "HF: 10^7 layers on 21 tensors", MDL, c_hf_layers_1e7},
    {"adpo_model_load", "HF: 2^62 + 4 heads (x 8 wraps to 32)", MDL, c_hf_heads_wrap},
    {"adpo_model_load", "HF: config.json a FIFO", MDL, c_hf_fifo_config},
    {"adpo_model_load", "HF: generation_config.json a FIFO", MDL, c_hf_fifo_generation},
    {"adpo_model_load", "HF: model.safetensors a FIFO", CKP, c_hf_fifo_weights},
    {"adpo_model_load", "HF: config.json linked to /dev/zero", MDL, c_hf_zero_config},
    {"adpo_model_load", "HF: generation_config.json linked to /dev/urandom", MDL, c_hf_urandom_generation},
    {"adpo_model_load", "HF: shard index naming ../ and / paths", CKP, c_hf_index_escape},
    {"adpo_model_load", "HF: a NaN weight", CKP, c_hf_nan_weight},
    {"adpo_model_load_options", "malformed JSON", CFG, c_opts_bad_json},
    {"adpo_model_load_options", "dtype int8", CFG, c_opts_dtype},
    {"adpo_model_load_options", "TorchScript with a dtype", UNS, c_opts_ts_dtype},
    {"adpo_model_load_options", "TorchScript with LoRA", UNS, c_opts_ts_lora},
    {"adpo_model_load_options", "LoRA r 0", E, c_opts_lora_r0},
    {"adpo_model_load_options", "LoRA r -1, alpha NaN", CFG, c_opts_lora_neg},
    {"adpo_model_load_options", "LoRA target matching nothing", E, c_opts_lora_target},
    {"adpo_model_load_options", "LoRA dropout", E, c_opts_lora_dropout},
    {"adpo_model_load_options", "missing adapter", E, c_opts_adapter_missing},
    {"adpo_model_load_options", "lora and adapter", E, c_opts_both},
    {"adpo_model_load_options", "non-UTF-8 options", INV, c_opts_utf8},
    {"adpo_model_load_options", "1 MiB key", CFG, c_opts_huge},
    {"adpo_model_load_options", "NULL path", NUL, c_opts_null_path},
    {"adpo_model_save", "NULL model", NUL, c_save_null},
    {"adpo_model_save", "NULL dir", NUL, c_save_null_dir},
    {"adpo_model_save", "unwritable dir", IO, c_save_unwritable},
    {"adpo_model_save", "over a file", ANY, c_save_over_file},
    {"adpo_model_save", "non-UTF-8 dir", INV, c_save_utf8},
    {"adpo_model_save_adapter", "no adapters", UNS, c_save_adapter_none},
    {"adpo_model_save_adapter", "NULL model", NUL, c_save_adapter_null},
    {"adpo_model_save_adapter", "NULL dir", NUL, c_save_adapter_null_dir},
    {"adpo_model_save_gguf", "NULL model", NUL, c_gguf_null},
    {"adpo_model_save_gguf", "NULL path", NUL, c_gguf_null_path},
    {"adpo_model_save_gguf", "unwritable path", IO, c_gguf_unwritable},
    {"adpo_model_save_gguf", "over a file that is not GGUF", INV, c_gguf_over_file},
    {"adpo_model_save_gguf", "over a directory", INV, c_gguf_dir},
    {"adpo_model_save_gguf", "non-UTF-8 path", INV, c_gguf_utf8},
    {"adpo_model_save_gguf", "options not JSON", CFG, c_gguf_bad_json},
    {"adpo_model_save_gguf", "dtype q4_0", CFG, c_gguf_dtype},
    {"adpo_model_save_gguf", "unknown option", CFG, c_gguf_unknown_key},
    {"adpo_model_save_gguf", "non-UTF-8 options", INV, c_gguf_opts_utf8},
    {"adpo_model_save_adapter_gguf", "no adapters", UNS, c_gguf_adapter_none},
    {"adpo_model_save_adapter_gguf", "NULL model", NUL, c_gguf_adapter_null},
    {"adpo_model_save_adapter_gguf", "NULL path", NUL, c_gguf_adapter_null_path},
    {"adpo_model_save_adapter_gguf", "dtype not a string", CFG, c_gguf_adapter_dtype},
    {"adpo_model_vocab_size", "NULL model", NUL, c_vocab_null},
    {"adpo_model_vocab_size", "NULL out", NUL, c_vocab_null_out},
    {"adpo_model_num_params", "NULL model", NUL, c_nparams_null},
    {"adpo_model_num_params", "NULL out", NUL, c_nparams_null_out},
    {"adpo_model_get_params", "wrong n", SHP, c_params_wrong_n},
    {"adpo_model_get_params", "n = SIZE_MAX", E, c_params_huge_n},
    {"adpo_model_get_params", "NULL out", NUL, c_params_null_out},
    {"adpo_model_get_params", "NULL model", NUL, c_params_null_model},
    {"adpo_model_free", "NULL", OK, c_model_free_null},
    {"adpo_tokenizer_load", "NULL path", NUL, c_tok_null},
    {"adpo_tokenizer_load", "NULL out", NUL, c_tok_null_out},
    {"adpo_tokenizer_load", "missing", IO, c_tok_missing},
    {"adpo_tokenizer_load", "directory without tokenizer.json", IO, c_tok_empty_dir},
    {"adpo_tokenizer_load", "/dev/zero", IO, c_tok_dev_zero},
    {"adpo_tokenizer_load", "garbage tokenizer.json", MDL, c_tok_garbage},
    {"adpo_model_load", "GGUF: the fixture unchanged", OK, g_ok},
    {"adpo_model_load", "GGUF: truncated (1000 bytes short)", CKP, g_cut},
    {"adpo_model_load", "GGUF: truncated to its 20-byte header", CKP, g_header},
    {"adpo_model_load", "GGUF: wrong magic", CKP, g_magic},
    {"adpo_model_load", "GGUF: version 1", CKP, g_v1},
    {"adpo_model_load", "GGUF: version 99", CKP, g_v99},
    {"adpo_model_load", "GGUF: 2^62 tensors", CKP, g_tensors},
    {"adpo_model_load", "GGUF: 2^62 metadata entries", CKP, g_kvs},
    {"adpo_model_load", "GGUF: a key of 2^60 bytes", CKP, g_key_len},
    {"adpo_model_load", "GGUF: metadata string not UTF-8", CKP, g_not_utf8},
    {"adpo_model_load", "GGUF: unknown metadata value type", CKP, g_value_type},
    {"adpo_model_load", "GGUF: array of 2^40 tokens", CKP, g_array_len},
    {"adpo_model_load", "GGUF: tensor of 9 dimensions", CKP, g_dims},
    {"adpo_model_load", "GGUF: tensor shape mismatch", CKP, g_shape},
    {"adpo_model_load", "GGUF: tensor type IQ2_XXS", UNS, g_type_iq},
    {"adpo_model_load", "GGUF: unknown tensor type 999", UNS, g_type_unknown},
    {"adpo_model_load", "GGUF: tensor offset outside the file", CKP, g_offset},
    {"adpo_model_load", "GGUF: tensor offset + size wraps", CKP, g_offset_wrap},
    {"adpo_tokenizer_load", "GGUF: the fixture's tokenizer", OK, g_tok_ok},
    {"adpo_tokenizer_load", "GGUF: truncated to 200 bytes", CKP, g_tok_cut},
    {"adpo_tokenizer_load", "GGUF: metadata string not UTF-8", CKP, g_tok_not_utf8},
    {"adpo_tokenizer_load", "GGUF: array of 2^40 tokens", CKP, g_tok_array_len},
    {"adpo_tokenizer_load", "broken tokenizer_config.json", E, c_tok_bad_config},
    {"adpo_tokenizer_load", "non-UTF-8 path", INV, c_tok_utf8},
    {"adpo_tokenizer_load", "template naming an undefined token", MDL, c_tok_template_token},
    {"adpo_tokenizer_load", "charsmap announcing a 2 GiB trie", MDL, c_tok_huge_trie},
    {"adpo_tokenizer_load", "Replace of the empty string", MDL, c_tok_replace_empty},
    {"adpo_tokenizer_free", "NULL", OK, c_tok_free_null},
    {"adpo_tokenizer_encode", "NULL tok", NUL, c_enc_null_tok},
    {"adpo_tokenizer_encode", "NULL text", NUL, c_enc_null_text},
    {"adpo_tokenizer_encode", "non-UTF-8 text", INV, c_enc_utf8},
    {"adpo_tokenizer_encode", "NULL out_len", NUL, c_enc_null_len},
    {"adpo_tokenizer_encode", "cap too small", SHP, c_enc_small_cap},
    {"adpo_tokenizer_encode", "NULL ids with cap", NUL, c_enc_null_ids},
    {"adpo_tokenizer_encode", "NULL ids, cap SIZE_MAX", E, c_enc_huge_cap_null},
    {"adpo_tokenizer_encode", "1 MiB text, sizes only", OK, c_enc_huge_text},
    {"adpo_tokenizer_encode_batch", "NULL texts", NUL, c_encb_null_texts},
    {"adpo_tokenizer_encode_batch", "NULL texts[1]", NUL, c_encb_null_item},
    {"adpo_tokenizer_encode_batch", "non-UTF-8 texts[1]", INV, c_encb_utf8},
    {"adpo_tokenizer_encode_batch", "n = SIZE_MAX", E, c_encb_huge_n},
    {"adpo_tokenizer_encode_batch", "NULL out_total", NUL, c_encb_null_total},
    {"adpo_tokenizer_encode_batch", "NULL tok", NUL, c_encb_null_tok},
    {"adpo_tokenizer_decode", "id -1", INV, c_dec_neg},
    {"adpo_tokenizer_decode", "id INT64_MAX", INV, c_dec_big},
    {"adpo_tokenizer_decode", "NULL ids", NUL, c_dec_null_ids},
    {"adpo_tokenizer_decode", "n = SIZE_MAX", E, c_dec_huge_n},
    {"adpo_tokenizer_decode", "NULL out", NUL, c_dec_null_out},
    {"adpo_tokenizer_decode", "NULL tok", NUL, c_dec_null_tok},
    {"adpo_tokenizer_decode_batch", "decreasing offsets", E, c_decb_decreasing},
    {"adpo_tokenizer_decode_batch", "offset SIZE_MAX", E, c_decb_huge_offset},
    {"adpo_tokenizer_decode_batch", "offsets[0] != 0", ANY, c_decb_nonzero_start},
    {"adpo_tokenizer_decode_batch", "NULL offsets", NUL, c_decb_null_offs},
    {"adpo_tokenizer_decode_batch", "n = SIZE_MAX", E, c_decb_huge_n},
    {"adpo_tokenizer_decode_batch", "NULL out", NUL, c_decb_null_out},
    {"adpo_tokenizer_decode_batch", "NULL tok", NUL, c_decb_null_tok},
    {"adpo_tokenizer_apply_chat_template", "NULL messages", NUL, c_chat_null},
    {"adpo_tokenizer_apply_chat_template", "NULL tok", NUL, c_chat_null_tok},
    {"adpo_tokenizer_apply_chat_template", "NULL out", NUL, c_chat_null_out},
    {"adpo_tokenizer_apply_chat_template", "not JSON", INV, c_chat_not_json},
    {"adpo_tokenizer_apply_chat_template_options", "an object", INV, c_chat_object},
    {"adpo_tokenizer_apply_chat_template_options", "role 1", INV, c_chat_role_type},
    {"adpo_tokenizer_apply_chat_template_options", "no content", INV, c_chat_no_content},
    {"adpo_tokenizer_apply_chat_template_options", "100k nested arrays", INV, c_chat_deep},
    {"adpo_tokenizer_apply_chat_template_options", "non-UTF-8 content", INV, c_chat_utf8},
    {"adpo_tokenizer_apply_chat_template_options", "tools 3", CFG, c_chat_opts_bad},
    {"adpo_tokenizer_apply_chat_template_options", "documents an object", CFG, c_chat_opts_docs},
    {"adpo_tokenizer_apply_chat_template_options", "unknown option", CFG, c_chat_opts_unknown},
    {"adpo_tokenizer_apply_chat_template_options", "template syntax error", E, c_chat_opts_syntax},
    {"adpo_tokenizer_apply_chat_template_options", "raise_exception", INV, c_chat_opts_raise},
    {"adpo_tokenizer_apply_chat_template_options", "range(10^12)", E, c_chat_opts_range},
    {"adpo_tokenizer_apply_chat_template_options", "endless recursion", E, c_chat_opts_recursion},
    {"adpo_tokenizer_apply_chat_template_options", "'x' * 10^11", E, c_chat_opts_big_string},
    {"adpo_tokenizer_apply_chat_template_options", "non-UTF-8 options", INV, c_chat_opts_utf8},
    {"adpo_tokenizer_apply_chat_template_options", "range(10^5) twice nested", INV, c_chat_opts_loops},
    {"adpo_tokenizer_apply_chat_template_options", "binary recursion f(40)", INV, c_chat_opts_binary},
    {"adpo_tokenizer_apply_chat_template_options", "tojson(indent=10**12)", INV, c_chat_opts_tojson_indent},
    {"adpo_tokenizer_apply_chat_template_options", "indent(10**12)", INV, c_chat_opts_indent},
    {"adpo_tokenizer_apply_chat_template_options", "str.format width 10^12", INV, c_chat_opts_str_format},
    {"adpo_tokenizer_apply_chat_template_options", "printf width 10^12", INV, c_chat_opts_printf},
    {"adpo_tokenizer_apply_chat_template_options", "string doubled 64 times", INV, c_chat_opts_doubling},
    {"adpo_tokenizer_apply_chat_template_options", "print a list 30000 deep", INV, c_chat_opts_deep_print},
    {"adpo_tokenizer_apply_chat_template_options", "tojson of a list 30000 deep", INV, c_chat_opts_deep_tojson},
    {"adpo_tokenizer_apply_chat_template_options", "NULL tok", NUL, c_chat_opts_null_tok},
    {"adpo_tokenizer_eos_ids", "NULL out_len", NUL, c_eos_null_len},
    {"adpo_tokenizer_eos_ids", "NULL tok", NUL, c_eos_null_tok},
    {"adpo_tokenizer_eos_ids", "NULL ids with cap", ANY, c_eos_null_ids},
    {"adpo_tokenizer_vocab_size", "NULL out", NUL, c_tvocab_null},
    {"adpo_tokenizer_vocab_size", "NULL tok", NUL, c_tvocab_null_tok},
    {"adpo_tokenizer_token_to_id", "not a token", INV, c_t2id_missing},
    {"adpo_tokenizer_token_to_id", "NULL token", NUL, c_t2id_null},
    {"adpo_tokenizer_token_to_id", "non-UTF-8", INV, c_t2id_utf8},
    {"adpo_tokenizer_token_to_id", "NULL out", NUL, c_t2id_null_out},
    {"adpo_tokenizer_token_to_id", "NULL tok", NUL, c_t2id_null_tok},
    {"adpo_tokenizer_special_token", "unknown name", INV, c_special_bad},
    {"adpo_tokenizer_special_token", "NULL name", NUL, c_special_null},
    {"adpo_tokenizer_special_token", "NULL out", NUL, c_special_null_out},
    {"adpo_tokenizer_special_token", "NULL tok", NUL, c_special_null_tok},
    {"adpo_batch_new", "n = 0", E, c_bnew_n0},
    {"adpo_batch_new", "t = 0", E, c_bnew_t0},
    {"adpo_batch_new", "n * t overflows", E, c_bnew_overflow},
    {"adpo_batch_new", "n = 2^62", E, c_bnew_huge},
    {"adpo_batch_new", "NULL ids", NUL, c_bnew_null_ids},
    {"adpo_batch_new", "NULL loss_mask", NUL, c_bnew_null_loss},
    {"adpo_batch_new", "NULL group_ids", NUL, c_bnew_null_groups},
    {"adpo_batch_new", "NULL out", NUL, c_bnew_null_out},
    {"adpo_batch_new", "negative id", INV, c_bnew_neg_id},
    {"adpo_batch_new", "mask value 2", INV, c_bnew_mask2},
    {"adpo_batch_new", "loss mask at column 0", INV, c_bnew_col0},
#define SETROWS(fn, name)                                                                                         \
    {fn, "NULL batch", NUL, c_##name##_null_batch}, {fn, "len 3", SHP, c_##name##_len},                        \
        {fn, "len SIZE_MAX", E, c_##name##_huge_len}, {fn, "NULL values", NUL, c_##name##_null},               \
        {fn, "NaN", NF, c_##name##_nan}, {fn, "Inf", NF, c_##name##_inf}
    SETROWS("adpo_batch_set_rewards", rewards),
    SETROWS("adpo_batch_set_targets", targets),
    SETROWS("adpo_batch_set_old_logp", old_logp),
    SETROWS("adpo_batch_set_anchor_logp", anchor_logp),
    {"adpo_batch_set_targets", "negative", E, c_targets_neg},
    {"adpo_batch_set_targets", "not summing to 1", E, c_targets_sum},
    {"adpo_batch_set_old_logp", "positive log-probs", ANY, c_old_logp_positive},
    {"adpo_batch_shape", "NULL batch", NUL, c_shape_null},
    {"adpo_batch_shape", "NULL out_n", NUL, c_shape_null_out},
    {"adpo_batch_get_ids", "len 3", SHP, c_get_ids_len},
    {"adpo_batch_get_ids", "NULL out", NUL, c_get_ids_null},
    {"adpo_batch_get_ids", "NULL batch", NUL, c_get_ids_null_batch},
    {"adpo_batch_get_completion", "row n", INV, c_completion_row},
    {"adpo_batch_get_completion", "row SIZE_MAX", INV, c_completion_huge_row},
    {"adpo_batch_get_completion", "cap too small", SHP, c_completion_cap},
    {"adpo_batch_get_completion", "NULL out_len", NUL, c_completion_null_len},
    {"adpo_batch_get_completion", "NULL batch", NUL, c_completion_null_batch},
    {"adpo_batch_get_loss_mask", "len n*t+1", SHP, c_loss_mask_len},
    {"adpo_batch_get_loss_mask", "NULL out", NUL, c_loss_mask_null},
    {"adpo_batch_get_loss_mask", "NULL batch", NUL, c_loss_mask_null_batch},
    {"adpo_batch_get_group_ids", "len 0", SHP, c_groups_len},
    {"adpo_batch_get_group_ids", "NULL out", NUL, c_groups_null},
    {"adpo_batch_get_group_ids", "NULL batch", NUL, c_groups_null_batch},
    {"adpo_batch_get_old_logp", "none sampled or set", INV, c_get_old_logp_none},
    {"adpo_batch_get_old_logp", "len n*t, held per sequence", SHP, c_get_old_logp_len},
    {"adpo_batch_get_old_logp", "NULL out", NUL, c_get_old_logp_null},
    {"adpo_batch_get_old_logp", "NULL batch", NUL, c_get_old_logp_null_batch},
    {"adpo_batch_set_rollout_logp", "NULL batch", NUL, c_rollout_null_batch},
    {"adpo_batch_set_rollout_logp", "NULL values", NUL, c_rollout_null},
    {"adpo_batch_set_rollout_logp", "len n", SHP, c_rollout_len},
    {"adpo_batch_set_rollout_logp", "len SIZE_MAX", E, c_rollout_huge},
    {"adpo_batch_set_rollout_logp", "NaN", NF, c_rollout_nan},
    {"adpo_batch_get_rollout_logp", "none sampled or set", INV, c_get_rollout_none},
    {"adpo_batch_get_rollout_logp", "len n", SHP, c_get_rollout_len},
    {"adpo_batch_get_rollout_logp", "NULL out", NUL, c_get_rollout_null},
    {"adpo_batch_get_rollout_logp", "NULL batch", NUL, c_get_rollout_null_batch},
    {"adpo_batch_set_truncated", "NULL batch", NUL, c_trunc_null_batch},
    {"adpo_batch_set_truncated", "NULL flags", NUL, c_trunc_null},
    {"adpo_batch_set_truncated", "len 3", SHP, c_trunc_len},
    {"adpo_batch_set_truncated", "flag 2", INV, c_trunc_two},
    {"adpo_batch_get_truncated", "none sampled or set", INV, c_get_trunc_none},
    {"adpo_batch_get_truncated", "len 2", SHP, c_get_trunc_len},
    {"adpo_batch_get_truncated", "NULL out", NUL, c_get_trunc_null},
    {"adpo_batch_get_truncated", "NULL batch", NUL, c_get_trunc_null_batch},
    {"adpo_batch_set_policy_version", "NULL batch", NUL, c_version_null_batch},
    {"adpo_batch_set_policy_version", "UINT64_MAX", OK, c_version_max},
    {"adpo_batch_get_policy_version", "none sampled or set", INV, c_get_version_none},
    {"adpo_batch_get_policy_version", "NULL out", NUL, c_get_version_null},
    {"adpo_batch_get_policy_version", "NULL batch", NUL, c_get_version_null_batch},
    {"adpo_batch_concat", "NULL out", NUL, c_concat_null_out},
    {"adpo_batch_concat", "NULL array", NUL, c_concat_null_array},
    {"adpo_batch_concat", "count 0", INV, c_concat_zero},
    {"adpo_batch_concat", "a NULL entry", NUL, c_concat_null_entry},
    {"adpo_batch_concat", "one batch twice", OK, c_concat_twice},
    {"adpo_batch_concat", "rewards on one of two", INV, c_concat_some_rewards},
    {"adpo_batch_concat", "count SIZE_MAX", E, c_concat_huge},
    {"adpo_soft_overlong_penalty", "NULL out", NUL, c_overlong_null},
    {"adpo_soft_overlong_penalty", "buffer 0", INV, c_overlong_buffer0},
    {"adpo_soft_overlong_penalty", "buffer > max", INV, c_overlong_buffer_big},
    {"adpo_soft_overlong_penalty", "factor NaN", INV, c_overlong_nan},
    {"adpo_soft_overlong_penalty", "lengths UINT64_MAX", OK, c_overlong_huge},
    {"adpo_batch_free", "NULL", OK, c_batch_free_null},
    {"adpo_trainer_new", "NULL policy", NUL, c_tnew_null},
    {"adpo_trainer_new", "NULL out", NUL, c_tnew_null_out},
    {"adpo_trainer_new", "malformed JSON", CFG, c_tnew_bad_json},
    {"adpo_trainer_new", "lr 1e300", CFG, c_tnew_lr},
    {"adpo_trainer_new", "micro_batch_rows 0", CFG, c_tnew_micro0},
    {"adpo_trainer_new", "epochs -1", CFG, c_tnew_neg_epochs},
    {"adpo_trainer_new", "ema alpha 1.5", CFG, c_tnew_ema},
    {"adpo_trainer_new", "kl window 0", CFG, c_tnew_window},
    {"adpo_trainer_new", "anchor as an array", CFG, c_tnew_array},
    {"adpo_trainer_new", "grad_clip -1", CFG, c_tnew_clip},
    {"adpo_trainer_new", "cosine over 0 steps", CFG, c_tnew_schedule},
    {"adpo_trainer_new", "backend nccl", CFG, c_tnew_backend},
    {"adpo_trainer_new", "bucket_mb 0", CFG, c_tnew_bucket},
    {"adpo_trainer_new", "filter_groups {}", CFG, c_tnew_filter_empty},
    {"adpo_trainer_new", "rollout_rs band upside down", CFG, c_tnew_rs_band},
    {"adpo_trainer_new", "rollout_is tokens", CFG, c_tnew_is_level},
    {"adpo_trainer_new", "max_staleness -1", CFG, c_tnew_staleness},
    {"adpo_trainer_new", "non-UTF-8 config", INV, c_tnew_utf8},
    {"adpo_trainer_new", "grpo beta_kl without reference", E, c_tnew_grpo_ref},
    {"adpo_trainer_step", "NULL trainer", NUL, c_step_null},
    {"adpo_trainer_step", "NULL batch", NUL, c_step_null_batch},
    {"adpo_trainer_step", "batch without rewards", E, c_step_no_rewards},
    {"adpo_trainer_step", "ids beyond the vocabulary", E, c_step_big_ids},
    {"adpo_trainer_step", "only groups of one", INV, c_step_singletons},
    {"adpo_trainer_step", "metrics struct_size 0", INV, c_step_size0},
    {"adpo_trainer_step", "fixed anchor, no reference, no anchor_logp", E, c_step_fixed_no_ref},
    {"adpo_trainer_step", "grpo without old_logp", ANY, c_step_grpo_no_old},
    {"adpo_trainer_step", "lr 1000, tau 1e-300", ANY, c_step_huge_lr_nonfinite},
    {"adpo_trainer_metrics_json", "before any step", INV, c_tmjson_before},
    {"adpo_trainer_metrics_json", "NULL out", NUL, c_tmjson_null},
    {"adpo_trainer_metrics_json", "NULL trainer", NUL, c_tmjson_null_tr},
    {"adpo_trainer_forward_backward", "NULL trainer", NUL, c_fb_null},
    {"adpo_trainer_forward_backward", "NULL batch", NUL, c_fb_null_batch},
    {"adpo_trainer_forward_backward", "grad len n", SHP, c_fb_len},
    {"adpo_trainer_forward_backward", "grad len SIZE_MAX", E, c_fb_huge},
    {"adpo_trainer_forward_backward", "NaN gradient", NF, c_fb_nan},
    {"adpo_trainer_forward_backward", "metrics struct_size 3", E, c_fb_metrics_size},
    {"adpo_trainer_forward_backward", "then a step", INV, c_fb_then_step},
    {"adpo_trainer_forward_backward_dlpack", "NULL trainer", NUL, c_fbd_null},
    {"adpo_trainer_forward_backward_dlpack", "NULL batch", NUL, c_fbd_null_batch},
    {"adpo_trainer_forward_backward_dlpack", "NULL gradient: the built-in loss", OK, c_fbd_builtin},
    {"adpo_trainer_forward_backward_dlpack", "a 1-D gradient", SHP, c_fbd_1d},
    {"adpo_trainer_forward_backward_dlpack", "an int8 gradient", UNS, c_fbd_int8},
    {"adpo_trainer_optim_step", "nothing accumulated", INV, c_optim_none},
    {"adpo_trainer_optim_step", "NULL trainer", NUL, c_optim_null},
    {"adpo_trainer_optim_step", "after a host gradient", OK, c_optim_after_fb},
    {"adpo_trainer_token_logp", "len n", SHP, c_tlogp_len},
    {"adpo_trainer_token_logp", "NULL out", NUL, c_tlogp_null},
    {"adpo_trainer_token_logp", "NULL batch", NUL, c_tlogp_null_batch},
    {"adpo_trainer_token_logp", "NULL trainer", NUL, c_tlogp_null_tr},
    {"adpo_trainer_sequence_logp", "len n-1", SHP, c_slogp_len},
    {"adpo_trainer_sequence_logp", "NULL out", NUL, c_slogp_null},
    {"adpo_trainer_sequence_logp", "NULL batch", NUL, c_slogp_null_batch},
    {"adpo_trainer_sequence_logp", "NULL trainer", NUL, c_slogp_null_tr},
    {"adpo_trainer_sequence_logp", "ids near INT64_MAX", E, c_slogp_big_ids},
    {"adpo_trainer_free", "NULL", OK, c_trainer_free_null},
    {"adpo_trainer_sample", "NULL trainer", NUL, c_sample_null_tr},
    {"adpo_trainer_sample", "NULL prompts", NUL, c_sample_null_prompts},
    {"adpo_trainer_sample", "NULL lengths", NUL, c_sample_null_lens},
    {"adpo_trainer_sample", "no prompts", E, c_sample_n0},
    {"adpo_trainer_sample", "k = 0", E, c_sample_k0},
    {"adpo_trainer_sample", "k = SIZE_MAX", INV, c_sample_huge_k},
    {"adpo_trainer_sample", "k = 2^30", INV, c_sample_k30},
    {"adpo_trainer_sample", "n_prompts = 2^62", E, c_sample_huge_n},
    {"adpo_trainer_sample", "a prompt of length 0", E, c_sample_len0},
    {"adpo_trainer_sample", "lengths summing past SIZE_MAX", E, c_sample_len_overflow},
    {"adpo_trainer_sample", "token ids -1 and INT64_MAX", E, c_sample_bad_token},
    {"adpo_trainer_sample", "temperature -1", CFG, c_sample_cfg},
    {"adpo_trainer_sample", "top_p 2", CFG, c_sample_top_p},
    {"adpo_trainer_sample", "max_new_tokens 10^9", E, c_sample_max_new},
    {"adpo_trainer_sample", "eos_id a string", CFG, c_sample_eos},
    {"adpo_trainer_sample", "an empty stop sequence, pad -1", E, c_sample_stop},
    {"adpo_trainer_sample", "non-UTF-8 config", INV, c_sample_utf8},
    {"adpo_trainer_sample", "NULL out_batch", NUL, c_sample_null_out},
    {"adpo_trainer_save", "NULL trainer", NUL, c_tsave_null},
    {"adpo_trainer_save", "NULL path", NUL, c_tsave_null_path},
    {"adpo_trainer_save", "unwritable", IO, c_tsave_unwritable},
    {"adpo_trainer_save", "a directory", E, c_tsave_dir},
    {"adpo_trainer_save", "non-UTF-8 path", INV, c_tsave_utf8},
    {"adpo_trainer_load", "NULL trainer", NUL, c_tload_null},
    {"adpo_trainer_load", "NULL path", NUL, c_tload_null_path},
    {"adpo_trainer_load", "missing", CKP, c_tload_missing},
    {"adpo_trainer_load", "a directory", CKP, c_tload_dir},
    {"adpo_trainer_load", "/dev/zero", CKP, c_tload_dev_zero},
    {"adpo_trainer_load", "cut short", CKP, c_tload_truncated},
    {"adpo_trainer_load", "a flipped byte", CKP, c_tload_flipped},
    {"adpo_trainer_load", "header of 2^63 bytes", CKP, c_tload_big_header},
    {"adpo_trainer_load", "another model's checkpoint", CKP, c_tload_other_model},
    {"adpo_trainer_use_mpi", "NULL trainer", NUL, c_mpi_null},
    {"adpo_trainer_use_allreduce", "NULL trainer", NUL, c_ar_null_tr},
    {"adpo_trainer_use_allreduce", "NULL callback", NUL, c_ar_null_fn},
    {"adpo_trainer_use_allreduce", "rank = world", INV, c_ar_rank},
    {"adpo_trainer_use_allreduce", "rank -1", INV, c_ar_neg},
    {"adpo_trainer_use_allreduce", "world 0", INV, c_ar_world0},
    {"adpo_trainer_use_allreduce", "the callback fails", ADPO_STATUS_COMMUNICATION, c_ar_fails},
    {"adpo_trainer_world", "NULL trainer", NUL, c_world_null},
    {"adpo_trainer_world", "NULL outputs", OK, c_world_null_outs},
};
#define N_CASES (sizeof CASES / sizeof CASES[0])

/* ---------------------------------------------------------------- running a case */

static const char *status_name(int st) {
    static char buf[32];
    switch (st) {
    case ANY_ERROR: return "any error";
    case ANY: return "any status but PANIC";
    case WRONG: return "a wrong output (the case's own check)";
    default: snprintf(buf, sizeof buf, "status %d", st); return buf;
    }
}

/* In the child: runs the case, checks the outcome, exits 0 when it is right. stderr goes to
 * `errfile`; the verdict to stdout. */
static void child(const fuzz_case *c, const char *errfile) {
    alarm(LIMIT_S);
    int fd = open(errfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || dup2(fd, 2) < 0) _exit(3);
    adpo_error *err = NULL;
    adpo_status st = c->run(&err);
    const char *problem = NULL;
    if (st == WRONG) {
        problem = "the case's check of an output failed";
    } else if (st == ADPO_STATUS_PANIC && c->want != ADPO_STATUS_PANIC) {
        problem = "ADPO_STATUS_PANIC";
    } else if (c->want >= 0 && st != c->want) {
        problem = "wrong status";
    } else if (c->want == ANY_ERROR && st == ADPO_STATUS_OK) {
        problem = "accepted bad input";
    } else if (st != ADPO_STATUS_OK && err == NULL && c->want != OK) {
        problem = "failed without an error object";
    } else if (st != ADPO_STATUS_OK && err && (adpo_error_message(err)[0] == 0 || adpo_error_status(err) != st)) {
        problem = "an error without a message, or with another status";
    }
    if (problem) {
        printf("FAIL %s(%s): %s: got %d, want %s: %s\n", c->fn, c->what, problem, (int)st, status_name(c->want),
               err ? adpo_error_message(err) : "(no error)");
        fflush(stdout);
        _exit(1);
    }
    if (getenv("FUZZ_VERBOSE")) printf("ok %s(%s): %d %s\n", c->fn, c->what, (int)st, err ? adpo_error_message(err) : "");
    adpo_error_free(err);
    fflush(stdout);
    _exit(0);
}

static int contains_panicked(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return strstr(buf, "panicked") != NULL;
}

/* Forks, runs, judges one case; 1 when it passed. */
static int run_case(const fuzz_case *c) {
    char errfile[4200];
    snprintf(errfile, sizeof errfile, "%s/stderr", scratch);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) child(c, errfile);
    int ws = 0;
    while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
    }
    int ok = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
    if (WIFSIGNALED(ws)) {
        int sig = WTERMSIG(ws);
        printf("FAIL %s(%s): %s\n", c->fn, c->what,
               sig == SIGALRM ? "hang (still running after the time limit)" : strsignal(sig));
    } else if (WIFEXITED(ws) && WEXITSTATUS(ws) == 3) {
        printf("FAIL %s(%s): the harness's own setup failed (see above)\n", c->fn, c->what);
    }
    if (ok && contains_panicked(errfile)) {
        printf("FAIL %s(%s): printed a panic to stderr\n", c->fn, c->what);
        ok = 0;
    }
    return ok;
}

/* A fresh, empty scratch directory for each case (cases write files there). */
static void reset_scratch(const char *root, size_t i) {
    snprintf(scratch, sizeof scratch, "%s/%zu", root, i);
    mkdir(scratch, 0700);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--list") == 0) {
        for (size_t i = 0; i < N_CASES; i++) printf("%s\n", CASES[i].fn);
        for (size_t i = 0; i < N_GENERATORS; i++) printf("%s\n", GENERATORS[i].fn);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--cases") == 0) {
        for (size_t i = 0; i < N_CASES; i++) printf("%s\t%s\n", CASES[i].fn, CASES[i].what);
        return 0;
    }
    long random_cases = argc > 1 ? atol(argv[1]) : 200;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 20261202;
    char root[] = "/tmp/adpo-fuzz-XXXXXX";
    if (!mkdtemp(root)) return 2;
    setenv("ADPO_LOG", "", 1); /* a caught panic must stay silent on its own */
    int passed = 0, failed = 0;
    for (size_t i = 0; i < N_CASES; i++) {
        reset_scratch(root, i);
        if (run_case(&CASES[i])) passed++; else failed++;
    }
    printf("fuzz: adversarial table: %d passed, %d failed\n", passed, failed);
    for (long i = 0; i < random_cases; i++) {
        const generator *g = &GENERATORS[(size_t)i % N_GENERATORS];
        rng_state = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)i + 1;
        char what[64];
        snprintf(what, sizeof what, "random case %ld, seed %llu", i, (unsigned long long)seed);
        fuzz_case c = {g->fn, what, ANY, g->run};
        reset_scratch(root, N_CASES + (size_t)i);
        if (run_case(&c)) passed++; else failed++;
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    printf("fuzz: %zu table cases, %ld random cases (seed %llu): %d passed, %d failed\n", N_CASES, random_cases,
           (unsigned long long)seed, passed, failed);
    return failed ? 1 : 0;
}
