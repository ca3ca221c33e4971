/* C ABI tests of adpo_objective_eval_dlpack with hand-built DLManagedTensorVersioned inputs:
 * ownership (every non-NULL input's deleter runs exactly once, on success and on every error),
 * strides and byte offsets, dtypes, and the returned gradient tensor. */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid */
#include "check.h"

#include <adpo.h>
#include <dlpack.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL (-12345.678)

/* Spec section 10 shared inputs and V1 rewards. */
static const double LOGP[4] = {-12.0, -15.5, -9.8, -20.1};
static const double ANCHOR[4] = {-12.5, -15.0, -10.4, -19.6};
static const double R1[4] = {1.0, 0.0, 0.5, -0.1};
static const int64_t G1[4] = {7, 7, 7, 7};

/* ---------------------------------------------------------------- a counted input tensor */

typedef struct {
    DLManagedTensorVersioned m;
    int64_t shape[2];
    int64_t strides[2];
    int calls; /* times the deleter ran */
} tensor;

static void counting_deleter(DLManagedTensorVersioned *self) {
    ((tensor *)self->manager_ctx)->calls++;
}

/* A CPU tensor over `data` (not owned); strides NULL = contiguous. */
static DLManagedTensorVersioned *wrap(tensor *t, void *data, uint8_t code, uint8_t bits, int ndim,
                                      const int64_t *shape, const int64_t *strides, uint64_t byte_offset) {
    memset(t, 0, sizeof *t);
    t->m.version.major = DLPACK_MAJOR_VERSION;
    t->m.version.minor = DLPACK_MINOR_VERSION;
    t->m.manager_ctx = t;
    t->m.deleter = counting_deleter;
    t->m.flags = 0;
    t->m.dl_tensor.data = data;
    t->m.dl_tensor.device.device_type = kDLCPU;
    t->m.dl_tensor.device.device_id = 0;
    t->m.dl_tensor.ndim = ndim;
    t->m.dl_tensor.dtype.code = code;
    t->m.dl_tensor.dtype.bits = bits;
    t->m.dl_tensor.dtype.lanes = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        if (strides) t->strides[i] = strides[i];
    }
    t->m.dl_tensor.shape = t->shape;
    t->m.dl_tensor.strides = strides ? t->strides : NULL;
    t->m.dl_tensor.byte_offset = byte_offset;
    return &t->m;
}

static DLManagedTensorVersioned *vec_f64(tensor *t, const double *data, int64_t n) {
    return wrap(t, (void *)data, kDLFloat, 64, 1, &n, NULL, 0);
}

static DLManagedTensorVersioned *vec_i64(tensor *t, const int64_t *data, int64_t n) {
    return wrap(t, (void *)data, kDLInt, 64, 1, &n, NULL, 0);
}

/* ---------------------------------------------------------------- the returned gradient */

