/*
 * group_step: times adpo_trainer_step on G groups of K rows that share a P-token prompt and
 * each have an R-token completion (reference forward, policy forward + backward, listwise
 * loss, AdamW), with the trainer key shared_prefix on or off.
 *
 *   group_step MODEL_DIR G K P R STEPS SHARED(0|1) [WARMUP [PRECISION [MICRO_ROWS [EXTRA
 *              [LOAD_EXTRA]]]]]
 *
 * PRECISION: as_loaded (default; the checkpoint's float32) or bf16-mixed (both models loaded
 * in bfloat16, float32 master weights for AdamW). MICRO_ROWS: the trainer key
 * micro_batch_rows (0, the default: the whole batch at once). EXTRA: more trainer keys, the
 * members of a JSON object without its braces (e.g. "\"logprob_chunk_rows\": 256").
 * LOAD_EXTRA: more model load options, the same way (e.g. "\"fused_ops\": false").
 *
 * Batch (benches/group_step.py builds the same): from the LCG of bench_util.h seeded with 0,
 * each group's P prompt ids, then its K completions' R ids each, then one reward per row; ids
 * in [0, V). The loss mask covers the completions. Output, one line on stdout:
 *
 *   adpo shared=.. G=.. K=.. P=.. R=.. steps=.. sec_per_step=.. median_sec_per_step=..
 *        peak_rss_mb=.. loss=..
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "adpo.h"
#include "bench_util.h"

static void check(adpo_status st, adpo_error *err, const char *what) {
    if (st != ADPO_STATUS_OK) {
        fprintf(stderr, "group_step: %s failed (status %d): %s\n", what, (int)st,
                adpo_error_message(err));
        exit(1);
    }
}

/* `call` writes its error into the macro's own `err`. */
#define CHECK(call, what)                \
    do {                                 \
        adpo_error *err = NULL;          \
        adpo_status st = (call);         \
        check(st, err, what);            \
    } while (0)

static long arg(const char *s, const char *name, long min) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!end || *end != '\0' || v < min) {
        fprintf(stderr, "group_step: %s must be an integer >= %ld, got \"%s\"\n", name, min, s);
        exit(2);
    }
    return v;
}

/* The batch of the header comment, into a new adpo_batch. */
static adpo_batch *group_batch(size_t g, size_t k, size_t p, size_t r, uint64_t vocab) {
    size_t n = g * k, t = p + r;
    int64_t *ids = malloc(n * t * sizeof *ids), *groups = malloc(n * sizeof *groups);
    uint8_t *loss = malloc(n * t);
    double *rewards = malloc(n * sizeof *rewards);
    if (!ids || !groups || !loss || !rewards) {
        fprintf(stderr, "group_step: out of memory\n");
        exit(1);
    }
    uint64_t state = 0;
    for (size_t gi = 0; gi < g; gi++) {
        int64_t *first = ids + gi * k * t;
        for (size_t j = 0; j < p; j++) first[j] = (int64_t)(lcg_next(&state) % vocab);
        for (size_t ki = 0; ki < k; ki++) {
            int64_t *row = first + ki * t;
            memcpy(row, first, p * sizeof *row);
            for (size_t j = p; j < t; j++) row[j] = (int64_t)(lcg_next(&state) % vocab);
            for (size_t j = 0; j < t; j++) loss[(gi * k + ki) * t + j] = j >= p;
            groups[gi * k + ki] = (int64_t)gi;
        }
    }
    for (size_t i = 0; i < n; i++) rewards[i] = (double)lcg_next(&state) / 2147483648.0;
    adpo_batch *batch = NULL;
    CHECK(adpo_batch_new(n, t, ids, NULL, loss, groups, &batch, &err), "adpo_batch_new");
    CHECK(adpo_batch_set_rewards(batch, rewards, n, &err), "adpo_batch_set_rewards");
    free(ids);
    free(groups);
    free(loss);
    free(rewards);
    return batch;
}

