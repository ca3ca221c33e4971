/* C ABI tests of the objective: the numeric vectors of docs/MATH.md §10, metrics,
 * group handling, every error path, and the panic boundary.
 *
 * Where an expected value is quoted from section 10 (6 significant digits) it is compared with a
 * relative tolerance of 1e-5 (SPEC). Values with 10 digits were computed with numpy in float64
 * from the formulas of docs/MATH.md §0-8 (the script is described next to each block) and are
 * compared with 1e-8 (NUMPY). Values derived in this file from the formulas use 1e-10 (EXACT). */
#include "check.h"

#include <adpo.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SPEC 1e-5
#define NUMPY 1e-8
#define EXACT 1e-10
#define SENTINEL (-12345.678)

/* Shared inputs of docs/MATH.md §10: s = (logp - anchor)/0.8 = [0.625, -0.625, 0.75, -0.625]. */
static const double LOGP[4] = {-12.0, -15.5, -9.8, -20.1};
static const double ANCHOR[4] = {-12.5, -15.0, -10.4, -19.6};
static const double R1[4] = {1.0, 0.0, 0.5, -0.1};
static const int64_t G1[4] = {7, 7, 7, 7};
static const double S1[4] = {0.625, -0.625, 0.75, -0.625};

static adpo_objective *make(const char *json) {
    adpo_objective *obj = NULL;
    CHECK_STATUS(adpo_objective_new(json, &obj, &err), ADPO_STATUS_OK, "");
    if (!obj) {
        fprintf(stderr, "cannot create objective from %s\n", json ? json : "NULL");
        exit(check_summary("test_objective"));
    }
    return obj;
}

static double lse(const double *s, int n) {
    double m = s[0], sum = 0.0;
    for (int i = 1; i < n; i++) m = s[i] > m ? s[i] : m;
    for (int i = 0; i < n; i++) sum += exp(s[i] - m);
    return m + log(sum);
}

/* Listwise CE of docs/MATH.md §3.1 on one group: loss and dL/dlogp = (softmax(s) - q)/tau. */
static double listwise(const double *s, const double *q, int n, double tau, double *grad) {
    double z = lse(s, n), qs = 0.0;
    for (int i = 0; i < n; i++) {
        qs += q[i] * s[i];
        if (grad) grad[i] = (exp(s[i] - z) - q[i]) / tau;
    }
    return z - qs;
}

/* Evaluates one case on a fresh objective and compares loss and gradient (rtol). */
static void expect_eval(const char *name, const char *json, size_t n, const double *logp, const double *anchor,
                        const double *rewards, const double *targets, const int64_t *ids, double want_loss,
                        const double *want_grad, double rtol) {
    int failed_before = check_failed_;
    adpo_objective *obj = make(json);
    double loss = SENTINEL, grad[16], scores[16];
    CHECK_STATUS(adpo_objective_eval(obj, n, logp, anchor, rewards, targets, ids, &loss, grad, scores, &err),
                 ADPO_STATUS_OK, "");
    CHECK_CLOSE(loss, want_loss, rtol);
    for (size_t i = 0; want_grad && i < n; i++) CHECK_CLOSE(grad[i], want_grad[i], rtol);
    adpo_objective_free(obj);
    if (check_failed_ != failed_before) fprintf(stderr, "     ^ in case \"%s\" (config %s)\n", name, json);
}

static void test_version_and_error_basics(void) {
    CHECK(adpo_abi_version() == ADPO_ABI_VERSION);
    CHECK(strncmp(adpo_version(), "adpo ", 5) == 0);
    CHECK(adpo_cuda_device_count() >= 0);
    /* The thread count: set, read back, refused out of range (unchanged), restored. */
    const int32_t threads = adpo_num_threads();
    CHECK(threads >= 1);
    CHECK_STATUS(adpo_set_num_threads(1, &err), ADPO_STATUS_OK, "");
    CHECK(adpo_num_threads() == 1);
    CHECK_STATUS(adpo_set_num_threads(0, &err), ADPO_STATUS_INVALID_ARGUMENT, "thread count");
    CHECK_STATUS(adpo_set_num_threads(5000, &err), ADPO_STATUS_INVALID_ARGUMENT, "4096");
    CHECK(adpo_num_threads() == 1);
    CHECK_STATUS(adpo_set_num_threads(threads, NULL), ADPO_STATUS_OK, "");
    CHECK(adpo_num_threads() == threads);
    CHECK(strcmp(adpo_error_message(NULL), "") == 0);
    CHECK(adpo_error_status(NULL) == ADPO_STATUS_NULL_ARGUMENT);
    adpo_error_free(NULL);
    adpo_objective_free(NULL);
    adpo_string_free(NULL);
    CHECK(1); /* the NULL frees above returned */
}