static double bf16_to_double(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static uint16_t float_to_bf16(float f) { /* round to nearest even */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    bits += 0x7FFF + ((bits >> 16) & 1);
    return (uint16_t)(bits >> 16);
}

/* Checks the returned tensor's metadata and reads its n values (honouring strides and
 * byte_offset); returns 0 if the metadata is wrong. Does not call the deleter. */
static int read_grad(const DLManagedTensorVersioned *g, uint8_t code, uint8_t bits, int64_t n, double *out) {
    if (!CHECK(g != NULL)) return 0;
    const DLTensor *t = &g->dl_tensor;
    int ok = CHECK(g->version.major == 1) & CHECK(g->deleter != NULL) & CHECK(t->device.device_type == kDLCPU) &
             CHECK(t->ndim == 1) & CHECK(t->shape != NULL && t->shape[0] == n) & CHECK(t->dtype.code == code) &
             CHECK(t->dtype.bits == bits) & CHECK(t->dtype.lanes == 1) & CHECK(t->data != NULL);
    if (!ok) return 0;
    int64_t stride = t->strides ? t->strides[0] : 1;
    const char *base = (const char *)t->data + t->byte_offset;
    for (int64_t i = 0; i < n; i++) {
        const char *p = base + i * stride * (bits / 8);
        if (bits == 64) {
            memcpy(&out[i], p, sizeof(double));
        } else if (bits == 32) {
            float f;
            memcpy(&f, p, sizeof f);
            out[i] = f;
        } else {
            uint16_t h;
            memcpy(&h, p, sizeof h);
            out[i] = bf16_to_double(h);
        }
    }
    return 1;
}

static void release(DLManagedTensorVersioned *g) {
    if (g && g->deleter) g->deleter(g);
}

/* ---------------------------------------------------------------- reference: the host ABI */

static void host_eval(const adpo_objective *obj, size_t n, const double *lp, const double *an, const double *rw,
                      const double *tg, const int64_t *ids, double *loss, double *grad) {
    CHECK_STATUS(adpo_objective_eval(obj, n, lp, an, rw, tg, ids, loss, grad, NULL, &err), ADPO_STATUS_OK, "");
}

/* ---------------------------------------------------------------- successes */

static void test_float64(adpo_objective *obj) {
    double want_loss, want_grad[4];
    host_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &want_loss, want_grad);

    tensor lp, an, rw, ids;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, vec_f64(&lp, LOGP, 4), vec_f64(&an, ANCHOR, 4), vec_f64(&rw, R1, 4),
                                            NULL, vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-14);
    CHECK_CLOSE(loss, 1.0152, 1e-5); /* spec V1, default zscore target */
    double g[4];
    if (read_grad(grad, kDLFloat, 64, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-14);
    release(grad);

    /* Metrics are those of this evaluation. */
    adpo_objective_metrics m;
    m.struct_size = sizeof m;
    CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
    CHECK_NEAR(m.loss, want_loss, 1e-14);
    CHECK(m.groups == 1);

    /* Explicit targets instead of rewards. */
    const double tg[4] = {0.4, 0.1, 0.3, 0.2};
    host_eval(obj, 4, LOGP, ANCHOR, NULL, tg, G1, &want_loss, want_grad);
    tensor tt;
    grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, vec_f64(&lp, LOGP, 4), vec_f64(&an, ANCHOR, 4), NULL,
                                            vec_f64(&tt, tg, 4), vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && tt.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-14);
    if (read_grad(grad, kDLFloat, 64, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-14);
    release(grad);

    /* An input without a deleter (allowed by DLPack) is simply not released. */
    grad = NULL;
    DLManagedTensorVersioned *lpm = vec_f64(&lp, LOGP, 4);
    lpm->deleter = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, lpm, vec_f64(&an, ANCHOR, 4), vec_f64(&rw, R1, 4), NULL,
                                            vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 0 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    release(grad);
}

