/* Data-parallel ADPO over MPI: run with `mpirun -np 2 train_mpi MODEL_DIR [--bench STEPS]`.
 *
 * Check mode (the default, run by make test) asserts, on every rank:
 *  1. MPI backend, even split: each rank holds an equal share of the groups; after 3 listwise AdamW
 *     steps the weights equal those of one process that holds all of them (relative 1e-6 on a
 *     float64 model; 1e-3 on a float32 one, see `tolerance`), and the reduced metrics equal that
 *     process's metrics.
 *  2. Unequal split (3 groups here, 5 and a singleton there): the same, so ranks are weighted by
 *     their group counts.
 *  3. The host-callback path: a C all-reduce over MPI_Allreduce registered with
 *     adpo_trainer_use_allreduce gives the same weights.
 *  4. Replicas that start different end identical (rank 0's weights are broadcast).
 *  5. A bad batch on one rank (a token outside the vocabulary; a NULL batch) returns the same
 *     status and message on every rank, changes no weights, and training goes on afterwards.
 *  6. Checkpoints: rank 0 writes, every rank loads (rank 0 reads and sends); a failing save
 *     fails on every rank.
 * Bench mode prints the step time and the time spent in reduction for this number of ranks.
 */
#include <adpo.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define K 4
#define T 8
#define GROUPS 8

static int rank = 0, world = 1, failures = 0;

static void die_on(adpo_status st, adpo_error **err, const char *what) {
    if (st == ADPO_STATUS_OK) return;
    fprintf(stderr, "[rank %d] %s failed (status %d): %s\n", rank, what, (int)st,
            adpo_error_message(*err));
    adpo_error_free(*err);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "[rank %d] FAILED: %s\n", rank, what);
        failures++;
    }
}

/* The global batch: GROUPS groups of K candidates, token ids from a fixed LCG, prompt of 3
 * tokens then 5 scored tokens; rewards from the same generator. Every rank builds all of it and
 * keeps the groups it holds. */
typedef struct {
    int64_t ids[GROUPS * K * T];
    uint8_t loss_mask[GROUPS * K * T];
    double rewards[GROUPS * K];
} global_batch;

static void make_global(global_batch *g, int64_t vocab) {
    unsigned s = 2024;
    for (int i = 0; i < GROUPS * K * T; i++) {
        s = s * 1103515245u + 12345u;
        g->ids[i] = 1 + (int64_t)((s >> 16) % (unsigned)(vocab - 1));
        g->loss_mask[i] = (i % T) >= 3;
    }
    for (int i = 0; i < GROUPS * K; i++) {
        s = s * 1103515245u + 12345u;
        g->rewards[i] = (double)((s >> 16) % 1000) / 1000.0;
    }
}

/* A batch of the groups [first, first + count) of the global batch, plus `singletons` extra
 * one-candidate groups (which the loss ignores). */
static adpo_batch *slice_batch(const global_batch *g, int first, int count, int singletons) {
    size_t n = (size_t)(count * K + singletons);
    int64_t *ids = calloc(n * T, sizeof *ids);
    uint8_t *mask = calloc(n * T, 1);
    int64_t *group_ids = calloc(n, sizeof *group_ids);
    double *rewards = calloc(n, sizeof *rewards);
    size_t row = 0;
    for (int gi = first; gi < first + count; gi++)
        for (int k = 0; k < K; k++, row++) {
            size_t src = (size_t)(gi * K + k);
            memcpy(ids + row * T, g->ids + src * T, T * sizeof *ids);
            memcpy(mask + row * T, g->loss_mask + src * T, T);
            group_ids[row] = gi;
            rewards[row] = g->rewards[src];
        }
    for (int s = 0; s < singletons; s++, row++) {
        memcpy(ids + row * T, g->ids + (size_t)s * T, T * sizeof *ids);
        memcpy(mask + row * T, g->loss_mask, T);
        group_ids[row] = 1000 + s;
        rewards[row] = 0.5;
    }
    adpo_batch *b = NULL;
    adpo_error *err = NULL;
    die_on(adpo_batch_new(n, T, ids, NULL, mask, group_ids, &b, &err), &err, "adpo_batch_new");
    die_on(adpo_batch_set_rewards(b, rewards, n, &err), &err, "adpo_batch_set_rewards");
    free(ids), free(mask), free(group_ids), free(rewards);
    return b;
}