static void test_config(void) {
    adpo_objective *obj = (adpo_objective *)&obj; /* sentinel: must stay untouched on error */
    adpo_objective *const before = obj;
    CHECK_STATUS(adpo_objective_new("{\"tua\": 1.0}", &obj, &err), ADPO_STATUS_INVALID_CONFIG, "tua");
    CHECK(obj == before);
    CHECK_STATUS(adpo_objective_new("{\"tau\": 0}", &obj, &err), ADPO_STATUS_INVALID_CONFIG, "tau");
    CHECK_STATUS(adpo_objective_new("{\"tau\": -0.5}", &obj, &err), ADPO_STATUS_INVALID_CONFIG, "tau");
    CHECK_STATUS(adpo_objective_new("{\"beta_reward\": 0}", &obj, &err), ADPO_STATUS_INVALID_CONFIG, "beta_reward");
    CHECK_STATUS(adpo_objective_new("{\"beta_reward\": -1}", &obj, &err), ADPO_STATUS_INVALID_CONFIG,
                 "beta_reward");
    CHECK_STATUS(adpo_objective_new("{\"loss\": \"listwize\"}", &obj, &err), ADPO_STATUS_INVALID_CONFIG,
                 "listwize");
    CHECK_STATUS(adpo_objective_new("{\"reward_transform\": \"rank\"}", &obj, &err), ADPO_STATUS_INVALID_CONFIG,
                 "rank");
    CHECK_STATUS(adpo_objective_new("{\"tau\": 0.8", &obj, &err), ADPO_STATUS_INVALID_CONFIG, "");
    CHECK_STATUS(adpo_objective_new("{\"adaptive_tau\": {\"rule\": \"nope\"}}", &obj, &err),
                 ADPO_STATUS_INVALID_CONFIG, "nope");
    CHECK_STATUS(adpo_objective_new("{\"adaptive_tau\": {\"rule\": \"target_entropy\", \"beta\": 1.0}}", &obj, &err),
                 ADPO_STATUS_INVALID_CONFIG, "beta");
    CHECK(obj == before);
    CHECK_STATUS(adpo_objective_new("{}", NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out");
    /* err = NULL on a failing call must not crash. */
    CHECK(adpo_objective_new("{\"tau\": 0}", &obj, NULL) == ADPO_STATUS_INVALID_CONFIG);
    CHECK(obj == before);

    /* NULL, "" and "{}" are the defaults; so is a config that spells out every key. */
    static const char *full =
        "{\"loss\": \"listwise\", \"tau\": 0.8, \"beta_reward\": 0.5, \"reward_transform\": \"zscore\","
        " \"target\": \"softmax\", \"kde_bandwidth\": null, \"kde_temperature\": 1.0, \"kde_clip\": 1e-4,"
        " \"top1_smoothing\": 0.0, \"adaptive_tau\": null, \"clip_log_ratio\": null, \"clip_score\": null,"
        " \"beta_anchor_kl\": 0.0, \"pl_top_k\": null, \"pl_label_smoothing\": 0.0, \"pl_poly_eps\": 0.0,"
        " \"pl_ties\": \"random\", \"clip_eps\": 0.2, \"clip_eps_high\": null, \"beta_kl\": 0.0,"
        " \"aggregation\": \"dapo\", \"ratio_level\": \"token\", \"seed\": 0}";
    const char *configs[4] = {NULL, "", "{}", full};
    for (int c = 0; c < 4; c++) {
        /* Section 0: default = zscore transform, V1 row "(A - mean A)/0.5": loss 1.0152. */
        expect_eval("defaults", configs[c], 4, LOGP, ANCHOR, R1, NULL, G1, 1.0152, NULL, SPEC);
    }
}

/* V1 with the three reward transforms, and its metrics. */
static void test_v1(void) {
    /* raw: q = softmax(r/0.5) (V1 first table); center: the same q (softmax ignores shifts). */
    const double g_raw[4] = {-0.312555, 0.0275269, 0.238502, 0.0465261};
    expect_eval("V1 raw", "{\"reward_transform\": \"raw\"}", 4, LOGP, ANCHOR, R1, NULL, G1, 1.15766, g_raw, SPEC);
    expect_eval("V1 center", "{\"reward_transform\": \"center\"}", 4, LOGP, ANCHOR, R1, NULL, G1, 1.15766, g_raw,
                SPEC);
    /* zscore (default): q = [0.85375, 0.0164892, 0.118649, 0.0111119], loss 1.0152 (spec), and
     * dL/dlogp = (softmax(s) - q)/0.8 from numpy with q = softmax(((r-mean)/(std_u+1e-4))/0.5). */
    const double g_z[4] = {-0.6052775145, 0.1117277512, 0.3751003222, 0.1184494411};
    expect_eval("V1 zscore", "{\"reward_transform\": \"zscore\"}", 4, LOGP, ANCHOR, R1, NULL, G1, 1.0152, NULL, SPEC);
    expect_eval("V1 zscore grad", "{}", 4, LOGP, ANCHOR, R1, NULL, G1, 1.015200127, g_z, NUMPY);
    /* The zscore q recovered from the gradient: q = softmax(s) - 0.8 grad. */
    {
        const double q_spec[4] = {0.85375, 0.0164892, 0.118649, 0.0111119};
        adpo_objective *obj = make(NULL);
        double loss, grad[4];
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss, grad, NULL, &err), ADPO_STATUS_OK,
                     "");
        double z = lse(S1, 4);
        for (int i = 0; i < 4; i++) CHECK_CLOSE(exp(S1[i] - z) - 0.8 * grad[i], q_spec[i], SPEC);
        adpo_objective_free(obj);
    }

    /* Scores and metrics (raw transform). */
    adpo_objective *obj = make("{\"reward_transform\": \"raw\"}");
    adpo_objective_metrics m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_INVALID_ARGUMENT, "");
    char *json = (char *)&m;
    CHECK_STATUS(adpo_objective_metrics_json(obj, &json, &err), ADPO_STATUS_INVALID_ARGUMENT, "");
    CHECK(json == (char *)&m);

    double loss = SENTINEL, grad[4], scores[4];
    CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss, grad, scores, &err), ADPO_STATUS_OK,
                 "");
    for (int i = 0; i < 4; i++) CHECK_NEAR(scores[i], S1[i], 1e-12);
    /* Only scores requested, no gradient. */
    double loss2 = SENTINEL, scores2[4];
    CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss2, NULL, scores2, &err),
                 ADPO_STATUS_OK, "");
    CHECK_NEAR(loss2, loss, 1e-15);
    for (int i = 0; i < 4; i++) CHECK_NEAR(scores2[i], S1[i], 1e-12);

    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
    CHECK(m.struct_size == sizeof m);
    CHECK_CLOSE(m.loss, 1.15766, SPEC);
    CHECK_NEAR(m.loss, loss, 1e-12);
    /* entropy of p~ = softmax(s), p~ = [0.369528, 0.105871, 0.41873, 0.105871]: numpy 1.207867287. */
    CHECK_CLOSE(m.entropy, 1.207867287, NUMPY);
    CHECK_CLOSE(m.kl_target, 0.132279, SPEC);
    CHECK_CLOSE(m.win_mass, 0.369528, SPEC); /* p~ of the best reward (index 0) */
    CHECK(m.groups == 1);
    CHECK_NEAR(m.tau, 0.8, 1e-12);
    CHECK_NEAR(m.mean_abs_score, 0.65625, 1e-12);
    CHECK_NEAR(m.max_abs_score, 0.75, 1e-12);
    CHECK(isnan(m.anchor_kl)); /* reported only when the anchor penalty is on */
    CHECK(isnan(m.clip_fraction));

    /* An older, smaller caller struct: exactly struct_size bytes are written. */
    unsigned char raw[sizeof(adpo_objective_metrics) + 32];
    memset(raw, 0xAB, sizeof raw);
    uint32_t small = 4 + 4 + 8;
    memcpy(raw, &small, sizeof small);
    CHECK_STATUS(adpo_objective_get_metrics(obj, (adpo_objective_metrics *)raw, &err), ADPO_STATUS_OK, "");
    uint32_t written;
    memcpy(&written, raw, sizeof written);
    CHECK(written == small);
    double loss_small;
    memcpy(&loss_small, raw + 8, sizeof loss_small);
    CHECK_NEAR(loss_small, loss, 1e-12);
    int untouched = 1;
    for (size_t i = small; i < sizeof raw; i++) untouched &= raw[i] == 0xAB;
    CHECK(untouched);
    /* A newer, larger caller struct: sizeof(adpo_objective_metrics) bytes written, rest untouched. */
    memset(raw, 0xAB, sizeof raw);
    uint32_t big = sizeof(adpo_objective_metrics) + 32;
    memcpy(raw, &big, sizeof big);
    CHECK_STATUS(adpo_objective_get_metrics(obj, (adpo_objective_metrics *)raw, &err), ADPO_STATUS_OK, "");
    memcpy(&written, raw, sizeof written);
    CHECK(written == sizeof(adpo_objective_metrics));
    untouched = 1;
    for (size_t i = sizeof(adpo_objective_metrics); i < sizeof raw; i++) untouched &= raw[i] == 0xAB;
    CHECK(untouched);

    json = NULL;
    CHECK_STATUS(adpo_objective_metrics_json(obj, &json, &err), ADPO_STATUS_OK, "");
    CHECK(json != NULL && strstr(json, "\"groups\":1") != NULL);
    CHECK(json != NULL && strstr(json, "\"clip_fraction\":null") != NULL);
    CHECK(json != NULL && strstr(json, "\"kl_target\":0.1322") != NULL);
    adpo_string_free(json);

    /* A failed evaluation leaves the metrics of the last successful one. */
    const double nan_r[4] = {1.0, NAN, 0.5, -0.1};
    CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, nan_r, NULL, G1, &loss2, NULL, NULL, &err),
                 ADPO_STATUS_NON_FINITE, "rewards contains NaN or Inf");
    adpo_objective_metrics m2;
    m2.struct_size = sizeof m2;
    CHECK_STATUS(adpo_objective_get_metrics(obj, &m2, &err), ADPO_STATUS_OK, "");
    CHECK_NEAR(m2.loss, m.loss, 0.0);
    CHECK_STATUS(adpo_objective_get_metrics(NULL, &m2, &err), ADPO_STATUS_NULL_ARGUMENT, "obj");
    CHECK_STATUS(adpo_objective_get_metrics(obj, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out");
    CHECK_STATUS(adpo_objective_metrics_json(obj, NULL, &err), ADPO_STATUS_NULL_ARGUMENT, "out_json");
    adpo_objective_free(obj);
}

/* V2: pairwise soft-DPO (explicit targets) and DPO. */
static void test_v2(void) {
    const int64_t ids[2] = {1, 1};
    const double t07[2] = {0.7, 0.3}, t10[2] = {1.0, 0.0};
    const double g07[2] = {0.0966248, -0.0966248}, g10[2] = {-0.278375, 0.278375};
    expect_eval("V2 q=0.7", "{\"loss\": \"pairwise\"}", 2, LOGP, ANCHOR, NULL, t07, ids, 0.626929, g07, SPEC);
    expect_eval("V2 q=1", "{\"loss\": \"pairwise\"}", 2, LOGP, ANCHOR, NULL, t10, ids, 0.251929, g10, SPEC);
    /* Both equal the K = 2 listwise CE with the same targets. */
    expect_eval("V2 as listwise", "{\"loss\": \"listwise\"}", 2, LOGP, ANCHOR, NULL, t07, ids, 0.626929, g07, SPEC);
    /* DPO: hard label on the better reward (whatever the rewards' scale). */
    const double r10[2] = {1.0, 0.0}, r_small[2] = {0.01, -3.0};
    expect_eval("V2 dpo", "{\"loss\": \"dpo\"}", 2, LOGP, ANCHOR, r10, NULL, ids, 0.251929, g10, SPEC);
    expect_eval("V2 dpo scale-free", "{\"loss\": \"dpo\"}", 2, LOGP, ANCHOR, r_small, NULL, ids, 0.251929, g10, SPEC);
    /* Swapped preference: L = softplus(z) with z = 1.25; dL/dl_i = 1.25 sigma(1.25). */
    const double r01[2] = {0.0, 1.0};
    double sig = 1.0 / (1.0 + exp(-1.25));
    const double g01[2] = {1.25 * sig, -1.25 * sig};
    expect_eval("V2 dpo swapped", "{\"loss\": \"dpo\"}", 2, LOGP, ANCHOR, r01, NULL, ids, log1p(exp(1.25)), g01, EXACT);
    /* Pairwise from rewards: q from the zscore transform, A = +-0.7070..., q = softmax(A/0.5). */
    {
        double a = (1.0 - 0.5) / (sqrt(0.5) + 1e-4);
        double q[2] = {1.0 / (1.0 + exp(-2.0 * a / 0.5)), 0.0};
        q[1] = 1.0 - q[0];
        double g[2];
        double l = listwise(S1, q, 2, 0.8, g);
        expect_eval("pairwise rewards", "{\"loss\": \"pairwise\"}", 2, LOGP, ANCHOR, r10, NULL, ids, l, g, EXACT);
    }
    /* Two pairs, interleaved ids: the mean of the two pair losses. */
    {
        const double lp[4] = {-12.0, -9.8, -15.5, -20.1}, an[4] = {-12.5, -10.4, -15.0, -19.6};
        const double tg[4] = {0.7, 0.2, 0.3, 0.8};
        const int64_t pid[4] = {4, -2, 4, -2};
        double qa[2] = {0.7, 0.3}, qb[2] = {0.2, 0.8}, sa[2] = {S1[0], S1[1]}, sb[2] = {S1[2], S1[3]}, ga[2], gb[2];
        double l = (listwise(sa, qa, 2, 0.8, ga) + listwise(sb, qb, 2, 0.8, gb)) / 2.0;
        const double g[4] = {ga[0] / 2, gb[0] / 2, ga[1] / 2, gb[1] / 2};
        expect_eval("two pairs", "{\"loss\": \"pairwise\"}", 4, lp, an, NULL, tg, pid, l, g, EXACT);
    }
}

/* V3 and V4: Plackett-Luce, per-group loss = SUM of the kept stages (V4 lists means). */
static void test_plackett_luce(void) {
    const double r3[4] = {0.3, -1.2, 2.0, 0.7};
    double g[4];
    /* V3: sum of the 3 stages; dL/dlogp = dL/ds / 0.8. */
    const double v3[4] = {0.782551, 0.51071, -0.58127, -0.711991};
    for (int i = 0; i < 4; i++) g[i] = v3[i] / 0.8;
    expect_eval("V3", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\"}", 4, LOGP, ANCHOR, r3, NULL, G1,
                2.82545, g, SPEC);
    /* No ties in r3: random tie breaking changes nothing. */
    expect_eval("V3 random ties", "{\"loss\": \"plackett_luce\"}", 4, LOGP, ANCHOR, r3, NULL, G1, 2.82545, g, SPEC);
    /* V4 plain = V3 / 3, times 3 stages. */
    const double v4a[4] = {0.26085, 0.170237, -0.193757, -0.23733};
    for (int i = 0; i < 4; i++) g[i] = 3.0 * v4a[i] / 0.8;
    expect_eval("V4 plain", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\"}", 4, LOGP, ANCHOR, r3, NULL, G1,
                3.0 * 0.941817, g, SPEC);
    /* V4 top_k 3 (= all), smoothing 0.1, poly 1.0: 3 stages. */
    const double v4b[4] = {0.298919, 0.196085, -0.23452, -0.260484};
    for (int i = 0; i < 4; i++) g[i] = 3.0 * v4b[i] / 0.8;
    expect_eval("V4 top3", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\", \"pl_top_k\": 3,"
                " \"pl_label_smoothing\": 0.1, \"pl_poly_eps\": 1.0}",
                4, LOGP, ANCHOR, r3, NULL, G1, 3.0 * 1.53613, g, SPEC);
    expect_eval("V4 top null", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\", \"pl_top_k\": null,"
                " \"pl_label_smoothing\": 0.1, \"pl_poly_eps\": 1.0}",
                4, LOGP, ANCHOR, r3, NULL, G1, 3.0 * 1.53613, g, SPEC);
    /* V4 top_k 2: 2 stages. */
    const double v4c[4] = {0.597782, 0.144723, -0.351779, -0.390726};
    for (int i = 0; i < 4; i++) g[i] = 2.0 * v4c[i] / 0.8;
    expect_eval("V4 top2", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\", \"pl_top_k\": 2,"
                " \"pl_label_smoothing\": 0.1, \"pl_poly_eps\": 1.0}",
                4, LOGP, ANCHOR, r3, NULL, G1, 2.0 * 2.01208, g, SPEC);

    /* Ties, rewards [1, 1, 0, 0]. numpy PL sums (V3 formula) of the 4 rankings that respect the
     * rewards, with dL/dlogp; "stable" must give the index order (0, 1, 2, 3). */
    const double tied[4] = {1.0, 1.0, 0.0, 0.0};
    static const double tie_loss[4] = {3.005186672, 3.35456683, 4.380186672, 4.72956683};
    static const double tie_grad[4][4] = {
        {-0.7880905408, -0.9077557879, 1.101335589, 0.5945107399},  /* (0, 1, 2, 3) */
        {-0.2714875936, -1.117660724, 0.8565332918, 0.532615026},   /* (1, 0, 2, 3) */
        {-0.7880905408, -0.9077557879, 2.351335589, -0.6554892601}, /* (0, 1, 3, 2) */
        {-0.2714875936, -1.117660724, 2.106533292, -0.717384974},   /* (1, 0, 3, 2) */
    };
    expect_eval("PL stable ties", "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\"}", 4, LOGP, ANCHOR, tied,
                NULL, G1, tie_loss[0], tie_grad[0], NUMPY);
    /* "random": every evaluation draws a tie-breaking permutation; all 4 rankings appear over 200
     * draws, each with its own exact gradient, and the same seed replays the same sequence. */
    adpo_objective *a = make("{\"loss\": \"plackett_luce\", \"seed\": 42}");
    adpo_objective *b = make("{\"loss\": \"plackett_luce\", \"pl_ties\": \"random\", \"seed\": 42}");
    int seen[4] = {0, 0, 0, 0}, unmatched = 0, replay_ok = 1;
    for (int it = 0; it < 200; it++) {
        double la, lb, ga[4], gb[4];
        CHECK_STATUS(adpo_objective_eval(a, 4, LOGP, ANCHOR, tied, NULL, G1, &la, ga, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_STATUS(adpo_objective_eval(b, 4, LOGP, ANCHOR, tied, NULL, G1, &lb, gb, NULL, &err), ADPO_STATUS_OK, "");
        replay_ok &= la == lb && memcmp(ga, gb, sizeof ga) == 0;
        int which = -1;
        for (int k = 0; k < 4; k++)
            if (fabs(la - tie_loss[k]) < 1e-7) which = k;
        if (which < 0) {
            unmatched++;
            continue;
        }
        seen[which]++;
        for (int i = 0; i < 4; i++) CHECK_CLOSE(ga[i], tie_grad[which][i], NUMPY);
    }
    CHECK(unmatched == 0);
    CHECK(replay_ok);
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[2] > 0 && seen[3] > 0);
    adpo_objective_free(a);
    adpo_objective_free(b);
}

/* V5 top-1-vs-rest, V6 KDE, V7 on-policy, V11 KD, plus the top-1 smoothing and clamps. */
static void test_targets(void) {
    double g[4];
    const double v5[4] = {-0.630472, 0.105871, 0.41873, 0.105871};
    for (int i = 0; i < 4; i++) g[i] = v5[i] / 0.8;
    expect_eval("V5 top1 loss", "{\"loss\": \"top1\"}", 4, LOGP, ANCHOR, R1, NULL, G1, 0.99553, g, SPEC);
    expect_eval("V5 top1 target", "{\"target\": \"top1\"}", 4, LOGP, ANCHOR, R1, NULL, G1, 0.99553, g, SPEC);
    /* top1_smoothing 0.1: q = [0.9, 0.1/3, 0.1/3, 0.1/3]. */
    {
        const double q[4] = {0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3};
        double l = listwise(S1, q, 4, 0.8, g);
        expect_eval("top1 smoothing", "{\"loss\": \"top1\", \"top1_smoothing\": 0.1}", 4, LOGP, ANCHOR, R1, NULL, G1,
                    l, g, EXACT);
        /* Tied best rewards share the mass: q = [0.5, 0.5, 0, 0]. */
        const double r_tie[4] = {2.0, 2.0, 0.0, -1.0}, q2[4] = {0.5, 0.5, 0.0, 0.0};
        l = listwise(S1, q2, 4, 0.8, g);
        expect_eval("top1 ties", "{\"loss\": \"top1\"}", 4, LOGP, ANCHOR, r_tie, NULL, G1, l, g, EXACT);
    }

    /* V6: KDE-CDF-logit target. Loss from the spec; gradient (softmax(s) - q)/0.8 from numpy
     * with the spec's q (vectors.py kde_target). */
    const double r6[4] = {0.3, -1.2, 2.0, 40.0};
    const double g6[4] = {0.3783658664, 0.0724593662, 0.4052846997, -0.8561099323};
    const double g6h[4] = {0.383496217, 0.1102122524, 0.3108037704, -0.8045122398};
    expect_eval("V6 Silverman", "{\"target\": \"kde\"}", 4, LOGP, ANCHOR, r6, NULL, G1, 2.03205, g6, SPEC);
    expect_eval("V6 Silverman explicit", "{\"target\": \"kde\", \"kde_bandwidth\": null, \"kde_temperature\": 1,"
                " \"kde_clip\": 1e-4}", 4, LOGP, ANCHOR, r6, NULL, G1, 2.032046323, g6, NUMPY);
    expect_eval("V6 h=1", "{\"target\": \"kde\", \"kde_bandwidth\": 1.0}", 4, LOGP, ANCHOR, r6, NULL, G1, 1.93325,
                g6h, SPEC);
    /* The V6 q itself: q = softmax(s) - 0.8 grad. */
    {
        const double q6[4] = {0.0668349, 0.0479039, 0.0945018, 0.790759};
        adpo_objective *obj = make("{\"target\": \"kde\"}");
        double loss, grad[4], z = lse(S1, 4);
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, r6, NULL, G1, &loss, grad, NULL, &err), ADPO_STATUS_OK,
                     "");
        for (int i = 0; i < 4; i++) CHECK_CLOSE(exp(S1[i] - z) - 0.8 * grad[i], q6[i], SPEC);
        /* All rewards equal: h = 0, q uniform. */
        const double flat[4] = {3.0, 3.0, 3.0, 3.0}, qu[4] = {0.25, 0.25, 0.25, 0.25};
        double gu[4], lu = listwise(S1, qu, 4, 0.8, gu);
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, flat, NULL, G1, &loss, grad, NULL, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, lu, EXACT);
        for (int i = 0; i < 4; i++) CHECK_CLOSE(grad[i], gu[i], EXACT);
        adpo_objective_free(obj);
    }

    /* V7: on-policy, s = 0 (logp = anchor), q from V1 (raw): loss log 4. */
    const double v7[4] = {-0.461965, 0.207688, 0.0275903, 0.226687};
    expect_eval("V7", "{\"reward_transform\": \"raw\"}", 4, ANCHOR, ANCHOR, R1, NULL, G1, 1.38629, v7, SPEC);
    CHECK_CLOSE(log(4.0), 1.38629, SPEC);

    /* V11: KD with a uniform anchor (zeros), tau = T = 2, explicit targets softmax(teacher/2). */
    {
        const double teacher[3] = {2.0, 1.0, 0.1}, student[3] = {1.5, 0.2, 0.3}, zero[3] = {0, 0, 0};
        const int64_t ids[3] = {0, 0, 0};
        double q[3], z = 0.0;
        for (int i = 0; i < 3; i++) z += exp(teacher[i] / 2.0);
        for (int i = 0; i < 3; i++) q[i] = exp(teacher[i] / 2.0) / z;
        CHECK_CLOSE(q[0], 0.501688, SPEC);
        CHECK_CLOSE(q[1], 0.304289, SPEC);
        CHECK_CLOSE(q[2], 0.194023, SPEC);
        const double g11[3] = {-0.00939799, -0.0260987, 0.0354967};
        expect_eval("V11 KD", "{\"tau\": 2.0}", 3, student, zero, NULL, q, ids, 1.04216, g11, SPEC);
    }

    /* Clamps (docs/MATH.md §2): |l - a| = [0.5, 0.5, 0.6, 0.5]; clip_log_ratio 0.55 clamps row 2 to 0.55
     * (s = 0.6875) and gives it zero gradient. clip_score 0.7 clamps the score 0.75 to 0.7. */
    {
        const double q[4] = {0.25, 0.25, 0.25, 0.25}, uni[4] = {0.25, 0.25, 0.25, 0.25};
        double s[4] = {S1[0], S1[1], 0.55 / 0.8, S1[3]}, gg[4];
        double l = listwise(s, q, 4, 0.8, gg);
        gg[2] = 0.0;
        expect_eval("clip_log_ratio", "{\"clip_log_ratio\": 0.55}", 4, LOGP, ANCHOR, NULL, uni, G1, l, gg, EXACT);
        s[2] = 0.7;
        l = listwise(s, q, 4, 0.8, gg);
        gg[2] = 0.0;
        expect_eval("clip_score", "{\"clip_score\": 0.7}", 4, LOGP, ANCHOR, NULL, uni, G1, l, gg, EXACT);
    }

    /* beta_anchor_kl (docs/MATH.md §5): + b * mean_rows k3(a - l), d/dl_i = b (1 - exp(a_i - l_i)) / n. */
    {
        const double q[4] = {0.25, 0.25, 0.25, 0.25};
        double gg[4], l = listwise(S1, q, 4, 0.8, gg);
        for (int i = 0; i < 4; i++) {
            double d = ANCHOR[i] - LOGP[i];
            l += 0.3 * (exp(d) - d - 1.0) / 4.0;
            gg[i] += 0.3 * (1.0 - exp(d)) / 4.0;
        }
        expect_eval("beta_anchor_kl", "{\"beta_anchor_kl\": 0.3}", 4, LOGP, ANCHOR, NULL, q, G1, l, gg, EXACT);
    }
}

