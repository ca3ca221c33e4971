/* Text in, text out: online ADPO on a Hugging Face checkpoint directory, from C.
 *
 * Loads the model and its tokenizer from one directory, builds the prompts with the chat
 * template, samples K completions per prompt, decodes them, scores the text in C (reward 1
 * for the answer "blue", 0 otherwise) and takes listwise ADPO steps. The fixture model
 * (tests/fixtures/make_text_model.py) answers one of four colours about equally often at the
 * start; the share of "blue" rises within a few dozen steps.
 *
 * Usage: text_rl CHECKPOINT_DIR [STEPS] [DEVICE]   (exit status 1 if nothing was learnt) */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <adpo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define K 8
#define MAX_PROMPT 64

static const char *QUESTIONS[] = {"Name a colour.", "Say a colour.", "Pick a colour.", "Which colour?"};
#define PROMPTS (sizeof QUESTIONS / sizeof QUESTIONS[0])

/* Takes &err: C does not order the evaluation of arguments. */
static void check(adpo_status st, adpo_error **err, const char *what) {
    if (st == ADPO_STATUS_OK) return;
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, adpo_error_message(*err));
    adpo_error_free(*err);
    exit(1);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The chat-formatted prompt of `question`, as token ids; returns the number of ids. */
static size_t prompt_ids(const adpo_tokenizer *tok, const char *question, int64_t *ids) {
    adpo_error *err = NULL;
    char messages[256], *text = NULL;
    snprintf(messages, sizeof messages, "[{\"role\": \"user\", \"content\": \"%s\"}]", question);
    check(adpo_tokenizer_apply_chat_template(tok, messages, true, &text, &err), &err, "apply_chat_template");
    size_t n = 0; /* the template writes the special tokens itself: add none */
    check(adpo_tokenizer_encode(tok, text, false, ids, MAX_PROMPT, &n, &err), &err, "adpo_tokenizer_encode");
    adpo_string_free(text);
    return n;
}

/* The host's reward: 1 when row `r`'s completion reads "blue". */
static double reward(const adpo_tokenizer *tok, const adpo_batch *batch, size_t r, char *shown, size_t cap) {
    adpo_error *err = NULL;
    int64_t ids[64];
    size_t n = 0;
    check(adpo_batch_get_completion(batch, r, ids, 64, &n, &err), &err, "adpo_batch_get_completion");
    char *text = NULL;
    check(adpo_tokenizer_decode(tok, ids, n, true, &text, &err), &err, "adpo_tokenizer_decode");
    snprintf(shown, cap, "%s", text);
    double r01 = strcmp(text, "blue") == 0;
    adpo_string_free(text);
    return r01;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "tests/fixtures/generated/colours";
    int steps = argc > 2 ? atoi(argv[2]) : 40;
    const char *device = argc > 3 ? argv[3] : "cpu";
    adpo_error *err = NULL;
    adpo_model *policy = NULL;
    adpo_tokenizer *tok = NULL;
    check(adpo_model_load(dir, device, &policy, &err), &err, "adpo_model_load");
    check(adpo_tokenizer_load(dir, &tok, &err), &err, "adpo_tokenizer_load");
    adpo_trainer *trainer = NULL;
    const char *config = "{\"loss\": \"listwise\", \"anchor\": {\"mode\": \"on_policy\"}, \"epochs_per_batch\": 1,"
                         " \"optimizer\": {\"name\": \"adamw\", \"lr\": 0.001, \"weight_decay\": 0.0},"
                         " \"grad_clip\": 1.0, \"seed\": 3}";
    check(adpo_trainer_new(policy, NULL, config, &trainer, &err), &err, "adpo_trainer_new");
    adpo_model_free(policy); /* the trainer keeps its own reference */

    int64_t tokens[PROMPTS * MAX_PROMPT];
    size_t lengths[PROMPTS], used = 0;
    for (size_t i = 0; i < PROMPTS; i++) {
        lengths[i] = prompt_ids(tok, QUESTIONS[i], tokens + used);
        used += lengths[i];
    }
    printf("online ADPO on text: %zu chat prompts x K=%d completions, reward 1 for \"blue\", %d steps\n",
           PROMPTS, K, steps);
    double first = 0, last = 0;
    for (int step = 1; step <= steps; step++) {
        double t0 = now_ms();
        adpo_batch *batch = NULL; /* EOS: the checkpoint's generation_config.json */
        check(adpo_trainer_sample(trainer, tokens, lengths, PROMPTS, K, "{\"max_new_tokens\": 6}", &batch, &err),
              &err, "adpo_trainer_sample");
        double rewards[PROMPTS * K], mean = 0;
        char shown[64] = "", text[64];
        int with_signal = 0;
        for (size_t r = 0; r < PROMPTS * K; r++) {
            rewards[r] = reward(tok, batch, r, text, sizeof text);
            mean += rewards[r] / (PROMPTS * K);
            if (r == 0) memcpy(shown, text, sizeof shown);
        }
        for (size_t g = 0; g < PROMPTS; g++) { /* a group whose rewards are all equal teaches nothing */
            for (int j = 1; j < K; j++) {
                if (rewards[g * K + j] != rewards[g * K]) {
                    with_signal++;
                    break;
                }
            }
        }
        check(adpo_batch_set_rewards(batch, rewards, PROMPTS * K, &err), &err, "adpo_batch_set_rewards");
        /* Policy entropy, estimated as minus the mean log-prob of the sampled tokens (nats per
         * token; falls as the policy settles on an answer). On printed steps only: a forward. */
        double entropy = 0.0;
        if (step == 1 || step % 5 == 0) {
            double seq_logp[PROMPTS * K];
            check(adpo_trainer_sequence_logp(trainer, batch, seq_logp, PROMPTS * K, &err), &err,
                  "adpo_trainer_sequence_logp");
            for (size_t r = 0; r < PROMPTS * K; r++) entropy -= seq_logp[r] / (PROMPTS * K);
        }
        adpo_trainer_metrics m = {.struct_size = sizeof m};
        check(adpo_trainer_step(trainer, batch, &m, &err), &err, "adpo_trainer_step");
        adpo_batch_free(batch);
        if (step <= 5) first += mean / 5;
        if (step > steps - 5) last += mean / 5;
        if (step == 1 || step % 5 == 0)
            /* (With an on-policy anchor and one update per batch, s = 0 and the loss is log K at
             * every step: the gradient norm shows the signal instead.) */
            printf("step %3d  share \"blue\" %.3f  groups with signal %d/%zu  entropy %.2f nats/token  "
                   "grad norm %.3f  %.1f ms/iteration (sampling included)  e.g. \"%s\"\n",
                   step, mean, with_signal, PROMPTS, entropy, m.grad_norm, now_ms() - t0, shown);
    }
    printf("share of \"blue\" at start: %.3f (first 5 steps)   at end: %.3f (last 5 steps)\n", first, last);
    adpo_trainer_free(trainer);
    adpo_tokenizer_free(tok);
    return last > first + 0.3 ? 0 : 1;
}