/* Strided views with byte offsets give exactly the contiguous result. Two interleaved groups. */
static void test_strided(adpo_objective *obj) {
    const double lp8[8] = {-12.0, -1.0, -15.5, -2.0, -9.8, -3.5, -20.1, -0.5};
    const double an8[8] = {-12.5, -1.5, -15.0, -2.0, -10.4, -3.0, -19.6, -1.0};
    const double rw8[8] = {1.0, 0.2, 0.0, 0.9, 0.5, -0.4, -0.1, 0.0};
    const int64_t id8[8] = {9, 3, 9, 3, 9, 3, 9, 3};
    double want_loss, want_grad[8];
    host_eval(obj, 8, lp8, an8, rw8, NULL, id8, &want_loss, want_grad);

    /* logp in every other element after 3 leading doubles (byte_offset 24, strides {2});
     * anchor every third element after 1 (byte_offset 8, strides {3}); rewards contiguous at
     * byte_offset 16; ids every other element; junk everywhere in between. */
    double lp_buf[3 + 2 * 8], an_buf[1 + 3 * 8], rw_buf[2 + 8];
    int64_t id_buf[2 * 8];
    for (size_t i = 0; i < sizeof lp_buf / sizeof *lp_buf; i++) lp_buf[i] = NAN;
    for (size_t i = 0; i < sizeof an_buf / sizeof *an_buf; i++) an_buf[i] = INFINITY;
    rw_buf[0] = rw_buf[1] = NAN;
    for (int i = 0; i < 8; i++) {
        lp_buf[3 + 2 * i] = lp8[i];
        an_buf[1 + 3 * i] = an8[i];
        rw_buf[2 + i] = rw8[i];
        id_buf[2 * i] = id8[i];
        id_buf[2 * i + 1] = 1000 + i;
    }
    const int64_t n = 8, s2 = 2, s3 = 3, s1 = 1;
    tensor lp, an, rw, ids;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, wrap(&lp, lp_buf, kDLFloat, 64, 1, &n, &s2, 3 * sizeof(double)),
                                            wrap(&an, an_buf, kDLFloat, 64, 1, &n, &s3, sizeof(double)),
                                            wrap(&rw, rw_buf, kDLFloat, 64, 1, &n, &s1, 2 * sizeof(double)), NULL,
                                            wrap(&ids, id_buf, kDLInt, 64, 1, &n, &s2, 0), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-14);
    double g[8];
    if (read_grad(grad, kDLFloat, 64, 8, g))
        for (int i = 0; i < 8; i++) CHECK_NEAR(g[i], want_grad[i], 1e-14);
    release(grad);

    /* Group ids broadcast with stride 0: one id for all four rows. */
    const int64_t one_id = 7, four = 4, zero = 0;
    host_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &want_loss, want_grad);
    grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, vec_f64(&lp, LOGP, 4), vec_f64(&an, ANCHOR, 4), vec_f64(&rw, R1, 4),
                                            NULL, wrap(&ids, (void *)&one_id, kDLInt, 64, 1, &four, &zero, 0), &loss,
                                            &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-14);
    if (read_grad(grad, kDLFloat, 64, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-14);
    release(grad);
}

/* float32 and bfloat16 inputs: computed in float32, gradient returned in logp's dtype. The
 * reference is the float64 host evaluation of the same (rounded) values. */
static void test_float32_bf16(adpo_objective *obj) {
    float lp32[4], an32[4], rw32[4];
    double lpr[4], anr[4], rwr[4];
    for (int i = 0; i < 4; i++) {
        lp32[i] = (float)LOGP[i];
        an32[i] = (float)ANCHOR[i];
        rw32[i] = (float)R1[i];
        lpr[i] = lp32[i];
        anr[i] = an32[i];
        rwr[i] = rw32[i];
    }
    double want_loss, want_grad[4], g[4];
    host_eval(obj, 4, lpr, anr, rwr, NULL, G1, &want_loss, want_grad);
    const int64_t n = 4;
    tensor lp, an, rw, ids;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, wrap(&lp, lp32, kDLFloat, 32, 1, &n, NULL, 0),
                                            wrap(&an, an32, kDLFloat, 32, 1, &n, NULL, 0),
                                            wrap(&rw, rw32, kDLFloat, 32, 1, &n, NULL, 0), NULL, vec_i64(&ids, G1, 4),
                                            &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-5);
    if (read_grad(grad, kDLFloat, 32, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-5);
    release(grad);

    /* float32 logp with float64 anchor and rewards: the gradient follows logp (float32). */
    grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, wrap(&lp, lp32, kDLFloat, 32, 1, &n, NULL, 0),
                                            vec_f64(&an, anr, 4), vec_f64(&rw, rwr, 4), NULL, vec_i64(&ids, G1, 4),
                                            &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-5);
    if (read_grad(grad, kDLFloat, 32, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-5);
    release(grad);

    /* bfloat16 logp and anchor. */
    uint16_t lp16[4], an16[4];
    for (int i = 0; i < 4; i++) {
        lp16[i] = float_to_bf16((float)LOGP[i]);
        an16[i] = float_to_bf16((float)ANCHOR[i]);
        lpr[i] = bf16_to_double(lp16[i]);
        anr[i] = bf16_to_double(an16[i]);
    }
    host_eval(obj, 4, lpr, anr, R1, NULL, G1, &want_loss, want_grad);
    grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, wrap(&lp, lp16, kDLBfloat, 16, 1, &n, NULL, 0),
                                            wrap(&an, an16, kDLBfloat, 16, 1, &n, NULL, 0), vec_f64(&rw, R1, 4), NULL,
                                            vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-5);
    if (read_grad(grad, kDLBfloat, 16, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-2 * fabs(want_grad[i]) + 1e-4);
    release(grad);
}