/* V8 adaptive temperature (metrics.tau) and V12 (the LLM configuration at an on-policy step). */
static void test_adaptive_tau(void) {
    static const struct {
        const char *json;
        double tau;
    } rows[2] = {
        {"{\"reward_transform\": \"raw\", \"adaptive_tau\": {\"rule\": \"target_entropy\", \"alpha\": 1.0,"
         " \"tau_min\": 0.1}}", 0.208273},
        {"{\"reward_transform\": \"raw\", \"adaptive_tau\": {\"rule\": \"target_entropy\", \"alpha\": 0.5,"
         " \"tau_min\": 0.05}}", 0.504136},
    };
    const double q1[4] = {0.619572, 0.0838499, 0.227928, 0.0686505}; /* V1 q (raw) */
    for (int r = 0; r < 2; r++) {
        adpo_objective *obj = make(rows[r].json);
        double loss, grad[4], scores[4];
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss, grad, scores, &err),
                     ADPO_STATUS_OK, "");
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK_CLOSE(m.tau, rows[r].tau, SPEC);
        /* The scores and the loss use that tau. */
        double s[4], g[4];
        for (int i = 0; i < 4; i++) {
            s[i] = (LOGP[i] - ANCHOR[i]) / m.tau;
            CHECK_CLOSE(scores[i], s[i], EXACT);
        }
        CHECK_CLOSE(loss, listwise(s, q1, 4, m.tau, g), SPEC);
        for (int i = 0; i < 4; i++) CHECK_NEAR(grad[i], g[i], 2e-5 * (fabs(g[i]) + 1.0));
        adpo_objective_free(obj);
    }
    /* The alpha = 1 row at numpy precision: tau 0.2082726658, loss 1.590802108. */
    const double g8[4] = {-1.151082172, -0.3876090356, 1.853321808, -0.3146306001};
    expect_eval("V8 a", rows[0].json, 4, LOGP, ANCHOR, R1, NULL, G1, 1.590802108, g8, NUMPY);

    /* Rule (c) smooth_hybrid, V8 row: H = 0.3, R = 0.2 -> tau 1.368. R is the min-max normalised
     * group mean reward across groups: three pairs with mean rewards 0, 0.2, 1 give R = 0, 0.2, 1
     * and tau = 0.8 (1 + 0.5*0.3 + 0.7 (1 - R)) = 1.48, 1.368, 0.92. l - a = 1, so s = 1/tau. */
    {
        const double lp[6] = {-1, -2, -3, -4, -5, -6}, an[6] = {-2, -3, -4, -5, -6, -7};
        const double rw[6] = {0.0, 0.0, 0.4, 0.0, 1.0, 1.0}, ent[6] = {0.3, 0.3, 0.3, 0.3, 0.3, 0.3};
        const int64_t ids[6] = {1, 1, 2, 2, 3, 3};
        const double taus[3] = {1.48, 1.368, 0.92};
        adpo_objective *obj = make("{\"adaptive_tau\": {\"rule\": \"smooth_hybrid\", \"alpha\": 0.5, \"beta\": 1.0,"
                                   " \"tau_min\": 0.1, \"tau_max\": 5.0}}");
        double loss = SENTINEL, scores[6];
        CHECK_STATUS(adpo_objective_eval_entropy(obj, 6, lp, an, rw, NULL, ids, ent, &loss, NULL, scores, &err),
                     ADPO_STATUS_OK, "");
        for (int i = 0; i < 6; i++) CHECK_CLOSE(scores[i], 1.0 / taus[i / 2], EXACT);
        CHECK_CLOSE(1.0 / scores[2], 1.368, SPEC);
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK_CLOSE(m.tau, (1.48 + 1.368 + 0.92) / 3.0, EXACT);
        CHECK(m.groups == 3);
        /* It needs the policy entropy, and rewards. */
        double l2 = SENTINEL;
        CHECK_STATUS(adpo_objective_eval(obj, 6, lp, an, rw, NULL, ids, &l2, NULL, NULL, &err),
                     ADPO_STATUS_INVALID_ARGUMENT, "policy_entropy");
        CHECK(l2 == SENTINEL);
        const double bad_ent[6] = {0.3, 0.3, NAN, 0.3, 0.3, 0.3};
        CHECK_STATUS(adpo_objective_eval_entropy(obj, 6, lp, an, rw, NULL, ids, bad_ent, &l2, NULL, NULL, &err),
                     ADPO_STATUS_NON_FINITE, "policy_entropy contains NaN or Inf");
        CHECK(l2 == SENTINEL);
        adpo_objective_free(obj);
        /* NULL policy_entropy on a non-adaptive objective = adpo_objective_eval. */
        obj = make(NULL);
        CHECK_STATUS(adpo_objective_eval_entropy(obj, 4, LOGP, ANCHOR, R1, NULL, G1, NULL, &l2, NULL, NULL, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(l2, 1.0152, SPEC);
        adpo_objective_free(obj);
    }

    /* V12: K = 8, tau_base 0.8, rule (a) alpha 1, tau_min 0.1, on-policy s = 0: loss = log 8.
     * The spec's q uses TRL's double standardisation; the library's q is softmax(zscore(r)/0.5).
     * numpy: q = softmax(((r - mean)/(std_u + 1e-4))/0.5), H = -sum q log(q + 1e-8),
     * tau = max(0.1, 0.8 (1 - H/log 8)), dL/dl = (1/8 - q)/tau. */
    static const struct {
        double r[8], tau, grad[8];
    } v12[3] = {
        {{1, 0, 0, 0, 0, 0, 0, 0},
         0.7386742834,
         {-1.152188507, 0.1645983581, 0.1645983581, 0.1645983581, 0.1645983581, 0.1645983581, 0.1645983581,
          0.1645983581}},
        {{1, 1, 1, 1, 0, 0, 0, 0},
         0.2242806191,
         {-0.5314979461, -0.5314979461, -0.5314979461, -0.5314979461, 0.5314979461, 0.5314979461, 0.5314979461,
          0.5314979461}},
        {{1, 0, -0.05, 0, 0, -0.1, 0, 0},
         0.7364123861,
         {-1.154209732, 0.1643780739, 0.1656694485, 0.1643780739, 0.1643780739, 0.1666499136, 0.1643780739,
          0.1643780739}},
    };
    const char *json12 = "{\"adaptive_tau\": {\"rule\": \"target_entropy\", \"alpha\": 1.0, \"tau_min\": 0.1}}";
    const double lp8[8] = {-3.5, -7.25, -1.0, -12.0, -4.0, -4.0, -9.5, -2.0};
    const int64_t ids8[8] = {11, 11, 11, 11, 11, 11, 11, 11};
    for (int r = 0; r < 3; r++) {
        adpo_objective *obj = make(json12);
        double loss, grad[8];
        CHECK_STATUS(adpo_objective_eval(obj, 8, lp8, lp8, v12[r].r, NULL, ids8, &loss, grad, NULL, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, 2.07944, SPEC);
        CHECK_CLOSE(loss, log(8.0), EXACT);
        for (int i = 0; i < 8; i++) CHECK_CLOSE(grad[i], v12[r].grad[i], NUMPY);
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK_CLOSE(m.tau, v12[r].tau, NUMPY);
        adpo_objective_free(obj);
    }
}

/* V9: GRPO. One group of 4 sequences with rewards [1, 0, 1, 0] gives A = +-0.865875. T = 4
 * columns: the V9 tokens in columns 0-2, column 3 masked out and filled with junk. */
static const double V9_NEW[3] = {-1.0, -0.5, -2.0}, V9_OLD[3] = {-1.2, -0.4, -2.5}, V9_REF[3] = {-1.1, -0.6, -2.2};

/* Rows listed in `live` carry the V9 tokens (mask 1 on columns 0-2); the others are masked out
 * entirely and hold finite junk that must not matter. */
static void grpo_inputs(const int live[4], double *lp, double *old, double *ref, double *mask) {
    static const double junk_lp[4] = {-3.0, -0.1, -7.0, -0.01}, junk_old[4] = {-40.0, -0.2, -1.0, -30.0};
    for (int i = 0; i < 4; i++)
        for (int t = 0; t < 4; t++) {
            int k = i * 4 + t, on = live[i] && t < 3;
            lp[k] = on ? V9_NEW[t] : junk_lp[t];
            old[k] = on ? V9_OLD[t] : junk_old[t];
            ref[k] = on ? V9_REF[t] : junk_lp[(t + 1) % 4];
            mask[k] = on ? 1.0 : 0.0;
        }
}

static void test_grpo(void) {
    const double rw[4] = {1.0, 0.0, 1.0, 0.0};
    const int64_t ids[4] = {3, 3, 3, 3};
    double lp[16], old[16], ref[16], mask[16];
    static const struct {
        const char *json;
        int row; /* 0: A = +0.865875, 1: A = -0.865875 */
        double loss, grad[3];
    } rows[5] = {
        {"{\"loss\": \"grpo\"}", 0, -0.953859, {0, -0.261159, 0}},
        {"{\"loss\": \"grpo\", \"beta_kl\": 0.04}", 0, -0.95348, {0.00126883, -0.25989, 0.00241692}},
        {"{\"loss\": \"grpo\", \"ratio_level\": \"sequence\"}", 0, -1.03905, {0, 0, 0}},
        {"{\"loss\": \"grpo\"}", 1, 1.08955, {0.352528, 0.261159, 0.475862}},
        {"{\"loss\": \"grpo\", \"ratio_level\": \"sequence\"}", 1, 1.05758, {0.352528, 0.352528, 0.352528}},
    };
    /* Only the V9 row counts, so "dapo" (default) and "bnpo" (token sum / unmasked tokens) are
     * the mean over its 3 tokens: the spec rows exactly. "grpo" = mean over the 4 sequences of
     * their token means = 1/4 of it; "dr_grpo" = token sum / (4 sequences * T = 4) = 3/16 of it. */
    static const struct {
        const char *agg;
        double factor;
    } aggs[4] = {{"", 1.0}, {", \"aggregation\": \"bnpo\"", 1.0}, {", \"aggregation\": \"grpo\"", 0.25},
                 {", \"aggregation\": \"dr_grpo\"", 3.0 / 16.0}};
    for (int r = 0; r < 5; r++)
        for (int a = 0; a < 4; a++) {
            int failed_before = check_failed_;
            char json[256];
            snprintf(json, sizeof json, "%.*s%s}", (int)strlen(rows[r].json) - 1, rows[r].json, aggs[a].agg);
            int live[4] = {0, 0, 0, 0};
            live[rows[r].row] = 1;
            grpo_inputs(live, lp, old, ref, mask);
            adpo_objective *obj = make(json);
            double loss = SENTINEL, grad[16], adv[4];
            CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                         ADPO_STATUS_OK, "");
            double f = aggs[a].factor;
            CHECK_CLOSE(loss, f * rows[r].loss, SPEC);
            for (int i = 0; i < 4; i++) {
                CHECK_CLOSE(adv[i], i % 2 == 0 ? 0.865875 : -0.865875, SPEC);
                for (int t = 0; t < 4; t++) {
                    double want = (i == rows[r].row && t < 3) ? f * rows[r].grad[t] : 0.0;
                    CHECK_NEAR(grad[i * 4 + t], want, SPEC * fabs(want) + 1e-12);
                }
            }
            if (r == 0) {
                /* Token ratios [1.2214, 0.904837, 1.64872] with A > 0: tokens 0 and 2 clipped. */
                adpo_objective_metrics m;
                m.struct_size = sizeof m;
                CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
                CHECK_NEAR(m.clip_fraction, 2.0 / 3.0, 1e-12);
                CHECK_NEAR(m.loss, loss, 1e-15);
                CHECK(m.groups == 1);
                CHECK_CLOSE(m.anchor_kl, (0.00483742 + 0.00483742 + 0.0187308) / 3.0, SPEC);
            }
            adpo_objective_free(obj);
            if (check_failed_ != failed_before) fprintf(stderr, "     ^ in V9 row %d, config %s\n", r, json);
        }

    /* All four rows carry the V9 tokens, "grpo" aggregation: loss = (2 L+ + 2 L-)/4 and each
     * row's gradient is 1/4 of its spec row. ref_logp = NULL is fine with beta_kl = 0. */
    {
        const int live[4] = {1, 1, 1, 1};
        grpo_inputs(live, lp, old, ref, mask);
        adpo_objective *obj = make("{\"loss\": \"grpo\", \"aggregation\": \"grpo\"}");
        double loss, grad[16], adv[4];
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, NULL, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, (-0.953859 + 1.08955) / 2.0, 1e-4);
        CHECK_CLOSE(loss, (-0.9538591732 + 1.089548788) / 2.0, NUMPY);
        for (int i = 0; i < 4; i++)
            for (int t = 0; t < 3; t++)
                CHECK_CLOSE(grad[i * 4 + t], rows[i % 2 == 0 ? 0 : 3].grad[t] / 4.0, SPEC);
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK(isnan(m.anchor_kl));
        CHECK_NEAR(m.clip_fraction, 4.0 / 12.0, 1e-12); /* 2 clipped tokens in each A > 0 row */
        /* Ids in any order: rows (0, 2) and (1, 3) swapped gives the same loss. */
        const int64_t ids2[4] = {-5, -5, -5, -5};
        double loss2;
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, NULL, mask, rw, ids2, &loss2, NULL, NULL, &err),
                     ADPO_STATUS_OK, "");
        CHECK_NEAR(loss2, loss, 1e-14);
        adpo_objective_free(obj);
    }

    /* A singleton row (id 8, all tokens masked in) counts for nothing: advantage 0, gradient 0,
     * and its tokens are not in the "dapo" denominator. clip_eps_high 0.3 widens the upper clip:
     * token ratios [1.2214, 0.904837, 1.64872] with A > 0 leave only token 2 clipped (at 1.3), so
     * loss = -A (rho_0 + rho_1 + 1.3)/3 and dL/dlogp_t = -A rho_t/3 on tokens 0 and 1. */
    {
        const int live[4] = {1, 0, 0, 0};
        double lp5[20], old5[20], ref5[20], mask5[20];
        grpo_inputs(live, lp5, old5, ref5, mask5);
        for (int t = 0; t < 4; t++) {
            lp5[16 + t] = -0.5;
            old5[16 + t] = -3.0;
            ref5[16 + t] = -1.0;
            mask5[16 + t] = 1.0;
        }
        const double rw5[5] = {1.0, 0.0, 1.0, 0.0, 50.0};
        const int64_t ids5[5] = {3, 3, 3, 3, 8};
        double a = 0.865875, rho[3];
        for (int t = 0; t < 3; t++) rho[t] = exp(V9_NEW[t] - V9_OLD[t]);
        adpo_objective *obj = make("{\"loss\": \"grpo\", \"clip_eps_high\": 0.3}");
        double loss, grad[20], adv[5];
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 5, 4, lp5, old5, ref5, mask5, rw5, ids5, &loss, grad, adv, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, -a * (rho[0] + rho[1] + 1.3) / 3.0, SPEC);
        CHECK_CLOSE(grad[0], -a * rho[0] / 3.0, SPEC);
        CHECK_CLOSE(grad[1], -a * rho[1] / 3.0, SPEC);
        CHECK(grad[2] == 0.0 && grad[3] == 0.0);
        CHECK(adv[4] == 0.0);
        CHECK_CLOSE(adv[0], 0.865875, SPEC);
        for (int k = 4; k < 20; k++) CHECK(grad[k] == 0.0);
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK(m.groups == 1);
        CHECK_NEAR(m.clip_fraction, 1.0 / 3.0, 1e-12);
        /* Only singletons: loss 0, zero gradient. */
        const int64_t solo[5] = {1, 2, 3, 4, 5};
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 5, 4, lp5, old5, ref5, mask5, rw5, solo, &loss, grad, adv, &err),
                     ADPO_STATUS_OK, "");
        CHECK(loss == 0.0);
        int zero = 1;
        for (int k = 0; k < 20; k++) zero &= grad[k] == 0.0;
        CHECK(zero);
        adpo_objective_free(obj);
    }

    /* Error paths of the token entry point; outputs stay untouched. */
    {
        const int live[4] = {1, 0, 0, 0};
        grpo_inputs(live, lp, old, ref, mask);
        adpo_objective *obj = make("{\"loss\": \"grpo\", \"beta_kl\": 0.04}");
        adpo_objective *lw = make(NULL);
        double loss = SENTINEL, grad[16], adv[4];
        for (int i = 0; i < 16; i++) grad[i] = SENTINEL;
        for (int i = 0; i < 4; i++) adv[i] = SENTINEL;
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, NULL, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "ref_logp");
        CHECK_STATUS(adpo_objective_eval_tokens(lw, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_INVALID_ARGUMENT, "grpo");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 0, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_INVALID_ARGUMENT, "n");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 0, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_INVALID_ARGUMENT, "t");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, NULL, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "logp");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, NULL, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "old_logp");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, NULL, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "mask");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, NULL, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "rewards");
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, NULL, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "group_ids");
        CHECK_STATUS(adpo_objective_eval_tokens(NULL, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "obj");
        mask[5] = 0.5;
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_INVALID_ARGUMENT, "mask");
        mask[5] = 0.0;
        old[2] = NAN;
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NON_FINITE, "old_logp contains NaN or Inf");
        old[2] = V9_OLD[2];
        ref[13] = INFINITY; /* NaN/Inf anywhere, masked tokens included */
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NON_FINITE, "ref_logp contains NaN or Inf");
        ref[13] = 0.0;
        const double bad_rw[4] = {1.0, NAN, 1.0, 0.0};
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, bad_rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_NON_FINITE, "rewards contains NaN or Inf");
        CHECK(adpo_objective_eval_tokens(obj, 0, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, NULL) ==
              ADPO_STATUS_INVALID_ARGUMENT);
        int untouched = loss == SENTINEL;
        for (int i = 0; i < 16; i++) untouched &= grad[i] == SENTINEL;
        for (int i = 0; i < 4; i++) untouched &= adv[i] == SENTINEL;
        CHECK(untouched);
        /* Still usable after all those errors. */
        CHECK_STATUS(adpo_objective_eval_tokens(obj, 4, 4, lp, old, ref, mask, rw, ids, &loss, grad, adv, &err),
                     ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, -0.95348, SPEC);
        adpo_objective_free(obj);
        adpo_objective_free(lw);
    }
}

