/* The RL recipes of 2026 from C: sampling and training in two threads one step apart, groups
 * without signal refilled and filtered, long completions penalised, and the
 * rollout/trainer mismatch corrected and reported. (The penalty and TRL's
 * mask_truncated_completions are two answers to the same problem; with both, a truncated row
 * would escape the penalty, so this example uses the penalty.)
 *
 * A sampler thread samples K completions for each chat prompt, scores them (1 for "blue",
 * DAPO's soft overlong penalty for long ones) and, while fewer than MIN_SIGNAL groups have
 * rewards that differ, samples more prompts and appends them (adpo_batch_concat), as DAPO
 * refills its batch (at most 4 samplings; a batch still without any signal is skipped, as DAPO
 * skips it: filter_groups would refuse it). It hands the batch to the trainer thread through a
 * one-slot queue, so it samples batch k + 1 while the trainer steps on batch k. The trainer drops the groups
 * without signal (filter_groups), refuses batches more than one step old (max_staleness),
 * recomputes the old log-probs under its current policy and importance-weights each token by
 * pi_old / pi_rollout against the sampler's log-probs (rollout_correction: the batch was
 * sampled one update ago).
 *
 * Threads: every adpo handle is locked inside the library, so both threads may call it; a
 * trainer runs one call at a time (a sample waits for a step to end and the other way round).
 * Which of the two comes first is up to the threads, so runs differ slightly; the sampler
 * waits for step i - 1 to end before sampling batch i, so no batch is ever two steps old.
 *
 * Usage: async_rl CHECKPOINT_DIR [STEPS]   (exit status 1 if nothing was learnt) */
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c11 */
#include <adpo.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K 8
#define MAX_NEW 6
#define MAX_PROMPT 64
#define MIN_SIGNAL 2 /* groups whose rewards differ, per training batch */

static const char *QUESTIONS[] = {"Name a colour.", "Say a colour.", "Pick a colour.", "Which colour?"};
#define PROMPTS (sizeof QUESTIONS / sizeof QUESTIONS[0])

static void check(adpo_status st, adpo_error **err, const char *what) {
    if (st == ADPO_STATUS_OK) return;
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, adpo_error_message(*err));
    adpo_error_free(*err);
    exit(1);
}

/* A one-slot queue: the sampler waits while the trainer has not taken the last batch. */
struct slot {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    adpo_batch *batch; /* NULL: empty */
    double share;      /* the batch's share of "blue" */
    int signal;        /* its groups whose rewards differ */
    int steps_done;    /* optimizer steps the trainer has finished */
};

struct shared {
    adpo_trainer *trainer;
    adpo_tokenizer *tok;
    int64_t tokens[PROMPTS * MAX_PROMPT];
    size_t lengths[PROMPTS];
    int steps;
    struct slot slot;
};

/* Rewards of a sampled batch: 1 for "blue", plus the overlong penalty; returns the number of
 * groups whose rewards differ and adds the share of "blue" to *blue. */
static int score(struct shared *s, adpo_batch *batch, double *blue) {
    adpo_error *err = NULL;
    double rewards[PROMPTS * K];
    for (size_t r = 0; r < PROMPTS * K; r++) {
        int64_t ids[MAX_NEW];
        size_t n = 0;
        char *text = NULL;
        check(adpo_batch_get_completion(batch, r, ids, MAX_NEW, &n, &err), &err, "get_completion");
        check(adpo_tokenizer_decode(s->tok, ids, n, true, &text, &err), &err, "decode");
        double penalty = 0.0; /* 0 up to 4 tokens, down to -0.5 at MAX_NEW */
        check(adpo_soft_overlong_penalty(n, MAX_NEW, 2, 0.5, &penalty, &err), &err, "overlong penalty");
        rewards[r] = (strcmp(text, "blue") == 0) + penalty;
        *blue += (strcmp(text, "blue") == 0) / (double)(PROMPTS * K);
        adpo_string_free(text);
    }
    check(adpo_batch_set_rewards(batch, rewards, PROMPTS * K, &err), &err, "set_rewards");
    int with_signal = 0;
    for (size_t g = 0; g < PROMPTS; g++)
        for (int j = 1; j < K; j++)
            if (rewards[g * K + j] != rewards[g * K]) {
                with_signal++;
                break;
            }
    return with_signal;
}

static adpo_batch *sample(struct shared *s) {
    adpo_error *err = NULL;
    adpo_batch *b = NULL;
    char cfg[64];
    snprintf(cfg, sizeof cfg, "{\"max_new_tokens\": %d}", MAX_NEW);
    check(adpo_trainer_sample(s->trainer, s->tokens, s->lengths, PROMPTS, K, cfg, &b, &err), &err, "sample");
    return b;
}

/* Samples until MIN_SIGNAL groups carry signal (at most 4 calls), as one batch. */
static adpo_batch *refilled_batch(struct shared *s, double *share, int *with_signal) {
    adpo_error *err = NULL;
    adpo_batch *parts[4];
    size_t count = 0;
    int signal = 0;
    double blue = 0.0;
    while (signal < MIN_SIGNAL && count < 4) {
        parts[count] = sample(s);
        signal += score(s, parts[count], &blue);
        count++;
    }
    *share = blue / count;
    *with_signal = signal;
    if (count == 1) return parts[0];
    adpo_batch *all = NULL;
    check(adpo_batch_concat((const adpo_batch *const *)parts, count, &all, &err), &err, "concat");
    for (size_t i = 0; i < count; i++) adpo_batch_free(parts[i]);
    return all;
}

