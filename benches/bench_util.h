/* What the C benchmark drivers (step_bench.c, lora_step.c) share: the batch generator that
 * their Python drivers reimplement, a monotonic clock, and /proc/self/status readings. */
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