/* Groups: singletons, several groups, arbitrary id order. */
static void test_groups(void) {
    /* A singleton (row 4, with an extreme reward that would change a zscore if it leaked in)
     * contributes nothing: the V1 zscore loss, zero gradient on row 4, groups = 1. */
    {
        const double lp[5] = {-12.0, -15.5, -9.8, -20.1, -3.0}, an[5] = {-12.5, -15.0, -10.4, -19.6, -4.0};
        const double rw[5] = {1.0, 0.0, 0.5, -0.1, 100.0};
        const int64_t ids[5] = {7, 7, 7, 7, 8};
        const double g[5] = {-0.6052775145, 0.1117277512, 0.3751003222, 0.1184494411, 0.0};
        expect_eval("singleton", NULL, 5, lp, an, rw, NULL, ids, 1.015200127, g, NUMPY);
        adpo_objective *obj = make(NULL);
        double loss, grad[5], scores[5];
        CHECK_STATUS(adpo_objective_eval(obj, 5, lp, an, rw, NULL, ids, &loss, grad, scores, &err), ADPO_STATUS_OK,
                     "");
        CHECK_NEAR(scores[4], 1.0 / 0.8, 1e-12);
        CHECK(grad[4] == 0.0);
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK(m.groups == 1);
        CHECK_CLOSE(m.mean_abs_score, 0.65625, EXACT); /* over rows of counted groups only */
        CHECK_CLOSE(m.max_abs_score, 0.75, EXACT);
        /* Explicit targets: a singleton's target is 1. */
        const double tg[5] = {0.25, 0.25, 0.25, 0.25, 1.0};
        CHECK_STATUS(adpo_objective_eval(obj, 5, lp, an, NULL, tg, ids, &loss, NULL, NULL, &err), ADPO_STATUS_OK, "");
        /* Only singletons: loss 0, zero gradient, no counted group. */
        const int64_t solo[5] = {1, 2, 3, 4, 5};
        CHECK_STATUS(adpo_objective_eval(obj, 5, lp, an, rw, NULL, solo, &loss, grad, scores, &err), ADPO_STATUS_OK,
                     "");
        CHECK(loss == 0.0);
        for (int i = 0; i < 5; i++) CHECK(grad[i] == 0.0);
        CHECK_NEAR(scores[0], 0.625, 1e-12);
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK(m.groups == 0);
        CHECK(m.loss == 0.0);
        adpo_objective_free(obj);
    }
    /* Two groups of 4 (V1 data with R1, and the same logp with the V3 rewards): ids sorted
     * {3,3,3,3,9,9,9,9} versus interleaved {9,3,9,3,...} with the rows permuted to match; both
     * equal the mean of the two groups evaluated alone (each row's gradient halved). */
    const char *configs[4] = {NULL, "{\"loss\": \"plackett_luce\", \"pl_ties\": \"stable\"}", "{\"target\": \"kde\"}",
                              "{\"loss\": \"top1\"}"};
    const double r3[4] = {0.3, -1.2, 2.0, 0.7};
    for (int c = 0; c < 4; c++) {
        int failed_before = check_failed_;
        adpo_objective *obj = make(configs[c]);
        double la, lb, ga[4], gb[4];
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &la, ga, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, r3, NULL, G1, &lb, gb, NULL, &err), ADPO_STATUS_OK, "");
        double lp[8], an[8], rw[8], lp2[8], an2[8], rw2[8], g[8], g2[8], loss, loss2;
        int64_t ids[8], ids2[8];
        for (int i = 0; i < 4; i++) {
            /* sorted: group 3 = rows 0-3 (R1), group 9 = rows 4-7 (r3) */
            lp[i] = lp[i + 4] = LOGP[i];
            an[i] = an[i + 4] = ANCHOR[i];
            rw[i] = R1[i];
            rw[i + 4] = r3[i];
            ids[i] = 3;
            ids[i + 4] = 9;
            /* interleaved: row 2i is candidate i of group 9, row 2i+1 candidate i of group 3 */
            lp2[2 * i] = lp2[2 * i + 1] = LOGP[i];
            an2[2 * i] = an2[2 * i + 1] = ANCHOR[i];
            rw2[2 * i] = r3[i];
            rw2[2 * i + 1] = R1[i];
            ids2[2 * i] = 9;
            ids2[2 * i + 1] = 3;
        }
        CHECK_STATUS(adpo_objective_eval(obj, 8, lp, an, rw, NULL, ids, &loss, g, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_STATUS(adpo_objective_eval(obj, 8, lp2, an2, rw2, NULL, ids2, &loss2, g2, NULL, &err), ADPO_STATUS_OK,
                     "");
        CHECK_CLOSE(loss, (la + lb) / 2.0, 1e-12);
        CHECK_CLOSE(loss2, loss, 1e-12);
        for (int i = 0; i < 4; i++) {
            CHECK_CLOSE(g[i], ga[i] / 2.0, 1e-12);
            CHECK_CLOSE(g[i + 4], gb[i] / 2.0, 1e-12);
            CHECK_CLOSE(g2[2 * i], gb[i] / 2.0, 1e-12);
            CHECK_CLOSE(g2[2 * i + 1], ga[i] / 2.0, 1e-12);
        }
        adpo_objective_metrics m;
        m.struct_size = sizeof m;
        CHECK_STATUS(adpo_objective_get_metrics(obj, &m, &err), ADPO_STATUS_OK, "");
        CHECK(m.groups == 2);
        adpo_objective_free(obj);
        if (check_failed_ != failed_before) fprintf(stderr, "     ^ in group-order case %s\n", configs[c]);
    }
    /* Groups of different sizes, ids reappearing: {5, 6, 5, 6, 6, 5, 5} = a group of 4 (V1 rows)
     * and a group of 3; the total is the mean of the two groups alone (every target rule and
     * loss that pads groups to a common size). */
    for (int c = 0; c < 4; c++) {
        const double lp[7] = {-12.0, -1.0, -15.5, -2.0, -3.5, -9.8, -20.1};
        const double an[7] = {-12.5, -1.5, -15.0, -2.0, -3.0, -10.4, -19.6};
        const double rw[7] = {1.0, 0.2, 0.0, 0.9, -0.4, 0.5, -0.1};
        const int64_t ids[7] = {5, 6, 5, 6, 6, 5, 5};
        const double lpb[3] = {-1.0, -2.0, -3.5}, anb[3] = {-1.5, -2.0, -3.0}, rwb[3] = {0.2, 0.9, -0.4};
        const int64_t idb[3] = {0, 0, 0};
        int failed_before = check_failed_;
        adpo_objective *obj = make(configs[c]);
        double la, lb, ga[4], gb[3], loss, g[7];
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &la, ga, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_STATUS(adpo_objective_eval(obj, 3, lpb, anb, rwb, NULL, idb, &lb, gb, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_STATUS(adpo_objective_eval(obj, 7, lp, an, rw, NULL, ids, &loss, g, NULL, &err), ADPO_STATUS_OK, "");
        CHECK_CLOSE(loss, (la + lb) / 2.0, 1e-12);
        const double want[7] = {ga[0] / 2, gb[0] / 2, ga[1] / 2, gb[1] / 2, gb[2] / 2, ga[2] / 2, ga[3] / 2};
        for (int i = 0; i < 7; i++) CHECK_CLOSE(g[i], want[i], 1e-12);
        adpo_objective_free(obj);
        if (check_failed_ != failed_before) fprintf(stderr, "     ^ in mixed-size case %s\n", configs[c]);
    }
}

static int untouched(double loss, const double *grad, const double *scores, int n) {
    int ok = loss == SENTINEL;
    for (int i = 0; i < n; i++) ok &= grad[i] == SENTINEL && scores[i] == SENTINEL;
    return ok;
}

#define EXPECT_ERROR(obj_, n_, lp_, an_, rw_, tg_, ids_, status_, sub_)                                         \
    do {                                                                                                      \
        double loss_ = SENTINEL, grad_[8], scores_[8];                                                        \
        for (int i_ = 0; i_ < 8; i_++) grad_[i_] = scores_[i_] = SENTINEL;                                    \
        CHECK_STATUS(adpo_objective_eval((obj_), (n_), (lp_), (an_), (rw_), (tg_), (ids_), &loss_, grad_, scores_, \
                                         &err),                                                               \
                     (status_), (sub_));                                                                      \
        CHECK(untouched(loss_, grad_, scores_, 8));                                                           \
        /* The same call with err = NULL fails the same way and does not crash. */                           \
        CHECK(adpo_objective_eval((obj_), (n_), (lp_), (an_), (rw_), (tg_), (ids_), &loss_, grad_, scores_, NULL) == \
              (status_));                                                                                     \
        CHECK(untouched(loss_, grad_, scores_, 8));                                                           \
    } while (0)

static void test_errors(void) {
    adpo_objective *obj = make(NULL);
    double bad[4];

    EXPECT_ERROR(obj, 0, LOGP, ANCHOR, R1, NULL, G1, ADPO_STATUS_INVALID_ARGUMENT, "n");
    EXPECT_ERROR(obj, 4, NULL, ANCHOR, R1, NULL, G1, ADPO_STATUS_NULL_ARGUMENT, "logp");
    EXPECT_ERROR(obj, 4, LOGP, NULL, R1, NULL, G1, ADPO_STATUS_NULL_ARGUMENT, "anchor_logp");
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, R1, NULL, NULL, ADPO_STATUS_NULL_ARGUMENT, "group_ids");
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, NULL, G1, ADPO_STATUS_NULL_ARGUMENT, "rewards");
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, R1, R1, G1, ADPO_STATUS_INVALID_ARGUMENT, "rewards");
    EXPECT_ERROR(NULL, 4, LOGP, ANCHOR, R1, NULL, G1, ADPO_STATUS_NULL_ARGUMENT, "obj");

    /* NaN/Inf in any input. */
    memcpy(bad, LOGP, sizeof bad);
    bad[2] = NAN;
    EXPECT_ERROR(obj, 4, bad, ANCHOR, R1, NULL, G1, ADPO_STATUS_NON_FINITE, "logp contains NaN or Inf");
    bad[2] = -INFINITY;
    EXPECT_ERROR(obj, 4, bad, ANCHOR, R1, NULL, G1, ADPO_STATUS_NON_FINITE, "logp contains NaN or Inf");
    memcpy(bad, ANCHOR, sizeof bad);
    bad[0] = INFINITY;
    EXPECT_ERROR(obj, 4, LOGP, bad, R1, NULL, G1, ADPO_STATUS_NON_FINITE, "anchor_logp contains NaN or Inf");
    memcpy(bad, R1, sizeof bad);
    bad[3] = NAN;
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, bad, NULL, G1, ADPO_STATUS_NON_FINITE, "rewards contains NaN or Inf");
    const double t_nan[4] = {0.5, 0.5, 0.0, NAN};
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_nan, G1, ADPO_STATUS_NON_FINITE, "targets contains NaN or Inf");
    {
        /* NaN in a singleton row still counts. */
        const int64_t ids[4] = {1, 1, 1, 2};
        memcpy(bad, LOGP, sizeof bad);
        bad[3] = NAN;
        EXPECT_ERROR(obj, 4, bad, ANCHOR, R1, NULL, ids, ADPO_STATUS_NON_FINITE, "logp contains NaN or Inf");
    }

    /* Explicit targets: >= 0 and summing to 1 per group within 1e-6. */
    const double t_neg[4] = {0.6, 0.5, -0.1, 0.0}, t_sum[4] = {0.5, 0.2, 0.1, 0.1};
    const double t_off[4] = {0.25, 0.25, 0.25, 0.25 + 1e-5}, t_ok[4] = {0.25, 0.25, 0.25, 0.25 + 1e-7};
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_neg, G1, ADPO_STATUS_INVALID_ARGUMENT, "targets");
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_sum, G1, ADPO_STATUS_INVALID_ARGUMENT, "targets");
    EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_off, G1, ADPO_STATUS_INVALID_ARGUMENT, "targets");
    {
        /* Two groups of 2 each summing to 1 are fine; pooled across groups is not enough. */
        const int64_t ids[4] = {1, 1, 2, 2};
        const double t_pool[4] = {0.5, 0.5, 0.5, 0.5}, t_cross[4] = {0.9, 0.6, 0.4, 0.1};
        double loss;
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, NULL, t_pool, ids, &loss, NULL, NULL, &err),
                     ADPO_STATUS_OK, "");
        EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_cross, ids, ADPO_STATUS_INVALID_ARGUMENT, "targets");
        /* A singleton group is a group: its target must be 1. */
        const int64_t ids3[4] = {1, 1, 1, 2};
        const double t_single[4] = {0.5, 0.25, 0.25, 0.5};
        EXPECT_ERROR(obj, 4, LOGP, ANCHOR, NULL, t_single, ids3, ADPO_STATUS_INVALID_ARGUMENT, "targets");
    }
    {
        double loss;
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, NULL, t_ok, G1, &loss, NULL, NULL, &err),
                     ADPO_STATUS_OK, "");
    }

    /* NULL out_loss; grad and scores stay untouched. */
    {
        double grad[8], scores[8];
        for (int i = 0; i < 8; i++) grad[i] = scores[i] = SENTINEL;
        CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, NULL, grad, scores, &err),
                     ADPO_STATUS_NULL_ARGUMENT, "out_loss");
        CHECK(untouched(SENTINEL, grad, scores, 8));
    }

    /* Pairwise and DPO need groups of exactly 2. */
    {
        adpo_objective *pw = make("{\"loss\": \"pairwise\"}");
        adpo_objective *dpo = make("{\"loss\": \"dpo\"}");
        const int64_t three[3] = {1, 1, 1}, with_single[3] = {1, 1, 2};
        EXPECT_ERROR(pw, 4, LOGP, ANCHOR, R1, NULL, G1, ADPO_STATUS_SHAPE_MISMATCH, "pairwise");
        EXPECT_ERROR(dpo, 4, LOGP, ANCHOR, R1, NULL, G1, ADPO_STATUS_SHAPE_MISMATCH, "dpo");
        EXPECT_ERROR(pw, 3, LOGP, ANCHOR, R1, NULL, three, ADPO_STATUS_SHAPE_MISMATCH, "2");
        EXPECT_ERROR(dpo, 3, LOGP, ANCHOR, R1, NULL, with_single, ADPO_STATUS_SHAPE_MISMATCH, "2");
        adpo_objective_free(pw);
        adpo_objective_free(dpo);
    }
    /* GRPO is token-level only. */
    {
        adpo_objective *grpo = make("{\"loss\": \"grpo\"}");
        EXPECT_ERROR(grpo, 4, LOGP, ANCHOR, R1, NULL, G1, ADPO_STATUS_INVALID_ARGUMENT, "eval_tokens");
        adpo_objective_free(grpo);
    }

    /* The handle still works after every error. */
    double loss;
    CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss, NULL, NULL, &err), ADPO_STATUS_OK, "");
    CHECK_CLOSE(loss, 1.0152, SPEC);
    adpo_objective_free(obj);
}