static void *sampler(void *arg) {
    struct shared *s = arg;
    for (int i = 0; i < s->steps; i++) {
        /* Batch i trains at step i + 1. It is at most one step old there if its sampling starts
         * after step i - 1 has ended: waiting for the trainer to take batch i - 1 is not enough
         * (it may still be stepping on batch i - 2). */
        pthread_mutex_lock(&s->slot.lock);
        while (s->slot.steps_done < i - 1) pthread_cond_wait(&s->slot.changed, &s->slot.lock);
        pthread_mutex_unlock(&s->slot.lock);
        double share = 0.0;
        int signal = 0;
        adpo_batch *b = refilled_batch(s, &share, &signal);
        pthread_mutex_lock(&s->slot.lock);
        while (s->slot.batch) pthread_cond_wait(&s->slot.changed, &s->slot.lock);
        s->slot.batch = b;
        s->slot.share = share;
        s->slot.signal = signal;
        pthread_cond_broadcast(&s->slot.changed);
        pthread_mutex_unlock(&s->slot.lock);
    }
    return NULL;
}

static adpo_batch *take(struct slot *q, double *share, int *signal) {
    pthread_mutex_lock(&q->lock);
    while (!q->batch) pthread_cond_wait(&q->changed, &q->lock);
    adpo_batch *b = q->batch;
    *share = q->share;
    *signal = q->signal;
    q->batch = NULL;
    pthread_cond_broadcast(&q->changed);
    pthread_mutex_unlock(&q->lock);
    return b;
}

static size_t prompt_ids(const adpo_tokenizer *tok, const char *question, int64_t *ids) {
    adpo_error *err = NULL;
    char messages[256], *text = NULL;
    snprintf(messages, sizeof messages, "[{\"role\": \"user\", \"content\": \"%s\"}]", question);
    check(adpo_tokenizer_apply_chat_template(tok, messages, true, &text, &err), &err, "chat template");
    size_t n = 0;
    check(adpo_tokenizer_encode(tok, text, false, ids, MAX_PROMPT, &n, &err), &err, "encode");
    adpo_string_free(text);
    return n;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures/generated/colours";
    static struct shared s = {.slot = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0.0, 0, 0}};
    s.steps = argc > 2 ? atoi(argv[2]) : 40;
    adpo_error *err = NULL;
    adpo_model *policy = NULL;
    check(adpo_model_load(dir, "cpu", &policy, &err), &err, "adpo_model_load");
    check(adpo_tokenizer_load(dir, &s.tok, &err), &err, "adpo_tokenizer_load");
    const char *config =
        "{\"loss\": \"listwise\", \"anchor\": {\"mode\": \"on_policy\"}, \"seed\": 3,"
        " \"optimizer\": {\"name\": \"adamw\", \"lr\": 0.001, \"weight_decay\": 0.0}, \"grad_clip\": 1.0,"
        " \"filter_groups\": {\"min_std\": 0}, \"max_staleness\": 1,"
        " \"recompute_old_logp\": true, \"rollout_correction\": {\"rollout_is\": \"token\", \"rollout_is_threshold\": 2}}";
    check(adpo_trainer_new(policy, NULL, config, &s.trainer, &err), &err, "adpo_trainer_new");
    adpo_model_free(policy);
    size_t used = 0;
    for (size_t i = 0; i < PROMPTS; i++) {
        s.lengths[i] = prompt_ids(s.tok, QUESTIONS[i], s.tokens + used);
        used += s.lengths[i];
    }
    pthread_t thread;
    if (pthread_create(&thread, NULL, sampler, &s) != 0) return 1;
    double first = 0, last = 0;
    for (int step = 1; step <= s.steps; step++) {
        double share = 0.0;
        int signal = 0;
        adpo_batch *batch = take(&s.slot, &share, &signal);
        adpo_trainer_metrics m = {.struct_size = sizeof m};
        if (signal > 0) {
            check(adpo_trainer_step(s.trainer, batch, &m, &err), &err, "adpo_trainer_step");
        } else {
            printf("step %3d  skipped: no group of 4 samplings carries a signal\n", step);
        }
        adpo_batch_free(batch);
        pthread_mutex_lock(&s.slot.lock);
        s.slot.steps_done = step;
        pthread_cond_broadcast(&s.slot.changed);
        pthread_mutex_unlock(&s.slot.lock);
        if (step <= 5) first += share / 5;
        if (step > s.steps - 5) last += share / 5;
        if (signal > 0 && (step == 1 || step % 5 == 0))
            printf("step %3d  share \"blue\" %.3f  groups kept %llu (zero-std %.2f)  truncated rows %.0f  "
                   "batch age %.0f  rollout k3 %.2e  max ratio %.3f\n",
                   step, share, (unsigned long long)m.groups_kept, m.frac_reward_zero_std, m.truncated_rows,
                   m.batch_age, m.rollout_kl_k3, m.rollout_max_ratio);
    }
    pthread_join(thread, NULL);
    printf("share of \"blue\" at start: %.3f (first 5 steps)   at end: %.3f (last 5 steps)\n", first, last);
    adpo_trainer_free(s.trainer);
    adpo_tokenizer_free(s.tok);
    return last > first + 0.3 ? 0 : 1;
}