/* Minor page faults of this process so far (each: a fresh page the kernel zeroed). */
static long minor_faults(void) {
    struct rusage u;
    return getrusage(RUSAGE_SELF, &u) == 0 ? u.ru_minflt : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 8 || argc > 13) {
        fprintf(stderr, "usage: %s MODEL_DIR G K P R STEPS SHARED(0|1) [WARMUP [PRECISION [MICRO_ROWS "
                "[EXTRA [LOAD_EXTRA]]]]]\n", argv[0]);
        return 2;
    }
    size_t g = (size_t)arg(argv[2], "G", 1), k = (size_t)arg(argv[3], "K", 2);
    size_t p = (size_t)arg(argv[4], "P", 1), r = (size_t)arg(argv[5], "R", 1);
    long steps = arg(argv[6], "STEPS", 1), shared = arg(argv[7], "SHARED", 0);
    long warmup = argc > 8 ? arg(argv[8], "WARMUP", 0) : 1;
    const char *precision = argc > 9 ? argv[9] : "as_loaded";
    long micro_rows = argc > 10 ? arg(argv[10], "MICRO_ROWS", 0) : 0;
    int bf16 = strcmp(precision, "bf16-mixed") == 0;
    if (!bf16 && strcmp(precision, "as_loaded") != 0) {
        fprintf(stderr, "group_step: PRECISION must be as_loaded or bf16-mixed, got \"%s\"\n", precision);
        return 2;
    }
    const char *load_extra = argc > 12 ? argv[12] : "";
    char load[512];
    int load_len = snprintf(load, sizeof load, "{\"device\": \"cpu\"%s%s%s}",
                            bf16 ? ", \"dtype\": \"bfloat16\"" : "", *load_extra ? ", " : "", load_extra);
    if (load_len < 0 || (size_t)load_len >= sizeof load) {
        fprintf(stderr, "group_step: LOAD_EXTRA is too long\n");
        return 2;
    }
    adpo_model *policy = NULL, *reference = NULL;
    CHECK(adpo_model_load_options(argv[1], load, &policy, &err), "adpo_model_load (policy)");
    CHECK(adpo_model_load_options(argv[1], load, &reference, &err), "adpo_model_load (reference)");
    int64_t vocab = 0;
    CHECK(adpo_model_vocab_size(policy, &vocab, &err), "adpo_model_vocab_size");
    char micro[64] = "";
    if (micro_rows > 0) snprintf(micro, sizeof micro, ", \"micro_batch_rows\": %ld", micro_rows);
    const char *extra = argc > 11 ? argv[11] : "";
    char config[1024];
    int len = snprintf(config, sizeof config,
                       "{\"anchor\": {\"mode\": \"fixed\"}, \"loss\": \"listwise\", \"optimizer\": "
                       "{\"name\": \"adamw\", \"lr\": 1e-4}, \"shared_prefix\": %s, \"precision\": "
                       "\"%s\"%s%s%s}",
                       shared ? "true" : "false", precision, micro, *extra ? ", " : "", extra);
    if (len < 0 || (size_t)len >= sizeof config) {
        fprintf(stderr, "group_step: EXTRA is too long\n");
        return 2;
    }
    adpo_trainer *trainer = NULL;
    CHECK(adpo_trainer_new(policy, reference, config, &trainer, &err), "adpo_trainer_new");
    adpo_batch *batch = group_batch(g, k, p, r, (uint64_t)vocab);
    adpo_trainer_metrics m;
    double *times = calloc((size_t)(warmup + steps), sizeof *times);
    for (long s = 0; s < warmup + steps; s++) {
        memset(&m, 0, sizeof m);
        m.struct_size = sizeof m;
        double t0 = now_s();
        long faults = minor_faults();
        CHECK(adpo_trainer_step(trainer, batch, &m, &err), "adpo_trainer_step");
        times[s] = now_s() - t0;
        fprintf(stderr, "group_step: shared=%ld step %ld: %.3f s, %ld minor page faults\n", shared,
                s + 1, times[s], minor_faults() - faults);
    }
    double sum = 0;
    for (long s = warmup; s < warmup + steps; s++) sum += times[s];
    qsort(times + warmup, (size_t)steps, sizeof *times, cmp_double);
    double *timed = times + warmup;
    double median = steps % 2 ? timed[steps / 2] : 0.5 * (timed[steps / 2 - 1] + timed[steps / 2]);
    printf("adpo precision=%s shared=%ld micro_rows=%ld G=%zu K=%zu P=%zu R=%zu steps=%ld "
           "sec_per_step=%.4f median_sec_per_step=%.4f peak_rss_mb=%.1f loss=%.9f\n",
           precision, shared, micro_rows, g, k, p, r, steps, sum / (double)steps, median,
           status_mb("VmHWM:"), m.loss);
    free(times);
    adpo_batch_free(batch);
    adpo_trainer_free(trainer);
    adpo_model_free(reference);
    adpo_model_free(policy);
    return 0;
}