static void test_panic(void) {
    CHECK_STATUS(adpo_test_panic(&err), ADPO_STATUS_PANIC, "panic");
    CHECK(adpo_test_panic(NULL) == ADPO_STATUS_PANIC);
    /* The process keeps running and the library stays usable. */
    adpo_objective *obj = make(NULL);
    double loss;
    CHECK_STATUS(adpo_objective_eval(obj, 4, LOGP, ANCHOR, R1, NULL, G1, &loss, NULL, NULL, &err), ADPO_STATUS_OK, "");
    CHECK_CLOSE(loss, 1.0152, SPEC);
    adpo_objective_free(obj);
}

/* Sizes whose byte counts do not fit in memory: refused before any buffer is read. Without the
 * check, n = 2^61 made n * 8 wrap to 0 and the call read far past the buffers (a crash), so
 * each case runs in a child. */
static int huge_n_child(const void *arg) {
    const size_t n = *(const size_t *)arg;
    adpo_objective *obj = NULL;
    if (adpo_objective_new(NULL, &obj, NULL) != ADPO_STATUS_OK) return 2;
    double loss = SENTINEL, grad[4] = {SENTINEL, SENTINEL, SENTINEL, SENTINEL};
    adpo_error *e = NULL;
    adpo_status st = adpo_objective_eval(obj, n, LOGP, ANCHOR, R1, NULL, G1, &loss, grad, NULL, &e);
    int ok = st == ADPO_STATUS_INVALID_ARGUMENT && e && strstr(adpo_error_message(e), "too large") &&
             loss == SENTINEL && grad[0] == SENTINEL;
    adpo_error_free(e);
    adpo_objective_free(obj);
    return ok ? 0 : 1;
}

