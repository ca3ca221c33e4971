/*
 * step_bench: times adpo_trainer_step (policy forward + backward, reference forward, listwise
 * loss, AdamW) on a deterministic batch and reports tokens/s and the process's peak RSS.
 *
 *   step_bench MODEL_DIR N T STEPS MICRO_BATCH_ROWS [SEED] [WARMUP]
 *
 * MODEL_DIR is a Hugging Face checkpoint directory. MICRO_BATCH_ROWS = 0 runs the whole batch in
 * one pass (one forward with autograd, the head a chunk at a time); k > 0 runs the exact
 * two-pass step with k rows per forward. The model is loaded twice
 * (policy + frozen reference, anchor mode "fixed"). Batch: N rows in groups of 8, T positions,
 * loss mask on the last T/2 positions, ids and rewards from a 64-bit LCG (the same generator as
 * benches/step_torch.py, so both sides see identical data). WARMUP (default 1) untimed steps,
 * then STEPS timed steps; the per-step times go to stderr. Output (one line on stdout):
 *
 *   adpo N=.. T=.. V=.. micro=.. warmup=.. steps=.. threads=.. sec_per_step=.. tokens_per_s=..
 *        median_sec_per_step=.. peak_rss_mb=.. ru_maxrss_mb=.. loss=.. first_loss=..
 *
 * tokens = N * T per step (every position goes through the model); sec_per_step is the mean
 * over the timed steps. peak_rss_mb is VmHWM (see status_mb in bench_util.h); ru_maxrss_mb is
 * getrusage(RUSAGE_SELF).ru_maxrss, equal to it when the parent process was small. threads is
 * libtorch's at::get_num_threads() (-1 if the symbol is not visible). loss is the objective at
 * the last step's evaluation (before its update), first_loss at the first warm-up step.
 *
 * Build: cc -O2 -std=c11 -I include benches/step_bench.c -o step_bench \
 *          -L target/release -ladpo -Wl,-rpath,$PWD/target/release -lm -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "adpo.h"
#include "bench_util.h"

#define GROUP 8

static void die_on(adpo_status st, adpo_error *err, const char *what) {
    if (st != ADPO_STATUS_OK) {
        fprintf(stderr, "step_bench: %s failed (status %d): %s\n", what, (int)st,
                adpo_error_message(err));
        adpo_error_free(err);
        exit(1);
    }
}

#define CHECK(call, what)                    \
    do {                                     \
        adpo_error *err_ = NULL;             \
        adpo_status st_ = (call);            \
        die_on(st_, err_, what);             \
    } while (0)
/* The macro passes &err_ through the call's last argument: */
#define ERR_OUT (&err_)