/* Heap inputs whose deleters free (and scribble over) their memory: a second deleter call or a
 * read after release is an error under valgrind. */
typedef struct {
    DLManagedTensorVersioned m;
    int64_t shape[1];
    double *data;
} heap_tensor;

static int heap_frees = 0;

static void heap_deleter(DLManagedTensorVersioned *self) {
    heap_tensor *t = (heap_tensor *)self->manager_ctx;
    for (int64_t i = 0; i < t->shape[0]; i++) t->data[i] = NAN;
    free(t->data);
    free(t);
    heap_frees++;
}

static DLManagedTensorVersioned *heap_vec(const double *values, int64_t n) {
    heap_tensor *t = calloc(1, sizeof *t);
    t->data = malloc((size_t)n * sizeof(double));
    memcpy(t->data, values, (size_t)n * sizeof(double));
    t->shape[0] = n;
    t->m.version.major = 1;
    t->m.manager_ctx = t;
    t->m.deleter = heap_deleter;
    t->m.dl_tensor.data = t->data;
    t->m.dl_tensor.device.device_type = kDLCPU;
    t->m.dl_tensor.ndim = 1;
    t->m.dl_tensor.dtype.code = kDLFloat;
    t->m.dl_tensor.dtype.bits = 64;
    t->m.dl_tensor.dtype.lanes = 1;
    t->m.dl_tensor.shape = t->shape;
    return &t->m;
}

static void test_heap_inputs(adpo_objective *obj) {
    double want_loss, want_grad[4], g[4];
    host_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &want_loss, want_grad);
    tensor ids;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    heap_frees = 0;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, heap_vec(LOGP, 4), heap_vec(ANCHOR, 4), heap_vec(R1, 4), NULL,
                                            vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_OK, "");
    CHECK(heap_frees == 3 && ids.calls == 1);
    CHECK_NEAR(loss, want_loss, 1e-14);
    /* The gradient does not alias the (now freed) inputs. */
    if (read_grad(grad, kDLFloat, 64, 4, g))
        for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], want_grad[i], 1e-14);
    release(grad);
    /* And on an error. */
    heap_frees = 0;
    const double nan4[4] = {NAN, 0, 0, 0};
    grad = NULL;
    CHECK_STATUS(adpo_objective_eval_dlpack(obj, heap_vec(nan4, 4), heap_vec(ANCHOR, 4), heap_vec(R1, 4), NULL,
                                            vec_i64(&ids, G1, 4), &loss, &grad, &err),
                 ADPO_STATUS_NON_FINITE, "logp contains NaN or Inf");
    CHECK(heap_frees == 3 && ids.calls == 1 && grad == NULL);
}

/* ---------------------------------------------------------------- errors */

/* One call's inputs: f64 V1 data (rewards, not targets) unless a case changes them. */
typedef struct {
    tensor lp, an, rw, tg, ids;
    int use_lp, use_an, use_rw, use_tg, use_ids;
    double tg_data[4];
} call_inputs;

static void default_inputs(call_inputs *c) {
    memset(c, 0, sizeof *c);
    vec_f64(&c->lp, LOGP, 4);
    vec_f64(&c->an, ANCHOR, 4);
    vec_f64(&c->rw, R1, 4);
    c->tg_data[0] = c->tg_data[1] = c->tg_data[2] = c->tg_data[3] = 0.25;
    vec_f64(&c->tg, c->tg_data, 4);
    vec_i64(&c->ids, G1, 4);
    c->use_lp = c->use_an = c->use_rw = c->use_ids = 1;
}

