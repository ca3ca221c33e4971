/* make demo: calls libadpo from C. Prints the library version, then evaluates the default
 * listwise ADPO objective on one group of four candidates (spec vector V1) and prints the
 * loss, the gradient with respect to the policy log-probs, and the metrics. */
#include <adpo.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(adpo_status st, adpo_error *err) {
    fprintf(stderr, "adpo error %d: %s\n", (int)st, adpo_error_message(err));
    adpo_error_free(err);
    return 1;
}

int main(void) {
    printf("%s (ABI %u, header ABI %d), CUDA devices: %d\n", adpo_version(), adpo_abi_version(),
           ADPO_ABI_VERSION, adpo_cuda_device_count());
    if (adpo_abi_version() != ADPO_ABI_VERSION) {
        fprintf(stderr, "ABI mismatch between header and library\n");
        return 1;
    }

    /* One prompt, K = 4 candidates: policy and anchor sequence log-probs, and rewards. */
    const double logp[4] = {-12.0, -15.5, -9.8, -20.1};
    const double anchor[4] = {-12.5, -15.0, -10.4, -19.6};
    const double rewards[4] = {1.0, 0.0, 0.5, -0.1};
    const int64_t group[4] = {7, 7, 7, 7};

    adpo_error *err = NULL;
    adpo_objective *obj = NULL;
    adpo_status st = adpo_objective_new("{\"loss\": \"listwise\", \"tau\": 0.8, \"beta_reward\": 0.5}", &obj, &err);
    if (st != ADPO_STATUS_OK) return fail(st, err);

    double loss, grad[4], scores[4];
    st = adpo_objective_eval(obj, 4, logp, anchor, rewards, NULL, group, &loss, grad, scores, &err);
    if (st != ADPO_STATUS_OK) return fail(st, err);
    printf("listwise ADPO, tau 0.8, beta_r 0.5, z-scored rewards (spec V1: loss 1.0152)\n");
    printf("  loss = %.6f\n", loss);
    for (int i = 0; i < 4; i++)
        printf("  candidate %d: reward %+.2f  score s = %+.4f  dL/dlogp = %+.6f\n", i, rewards[i], scores[i], grad[i]);

    char *json = NULL;
    st = adpo_objective_metrics_json(obj, &json, &err);
    if (st != ADPO_STATUS_OK) return fail(st, err);
    printf("  metrics: %s\n", json);
    adpo_string_free(json);

    /* A descent step on logp with the returned gradient lowers the loss. */
    double stepped[4], loss2;
    for (int i = 0; i < 4; i++) stepped[i] = logp[i] - 0.5 * grad[i];
    st = adpo_objective_eval(obj, 4, stepped, anchor, rewards, NULL, group, &loss2, NULL, NULL, &err);
    if (st != ADPO_STATUS_OK) return fail(st, err);
    printf("  after one gradient step of size 0.5 on logp: loss = %.6f\n", loss2);

    /* Bad input gets a clear error. */
    const double bad[4] = {1.0, 0.0 / 0.0, 0.5, -0.1};
    st = adpo_objective_eval(obj, 4, logp, anchor, bad, NULL, group, &loss, NULL, NULL, &err);
    printf("  NaN reward -> status %d: %s\n", (int)st, adpo_error_message(err));
    adpo_error_free(err);

    adpo_objective_free(obj);
    return 0;
}
