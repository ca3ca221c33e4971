/*
 * lora_step: one side of benches/lora_bench.py, in its own process so that its peak RSS is
 * adpo's alone. Times adpo_trainer_step with a fixed anchor on a checkpoint directory:
 *
 *   lora_step DIR full|lora N T STEPS MICRO_BATCH_ROWS(0 = one pass) [WARMUP]
 *
 * full: the checkpoint loaded twice, policy (every parameter trains) + a reference handle.
 * lora: loaded once with {"lora": {"r": 16, "alpha": 32, "target_modules": the seven
 * projections}}, no reference: the base (adapters off) is the fixed anchor.
 * Both: listwise loss, AdamW (lr 1e-4), seq_logp mean. Batch: N rows in groups of 8, T tokens,
 * loss mask on the last T/2, ids and rewards from a 64-bit LCG (seed 0). WARMUP (default 1)
 * untimed steps, then STEPS timed ones. One line on stdout:
 *
 *   lora_step mode=.. N=.. T=.. micro=.. trainable=.. sec_per_step=.. peak_rss_mb=..
 *             after_load_rss_mb=.. loss=..
 *
 * peak_rss_mb is VmHWM of /proc/self/status (the whole run: loading, warm-up and timed steps);
 * after_load_rss_mb is VmRSS once the models and the trainer exist, before any step.
 *
 * Build: cc -O2 -std=c11 -I include benches/lora_step.c -o lora_step \
 *          -L target/release -ladpo -Wl,-rpath,$PWD/target/release
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adpo.h"
#include "bench_util.h"

#define GROUP 8

/* `err` by address: it is read after the call has filled it. */
static void check(adpo_status st, const char *what, adpo_error **err) {
    if (st != ADPO_STATUS_OK) {
        fprintf(stderr, "lora_step: %s failed (status %d): %s\n", what, (int)st,
                adpo_error_message(*err));
        adpo_error_free(*err);
        exit(1);
    }
}


static long parse_long(const char *s, const char *name, long min) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!end || *end != '\0' || v < min) {
        fprintf(stderr, "lora_step: %s must be an integer >= %ld, got \"%s\"\n", name, min, s);
        exit(2);
    }
    return v;
}

static const char *LORA =
    "{\"lora\": {\"r\": 16, \"alpha\": 32, \"target_modules\": [\"q_proj\", \"k_proj\", "
    "\"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]}}";

int main(int argc, char **argv) {
    if (argc < 7 || argc > 8 || (strcmp(argv[2], "full") && strcmp(argv[2], "lora"))) {
        fprintf(stderr, "usage: %s DIR full|lora N T STEPS MICRO_BATCH_ROWS [WARMUP]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    int lora = strcmp(argv[2], "lora") == 0;
    size_t n = (size_t)parse_long(argv[3], "N", 2);
    size_t t = (size_t)parse_long(argv[4], "T", 2);
    long steps = parse_long(argv[5], "STEPS", 1);
    long micro = parse_long(argv[6], "MICRO_BATCH_ROWS", 0);
    long warmup = argc == 8 ? parse_long(argv[7], "WARMUP", 0) : 1;
    adpo_error *err = NULL;

    adpo_model *policy = NULL, *reference = NULL;
    check(adpo_model_load_options(dir, lora ? LORA : NULL, &policy, &err), "load (policy)", &err);
    if (!lora) check(adpo_model_load(dir, "cpu", &reference, &err), "load (reference)", &err);
    int64_t vocab = 0;
    size_t trainable = 0;
    check(adpo_model_vocab_size(policy, &vocab, &err), "vocab_size", &err);
    check(adpo_model_num_params(policy, &trainable, &err), "num_params", &err);

    char micro_json[32], config[512];
    snprintf(micro_json, sizeof micro_json, micro > 0 ? "%ld" : "null", micro);
    snprintf(config, sizeof config,
             "{\"anchor\": {\"mode\": \"fixed\"}, \"loss\": \"listwise\", "
             "\"optimizer\": {\"name\": \"adamw\", \"lr\": 1e-4}, \"seq_logp\": \"mean\", "
             "\"micro_batch_rows\": %s}",
             micro_json);
    adpo_trainer *trainer = NULL;
    check(adpo_trainer_new(policy, reference, config, &trainer, &err), "trainer_new", &err);

    int64_t *ids = malloc(n * t * sizeof *ids);
    uint8_t *loss_mask = malloc(n * t);
    int64_t *group_ids = malloc(n * sizeof *group_ids);
    double *rewards = malloc(n * sizeof *rewards);
    if (!ids || !loss_mask || !group_ids || !rewards) return 1;
    lcg_batch(n, t, (uint64_t)vocab, GROUP, 0, ids, loss_mask, group_ids, rewards);
    adpo_batch *batch = NULL;
    check(adpo_batch_new(n, t, ids, NULL, loss_mask, group_ids, &batch, &err), "batch_new", &err);
    check(adpo_batch_set_rewards(batch, rewards, n, &err), "set_rewards", &err);
    double after_load = status_mb("VmRSS:");

    adpo_trainer_metrics m;
    double total = 0.0;
    for (long s = 0; s < warmup + steps; s++) {
        memset(&m, 0, sizeof m);
        m.struct_size = sizeof m;
        double t0 = now_s();
        check(adpo_trainer_step(trainer, batch, &m, &err), "trainer_step", &err);
        if (s >= warmup) total += now_s() - t0;
    }
    printf("lora_step mode=%s N=%zu T=%zu micro=%ld trainable=%zu sec_per_step=%.4f "
           "peak_rss_mb=%.1f after_load_rss_mb=%.1f loss=%.6f\n",
           argv[2], n, t, micro, trainable, total / (double)steps, status_mb("VmHWM:"),
           after_load, m.loss);

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