/* Runs a failing call and checks: the status and message, every passed input released exactly
 * once, the outputs untouched. `null_loss`/`null_grad` pass NULL output pointers. */
static void expect_fail(const char *name, const adpo_objective *obj, call_inputs *c, int null_loss, int null_grad,
                        int null_err, adpo_status want, const char *sub) {
    int failed_before = check_failed_;
    double loss = SENTINEL;
    DLManagedTensorVersioned sentinel_tensor, *grad = &sentinel_tensor;
    adpo_status st;
    DLManagedTensorVersioned *lp = c->use_lp ? &c->lp.m : NULL, *an = c->use_an ? &c->an.m : NULL,
                             *rw = c->use_rw ? &c->rw.m : NULL, *tg = c->use_tg ? &c->tg.m : NULL,
                             *ids = c->use_ids ? &c->ids.m : NULL;
    double *out_loss = null_loss ? NULL : &loss;
    DLManagedTensorVersioned **out_grad = null_grad ? NULL : &grad;
    if (null_err) {
        st = adpo_objective_eval_dlpack(obj, lp, an, rw, tg, ids, out_loss, out_grad, NULL);
        CHECK(st == want);
    } else {
        CHECK_STATUS(st = adpo_objective_eval_dlpack(obj, lp, an, rw, tg, ids, out_loss, out_grad, &err), want, sub);
    }
    CHECK(c->lp.calls == c->use_lp);
    CHECK(c->an.calls == c->use_an);
    CHECK(c->rw.calls == c->use_rw);
    CHECK(c->tg.calls == c->use_tg);
    CHECK(c->ids.calls == c->use_ids);
    CHECK(loss == SENTINEL);
    CHECK(grad == &sentinel_tensor);
    if (st == ADPO_STATUS_OK) release(grad);
    if (check_failed_ != failed_before) fprintf(stderr, "     ^ in DLPack error case \"%s\"\n", name);
}