/* libtorch's intra-op thread count, when its symbol is visible (libadpo pulls in libtorch_cpu). */
static int torch_threads(void) {
    void *sym = dlsym(RTLD_DEFAULT, "_ZN2at15get_num_threadsEv");
    int (*f)(void) = NULL;
    if (!sym) return -1;
    memcpy(&f, &sym, sizeof f); /* POSIX idiom: ISO C has no object -> function pointer cast */
    return f();
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long parse_long(const char *s, const char *name, long min) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!end || *end != '\0' || v < min) {
        fprintf(stderr, "step_bench: %s must be an integer >= %ld, got \"%s\"\n", name, min, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 8) {
        fprintf(stderr,
                "usage: %s MODEL_DIR N T STEPS MICRO_BATCH_ROWS(0 = one pass) [SEED] [WARMUP]\n",
                argv[0]);
        return 2;
    }
    const char *model_path = argv[1];
    size_t n = (size_t)parse_long(argv[2], "N", 2);
    size_t t = (size_t)parse_long(argv[3], "T", 2);
    long steps = parse_long(argv[4], "STEPS", 1);
    long micro = parse_long(argv[5], "MICRO_BATCH_ROWS", 0);
    uint64_t seed = argc >= 7 ? (uint64_t)parse_long(argv[6], "SEED", 0) : 0;
    long warmup = argc >= 8 ? parse_long(argv[7], "WARMUP", 0) : 1;

    adpo_model *policy = NULL, *reference = NULL;
    CHECK(adpo_model_load(model_path, "cpu", &policy, ERR_OUT), "adpo_model_load (policy)");
    CHECK(adpo_model_load(model_path, "cpu", &reference, ERR_OUT), "adpo_model_load (reference)");
    int64_t vocab = 0;
    CHECK(adpo_model_vocab_size(policy, &vocab, ERR_OUT), "adpo_model_vocab_size");

    char config[512];
    char micro_json[32];
    if (micro > 0)
        snprintf(micro_json, sizeof micro_json, "%ld", micro);
    else
        snprintf(micro_json, sizeof micro_json, "null");
    snprintf(config, sizeof config,
             "{\"anchor\": {\"mode\": \"fixed\"}, \"loss\": \"listwise\", "
             "\"optimizer\": {\"name\": \"adamw\", \"lr\": 1e-4}, \"seq_logp\": \"mean\", "
             "\"micro_batch_rows\": %s, \"seed\": %" PRIu64 "}",
             micro_json, seed);
    adpo_trainer *trainer = NULL;
    CHECK(adpo_trainer_new(policy, reference, config, &trainer, ERR_OUT), "adpo_trainer_new");

    /* Deterministic batch: ids row-major, then rewards, from one LCG stream. */
    int64_t *ids = malloc(n * t * sizeof *ids);
    uint8_t *loss_mask = malloc(n * t);
    int64_t *group_ids = malloc(n * sizeof *group_ids);
    double *rewards = malloc(n * sizeof *rewards);
    if (!ids || !loss_mask || !group_ids || !rewards) {
        fprintf(stderr, "step_bench: out of memory\n");
        return 1;
    }
    lcg_batch(n, t, (uint64_t)vocab, GROUP, seed, ids, loss_mask, group_ids, rewards);
    adpo_batch *batch = NULL;
    CHECK(adpo_batch_new(n, t, ids, NULL, loss_mask, group_ids, &batch, ERR_OUT), "adpo_batch_new");
    CHECK(adpo_batch_set_rewards(batch, rewards, n, ERR_OUT), "adpo_batch_set_rewards");

    adpo_trainer_metrics m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    double warm_s = now_s();
    double first_loss = NAN;
    for (long w = 0; w < warmup; w++) {
        m.struct_size = sizeof m;
        CHECK(adpo_trainer_step(trainer, batch, &m, ERR_OUT), "adpo_trainer_step (warm-up)");
        if (w == 0) first_loss = m.loss;
    }
    warm_s = now_s() - warm_s;

    double *times = malloc((size_t)steps * sizeof *times);
    if (!times) {
        fprintf(stderr, "step_bench: out of memory\n");
        return 1;
    }
    double t0 = now_s();
    for (long s = 0; s < steps; s++) {
        double ts = now_s();
        m.struct_size = sizeof m;
        CHECK(adpo_trainer_step(trainer, batch, &m, ERR_OUT), "adpo_trainer_step");
        times[s] = now_s() - ts;
    }
    double elapsed = now_s() - t0;
    fprintf(stderr, "step_bench: %ld warm-up step(s) %.4f s, timed steps (s):", warmup, warm_s);
    for (long s = 0; s < steps; s++) fprintf(stderr, " %.4f", times[s]);
    fprintf(stderr, "\n");
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    double median = steps % 2 ? times[steps / 2] : 0.5 * (times[steps / 2 - 1] + times[steps / 2]);

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double maxrss_mb = (double)ru.ru_maxrss / 1024.0;
    double hwm_mb = status_mb("VmHWM:");
    double sec_per_step = elapsed / (double)steps;
    printf("adpo N=%zu T=%zu V=%" PRId64 " micro=%ld warmup=%ld steps=%ld threads=%d sec_per_step=%.6f "
           "tokens_per_s=%.1f median_sec_per_step=%.6f peak_rss_mb=%.1f ru_maxrss_mb=%.1f "
           "loss=%.6f first_loss=%.6f\n",
           n, t, vocab, micro, warmup, steps, torch_threads(), sec_per_step,
           (double)(n * t) / sec_per_step, median, hwm_mb >= 0 ? hwm_mb : maxrss_mb, maxrss_mb,
           m.loss, first_loss);
    free(times);

    adpo_batch_free(batch);
    adpo_trainer_free(trainer);
    adpo_model_free(reference);
    adpo_model_free(policy);
    free(ids);
    free(loss_mask);
    free(group_ids);
    free(rewards);
    return 0;
}
