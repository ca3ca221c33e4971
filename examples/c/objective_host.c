/* The ADPO objective on host buffers: one batch of 2 prompts x 4 sampled candidates.
 *
 * For every candidate the caller supplies the policy's sequence log-probability (logp), the
 * anchor's (anchor_logp, e.g. the frozen reference or the sampling policy), a scalar reward and
 * the id of its prompt. adpo returns the loss (mean over prompts of the listwise anchored
 * cross-entropy) and d loss / d logp, which the caller back-propagates into its model. */
#include <adpo.h>
#include <stdio.h>

#define N 8

int main(void) {
    /* Candidates of prompt 0 and prompt 1, in any order: the group ids say which is which. */
    const double logp[N] = {-12.0, -15.5, -9.8, -20.1, -7.2, -6.9, -8.4, -7.7};
    const double anchor_logp[N] = {-12.5, -15.0, -10.4, -19.6, -7.0, -7.1, -8.0, -7.9};
    const double rewards[N] = {1.0, 0.0, 0.5, -0.1, 0.0, 1.0, 1.0, 0.0};
    const int64_t prompt[N] = {0, 0, 0, 0, 1, 1, 1, 1};

    adpo_error *err = NULL;
    adpo_objective *obj = NULL;
    /* Listwise loss, tau 0.8, target q = softmax(zscore(rewards) / 0.5): the defaults, spelled out. */
    const char *config = "{\"loss\": \"listwise\", \"tau\": 0.8, \"beta_reward\": 0.5}";
    if (adpo_objective_new(config, &obj, &err) != ADPO_STATUS_OK) {
        fprintf(stderr, "adpo_objective_new: %s\n", adpo_error_message(err));
        adpo_error_free(err);
        return 1;
    }

    double loss, grad[N], scores[N];
    adpo_status st = adpo_objective_eval(obj, N, logp, anchor_logp, rewards, NULL, prompt, &loss, grad, scores, &err);
    if (st != ADPO_STATUS_OK) {
        fprintf(stderr, "adpo_objective_eval: status %d: %s\n", (int)st, adpo_error_message(err));
        adpo_error_free(err);
        adpo_objective_free(obj);
        return 1;
    }

    printf("loss = %.6f (mean over %d prompts)\n", loss, 2);
    printf("prompt  reward  score s  dloss/dlogp\n");
    for (int i = 0; i < N; i++)
        printf("%6lld  %+6.2f  %+7.4f  %+11.6f\n", (long long)prompt[i], rewards[i], scores[i], grad[i]);

    adpo_objective_free(obj);
    return 0;
}
