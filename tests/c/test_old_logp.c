/* adpo_batch_get_old_logp through the C ABI: a sampled batch's per-token log-probs, averaged
 * over each row's completion, equal what a forward of the policy gives for the same completions
 * (adpo_trainer_sequence_logp with its default mean reduction, before any step) and are 0 off
 * the loss mask; values the host set come back as set; every misuse is a clean status.
 *
 * The model is a tiny float64 Llama checkpoint of tests/fixtures/make_hf_models.py (ADPO_FIXTURES,
 * default tests/fixtures/generated, then hf/NAME). */
#include "check.h"

#include <adpo.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PROMPTS 2
#define K 3
#define N (PROMPTS * K)

static adpo_trainer *new_trainer(const char *fixtures) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/hf/llama_gqa2_untied_v97", fixtures);
    adpo_model *m = NULL;
    CHECK_STATUS(adpo_model_load_options(dir, "{\"dtype\": \"float64\"}", &m, &err), ADPO_STATUS_OK, "");
    if (!m) {
        fprintf(stderr, "cannot load %s: run `make fixtures` (or set ADPO_FIXTURES)\n", dir);
        exit(check_summary("test_old_logp"));
    }
    adpo_trainer *trainer = NULL;
    CHECK_STATUS(adpo_trainer_new(m, NULL, "{\"seed\": 5}", &trainer, &err), ADPO_STATUS_OK, "");
    adpo_model_free(m);
    return trainer;
}

static void sampled_batch_reads_back(adpo_trainer *trainer) {
    int64_t prompts[] = {5, 9, 13, 2, 7};
    size_t lengths[PROMPTS] = {3, 2};
    adpo_batch *b = NULL;
    CHECK_STATUS(adpo_trainer_sample(trainer, prompts, lengths, PROMPTS, K,
                                     "{\"max_new_tokens\": 5, \"temperature\": 0.7, \"eos_id\": []}", &b, &err),
                 ADPO_STATUS_OK, "");
    size_t n = 0, t = 0;
    CHECK_STATUS(adpo_batch_shape(b, &n, &t, &err), ADPO_STATUS_OK, "");
    CHECK(n == N);
    double forward[N];
    CHECK_STATUS(adpo_trainer_sequence_logp(trainer, b, forward, N, &err), ADPO_STATUS_OK, "");
    double *per_tok = malloc(n * t * sizeof *per_tok);
    uint8_t *mask = malloc(n * t);
    CHECK_STATUS(adpo_batch_get_old_logp(b, per_tok, n * t, &err), ADPO_STATUS_OK, "");
    CHECK_STATUS(adpo_batch_get_loss_mask(b, mask, n * t, &err), ADPO_STATUS_OK, "");
    for (size_t r = 0; r < N; r++) {
        double sum = 0, tokens = 0;
        for (size_t j = 0; j < t; j++) {
            sum += per_tok[r * t + j];
            tokens += mask[r * t + j];
            if (!mask[r * t + j]) CHECK(per_tok[r * t + j] == 0.0);
        }
        CHECK(tokens == 5 && sum < 0.0);
        /* sampled at temperature 0.7, recorded at temperature 1: the policy's own log-probs */
        CHECK_CLOSE(sum / tokens, forward[r], 1e-9);
    }
    CHECK_STATUS(adpo_batch_get_old_logp(b, forward, N, &err), ADPO_STATUS_SHAPE_MISMATCH, "per token");
    CHECK_STATUS(adpo_batch_get_old_logp(b, NULL, n * t, &err), ADPO_STATUS_NULL_ARGUMENT, "out");
    CHECK_STATUS(adpo_batch_get_old_logp(NULL, per_tok, n * t, &err), ADPO_STATUS_NULL_ARGUMENT, "batch");
    free(per_tok);
    free(mask);
    adpo_batch_free(b);
}

static void host_batch(void) {
    int64_t ids[2 * 3] = {1, 2, 3, 1, 4, 5};
    uint8_t loss[2 * 3] = {0, 1, 1, 0, 1, 0};
    int64_t groups[2] = {0, 0};
    adpo_batch *b = NULL;
    CHECK_STATUS(adpo_batch_new(2, 3, ids, NULL, loss, groups, &b, &err), ADPO_STATUS_OK, "");
    double out[6];
    CHECK_STATUS(adpo_batch_get_old_logp(b, out, 2, &err), ADPO_STATUS_INVALID_ARGUMENT, "no old_logp");
    double per_seq[2] = {-1.5, -0.25};
    CHECK_STATUS(adpo_batch_set_old_logp(b, per_seq, 2, &err), ADPO_STATUS_OK, "");
    CHECK_STATUS(adpo_batch_get_old_logp(b, out, 2, &err), ADPO_STATUS_OK, "");
    CHECK(out[0] == -1.5 && out[1] == -0.25);
    CHECK_STATUS(adpo_batch_get_old_logp(b, out, 6, &err), ADPO_STATUS_SHAPE_MISMATCH, "per sequence");
    /* per token: the values off the loss mask are ignored, so they read back as 0 */
    double per_tok[6] = {-9, -0.5, -0.25, -9, -2, -9};
    CHECK_STATUS(adpo_batch_set_old_logp(b, per_tok, 6, &err), ADPO_STATUS_OK, "");
    CHECK_STATUS(adpo_batch_get_old_logp(b, out, 6, &err), ADPO_STATUS_OK, "");
    double want[6] = {0, -0.5, -0.25, 0, -2, 0};
    for (int i = 0; i < 6; i++) CHECK(out[i] == want[i]);
    CHECK_STATUS(adpo_batch_get_old_logp(b, out, 2, &err), ADPO_STATUS_SHAPE_MISMATCH, "per token");
    adpo_batch_free(b);
}

int main(void) {
    const char *env = getenv("ADPO_FIXTURES");
    adpo_trainer *trainer = new_trainer(env && *env ? env : "tests/fixtures/generated");
    sampled_batch_reads_back(trainer);
    adpo_trainer_free(trainer);
    host_batch();
    return check_summary("test_old_logp");
}