static void test_errors(adpo_objective *obj) {
    call_inputs c;

    default_inputs(&c);
    expect_fail("obj NULL", NULL, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "obj");
    default_inputs(&c);
    expect_fail("obj NULL, err NULL", NULL, &c, 0, 0, 1, ADPO_STATUS_NULL_ARGUMENT, "");
    default_inputs(&c);
    expect_fail("out_loss NULL", obj, &c, 1, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "out_loss");
    default_inputs(&c);
    expect_fail("out_grad NULL", obj, &c, 0, 1, 0, ADPO_STATUS_NULL_ARGUMENT, "out_grad_logp");

    /* DLPack version. */
    default_inputs(&c);
    c.lp.m.version.major = 0;
    expect_fail("logp version 0", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "logp");
    default_inputs(&c);
    c.ids.m.version.major = 2;
    expect_fail("group_ids version 2", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "group_ids");
    default_inputs(&c);
    c.rw.m.version.major = 2;
    expect_fail("rewards version 2, err NULL", obj, &c, 0, 0, 1, ADPO_STATUS_UNSUPPORTED, "");

    /* dtypes. */
    {
        int32_t lp_i32[4] = {-12, -15, -10, -20};
        uint8_t lp_u8[4] = {1, 2, 3, 4};
        int32_t id_i32[4] = {7, 7, 7, 7};
        const int64_t n = 4;
        default_inputs(&c);
        wrap(&c.lp, lp_i32, kDLInt, 32, 1, &n, NULL, 0);
        expect_fail("int32 logp", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "logp");
        default_inputs(&c);
        wrap(&c.lp, lp_u8, kDLUInt, 8, 1, &n, NULL, 0);
        expect_fail("uint8 logp", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "logp");
        default_inputs(&c);
        wrap(&c.ids, id_i32, kDLInt, 32, 1, &n, NULL, 0);
        expect_fail("int32 group ids", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "group_ids");
        default_inputs(&c);
        wrap(&c.ids, (void *)LOGP, kDLFloat, 64, 1, &n, NULL, 0);
        expect_fail("float64 group ids", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "group_ids");
        default_inputs(&c);
        wrap(&c.an, (void *)G1, kDLInt, 64, 1, &n, NULL, 0);
        expect_fail("int64 anchor", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "anchor_logp");
        default_inputs(&c);
        c.lp.m.dl_tensor.dtype.lanes = 2;
        expect_fail("2-lane logp", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "logp");
        default_inputs(&c);
        c.rw.m.dl_tensor.dtype.code = kDLComplex;
        c.rw.m.dl_tensor.dtype.bits = 128;
        expect_fail("complex rewards", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "rewards");
    }

    /* Devices other than CPU/CUDA. */
    default_inputs(&c);
    c.lp.m.dl_tensor.device.device_type = kDLOpenCL;
    expect_fail("OpenCL logp", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "logp");
    default_inputs(&c);
    c.an.m.dl_tensor.device.device_type = kDLVulkan;
    expect_fail("Vulkan anchor", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "anchor_logp");
    default_inputs(&c);
    c.ids.m.dl_tensor.device.device_type = kDLMetal;
    expect_fail("Metal group ids", obj, &c, 0, 0, 0, ADPO_STATUS_UNSUPPORTED, "group_ids");
    if (adpo_cuda_device_count() == 0) {
        /* CUDA requested on a machine without CUDA: some error, inputs still released. */
        default_inputs(&c);
        c.lp.m.dl_tensor.device.device_type = kDLCUDA;
        double loss = SENTINEL;
        DLManagedTensorVersioned *grad = NULL;
        adpo_error *e = NULL;
        adpo_status st = adpo_objective_eval_dlpack(obj, &c.lp.m, &c.an.m, &c.rw.m, NULL, &c.ids.m, &loss, &grad, &e);
        CHECK(st != ADPO_STATUS_OK && e != NULL && adpo_error_status(e) == st);
        CHECK(c.lp.calls == 1 && c.an.calls == 1 && c.rw.calls == 1 && c.ids.calls == 1);
        CHECK(loss == SENTINEL && grad == NULL);
        adpo_error_free(e);
    }

    /* Shapes. */
    {
        const int64_t three = 3, five = 5, two_by_two[2] = {2, 2};
        const int64_t ids5[5] = {7, 7, 7, 7, 7};
        default_inputs(&c);
        vec_f64(&c.an, ANCHOR, three);
        expect_fail("anchor of 3", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "anchor_logp");
        default_inputs(&c);
        vec_f64(&c.rw, R1, three);
        expect_fail("rewards of 3", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "rewards");
        default_inputs(&c);
        vec_i64(&c.ids, ids5, five);
        expect_fail("group ids of 5", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "group_ids");
        default_inputs(&c);
        wrap(&c.lp, (void *)LOGP, kDLFloat, 64, 2, two_by_two, NULL, 0);
        expect_fail("2-D logp", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "logp");
        default_inputs(&c);
        wrap(&c.ids, (void *)G1, kDLInt, 64, 2, two_by_two, NULL, 0);
        expect_fail("2-D group ids", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "group_ids");
        default_inputs(&c);
        wrap(&c.lp, (void *)LOGP, kDLFloat, 64, 0, NULL, NULL, 0);
        expect_fail("0-D logp", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "logp");
        default_inputs(&c);
        c.lp.m.dl_tensor.shape = NULL;
        expect_fail("logp shape NULL", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "logp");
        default_inputs(&c);
        c.an.m.dl_tensor.ndim = -1;
        expect_fail("anchor ndim -1", obj, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "anchor_logp");
        /* n = 0 through DLPack: an empty batch is an invalid argument, as on the host ABI. */
        const int64_t none = 0;
        default_inputs(&c);
        vec_f64(&c.lp, NULL, none);
        vec_f64(&c.an, NULL, none);
        vec_f64(&c.rw, NULL, none);
        vec_i64(&c.ids, NULL, none);
        expect_fail("empty", obj, &c, 0, 0, 0, ADPO_STATUS_INVALID_ARGUMENT, "");
    }

    /* Values and the rewards/targets choice. */
    {
        const double lp_nan[4] = {-12.0, NAN, -9.8, -20.1}, an_inf[4] = {-12.5, -15.0, INFINITY, -19.6};
        default_inputs(&c);
        vec_f64(&c.lp, lp_nan, 4);
        expect_fail("NaN logp", obj, &c, 0, 0, 0, ADPO_STATUS_NON_FINITE, "logp contains NaN or Inf");
        default_inputs(&c);
        vec_f64(&c.an, an_inf, 4);
        expect_fail("Inf anchor", obj, &c, 0, 0, 0, ADPO_STATUS_NON_FINITE, "anchor_logp contains NaN or Inf");
        default_inputs(&c);
        c.use_tg = 1;
        expect_fail("rewards and targets", obj, &c, 0, 0, 0, ADPO_STATUS_INVALID_ARGUMENT, "rewards");
        default_inputs(&c);
        c.use_rw = 0;
        expect_fail("neither rewards nor targets", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "rewards");
        default_inputs(&c);
        c.use_rw = 0;
        c.use_tg = 1;
        c.tg_data[0] = 0.5;
        expect_fail("targets summing to 1.25", obj, &c, 0, 0, 0, ADPO_STATUS_INVALID_ARGUMENT, "targets");
        default_inputs(&c);
        c.use_lp = 0;
        expect_fail("logp NULL", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "logp");
        default_inputs(&c);
        c.use_an = 0;
        expect_fail("anchor NULL", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "anchor_logp");
        default_inputs(&c);
        c.use_ids = 0;
        expect_fail("group ids NULL", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "group_ids");
        default_inputs(&c);
        c.use_lp = c.use_an = c.use_rw = c.use_ids = 0;
        expect_fail("all NULL", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "logp");
        default_inputs(&c);
        c.lp.m.dl_tensor.data = NULL;
        expect_fail("logp data NULL", obj, &c, 0, 0, 0, ADPO_STATUS_NULL_ARGUMENT, "logp");
    }

    /* Loss-specific checks run too: pairwise needs pairs. */
    {
        adpo_objective *pw = NULL;
        CHECK_STATUS(adpo_objective_new("{\"loss\": \"pairwise\"}", &pw, &err), ADPO_STATUS_OK, "");
        default_inputs(&c);
        expect_fail("pairwise group of 4", pw, &c, 0, 0, 0, ADPO_STATUS_SHAPE_MISMATCH, "pairwise");
        adpo_objective_free(pw);
        adpo_objective *grpo = NULL;
        CHECK_STATUS(adpo_objective_new("{\"loss\": \"grpo\"}", &grpo, &err), ADPO_STATUS_OK, "");
        default_inputs(&c);
        expect_fail("grpo", grpo, &c, 0, 0, 0, ADPO_STATUS_INVALID_ARGUMENT, "eval_tokens");
        adpo_objective_free(grpo);
    }

    /* The handle still works. */
    double want_loss, want_grad[4];
    host_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &want_loss, want_grad);
    CHECK_CLOSE(want_loss, 1.0152, 1e-5);
}

