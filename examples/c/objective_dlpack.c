/* The ADPO objective through DLPack: the same batch as objective_host.c (2 prompts x 4
 * candidates), passed as DLManagedTensorVersioned tensors, the way a framework (PyTorch, JAX,
 * CuPy, ...) hands its tensors over without copying.
 *
 * Ownership: adpo calls every input's deleter exactly once before adpo_objective_eval_dlpack
 * returns, whatever the outcome, so the caller must not touch an input afterwards. The returned
 * gradient is a new tensor on logp's device in logp's dtype, released with its own deleter. */
#include <adpo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 8

/* A heap-allocated 1-D tensor that owns a copy of its data; the deleter frees everything. */
typedef struct {
    DLManagedTensorVersioned managed;
    int64_t shape[1];
    unsigned char data[];
} owned_tensor;

static void owned_tensor_deleter(DLManagedTensorVersioned *self) {
    free(self->manager_ctx); /* the owned_tensor, which contains `self` */
}

static DLManagedTensorVersioned *new_tensor(const void *values, int64_t n, uint8_t code, uint8_t bits) {
    size_t bytes = (size_t)n * (bits / 8);
    owned_tensor *t = calloc(1, sizeof *t + bytes);
    if (!t) return NULL;
    memcpy(t->data, values, bytes);
    t->shape[0] = n;
    t->managed.version.major = DLPACK_MAJOR_VERSION;
    t->managed.version.minor = DLPACK_MINOR_VERSION;
    t->managed.manager_ctx = t;
    t->managed.deleter = owned_tensor_deleter;
    t->managed.dl_tensor.data = t->data;
    t->managed.dl_tensor.device.device_type = kDLCPU;
    t->managed.dl_tensor.device.device_id = 0;
    t->managed.dl_tensor.ndim = 1;
    t->managed.dl_tensor.dtype.code = code;
    t->managed.dl_tensor.dtype.bits = bits;
    t->managed.dl_tensor.dtype.lanes = 1;
    t->managed.dl_tensor.shape = t->shape;
    t->managed.dl_tensor.strides = NULL; /* contiguous */
    t->managed.dl_tensor.byte_offset = 0;
    return &t->managed;
}

int main(void) {
    const float logp[N] = {-12.0f, -15.5f, -9.8f, -20.1f, -7.2f, -6.9f, -8.4f, -7.7f};
    const float anchor_logp[N] = {-12.5f, -15.0f, -10.4f, -19.6f, -7.0f, -7.1f, -8.0f, -7.9f};
    const float rewards[N] = {1.0f, 0.0f, 0.5f, -0.1f, 0.0f, 1.0f, 1.0f, 0.0f};
    const int64_t prompt[N] = {0, 0, 0, 0, 1, 1, 1, 1};

    adpo_error *err = NULL;
    adpo_objective *obj = NULL;
    if (adpo_objective_new("{\"tau\": 0.8, \"beta_reward\": 0.5}", &obj, &err) != ADPO_STATUS_OK) {
        fprintf(stderr, "adpo_objective_new: %s\n", adpo_error_message(err));
        adpo_error_free(err);
        return 1;
    }

    DLManagedTensorVersioned *t_logp = new_tensor(logp, N, kDLFloat, 32);
    DLManagedTensorVersioned *t_anchor = new_tensor(anchor_logp, N, kDLFloat, 32);
    DLManagedTensorVersioned *t_rewards = new_tensor(rewards, N, kDLFloat, 32);
    DLManagedTensorVersioned *t_prompt = new_tensor(prompt, N, kDLInt, 64);
    if (!t_logp || !t_anchor || !t_rewards || !t_prompt) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }

    /* float32 in, so the gradient comes back as float32. The four inputs are released by adpo. */
    double loss;
    DLManagedTensorVersioned *grad = NULL;
    adpo_status st =
        adpo_objective_eval_dlpack(obj, t_logp, t_anchor, t_rewards, NULL, t_prompt, &loss, &grad, &err);
    if (st != ADPO_STATUS_OK) {
        fprintf(stderr, "adpo_objective_eval_dlpack: status %d: %s\n", (int)st, adpo_error_message(err));
        adpo_error_free(err);
        adpo_objective_free(obj);
        return 1;
    }

    const DLTensor *g = &grad->dl_tensor;
    if (g->device.device_type != kDLCPU || g->ndim != 1 || g->shape[0] != N || g->dtype.code != kDLFloat ||
        g->dtype.bits != 32) {
        fprintf(stderr, "unexpected gradient tensor\n");
        return 1;
    }
    const int64_t stride = g->strides ? g->strides[0] : 1;
    const float *values = (const float *)((const char *)g->data + g->byte_offset);
    printf("loss = %.6f\n", loss);
    printf("prompt  reward  dloss/dlogp (float32)\n");
    for (int i = 0; i < N; i++)
        printf("%6lld  %+6.2f  %+11.6f\n", (long long)prompt[i], rewards[i], values[i * stride]);

    grad->deleter(grad); /* the caller owns the returned tensor */
    adpo_objective_free(obj);
    return 0;
}
