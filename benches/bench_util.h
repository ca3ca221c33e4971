/* What the C benchmark drivers (step_bench.c, lora_step.c) share: the batch (and its
 * generator) that their Python drivers reimplement, a monotonic clock, and /proc/self/status
 * readings. */
#ifndef ADPO_BENCH_UTIL_H
#define ADPO_BENCH_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Knuth's MMIX LCG; step_torch.py and lora_bench.py implement the same one. */
static inline uint64_t lcg_next(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* The benchmark batch, into caller-owned buffers (ids [n * t], loss_mask [n * t], group_ids
 * [n], rewards [n]): ids from the LCG seeded with `seed`, then one reward per row (31 bits ->
 * [0, 1)); groups of `group` rows; the loss on the last t / 2 positions. step_torch.py's
 * lcg_batch and lora_bench.py build the same. */
static inline void lcg_batch(size_t n, size_t t, uint64_t vocab, size_t group, uint64_t seed,
                             int64_t *ids, uint8_t *loss_mask, int64_t *group_ids,
                             double *rewards) {
    uint64_t state = seed;
    for (size_t i = 0; i < n * t; i++) ids[i] = (int64_t)(lcg_next(&state) % vocab);
    for (size_t i = 0; i < n; i++) {
        group_ids[i] = (int64_t)(i / group);
        rewards[i] = (double)lcg_next(&state) / 2147483648.0;
        for (size_t j = 0; j < t; j++) loss_mask[i * t + j] = j >= t - t / 2;
    }
}

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A "VmHWM:" or "VmRSS:" line of /proc/self/status in MB (-1 if missing). VmHWM is the peak RSS
 * of this process's own address space (ru_maxrss carries a parent's peak into a child across
 * fork + exec). */
static inline double status_mb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1.0;
    char line[256];
    double mb = -1.0;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0) {
            mb = strtod(line + n, NULL) / 1024.0;
            break;
        }
    }
    fclose(f);
    return mb;
}

#endif