/* Strides that cannot be used as they are. DLPack allows negative strides (a reversed view, as
 * numpy's a[::-1] exports); huge strides describe memory that cannot exist. adpo must either
 * honour a valid view (the header promises "any strides") or reject it with a status, release
 * the inputs once and leave the outputs alone; it must never take the process down. Each case
 * runs in a child process so that a crash is reported as a failure instead of ending the suite.
 * Run first, before this process has started any libtorch thread pool. */
static int strided_child(int64_t stride, const double *data_start) {
    adpo_objective *obj = NULL;
    if (adpo_objective_new(NULL, &obj, NULL) != ADPO_STATUS_OK) return 2;
    /* Expected (valid views): the contiguous evaluation of the viewed values. */
    double viewed[4], want_loss = 0.0, want_grad[4] = {0, 0, 0, 0};
    int valid = stride == -1;
    for (int i = 0; valid && i < 4; i++) viewed[i] = data_start[i * stride];
    if (valid && adpo_objective_eval(obj, 4, viewed, ANCHOR, R1, NULL, G1, &want_loss, want_grad, NULL, NULL) != 0)
        return 3;
    tensor lp, an, rw, ids;
    const int64_t n = 4;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    adpo_error *e = NULL;
    adpo_status st = adpo_objective_eval_dlpack(obj, wrap(&lp, (void *)data_start, kDLFloat, 64, 1, &n, &stride, 0),
                                                vec_f64(&an, ANCHOR, 4), vec_f64(&rw, R1, 4), NULL,
                                                vec_i64(&ids, G1, 4), &loss, &grad, &e);
    int ok = lp.calls == 1 && an.calls == 1 && rw.calls == 1 && ids.calls == 1;
    if (st == ADPO_STATUS_OK) {
        double g[4];
        ok = ok && valid && fabs(loss - want_loss) < 1e-12 && grad && grad->dl_tensor.ndim == 1;
        if (ok && read_grad(grad, kDLFloat, 64, 4, g))
            for (int i = 0; i < 4; i++) ok = ok && fabs(g[i] - want_grad[i]) < 1e-12;
        release(grad);
    } else {
        ok = ok && (st == ADPO_STATUS_UNSUPPORTED || st == ADPO_STATUS_SHAPE_MISMATCH) && e != NULL &&
             adpo_error_status(e) == st && loss == SENTINEL && grad == NULL;
    }
    adpo_error_free(e);
    adpo_objective_free(obj);
    return ok ? 0 : 1;
}