/* n * t fits a size_t, n * t * 8 does not. */
static int huge_tokens_child(const void *unused) {
    (void)unused;
    adpo_objective *obj = NULL;
    if (adpo_objective_new("{\"loss\": \"grpo\"}", &obj, NULL) != ADPO_STATUS_OK) return 2;
    const size_t n = (size_t)1 << 30, t = (size_t)1 << 31;
    double buf[4] = {0, 0, 0, 0}, loss = SENTINEL;
    adpo_error *e = NULL;
    adpo_status st = adpo_objective_eval_tokens(obj, n, t, buf, buf, NULL, buf, R1, G1, &loss, NULL, NULL, &e);
    int ok = st == ADPO_STATUS_INVALID_ARGUMENT && e && strstr(adpo_error_message(e), "too large") &&
             loss == SENTINEL;
    adpo_error_free(e);
    adpo_objective_free(obj);
    return ok ? 0 : 1;
}

static void test_huge_sizes(void) {
    static const size_t n61 = (size_t)1 << 61, n60 = (size_t)1 << 60;
    CHECK_IN_CHILD(huge_n_child, &n61, "adpo_objective_eval with n = 2^61 (n * 8 wraps to 0)");
    CHECK_IN_CHILD(huge_n_child, &n60, "adpo_objective_eval with n = 2^60 (n * 8 > PTRDIFF_MAX)");
    CHECK_IN_CHILD(huge_tokens_child, NULL, "adpo_objective_eval_tokens with n * t * 8 past 2^64");
}

int main(void) {
    test_huge_sizes(); /* first: its children fork before any thread pool starts */
    test_version_and_error_basics();
    test_config();
    test_v1();
    test_v2();
    test_plackett_luce();
    test_targets();
    test_adaptive_tau();
    test_grpo();
    test_groups();
    test_errors();
    test_panic();
    return check_summary("test_objective");
}