/* Rank 0 holds the first `first` groups, the last rank the others plus `singletons` one-row
 * groups, ranks between only a singleton; one rank alone holds everything. */
static adpo_batch *uneven_share(const global_batch *g, int first, int singletons) {
    if (world == 1) return slice_batch(g, 0, GROUPS, singletons);
    if (rank == 0) return slice_batch(g, 0, first, 0);
    if (rank == world - 1) return slice_batch(g, first, GROUPS - first, singletons);
    return slice_batch(g, 0, 0, 1);
}

static double *params_of(adpo_model *m, size_t *n) {
    adpo_error *err = NULL;
    die_on(adpo_model_num_params(m, n, &err), &err, "adpo_model_num_params");
    double *p = malloc(*n * sizeof *p);
    die_on(adpo_model_get_params(m, p, *n, &err), &err, "adpo_model_get_params");
    return p;
}

/* ||a - b|| / ||b|| */
static double relative_diff(const double *a, const double *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* True when every rank holds exactly the same values. */
static int same_on_all_ranks(const double *p, size_t n) {
    double *root = malloc(n * sizeof *root);
    memcpy(root, p, n * sizeof *root);
    MPI_Bcast(root, (int)n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    int mine = memcmp(root, p, n * sizeof *root) == 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    free(root);
    return all;
}

static const char *CONFIG =
    "{\"loss\": \"listwise\", \"tau\": 0.8, \"beta_reward\": 0.5, \"seed\": 3,"
    " \"epochs_per_batch\": 2, \"optimizer\": {\"name\": \"adamw\", \"lr\": 0.01}, \"grad_clip\": 1.0%s}";

static adpo_trainer *new_trainer(const char *model_path, const char *distributed,
                                 adpo_model **policy_out) {
    adpo_error *err = NULL;
    adpo_model *policy = NULL;
    die_on(adpo_model_load(model_path, "cpu", &policy, &err), &err, "adpo_model_load");
    char config[512];
    snprintf(config, sizeof config, CONFIG, distributed);
    adpo_trainer *t = NULL;
    die_on(adpo_trainer_new(policy, NULL, config, &t, &err), &err, "adpo_trainer_new");
    *policy_out = policy;
    return t;
}

/* How close "equal" is. A float64 model (make test-mpi, tiny/llama_f64) shows the
 * reduction is exact: measured 1e-13. A float32 model sums its gradients in another order on
 * each rank than one process does, and AdamW divides by sqrt(v), so rounding in a near-zero
 * gradient moves its weight by up to a step: measured ~1e-4 relative after 3 steps, against an
 * update of 0.17 (printed), so the float32 bound is 1e-3: a wrongly weighted rank moves the
 * weights by a share of the whole update. */
static struct {
    const char *dtype;
    double weights, metrics;
} tolerance = {"float64", 1e-6, 1e-9};

/* A model whose trained weights all survive a round trip through float is a float32 model. */
static void set_tolerance(const double *trained, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((double)(float)trained[i] != trained[i]) return;
    tolerance.dtype = "float32", tolerance.weights = 1e-3, tolerance.metrics = 1e-5;
}

/* Runs `steps` steps of a one-process trainer on all groups: the reference result. */
static double *single_process_params(const char *model_path, const global_batch *g, int steps,
                                     size_t *n, adpo_trainer_metrics *last) {
    adpo_model *policy = NULL;
    adpo_trainer *t = new_trainer(model_path, "", &policy);
    adpo_batch *b = slice_batch(g, 0, GROUPS, 0);
    adpo_error *err = NULL;
    for (int s = 0; s < steps; s++) {
        last->struct_size = sizeof *last;
        die_on(adpo_trainer_step(t, b, last, &err), &err, "single-process step");
    }
    double *p = params_of(policy, n);
    adpo_batch_free(b), adpo_trainer_free(t), adpo_model_free(policy);
    return p;
}

/* Steps a distributed trainer `steps` times on this rank's part and compares with `expected`. */
static void check_against(const char *label, adpo_trainer *t, adpo_model *policy, adpo_batch *mine,
                          int steps, const double *expected, const adpo_trainer_metrics *expected_m) {
    adpo_error *err = NULL;
    adpo_trainer_metrics m = {.struct_size = sizeof m};
    for (int s = 0; s < steps; s++)
        die_on(adpo_trainer_step(t, mine, &m, &err), &err, label);
    size_t n = 0;
    double *p = params_of(policy, &n);
    double rel = relative_diff(p, expected, n);
    char what[256];
    snprintf(what, sizeof what, "%s: weights within %g of one process (%s, relative diff %.3g)", label,
             tolerance.weights, tolerance.dtype, rel);
    expect(rel <= tolerance.weights, what);
    snprintf(what, sizeof what, "%s: every rank holds identical weights", label);
    expect(same_on_all_ranks(p, n), what);
    snprintf(what, sizeof what, "%s: reduced loss %.12f equals one process's %.12f", label, m.loss, expected_m->loss);
    expect(fabs(m.loss - expected_m->loss) <= tolerance.metrics * (1 + fabs(expected_m->loss)), what);
    snprintf(what, sizeof what, "%s: reduced win mass %.12f equals %.12f", label, m.win_mass, expected_m->win_mass);
    expect(fabs(m.win_mass - expected_m->win_mass) <= tolerance.metrics, what);
    snprintf(what, sizeof what, "%s: groups %llu over all ranks", label, (unsigned long long)m.groups);
    expect(m.groups == expected_m->groups, what);
    if (rank == 0)
        printf("%s: relative weight diff %.3g, loss %.9f (one process %.9f), reduce %.2f of %.2f ms\n",
               label, rel, m.loss, expected_m->loss, m.reduce_time_ms, m.step_time_ms);
    free(p);
}

/* The host-callback path: the host's own all-reduce, here MPI_Allreduce on a communicator the
 * host owns (userdata), freed by adpo through free_comm. */
static int host_allreduce(void *userdata, void *buffer, size_t count, DLDataType dtype, DLDevice device) {
    if (device.device_type != kDLCPU || dtype.code != kDLFloat) return 1;
    MPI_Datatype type = dtype.bits == 64 ? MPI_DOUBLE : MPI_FLOAT;
    return MPI_Allreduce(MPI_IN_PLACE, buffer, (int)count, type, MPI_SUM, *(MPI_Comm *)userdata);
}

static int comm_frees = 0;
static void free_comm(void *userdata) {
    MPI_Comm_free((MPI_Comm *)userdata);
    free(userdata);
    comm_frees++;
}

static unsigned long hash(const char *s) {
    unsigned long h = 5381;
    while (*s) h = h * 33 + (unsigned char)*s++;
    return h;
}

/* True when every rank got the same status and message. */
static int same_error_everywhere(adpo_status st, const char *message) {
    long mine[2] = {(long)st, (long)(hash(message) & 0x7fffffff)}, lo[2], hi[2];
    MPI_Allreduce(mine, lo, 2, MPI_LONG, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(mine, hi, 2, MPI_LONG, MPI_MAX, MPI_COMM_WORLD);
    return lo[0] == hi[0] && lo[1] == hi[1];
}

static void run_checks(const char *model_path) {
    adpo_error *err = NULL;
    global_batch g;
    adpo_model *probe = NULL;
    die_on(adpo_model_load(model_path, "cpu", &probe, &err), &err, "adpo_model_load");
    int64_t vocab = 0;
    die_on(adpo_model_vocab_size(probe, &vocab, &err), &err, "adpo_model_vocab_size");
    size_t n = 0;
    double *initial = params_of(probe, &n);
    adpo_model_free(probe);
    make_global(&g, vocab);
    const int steps = 3;
    adpo_trainer_metrics ref_m = {.struct_size = sizeof ref_m};
    double *expected = single_process_params(model_path, &g, steps, &n, &ref_m);
    set_tolerance(expected, n);
    if (rank == 0)
        printf("%s model: %d steps move the weights by %.3g (relative); ranks must agree with one process "
               "within %g\n", tolerance.dtype, steps, relative_diff(initial, expected, n), tolerance.weights);
    free(initial);

    /* 1. MPI backend from the config, equal split. */
    {
        adpo_model *policy = NULL;
        adpo_trainer *t = new_trainer(model_path, ", \"distributed\": {\"backend\": \"mpi\", \"bucket_mb\": 0.001}", &policy);
        int r = -1, w = -1;
        die_on(adpo_trainer_world(t, &r, &w, &err), &err, "adpo_trainer_world");
        expect(r == rank && w == world, "adpo_trainer_world reports MPI's rank and size");
        int first = rank * GROUPS / world, end = (rank + 1) * GROUPS / world;
        adpo_batch *mine = slice_batch(&g, first, end - first, 0);
        check_against("even split (mpi)", t, policy, mine, steps, expected, &ref_m);
        adpo_batch_free(mine), adpo_trainer_free(t), adpo_model_free(policy);
    }
    /* 2. Unequal split: rank 0 holds 3 groups, the last rank the rest and a singleton group. */
    {
        adpo_model *policy = NULL;
        adpo_trainer *t = new_trainer(model_path, ", \"distributed\": {\"backend\": \"mpi\"}", &policy);
        adpo_batch *mine = uneven_share(&g, 3, 1);
        check_against("unequal split (mpi)", t, policy, mine, steps, expected, &ref_m);
        adpo_batch_free(mine), adpo_trainer_free(t), adpo_model_free(policy);
    }
    /* 3. The host's callback, with a backend "host" config that insists on it. */
    {
        adpo_model *policy = NULL;
        adpo_trainer *t = new_trainer(model_path, ", \"distributed\": {\"backend\": \"host\"}", &policy);
        adpo_batch *mine = uneven_share(&g, 5, 0);
        adpo_status st = adpo_trainer_step(t, mine, NULL, &err);
        expect(st == ADPO_STATUS_INVALID_ARGUMENT && strstr(adpo_error_message(err), "adpo_trainer_use_allreduce"),
               "backend host without a callback refuses to step");
        adpo_error_free(err), err = NULL;
        st = adpo_trainer_use_allreduce(t, 0, 0, host_allreduce, NULL, NULL, &err);
        expect(st == ADPO_STATUS_INVALID_ARGUMENT, "world_size 0 is refused");
        adpo_error_free(err), err = NULL;
        MPI_Comm *comm = malloc(sizeof *comm);
        MPI_Comm_dup(MPI_COMM_WORLD, comm);
        die_on(adpo_trainer_use_allreduce(t, rank, world, host_allreduce, comm, free_comm, &err), &err,
               "adpo_trainer_use_allreduce");
        check_against("host callback", t, policy, mine, steps, expected, &ref_m);
        adpo_batch_free(mine), adpo_trainer_free(t), adpo_model_free(policy);
        expect(comm_frees == 1, "the callback's userdata is freed once, with the trainer");
    }
    /* 4. Replicas that start different end identical. */
    {
        adpo_model *policy = NULL;
        adpo_trainer *alone = new_trainer(model_path, "", &policy);
        adpo_batch *b = slice_batch(&g, rank % GROUPS, 1, 0);
        if (rank != 0) die_on(adpo_trainer_step(alone, b, NULL, &err), &err, "local step");
        adpo_trainer_free(alone);
        size_t m = 0;
        double *before = params_of(policy, &m);
        expect(world == 1 || !same_on_all_ranks(before, m), "replicas start different");
        adpo_trainer *t = NULL;
        die_on(adpo_trainer_new(policy, NULL, "{\"distributed\": {\"backend\": \"mpi\"}}", &t, &err), &err,
               "adpo_trainer_new");
        double *after = params_of(policy, &m);
        expect(same_on_all_ranks(after, m), "joining copies rank 0's weights to every rank");

        /* 5. A bad batch on the last rank: a token outside the vocabulary, found in the forward. */
        int bad_rank = world - 1;
        int64_t ids[2 * T], group_ids[2] = {0, 0};
        uint8_t mask[2 * T];
        double rewards[2] = {0.0, 1.0};
        for (int i = 0; i < 2 * T; i++) ids[i] = 1, mask[i] = (i % T) >= 3;
        if (rank == bad_rank) ids[5] = vocab + 7;
        adpo_batch *maybe_bad = NULL;
        die_on(adpo_batch_new(2, T, ids, NULL, mask, group_ids, &maybe_bad, &err), &err, "adpo_batch_new");
        die_on(adpo_batch_set_rewards(maybe_bad, rewards, 2, &err), &err, "adpo_batch_set_rewards");
        adpo_status st = adpo_trainer_step(t, maybe_bad, NULL, &err);
        expect(st == ADPO_STATUS_INVALID_ARGUMENT, "a bad batch on one rank fails the step on every rank");
        const char *msg = st ? adpo_error_message(err) : "";
        expect(same_error_everywhere(st, msg), "every rank reports the same status and message");
        char want[64];
        snprintf(want, sizeof want, "rank %d of %d: token id", bad_rank, world);
        expect(strstr(msg, want) != NULL, "the message names the failed rank and the cause");
        if (rank == 0) printf("bad batch on rank %d -> every rank: %s\n", bad_rank, msg);
        adpo_error_free(err), err = NULL;
        double *unchanged = params_of(policy, &m);
        expect(memcmp(unchanged, after, m * sizeof *after) == 0, "a failed step changes no weights");

        st = adpo_trainer_step(t, rank == 0 ? NULL : b, NULL, &err);
        expect(st == ADPO_STATUS_NULL_ARGUMENT, "a NULL batch on rank 0 fails the step on every rank");
        expect(same_error_everywhere(st, adpo_error_message(err)), "with the same message");
        adpo_error_free(err), err = NULL;

        die_on(adpo_trainer_step(t, b, NULL, &err), &err, "a good step after the failures");
        double *trained = params_of(policy, &m);
        expect(same_on_all_ranks(trained, m), "training goes on, replicas identical");

        /* 6. Checkpoints: rank 0 writes; every rank loads. */
        char path[256];
        long stamp = 0;
        if (rank == 0) stamp = (long)(MPI_Wtime() * 1e6) % 1000000007L;
        MPI_Bcast(&stamp, 1, MPI_LONG, 0, MPI_COMM_WORLD);
        snprintf(path, sizeof path, "/tmp/adpo-train-mpi-%ld.safetensors", stamp);
        die_on(adpo_trainer_save(t, path, &err), &err, "adpo_trainer_save");
        die_on(adpo_trainer_step(t, b, NULL, &err), &err, "a step after saving");
        die_on(adpo_trainer_load(t, path, &err), &err, "adpo_trainer_load");
        double *restored = params_of(policy, &m);
        expect(memcmp(restored, trained, m * sizeof *trained) == 0, "loading restores every rank");
        st = adpo_trainer_save(t, "/nonexistent-dir/x.safetensors", &err);
        expect(st == ADPO_STATUS_IO, "a save that fails on rank 0 fails on every rank");
        expect(same_error_everywhere(st, st ? adpo_error_message(err) : ""), "with the same message");
        adpo_error_free(err), err = NULL;
        if (rank == 0) remove(path);
        free(before), free(after), free(unchanged), free(trained), free(restored);
        adpo_batch_free(b), adpo_batch_free(maybe_bad), adpo_trainer_free(t), adpo_model_free(policy);
    }
    free(expected);
    int all_failures = 0;
    MPI_Allreduce(&failures, &all_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("train_mpi: %d ranks, %s\n", world, all_failures ? "FAILED" : "all checks passed");
    failures = all_failures;
}

/* Step time and reduction time for the same global batch split over this many ranks. */
static void run_bench(const char *model_path, int steps, int groups, int k, int t_len) {
    adpo_error *err = NULL;
    adpo_model *policy = NULL;
    adpo_trainer *t = new_trainer(model_path, ", \"distributed\": {\"backend\": \"mpi\"}", &policy);
    int64_t vocab = 0;
    die_on(adpo_model_vocab_size(policy, &vocab, &err), &err, "adpo_model_vocab_size");
    int mine = groups / world + (rank < groups % world);
    size_t n = (size_t)(mine * k);
    int64_t *ids = malloc(n * (size_t)t_len * sizeof *ids), *gid = malloc(n * sizeof *gid);
    uint8_t *mask = malloc(n * (size_t)t_len);
    double *rewards = malloc(n * sizeof *rewards);
    unsigned s = 7 + (unsigned)rank;
    for (size_t i = 0; i < n * (size_t)t_len; i++) {
        s = s * 1103515245u + 12345u;
        ids[i] = (int64_t)((s >> 16) % (unsigned)vocab);
        mask[i] = (i % (size_t)t_len) >= (size_t)t_len / 2;
    }
    for (size_t i = 0; i < n; i++) gid[i] = (int64_t)(i / (size_t)k), rewards[i] = (double)(i % (size_t)k);
    adpo_batch *b = NULL;
    die_on(adpo_batch_new(n, (size_t)t_len, ids, NULL, mask, gid, &b, &err), &err, "adpo_batch_new");
    die_on(adpo_batch_set_rewards(b, rewards, n, &err), &err, "adpo_batch_set_rewards");
    size_t params = 0;
    die_on(adpo_model_num_params(policy, &params, &err), &err, "adpo_model_num_params");
    double step_ms = 0, reduce_ms = 0;
    for (int i = 0; i <= steps; i++) {
        adpo_trainer_metrics m = {.struct_size = sizeof m};
        MPI_Barrier(MPI_COMM_WORLD);
        die_on(adpo_trainer_step(t, b, &m, &err), &err, "adpo_trainer_step");
        if (i == 0) continue; /* warm-up */
        step_ms += m.step_time_ms, reduce_ms += m.reduce_time_ms;
    }
    double worst[2] = {step_ms / steps, reduce_ms / steps}, out[2];
    MPI_Reduce(worst, out, 2, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("ranks %d: %d groups x K=%d x T=%d (%d groups per rank), %zu parameters: "
               "step %.1f ms, of which reduction %.2f ms\n",
               world, groups, k, t_len, mine, params, out[0], out[1]);
    free(ids), free(gid), free(mask), free(rewards);
    adpo_batch_free(b), adpo_trainer_free(t), adpo_model_free(policy);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (!adpo_has_mpi()) {
        if (rank == 0) fprintf(stderr, "train_mpi: this libadpo was built without MPI support\n");
        MPI_Finalize();
        return 1;
    }
    const char *model_path = argc > 1 ? argv[1] : "tests/fixtures/generated/tiny/llama_f64";
    if (argc > 3 && strcmp(argv[2], "--bench") == 0) {
        int groups = argc > 4 ? atoi(argv[4]) : 16;
        run_bench(model_path, atoi(argv[3]), groups, 8, 32);
    } else {
        run_checks(model_path);
    }
    MPI_Finalize();
    return failures ? 1 : 0;
}