typedef struct {
    int64_t stride;
    const double *start;
} strided_case;

static int strided_case_child(const void *arg) {
    const strided_case *c = arg;
    return strided_child(c->stride, c->start);
}

static void test_unusual_strides(void) {
    static const double buf[4] = {-20.1, -9.8, -15.5, -12.0};
    static const strided_case reversed = {-1, buf + 3}, huge = {(int64_t)1 << 61, buf};
    CHECK_IN_CHILD(strided_case_child, &reversed, "DLPack logp with a negative stride (reversed view)");
    CHECK_IN_CHILD(strided_case_child, &huge, "DLPack logp with stride 2^61 (storage size overflows)");
}

/* group_ids claiming 2^40 elements over a buffer of 4: refused by its length before a byte of
 * it is read (copying it first aborted the process). */
static int lying_group_ids_child(const void *unused) {
    (void)unused;
    adpo_objective *obj = NULL;
    if (adpo_objective_new(NULL, &obj, NULL) != ADPO_STATUS_OK) return 2;
    tensor lp, an, rw, ids;
    const int64_t claimed = (int64_t)1 << 40;
    double loss = SENTINEL;
    DLManagedTensorVersioned *grad = NULL;
    adpo_error *e = NULL;
    adpo_status st = adpo_objective_eval_dlpack(obj, vec_f64(&lp, LOGP, 4), vec_f64(&an, ANCHOR, 4),
                                                vec_f64(&rw, R1, 4), NULL, vec_i64(&ids, G1, claimed), &loss,
                                                &grad, &e);
    int ok = st == ADPO_STATUS_SHAPE_MISMATCH && e && strstr(adpo_error_message(e), "group_ids") &&
             loss == SENTINEL && grad == NULL && lp.calls == 1 && ids.calls == 1;
    adpo_error_free(e);
    adpo_objective_free(obj);
    return ok ? 0 : 1;
}

static void test_lying_sizes(void) {
    CHECK_IN_CHILD(lying_group_ids_child, NULL, "DLPack group_ids claiming 2^40 elements");
}

int main(void) {
    test_unusual_strides();
    test_lying_sizes();
    adpo_objective *obj = NULL;
    CHECK_STATUS(adpo_objective_new(NULL, &obj, &err), ADPO_STATUS_OK, "");
    if (!obj) return check_summary("test_dlpack");
    test_float64(obj);
    test_strided(obj);
    test_float32_bf16(obj);
    test_heap_inputs(obj);
    test_errors(obj);
    adpo_objective_free(obj);
    return check_summary("test_dlpack");
}
