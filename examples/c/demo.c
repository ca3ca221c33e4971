/* make demo: online listwise ADPO from C on a toy task.
 *
 * A tiny Llama checkpoint (vocabulary 16, make fixtures) sees prompts [1, x] with x in 2..9 and must
 * answer with the token x + 1, four times. The C host samples K candidates per prompt from the
 * policy, scores each with its own reward function (the fraction of answer tokens equal to
 * x + 1), hands rewards to adpo and takes an ADPO step: sample -> reward -> step.
 *
 * Usage: demo MODEL_DIR [STEPS] [DEVICE]   (DEVICE: cpu (default), cuda, cuda:N) */
#include <adpo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROMPTS 8
#define K 8
#define NEW_TOKENS 4

/* Takes &err, not err: C does not order the evaluation of arguments, so a copy of err could be
 * read before the call under check has written it. */
static void check(adpo_status st, adpo_error **err, const char *what) {
    if (st == ADPO_STATUS_OK) return;
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, adpo_error_message(*err));
    adpo_error_free(*err);
    exit(1);
}

/* The host's reward: fraction of generated tokens equal to prompt[1] + 1. */
static double reward(const int64_t *row, const uint8_t *loss_mask, size_t t, int64_t x) {
    int hits = 0, total = 0;
    for (size_t j = 0; j < t; j++) {
        if (!loss_mask[j]) continue;
        total++;
        hits += row[j] == x + 1;
    }
    return total ? (double)hits / total : 0.0;
}

int main(int argc, char **argv) {
    const char *model_path = argc > 1 ? argv[1] : "tests/fixtures/generated/tiny/llama";
    int steps = argc > 2 ? atoi(argv[2]) : 150;
    const char *device = argc > 3 ? argv[3] : "cpu";
    adpo_error *err = NULL;
    printf("%s\n", adpo_version());

    adpo_model *policy = NULL;
    check(adpo_model_load(model_path, device, &policy, &err), &err, "adpo_model_load");
    adpo_trainer *trainer = NULL;
    const char *config =
        "{\"loss\": \"listwise\", \"tau\": 0.8, \"beta_reward\": 0.5,"
        " \"anchor\": {\"mode\": \"on_policy\"}, \"epochs_per_batch\": 2,"
        " \"optimizer\": {\"name\": \"adamw\", \"lr\": 0.003, \"weight_decay\": 0.0},"
        " \"grad_clip\": 1.0, \"seed\": 7}";
    check(adpo_trainer_new(policy, NULL, config, &trainer, &err), &err, "adpo_trainer_new");
    adpo_model_free(policy); /* the trainer keeps its own reference */
    printf("online listwise ADPO on %s: %d prompts x K=%d samples per step, %d steps\n", device, PROMPTS, K, steps);

    int64_t prompt_tokens[2 * PROMPTS];
    size_t prompt_lengths[PROMPTS];
    double first_reward = 0, last_reward = 0;
    unsigned seed = 12345;
    for (int step = 1; step <= steps; step++) {
        for (int p = 0; p < PROMPTS; p++) {
            seed = seed * 1103515245u + 12345u;
            prompt_tokens[2 * p] = 1;
            prompt_tokens[2 * p + 1] = 2 + (int64_t)((seed >> 16) % 8);
            prompt_lengths[p] = 2;
        }
        adpo_batch *batch = NULL;
        check(adpo_trainer_sample(trainer, prompt_tokens, prompt_lengths, PROMPTS, K,
                                  "{\"max_new_tokens\": 4, \"temperature\": 1.0}", &batch, &err),
              &err, "adpo_trainer_sample");
        size_t n = 0, t = 0;
        check(adpo_batch_shape(batch, &n, &t, &err), &err, "adpo_batch_shape");
        int64_t *ids = malloc(n * t * sizeof *ids);
        uint8_t *mask = malloc(n * t);
        int64_t *groups = malloc(n * sizeof *groups);
        double *rewards = malloc(n * sizeof *rewards);
        check(adpo_batch_get_ids(batch, ids, n * t, &err), &err, "adpo_batch_get_ids");
        check(adpo_batch_get_loss_mask(batch, mask, n * t, &err), &err, "adpo_batch_get_loss_mask");
        check(adpo_batch_get_group_ids(batch, groups, n, &err), &err, "adpo_batch_get_group_ids");
        double mean = 0;
        for (size_t i = 0; i < n; i++) {
            rewards[i] = reward(ids + i * t, mask + i * t, t, prompt_tokens[2 * groups[i] + 1]);
            mean += rewards[i] / n;
        }
        check(adpo_batch_set_rewards(batch, rewards, n, &err), &err, "adpo_batch_set_rewards");
        adpo_trainer_metrics m;
        memset(&m, 0, sizeof m);
        m.struct_size = sizeof m;
        check(adpo_trainer_step(trainer, batch, &m, &err), &err, "adpo_trainer_step");
        /* Start: mean over the first 5 steps; end: mean over the last 10. */
        if (step <= 5) first_reward += mean / 5;
        if (step > steps - 10) last_reward += mean / 10;
        if (step == 1 || step % 10 == 0)
            printf("step %3d  reward %.3f  loss %.4f  win_mass %.3f  grad_norm %.3f  %.1f ms/step\n",
                   step, mean, m.loss, m.win_mass, m.grad_norm, m.step_time_ms);
        free(ids); free(mask); free(groups); free(rewards);
        adpo_batch_free(batch);
    }
    printf("reward at start: %.3f (first 5 steps)   reward at end: %.3f (last 10 steps)\n", first_reward, last_reward);
    adpo_trainer_free(trainer);
    return last_reward > first_reward ? 0 : 1;
}
