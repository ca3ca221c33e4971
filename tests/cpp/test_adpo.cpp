// GoogleTest suite of the C++ wrapper include/adpo.hpp, built against an installed adpo (see
// tests/cpp/run). The model fixtures (make fixtures) come from the directory given at configure
// time (-DADPO_FIXTURES_DIR=..., compiled in as ADPO_TEST_FIXTURES_DIR) or, overriding it, from
// the environment variable ADPO_FIXTURES; tests that need a model are skipped when neither is
// set.
#include <adpo.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#ifndef ADPO_TEST_FIXTURES_DIR
#define ADPO_TEST_FIXTURES_DIR ""
#endif

namespace fs = std::filesystem;

namespace {

// Spec vector V1 (docs/MATH.md §10): one group of four candidates.
const std::vector<double> kLogp = {-12.0, -15.5, -9.8, -20.1};
const std::vector<double> kAnchor = {-12.5, -15.0, -10.4, -19.6};
const std::vector<double> kRewards = {1.0, 0.0, 0.5, -0.1};
const std::vector<std::int64_t> kGroup = {7, 7, 7, 7};
// s = (logp - anchor) / 0.8
const std::vector<double> kScores = {0.625, -0.625, 0.75, -0.625};

// |a - b| <= rtol * |b|, the way the C tests compare with quoted 6-digit values.
::testing::AssertionResult Close(double a, double b, double rtol) {
    if (std::isfinite(a) && std::fabs(a - b) <= rtol * std::fabs(b) + 1e-12) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << a << " vs expected " << b << " (rtol " << rtol << ")";
}

// Runs `f` and checks that it throws adpo::Error with `status` and a message containing `sub`.
template <class F>
::testing::AssertionResult Throws(F &&f, adpo_status status, const std::string &sub = "") {
    try {
        f();
    } catch (const adpo::Error &e) {
        if (e.status() != status)
            return ::testing::AssertionFailure() << "status " << adpo::status_name(e.status()) << ", expected "
                                                 << adpo::status_name(status) << " (" << e.what() << ")";
        if (e.message().empty()) return ::testing::AssertionFailure() << "empty message";
        if (e.message().find(sub) == std::string::npos)
            return ::testing::AssertionFailure() << "message '" << e.message() << "' lacks '" << sub << "'";
        return ::testing::AssertionSuccess();
    } catch (const std::exception &e) {
        return ::testing::AssertionFailure() << "threw a non-adpo exception: " << e.what();
    }
    return ::testing::AssertionFailure() << "did not throw (expected " << adpo::status_name(status) << ")";
}

double LogSumExp(const std::vector<double> &s) {
    const double m = *std::max_element(s.begin(), s.end());
    double sum = 0.0;
    for (double x : s) sum += std::exp(x - m);
    return m + std::log(sum);
}

std::string FixturesDir() {
    const char *env = std::getenv("ADPO_FIXTURES");
    if (env && *env) return env;
    return ADPO_TEST_FIXTURES_DIR;
}

// Path of a fixture model; skips the test when no fixtures directory is configured.
#define FIXTURE(var, name)                                                                         \
    std::string var;                                                                               \
    do {                                                                                           \
        const std::string dir_ = FixturesDir();                                                    \
        if (dir_.empty()) GTEST_SKIP() << "no fixtures: set ADPO_FIXTURES or -DADPO_FIXTURES_DIR"; \
        var = dir_ + "/" + (name);                                                                 \
        ASSERT_TRUE(fs::exists(var)) << var << " is missing (make fixtures)";                      \
    } while (0)

// A temporary directory removed at scope exit.
struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("adpo-cpp-test-" + std::to_string(rd()) + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir &) = delete;
    TempDir &operator=(const TempDir &) = delete;
};

// A hand-made batch for the tiny transformer task: prompts [1, x], two answer tokens; group g
// holds `k` candidates.
adpo::Batch MakeBatch(std::size_t groups, std::size_t k) {
    const std::size_t t = 4;
    std::vector<std::int64_t> ids, gid;
    std::vector<std::uint8_t> loss_mask;
    for (std::size_t g = 0; g < groups; ++g) {
        for (std::size_t c = 0; c < k; ++c) {
            const auto x = static_cast<std::int64_t>(2 + g);
            const auto a = static_cast<std::int64_t>((x + 1 + static_cast<std::int64_t>(c)) % 16);
            ids.insert(ids.end(), {1, x, a, a});
            loss_mask.insert(loss_mask.end(), {0, 0, 1, 1});
            gid.push_back(static_cast<std::int64_t>(g));
        }
    }
    return adpo::Batch(groups * k, t, ids, {}, loss_mask, gid);
}

std::vector<double> RewardsFor(const adpo::Batch &batch) {
    // Candidate 0 of each group answers x + 1: reward 1; the others 0, 0.25, ...
    std::vector<double> r;
    const auto gid = batch.group_ids();
    std::int64_t last = -1;
    double next = 0.0;
    for (std::int64_t g : gid) {
        if (g != last) {
            r.push_back(1.0);
            next = 0.0;
            last = g;
        } else {
            r.push_back(next);
            next += 0.25;
        }
    }
    return r;
}

const char *kTrainerConfig = R"({"optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0}, "seed": 11})";

} // namespace

// ---------------------------------------------------------------------------------------------
// Version, ABI, errors
// ---------------------------------------------------------------------------------------------

TEST(Version, AbiMatchesHeader) {
    EXPECT_EQ(adpo::abi_version(), static_cast<std::uint32_t>(ADPO_ABI_VERSION));
    EXPECT_NO_THROW(adpo::check_abi());
    EXPECT_EQ(adpo::version().rfind("adpo ", 0), 0u) << adpo::version();
    EXPECT_GE(adpo::cuda_device_count(), 0);
}

TEST(Version, AbiMismatchIsAClearError) {
    EXPECT_NO_THROW(adpo::check_abi_version(3, 3));
    EXPECT_TRUE(Throws([] { adpo::check_abi_version(ADPO_ABI_VERSION + 1, ADPO_ABI_VERSION); },
                       ADPO_STATUS_UNSUPPORTED, "ABI"));
    try {
        adpo::check_abi_version(7, 1);
        FAIL() << "no throw";
    } catch (const adpo::Error &e) {
        const std::string m = e.message();
        EXPECT_NE(m.find("ABI version 7"), std::string::npos) << m;
        EXPECT_NE(m.find("ABI version 1"), std::string::npos) << m;
    }
}

TEST(Error, IsARuntimeErrorCarryingStatusAndMessage) {
    const adpo::Error e(ADPO_STATUS_NON_FINITE, "rewards contains NaN");
    const std::runtime_error &base = e;
    EXPECT_EQ(e.status(), ADPO_STATUS_NON_FINITE);
    EXPECT_EQ(e.message(), "rewards contains NaN");
    EXPECT_EQ(std::string(base.what()), "rewards contains NaN [ADPO_STATUS_NON_FINITE]");
    const adpo::Error copy = e; // copies share the message
    EXPECT_EQ(copy.message(), e.message());
    EXPECT_EQ(copy.status(), e.status());
    EXPECT_TRUE(std::is_nothrow_copy_constructible<adpo::Error>::value);
    EXPECT_STREQ(adpo::status_name(ADPO_STATUS_CHECKPOINT), "ADPO_STATUS_CHECKPOINT");
    EXPECT_STREQ(adpo::status_name(static_cast<adpo_status>(999)), "ADPO_STATUS_UNKNOWN");
}

TEST(Error, CheckThrowsAndFreesTheCError) {
    adpo_error *err = nullptr;
    EXPECT_NO_THROW(adpo::check(ADPO_STATUS_OK, err));
    try {
        // Both arguments in one call: check() reads err only after adpo_test_panic has set it.
        adpo::check(adpo_test_panic(&err), err);
        FAIL() << "no throw";
    } catch (const adpo::Error &e) {
        EXPECT_EQ(e.status(), ADPO_STATUS_PANIC);
        EXPECT_NE(e.message().find("adpo_test_panic"), std::string::npos) << e.message();
    }
    EXPECT_EQ(err, nullptr); // freed and reset
    // Without an error object the message is generic but the status is kept.
    EXPECT_TRUE(Throws([] { adpo::check(adpo_test_panic(nullptr)); }, ADPO_STATUS_PANIC, "ADPO_STATUS_PANIC"));
}

// ---------------------------------------------------------------------------------------------
// View
// ---------------------------------------------------------------------------------------------

namespace {
std::size_t SizeOf(adpo::View<const double> v) { return v.size(); }
const std::int64_t *DataOf(adpo::View<const std::int64_t> v) { return v.data(); }
} // namespace

TEST(View, ConvertsFromContainersWithoutCopying) {
    std::vector<double> v = {1, 2, 3};
    const std::vector<double> cv = {1, 2};
    std::array<double, 4> a{};
    double c[5] = {};
    EXPECT_EQ(SizeOf(v), 3u);
    EXPECT_EQ(SizeOf(cv), 2u);
    EXPECT_EQ(SizeOf(a), 4u);
    EXPECT_EQ(SizeOf(c), 5u);
    EXPECT_EQ(SizeOf({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}), 6u);
    EXPECT_EQ(SizeOf({}), 0u);
    EXPECT_EQ(SizeOf(adpo::View<const double>(v.data() + 1, 2)), 2u);
    adpo::View<double> out(v);
    adpo::View<const double> in = out; // non-const -> const
    EXPECT_EQ(in.data(), v.data());
    out[0] = 42;
    EXPECT_EQ(v[0], 42);
    EXPECT_EQ(in.to_vector(), v);
    std::vector<std::int64_t> ids = {0, 0};
    EXPECT_EQ(DataOf(ids), ids.data());
    // A braced list of two integers is a two-element list, not (pointer, size).
    EXPECT_NE(DataOf({0, 0}), nullptr);
    // Outputs never bind to const data; vectors of another type never convert.
    static_assert(!std::is_convertible<const std::vector<double> &, adpo::View<double>>::value, "");
    static_assert(!std::is_convertible<std::vector<float> &, adpo::View<const double>>::value, "");
    static_assert(!std::is_convertible<std::vector<std::int32_t> &, adpo::View<const std::int64_t>>::value, "");
}

// ---------------------------------------------------------------------------------------------
// Objective
// ---------------------------------------------------------------------------------------------

TEST(Objective, SpecVectorV1DefaultConfig) {
    const adpo::Objective obj;
    const adpo::EvalResult r = obj.eval(kLogp, kAnchor, kRewards, kGroup);
    EXPECT_NEAR(r.loss, 1.0152, 5e-5); // 5 significant digits
    ASSERT_EQ(r.grad.size(), 4u);
    ASSERT_EQ(r.scores.size(), 4u);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_NEAR(r.scores[i], kScores[i], 1e-12) << i;
    // Listwise: dL/dlogp = (softmax(s) - q) / tau sums to 0 over the group.
    EXPECT_NEAR(std::accumulate(r.grad.begin(), r.grad.end(), 0.0), 0.0, 1e-12);
}

TEST(Objective, SpecVectorV1RawRewards) {
    const adpo::Objective obj(R"({"reward_transform": "raw"})");
    const adpo::EvalResult r = obj.eval(kLogp, kAnchor, kRewards, kGroup);
    EXPECT_TRUE(Close(r.loss, 1.15766, 1e-5));
    const double want[4] = {-0.312555, 0.0275269, 0.238502, 0.0465261};
    ASSERT_EQ(r.grad.size(), 4u);
    for (std::size_t i = 0; i < 4; ++i) EXPECT_TRUE(Close(r.grad[i], want[i], 1e-5)) << "grad[" << i << "]";
}

TEST(Objective, BracedListsAndGroupsInAnyOrder) {
    const adpo::Objective obj(R"({"reward_transform": "raw"})");
    const double one = obj.eval(kLogp, kAnchor, kRewards, kGroup).loss;
    // The same group twice, interleaved with ids 3 and -1: the mean over groups equals one group.
    const adpo::EvalResult r = obj.eval({-12.0, -12.0, -15.5, -15.5, -9.8, -9.8, -20.1, -20.1},
                                        {-12.5, -12.5, -15.0, -15.0, -10.4, -10.4, -19.6, -19.6},
                                        {1.0, 1.0, 0.0, 0.0, 0.5, 0.5, -0.1, -0.1}, {3, -1, 3, -1, 3, -1, 3, -1});
    EXPECT_NEAR(r.loss, one, 1e-12);
    EXPECT_EQ(obj.metrics().groups, 2u);
}

TEST(Objective, ExplicitTargetsMatchTheClosedForm) {
    const adpo::Objective obj;
    const std::vector<double> q = {0.4, 0.1, 0.3, 0.2};
    const adpo::EvalResult r = obj.eval_targets(kLogp, kAnchor, q, kGroup);
    const double z = LogSumExp(kScores);
    double qs = 0.0;
    for (std::size_t i = 0; i < 4; ++i) qs += q[i] * kScores[i];
    EXPECT_NEAR(r.loss, z - qs, 1e-10);
    for (std::size_t i = 0; i < 4; ++i)
        EXPECT_NEAR(r.grad[i], (std::exp(kScores[i] - z) - q[i]) / 0.8, 1e-10) << i;
}

TEST(Objective, ZeroCopyIntoCallerBuffers) {
    const adpo::Objective obj;
    const double logp[4] = {-12.0, -15.5, -9.8, -20.1};
    const double anchor[4] = {-12.5, -15.0, -10.4, -19.6};
    const double rewards[4] = {1.0, 0.0, 0.5, -0.1};
    const std::int64_t groups[4] = {7, 7, 7, 7};
    double grad[4] = {0, 0, 0, 0};
    double scores[4] = {0, 0, 0, 0};
    const double loss = obj.eval_into(logp, anchor, rewards, groups, grad, scores);
    const adpo::EvalResult r = obj.eval(kLogp, kAnchor, kRewards, kGroup);
    EXPECT_EQ(loss, r.loss);
    for (std::size_t i = 0; i < 4; ++i) {
        EXPECT_EQ(grad[i], r.grad[i]);
        EXPECT_EQ(scores[i], r.scores[i]);
    }
    // Outputs are optional: scores only.
    double scores_only[4] = {};
    EXPECT_EQ(obj.eval_into(logp, anchor, rewards, groups, {}, scores_only), loss);
    EXPECT_EQ(scores_only[2], r.scores[2]);
    // Targets, zero-copy.
    const double q[4] = {0.25, 0.25, 0.25, 0.25};
    EXPECT_TRUE(std::isfinite(obj.eval_targets_into(logp, anchor, q, groups, grad)));
    // A wrong-sized output buffer is refused before any C call.
    double small[3];
    EXPECT_TRUE(Throws([&] { obj.eval_into(logp, anchor, rewards, groups, small); }, ADPO_STATUS_SHAPE_MISMATCH,
                       "out_grad"));
}

TEST(Objective, InputLengthsAreChecked) {
    const adpo::Objective obj;
    EXPECT_TRUE(Throws([&] { obj.eval(kLogp, {-1.0, -2.0}, kRewards, kGroup); }, ADPO_STATUS_SHAPE_MISMATCH,
                       "anchor_logp"));
    EXPECT_TRUE(
        Throws([&] { obj.eval(kLogp, kAnchor, kRewards, {0, 0, 0}); }, ADPO_STATUS_SHAPE_MISMATCH, "group_ids"));
    EXPECT_TRUE(Throws([&] { obj.eval_targets(kLogp, kAnchor, {1.0}, kGroup); }, ADPO_STATUS_SHAPE_MISMATCH,
                       "targets"));
    // Empty buffers reach the library's own check.
    EXPECT_TRUE(Throws([&] { obj.eval({}, {}, {}, {}); }, ADPO_STATUS_INVALID_ARGUMENT, "n must be > 0"));
}

TEST(Objective, MetricsOfTheLastEvaluation) {
    const adpo::Objective obj;
    EXPECT_TRUE(Throws([&] { (void)obj.metrics_json(); }, ADPO_STATUS_INVALID_ARGUMENT));
    const double loss = obj.eval(kLogp, kAnchor, kRewards, kGroup).loss;
    const adpo_objective_metrics m = obj.metrics();
    EXPECT_EQ(m.struct_size, sizeof(adpo_objective_metrics));
    EXPECT_DOUBLE_EQ(m.loss, loss);
    EXPECT_EQ(m.groups, 1u);
    EXPECT_DOUBLE_EQ(m.tau, 0.8);
    EXPECT_DOUBLE_EQ(m.max_abs_score, 0.75);
    EXPECT_TRUE(std::isnan(m.clip_fraction)); // listwise: GRPO metric does not apply
    const std::string json = obj.metrics_json();
    EXPECT_EQ(json.front(), '{');
    EXPECT_NE(json.find("\"groups\":1"), std::string::npos) << json;
    EXPECT_NE(json.find("\"clip_fraction\":null"), std::string::npos) << json;
}

TEST(Objective, NonFiniteRewardThrowsNonFinite) {
    const adpo::Objective obj;
    const double nan = std::numeric_limits<double>::quiet_NaN();
    EXPECT_TRUE(Throws([&] { obj.eval(kLogp, kAnchor, {1.0, nan, 0.5, -0.1}, kGroup); }, ADPO_STATUS_NON_FINITE,
                       "rewards"));
    const double inf = std::numeric_limits<double>::infinity();
    EXPECT_TRUE(
        Throws([&] { obj.eval({-1.0, inf, -3.0, -4.0}, kAnchor, kRewards, kGroup); }, ADPO_STATUS_NON_FINITE));
    // A failed call leaves the objective usable.
    EXPECT_NEAR(obj.eval(kLogp, kAnchor, kRewards, kGroup).loss, 1.0152, 5e-5);
}

TEST(Objective, BadConfigThrowsInvalidConfig) {
    EXPECT_TRUE(Throws([] { adpo::Objective o(R"({"tau": 0.8, "bogus_key": 1})"); }, ADPO_STATUS_INVALID_CONFIG,
                       "bogus_key"));
    EXPECT_TRUE(Throws([] { adpo::Objective o("{\"tau\": "); }, ADPO_STATUS_INVALID_CONFIG));
    EXPECT_TRUE(Throws([] { adpo::Objective o(R"({"tau": -1})"); }, ADPO_STATUS_INVALID_CONFIG, "tau"));
    EXPECT_TRUE(Throws([] { adpo::Objective o(R"({"loss": "nope"})"); }, ADPO_STATUS_INVALID_CONFIG));
    // std::string with an embedded NUL would be truncated by C: refused by the wrapper.
    EXPECT_TRUE(
        Throws([] { adpo::Objective o(std::string("{}\0{", 4)); }, ADPO_STATUS_INVALID_ARGUMENT, "NUL"));
    // Catchable as std::runtime_error.
    EXPECT_THROW(adpo::Objective(R"({"x": 1})"), std::runtime_error);
}

TEST(Objective, EntropyVariantFeedsAdaptiveTau) {
    const adpo::Objective obj(R"({"adaptive_tau": {"rule": "smooth_hybrid"}})");
    EXPECT_TRUE(Throws([&] { obj.eval(kLogp, kAnchor, kRewards, kGroup); }, ADPO_STATUS_INVALID_ARGUMENT,
                       "policy_entropy"));
    const adpo::EvalResult r = obj.eval_entropy(kLogp, kAnchor, kRewards, kGroup, {0.5, 0.5, 0.5, 0.5});
    EXPECT_TRUE(std::isfinite(r.loss));
    EXPECT_GT(obj.metrics().tau, 0.8);
    EXPECT_TRUE(Throws([&] { obj.eval_entropy(kLogp, kAnchor, kRewards, kGroup, {0.5}); },
                       ADPO_STATUS_SHAPE_MISMATCH, "policy_entropy"));
}

TEST(Objective, GrpoTokenLevel) {
    const adpo::Objective obj(R"({"loss": "grpo"})");
    // ratio 1 everywhere (logp == old_logp); mask: 2 tokens in row 0, 1 in row 1.
    const std::vector<double> logp = {0, -1, -2, 0, -1, -2};
    const adpo::TokenEvalResult r = obj.eval_tokens(2, 3, logp, logp, {}, {0, 1, 1, 0, 1, 0}, {1, 0}, {5, 5});
    ASSERT_EQ(r.grad.size(), 6u);
    ASSERT_EQ(r.advantages.size(), 2u);
    EXPECT_GT(r.advantages[0], 0.0);
    EXPECT_NEAR(r.advantages[0], -r.advantages[1], 1e-12);
    // dapo aggregation: token sum / unmasked tokens of the batch.
    EXPECT_NEAR(r.loss, -(2 * r.advantages[0] + r.advantages[1]) / 3, 1e-9);
    EXPECT_EQ(r.grad[0], 0.0); // masked
    EXPECT_EQ(r.grad[5], 0.0);
    EXPECT_NEAR(r.grad[1], -r.advantages[0] / 3, 1e-9);
    EXPECT_EQ(obj.metrics().clip_fraction, 0.0);
    EXPECT_TRUE(Throws([&] { obj.eval_tokens(2, 3, logp, logp, {}, {0, 1}, {1, 0}, {5, 5}); },
                       ADPO_STATUS_SHAPE_MISMATCH, "mask"));
    // The token entry point belongs to loss grpo only.
    const adpo::Objective listwise;
    EXPECT_TRUE(Throws([&] { listwise.eval_tokens(2, 3, logp, logp, {}, {0, 1, 1, 0, 1, 0}, {1, 0}, {5, 5}); },
                       ADPO_STATUS_INVALID_ARGUMENT, "grpo"));
}

namespace {

// A 1-D CPU DLPack tensor owning a copy of `values`; counts deleter calls.
template <class T>
struct HostTensor {
    DLManagedTensorVersioned managed{};
    std::vector<T> data;
    std::int64_t shape[1];
    std::atomic<int> *deleted;

    static adpo::DLPackTensor make(const std::vector<T> &values, std::uint8_t code, std::atomic<int> *deleted) {
        auto *t = new HostTensor;
        t->data = values;
        t->shape[0] = static_cast<std::int64_t>(values.size());
        t->deleted = deleted;
        t->managed.version.major = DLPACK_MAJOR_VERSION;
        t->managed.version.minor = DLPACK_MINOR_VERSION;
        t->managed.manager_ctx = t;
        t->managed.deleter = [](DLManagedTensorVersioned *self) {
            auto *owner = static_cast<HostTensor *>(self->manager_ctx);
            ++*owner->deleted;
            delete owner;
        };
        t->managed.dl_tensor.data = t->data.data();
        t->managed.dl_tensor.device.device_type = kDLCPU;
        t->managed.dl_tensor.device.device_id = 0;
        t->managed.dl_tensor.ndim = 1;
        t->managed.dl_tensor.dtype.code = code;
        t->managed.dl_tensor.dtype.bits = static_cast<std::uint8_t>(8 * sizeof(T));
        t->managed.dl_tensor.dtype.lanes = 1;
        t->managed.dl_tensor.shape = t->shape;
        t->managed.dl_tensor.strides = nullptr;
        t->managed.dl_tensor.byte_offset = 0;
        return adpo::DLPackTensor(&t->managed);
    }
};

} // namespace

TEST(Objective, DLPackHandsOverInputsAndReturnsAnOwnedGradient) {
    const adpo::Objective obj;
    std::atomic<int> deleted{0};
    adpo::DLPackEvalResult r =
        obj.eval_dlpack(HostTensor<double>::make(kLogp, kDLFloat, &deleted),
                        HostTensor<double>::make(kAnchor, kDLFloat, &deleted),
                        HostTensor<double>::make(kRewards, kDLFloat, &deleted), nullptr,
                        HostTensor<std::int64_t>::make(kGroup, kDLInt, &deleted));
    EXPECT_EQ(deleted.load(), 4); // every input released exactly once by adpo
    const adpo::EvalResult host = obj.eval(kLogp, kAnchor, kRewards, kGroup);
    EXPECT_NEAR(r.loss, host.loss, 1e-12);
    ASSERT_TRUE(r.grad);
    const DLTensor &g = r.grad->dl_tensor;
    EXPECT_EQ(g.device.device_type, kDLCPU);
    EXPECT_EQ(g.dtype.code, kDLFloat);
    EXPECT_EQ(g.dtype.bits, 64);
    ASSERT_EQ(g.ndim, 1);
    ASSERT_EQ(g.shape[0], 4);
    const auto *values =
        reinterpret_cast<const double *>(static_cast<const char *>(g.data) + g.byte_offset);
    const std::int64_t stride = g.strides ? g.strides[0] : 1;
    for (std::size_t i = 0; i < 4; ++i)
        EXPECT_NEAR(values[static_cast<std::int64_t>(i) * stride], host.grad[i], 1e-12) << i;
    r.grad.reset(); // the gradient's own deleter

    // On failure the inputs are released too (rewards and targets both missing).
    deleted = 0;
    EXPECT_TRUE(Throws(
        [&] {
            obj.eval_dlpack(HostTensor<double>::make(kLogp, kDLFloat, &deleted),
                            HostTensor<double>::make(kAnchor, kDLFloat, &deleted), nullptr, nullptr,
                            HostTensor<std::int64_t>::make(kGroup, kDLInt, &deleted));
        },
        ADPO_STATUS_NULL_ARGUMENT));
    EXPECT_EQ(deleted.load(), 3);
}

TEST(Objective, SharedAcrossThreads) {
    const adpo::Objective obj;
    const double want = obj.eval(kLogp, kAnchor, kRewards, kGroup).loss;
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            for (int j = 0; j < 50; ++j)
                if (obj.eval(kLogp, kAnchor, kRewards, kGroup).loss != want) ++mismatches;
        });
    for (auto &t : threads) t.join();
    EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// Handles: move-only RAII
// ---------------------------------------------------------------------------------------------

template <class H>
void StaticHandleChecks() {
    static_assert(!std::is_copy_constructible<H>::value, "move-only");
    static_assert(!std::is_copy_assignable<H>::value, "move-only");
    static_assert(std::is_nothrow_move_constructible<H>::value, "noexcept move");
    static_assert(std::is_nothrow_move_assignable<H>::value, "noexcept move");
    static_assert(std::is_nothrow_destructible<H>::value, "noexcept destructor");
}

TEST(Handles, AreMoveOnly) {
    StaticHandleChecks<adpo::Objective>();
    StaticHandleChecks<adpo::Model>();
    StaticHandleChecks<adpo::Batch>();
    StaticHandleChecks<adpo::Trainer>();
    static_assert(std::is_same<decltype(std::declval<adpo::Objective &>().get()), adpo_objective *>::value, "");
    static_assert(std::is_same<decltype(std::declval<adpo::Model &>().get()), adpo_model *>::value, "");
    static_assert(std::is_same<decltype(std::declval<adpo::Batch &>().get()), adpo_batch *>::value, "");
    static_assert(std::is_same<decltype(std::declval<adpo::Trainer &>().get()), adpo_trainer *>::value, "");
}

TEST(Handles, ObjectiveMoveLeavesAnEmptyHandle) {
    adpo::Objective a(R"({"reward_transform": "raw"})");
    adpo_objective *raw = a.get();
    ASSERT_NE(raw, nullptr);
    EXPECT_TRUE(static_cast<bool>(a));

    adpo::Objective b(std::move(a));
    EXPECT_EQ(a.get(), nullptr); // NOLINT(bugprone-use-after-move): that is the point
    EXPECT_FALSE(static_cast<bool>(a));
    EXPECT_EQ(b.get(), raw);
    EXPECT_TRUE(Close(b.eval(kLogp, kAnchor, kRewards, kGroup).loss, 1.15766, 1e-5));
    // The moved-from object is safe to use: the library reports the NULL handle.
    EXPECT_TRUE(Throws([&] { a.eval(kLogp, kAnchor, kRewards, kGroup); }, ADPO_STATUS_NULL_ARGUMENT, "NULL"));

    // Move-assignment onto a live handle frees the old one; the target gets the new one.
    adpo::Objective c;
    c = std::move(b);
    EXPECT_EQ(c.get(), raw);
    EXPECT_EQ(b.get(), nullptr); // NOLINT(bugprone-use-after-move)
    // Self-move keeps the handle.
    adpo::Objective &alias = c;
    c = std::move(alias);
    EXPECT_EQ(c.get(), raw);
    // Assigning into a moved-from object revives it.
    a = std::move(c);
    EXPECT_EQ(a.get(), raw);
    EXPECT_TRUE(Close(a.eval(kLogp, kAnchor, kRewards, kGroup).loss, 1.15766, 1e-5));

    // release() hands the handle to C; the raw constructor adopts it back.
    adpo_objective *released = a.release();
    EXPECT_EQ(a.get(), nullptr);
    adpo::Objective adopted(released);
    EXPECT_EQ(adopted.get(), raw);
    adopted.reset();
    EXPECT_FALSE(static_cast<bool>(adopted));
    adpo::Objective empty(nullptr);
    EXPECT_FALSE(static_cast<bool>(empty));
}

TEST(Handles, ContainersOfHandlesMoveThem) {
    std::vector<adpo::Objective> objectives;
    for (int i = 0; i < 20; ++i) objectives.emplace_back(R"({"tau": 0.8})"); // reallocations move
    for (auto &o : objectives) EXPECT_NEAR(o.eval(kLogp, kAnchor, kRewards, kGroup).loss, 1.0152, 5e-5);
    std::vector<adpo::Batch> batches;
    for (int i = 0; i < 10; ++i) batches.push_back(MakeBatch(1, 2));
    for (auto &b : batches) EXPECT_EQ(b.n(), 2u);
}

TEST(Handles, BatchModelTrainerMoves) {
    adpo::Batch a = MakeBatch(2, 2);
    adpo_batch *raw = a.get();
    adpo::Batch b = std::move(a);
    EXPECT_EQ(a.get(), nullptr); // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(b.get(), raw);
    EXPECT_EQ(b.shape().n, 4u);
    EXPECT_TRUE(Throws([&] { a.set_rewards({1, 2, 3, 4}); }, ADPO_STATUS_NULL_ARGUMENT));
    EXPECT_TRUE(Throws([&] { (void)a.shape(); }, ADPO_STATUS_NULL_ARGUMENT));

    adpo::Model empty_model;
    EXPECT_FALSE(static_cast<bool>(empty_model));
    EXPECT_TRUE(Throws([&] { (void)empty_model.vocab_size(); }, ADPO_STATUS_NULL_ARGUMENT));
    EXPECT_TRUE(Throws([&] { adpo::Trainer t(empty_model); }, ADPO_STATUS_NULL_ARGUMENT));

    adpo::Trainer empty_trainer;
    EXPECT_TRUE(Throws([&] { empty_trainer.step(b); }, ADPO_STATUS_NULL_ARGUMENT));

    FIXTURE(path, "tiny/llama");
    adpo::Model m1(path);
    adpo_model *mraw = m1.get();
    adpo::Model m2 = std::move(m1);
    EXPECT_EQ(m1.get(), nullptr); // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(m2.get(), mraw);
    EXPECT_EQ(m2.vocab_size(), 16);

    adpo::Trainer t1(m2, kTrainerConfig);
    adpo_trainer *traw = t1.get();
    adpo::Trainer t2;
    t2 = std::move(t1);
    EXPECT_EQ(t1.get(), nullptr); // NOLINT(bugprone-use-after-move)
    EXPECT_EQ(t2.get(), traw);
    EXPECT_TRUE(Throws([&] { t1.step(b); }, ADPO_STATUS_NULL_ARGUMENT));
    b.set_rewards(RewardsFor(b));
    EXPECT_EQ(t2.step(b).step, 1u);
}

// ---------------------------------------------------------------------------------------------
// Batch
// ---------------------------------------------------------------------------------------------

TEST(Batch, RoundTripsItsArrays) {
    const std::vector<std::int64_t> ids = {1, 2, 3, 4, 1, 2, 5, 0};
    const std::vector<std::uint8_t> attention = {1, 1, 1, 1, 1, 1, 1, 0};
    const std::vector<std::uint8_t> loss_mask = {0, 0, 1, 1, 0, 0, 1, 0};
    const std::vector<std::int64_t> groups = {9, 9};
    adpo::Batch b(2, 4, ids, attention, loss_mask, groups);
    const adpo::Batch::Shape s = b.shape();
    EXPECT_EQ(s.n, 2u);
    EXPECT_EQ(s.t, 4u);
    EXPECT_EQ(b.n(), 2u);
    EXPECT_EQ(b.t(), 4u);
    EXPECT_EQ(b.ids(), ids);
    EXPECT_EQ(b.loss_mask(), loss_mask);
    EXPECT_EQ(b.group_ids(), groups);
    // Zero-copy getters.
    std::int64_t out_ids[8] = {};
    b.ids_into(out_ids);
    EXPECT_TRUE(std::equal(ids.begin(), ids.end(), out_ids));
    std::array<std::int64_t, 2> out_groups{};
    b.group_ids_into(out_groups);
    EXPECT_EQ(out_groups[1], 9);
    std::vector<std::uint8_t> out_mask(8);
    b.loss_mask_into(out_mask);
    EXPECT_EQ(out_mask, loss_mask);
    std::int64_t too_small[7];
    EXPECT_TRUE(Throws([&] { b.ids_into(too_small); }, ADPO_STATUS_SHAPE_MISMATCH));

    // Setters: lengths n (per sequence) or n * t (per token) where documented.
    EXPECT_NO_THROW(b.set_rewards({1.0, 0.0}));
    EXPECT_NO_THROW(b.set_targets({0.5, 0.5}));
    EXPECT_NO_THROW(b.set_old_logp({-1.0, -2.0}));
    EXPECT_NO_THROW(b.set_old_logp(std::vector<double>(8, -0.5)));
    // Old log-probs read back as held: per token, 0 off the loss mask.
    std::vector<double> old(8, 1.0);
    b.old_logp_into(old);
    EXPECT_EQ(old, (std::vector<double>{0, 0, -0.5, -0.5, 0, 0, -0.5, 0}));
    std::array<double, 2> per_row{};
    EXPECT_TRUE(Throws([&] { b.old_logp_into(per_row); }, ADPO_STATUS_SHAPE_MISMATCH, "per token"));
    EXPECT_NO_THROW(b.set_anchor_logp({-1.0, -2.0}));
    EXPECT_TRUE(Throws([&] { b.set_rewards({1.0, 0.0, 3.0}); }, ADPO_STATUS_SHAPE_MISMATCH, "rewards"));
    EXPECT_TRUE(Throws([&] { b.set_old_logp({-1.0, -2.0, -3.0}); }, ADPO_STATUS_SHAPE_MISMATCH));
    EXPECT_TRUE(Throws([&] { b.set_rewards({1.0, std::nan("")}); }, ADPO_STATUS_NON_FINITE));
}

TEST(Batch, CarriesTheRolloutRecordsAndConcatenates) {
    adpo::Batch a(2, 3, {1, 2, 3, 1, 2, 4}, {}, {0, 1, 1, 0, 1, 1}, {5, 5});
    EXPECT_TRUE(Throws([&] { a.rollout_logp(); }, ADPO_STATUS_INVALID_ARGUMENT, "rollout_logp"));
    a.set_rollout_logp({9, -1, -2, 9, -3, -4});
    EXPECT_EQ(a.rollout_logp(), (std::vector<double>{0, -1, -2, 0, -3, -4}));
    EXPECT_TRUE(Throws([&] { a.set_rollout_logp({-1.0, -2.0}); }, ADPO_STATUS_SHAPE_MISMATCH));
    EXPECT_TRUE(Throws([&] { a.truncated(); }, ADPO_STATUS_INVALID_ARGUMENT, "truncated"));
    a.set_truncated({0, 1});
    EXPECT_EQ(a.truncated(), (std::vector<std::uint8_t>{0, 1}));
    EXPECT_TRUE(Throws([&] { a.set_truncated({0, 2}); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([&] { a.policy_version(); }, ADPO_STATUS_INVALID_ARGUMENT));
    a.set_policy_version(7);
    EXPECT_EQ(a.policy_version(), 7u);

    adpo::Batch b(2, 4, {1, 2, 3, 4, 1, 2, 5, 6}, {}, {0, 0, 1, 1, 0, 0, 1, 1}, {5, 5});
    b.set_rollout_logp(std::vector<double>(8, -0.5));
    b.set_truncated({1, 1});
    b.set_policy_version(4);
    adpo::Batch c = adpo::Batch::concat({&a, &b});
    EXPECT_EQ(c.n(), 4u);
    EXPECT_EQ(c.t(), 4u);
    EXPECT_EQ(c.group_ids(), (std::vector<std::int64_t>{0, 0, 1, 1})); // kept apart
    EXPECT_EQ(c.ids(), (std::vector<std::int64_t>{1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 3, 4, 1, 2, 5, 6}));
    EXPECT_EQ(c.truncated(), (std::vector<std::uint8_t>{0, 1, 1, 1}));
    EXPECT_EQ(c.policy_version(), 4u); // the oldest
    adpo::Batch plain(1, 2, {1, 2}, {}, {0, 1}, {0});
    EXPECT_TRUE(Throws([&] { adpo::Batch::concat({&a, &plain}); }, ADPO_STATUS_INVALID_ARGUMENT, "of the 2 batches have"));

    EXPECT_EQ(adpo::soft_overlong_penalty(16, 20, 4, 1.0), 0.0);
    EXPECT_EQ(adpo::soft_overlong_penalty(18, 20, 4, 1.0), -0.5);
    EXPECT_EQ(adpo::soft_overlong_penalty(30, 20, 4, 0.5), -0.5);
    EXPECT_TRUE(Throws([] { adpo::soft_overlong_penalty(3, 20, 0, 1.0); }, ADPO_STATUS_INVALID_ARGUMENT));
}

TEST(Batch, ConstructionIsValidated) {
    // Attention mask may be omitted (all ones).
    EXPECT_NO_THROW(adpo::Batch(1, 3, {1, 2, 3}, {}, {0, 1, 1}, {0}));
    // The wrapper checks lengths against n and t.
    EXPECT_TRUE(
        Throws([] { adpo::Batch(2, 3, {1, 2, 3}, {}, {0, 1, 1}, {0, 0}); }, ADPO_STATUS_SHAPE_MISMATCH, "ids"));
    EXPECT_TRUE(Throws([] { adpo::Batch(1, 3, {1, 2, 3}, {1, 1}, {0, 1, 1}, {0}); }, ADPO_STATUS_SHAPE_MISMATCH,
                       "attention_mask"));
    EXPECT_TRUE(
        Throws([] { adpo::Batch(1, 3, {1, 2, 3}, {}, {0, 1, 1}, {0, 1}); }, ADPO_STATUS_SHAPE_MISMATCH, "group_ids"));
    // The library checks values.
    EXPECT_TRUE(
        Throws([] { adpo::Batch(1, 2, {1, 2}, {}, {1, 1}, {0}); }, ADPO_STATUS_INVALID_ARGUMENT, "loss_mask"));
    EXPECT_TRUE(Throws([] { adpo::Batch(1, 2, {1, -2}, {}, {0, 1}, {0}); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([] { adpo::Batch(0, 2, {}, {}, {}, {}); }, ADPO_STATUS_INVALID_ARGUMENT));
    const std::size_t huge = std::numeric_limits<std::size_t>::max() / 2;
    EXPECT_TRUE(Throws([&] { adpo::Batch(huge, 3, {}, {}, {}, {}); }, ADPO_STATUS_INVALID_ARGUMENT, "overflow"));
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

TEST(Model, LoadsTheTinyCheckpoint) {
    FIXTURE(path, "tiny/llama");
    const adpo::Model m(path);
    EXPECT_TRUE(static_cast<bool>(m));
    EXPECT_EQ(m.vocab_size(), 16);
    const adpo::Model same = adpo::Model::load(path, "cpu");
    EXPECT_EQ(same.vocab_size(), 16);
    EXPECT_NE(same.get(), m.get());
}

TEST(Model, LoadErrorsAreModelErrors) {
    FIXTURE(weights, "tiny/llama/model.safetensors");
    EXPECT_TRUE(Throws([&] { adpo::Model m(weights); }, ADPO_STATUS_MODEL, "checkpoint directory"));
    TempDir tmp;
    const std::string junk = (tmp.path / "junk.bin").string();
    std::ofstream(junk) << "not a model";
    EXPECT_TRUE(Throws([&] { adpo::Model m(junk); }, ADPO_STATUS_MODEL, "junk.bin"));
    const std::string missing = FixturesDir() + "/does_not_exist.pt";
    EXPECT_TRUE(Throws([&] { adpo::Model m(missing); }, ADPO_STATUS_MODEL, "does_not_exist.pt"));
}

TEST(Model, LoraAdapterSaves) {
    FIXTURE(dir, "hf/qwen3_gqa2_headdim16_tied");
    const adpo::Model lora =
        adpo::Model::load_options(dir, R"({"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}})");
    TempDir tmp;
    lora.save_adapter((tmp.path / "adapter").string());
    EXPECT_TRUE(fs::exists(tmp.path / "adapter" / "adapter_config.json"));
    const adpo::Model full(dir);
    EXPECT_TRUE(Throws([&] { full.save_adapter((tmp.path / "x").string()); }, ADPO_STATUS_UNSUPPORTED));
}

TEST(Model, GgufSavesReadBackAndRefuse) {
    FIXTURE(dir, "hf/qwen3_sharded_tied");
    const adpo::Model m(dir);
    TempDir tmp;
    const std::string out = (tmp.path / "m.gguf").string();
    m.save_gguf(out);
    const adpo::Model back(out);
    EXPECT_EQ(back.params(), m.params());
    m.save_gguf(out, R"({"dtype": "bf16"})");
    EXPECT_TRUE(Throws([&] { m.save_gguf(out, R"({"dtype": "q4_0"})"); }, ADPO_STATUS_INVALID_CONFIG, "q4_0"));
    const std::string text = (tmp.path / "notes.txt").string();
    std::ofstream(text) << "keep";
    EXPECT_TRUE(Throws([&] { m.save_gguf(text); }, ADPO_STATUS_INVALID_ARGUMENT, "not a GGUF file"));
    EXPECT_TRUE(Throws([&] { m.save_adapter_gguf((tmp.path / "a.gguf").string()); }, ADPO_STATUS_UNSUPPORTED));
    const adpo::Model lora = adpo::Model::load_options(dir, R"({"lora": {"r": 4}})");
    lora.save_adapter_gguf((tmp.path / "a.gguf").string());
    EXPECT_GT(fs::file_size(tmp.path / "a.gguf"), 64u);
}

TEST(Runtime, ThreadCountIsSetReadAndChecked) {
    const std::int32_t before = adpo::num_threads();
    ASSERT_GE(before, 1);
    adpo::set_num_threads(1);
    EXPECT_EQ(adpo::num_threads(), 1);
    EXPECT_TRUE(Throws([] { adpo::set_num_threads(0); }, ADPO_STATUS_INVALID_ARGUMENT, "thread count"));
    EXPECT_EQ(adpo::num_threads(), 1);
    adpo::set_num_threads(before);
}

TEST(Model, HuggingFaceCheckpointLoadsWithOptionsAndSavesBack) {
    FIXTURE(dir, "hf/qwen3_gqa2_headdim16_tied");
    const adpo::Model m = adpo::Model::load_options(dir, R"({"dtype": "float64"})");
    const adpo::Model f32(dir);
    EXPECT_EQ(m.vocab_size(), f32.vocab_size());
    EXPECT_EQ(m.num_params(), f32.num_params());
    const std::vector<double> before = m.params();
    TempDir tmp;
    const std::string out = (tmp.path / "saved").string();
    m.save(out);
    EXPECT_TRUE(fs::exists(tmp.path / "saved" / "config.json"));
    const adpo::Model back = adpo::Model::load_options(out, R"({"dtype": "float64"})");
    EXPECT_EQ(back.params(), before);
    EXPECT_TRUE(Throws([&] { (void)adpo::Model::load_options(dir, R"({"dtype": "int8"})"); },
                       ADPO_STATUS_INVALID_CONFIG));
}

TEST(Trainer, NativeSamplingStopsAtAStopSequenceOrAnyEosId) {
    FIXTURE(dir, "hf/qwen3_gqa2_headdim16_tied");
    adpo::Model policy(dir);
    adpo::Trainer trainer(policy, kTrainerConfig);
    const std::vector<std::vector<std::int64_t>> prompts = {{3, 9, 4}};
    const char *greedy = R"({"max_new_tokens": 8, "top_k": 1, "eos_id": []})";
    const adpo::Batch free_run = trainer.sample(prompts, 1, greedy);
    ASSERT_EQ(free_run.t(), 3u + 8u);
    const auto ids = free_run.ids();
    const std::int64_t a = ids[3], b = ids[4], c = ids[5];
    // A stop sequence of the first two generated tokens ends the row after them (kept, scored).
    const std::string stop = R"({"max_new_tokens": 8, "top_k": 1, "eos_id": [], "stop_sequences": [[)" +
                             std::to_string(a) + ", " + std::to_string(b) + "]]}";
    const adpo::Batch stopped = trainer.sample(prompts, 1, stop);
    EXPECT_EQ(stopped.t(), 3u + 2u);
    // An EOS list: the row ends at the first of them it generates.
    std::int64_t other = 159;
    while (other == a || other == b || other == c) --other;
    const std::string eos =
        R"({"max_new_tokens": 8, "top_k": 1, "eos_id": [)" + std::to_string(other) + ", " + std::to_string(c) + "]}";
    const adpo::Batch ended = trainer.sample(prompts, 1, eos);
    EXPECT_LE(ended.t(), 3u + 3u);
    EXPECT_EQ(ended.ids()[ended.t() - 1], c);
    EXPECT_TRUE(Throws([&] { trainer.sample(prompts, 1, R"({"stop_sequences": [[]]})"); },
                       ADPO_STATUS_INVALID_CONFIG));
    EXPECT_TRUE(Throws([&] { trainer.sample(prompts, 1, R"({"stop_sequences": [1, 2]})"); },
                       ADPO_STATUS_INVALID_CONFIG));
}

TEST(Trainer, TrainableAndBf16MixedPrecisionOnACheckpoint) {
    FIXTURE(dir, "hf/qwen3_gqa2_headdim16_tied");
    adpo::Model policy = adpo::Model::load_options(dir, R"({"dtype": "bfloat16"})");
    adpo::Trainer trainer(policy, R"({"optimizer": {"name": "sgd", "lr": 0.1}, "precision": "bf16-mixed",
                                       "trainable": ["*.mlp.*"]})");
    const std::vector<double> before = policy.params();  // the trainable MLP weights' masters
    adpo::Batch batch = trainer.sample({{3, 9, 4}, {5, 1}}, 3, R"({"max_new_tokens": 4, "seed": 2})");
    std::vector<double> rewards(batch.n());
    for (std::size_t i = 0; i < rewards.size(); ++i) rewards[i] = static_cast<double>(i % 3);
    batch.set_rewards(rewards);
    EXPECT_EQ(trainer.step(batch).step, 1u);
    const std::vector<double> after = policy.params();
    ASSERT_EQ(after.size(), before.size());
    EXPECT_NE(after, before);
    adpo::Model f32(dir);
    EXPECT_TRUE(Throws([&] { adpo::Trainer t(f32, R"({"precision": "bf16-mixed"})"); },
                       ADPO_STATUS_INVALID_ARGUMENT, "bfloat16"));
    EXPECT_TRUE(Throws([&] { adpo::Trainer t(f32, R"({"trainable": ["*.mpl.*"]})"); },
                       ADPO_STATUS_INVALID_CONFIG, "matches no parameter"));
}

TEST(Trainer, ActivationCheckpointingGivesTheSameStep) {
    FIXTURE(dir, "hf/qwen3_gqa2_headdim16_tied");
    const std::string cfg = R"({"optimizer": {"name": "sgd", "lr": 0.5}, "seed": 3)";
    adpo::Model p1 = adpo::Model::load_options(dir, R"({"dtype": "float64"})");
    adpo::Model p2 = adpo::Model::load_options(dir, R"({"dtype": "float64"})");
    adpo::Trainer whole(p1, cfg + "}");
    adpo::Trainer recomputed(p2, cfg + R"(, "activation_checkpointing": true})");
    adpo::Batch batch = whole.sample({{3, 9, 4}, {5, 1}}, 3, R"({"max_new_tokens": 4, "seed": 2})");
    batch.set_rewards(std::vector<double>{0, 1, 2, 2, 0, 1});
    const std::vector<double> before = p1.params();
    whole.step(batch);
    recomputed.step(batch);
    const std::vector<double> a = p1.params(), b = p2.params();
    ASSERT_EQ(a.size(), b.size());
    EXPECT_NE(a, before);
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-10) << "parameter " << i;
}

// ---------------------------------------------------------------------------------------------
// Trainer
// ---------------------------------------------------------------------------------------------

TEST(Trainer, StepOnAHandMadeBatch) {
    FIXTURE(path, "tiny/llama");
    adpo::Trainer trainer;
    {
        adpo::Model policy(path);
        trainer = adpo::Trainer(policy, R"({"optimizer": {"name": "adamw", "lr": 0.01}, "epochs_per_batch": 2})");
    } // the trainer keeps its own reference to the model
    EXPECT_TRUE(Throws([&] { (void)trainer.metrics_json(); }, ADPO_STATUS_INVALID_ARGUMENT));

    adpo::Batch batch = MakeBatch(2, 4);
    EXPECT_TRUE(Throws([&] { trainer.step(batch); }, ADPO_STATUS_INVALID_ARGUMENT, "rewards"));
    batch.set_rewards(RewardsFor(batch));
    const adpo_trainer_metrics m = trainer.step(batch);
    EXPECT_EQ(m.struct_size, sizeof(adpo_trainer_metrics));
    EXPECT_EQ(m.step, 2u); // epochs_per_batch optimizer updates
    EXPECT_EQ(m.groups, 2u);
    EXPECT_EQ(m.tokens, 16.0);
    EXPECT_TRUE(std::isfinite(m.loss));
    EXPECT_GT(m.grad_norm, 0.0);
    EXPECT_DOUBLE_EQ(m.lr, 0.01);
    EXPECT_GE(m.step_time_ms, 0.0);
    const std::string json = trainer.metrics_json();
    EXPECT_NE(json.find("\"step\":2"), std::string::npos) << json;
    EXPECT_NE(json.find("\"grad_norm\""), std::string::npos) << json;
    EXPECT_EQ(trainer.step(batch).step, 4u);
}

// Two forward_backward calls with a host gradient g each move the weights as one call with 2g
// (an SGD step is linear in the accumulated gradient).
TEST(Trainer, ForwardBackwardAccumulatesTheHostsGradient) {
    FIXTURE(path, "tiny/llama");
    auto run = [&](int calls, double scale) {
        adpo::Model policy(path);
        adpo::Trainer trainer(policy, R"({"optimizer": {"name": "sgd", "lr": 0.05}})");
        adpo::Batch batch = MakeBatch(2, 4);
        const std::vector<double> logp = trainer.token_logp(batch);
        std::vector<double> g(logp.size());
        for (std::size_t i = 0; i < g.size(); i++) g[i] = scale * (std::sin(double(i)) + logp[i]);
        for (int c = 0; c < calls; c++) {
            const adpo_trainer_metrics m = trainer.forward_backward(batch, g);
            EXPECT_TRUE(std::isnan(m.loss));
        }
        EXPECT_EQ(trainer.optim_step().step, 1u);
        EXPECT_TRUE(Throws([&] { trainer.optim_step(); }, ADPO_STATUS_INVALID_ARGUMENT, "forward_backward"));
        return policy.params();
    };
    const std::vector<double> twice = run(2, 1.0), once = run(1, 2.0);
    ASSERT_EQ(twice.size(), once.size());
    for (std::size_t i = 0; i < once.size(); i++)
        ASSERT_NEAR(twice[i], once[i], 1e-5 * std::max(1.0, std::fabs(once[i]))) << i;
}

// The DLPack overload hands the gradient over: released exactly once, also when refused (a 1-D
// gradient is not [n, t]); the DLPack path's values are checked in tests/python.
TEST(Trainer, ForwardBackwardTakesADLPackGradient) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, R"({"optimizer": {"name": "sgd", "lr": 0.05}})");
    adpo::Batch batch = MakeBatch(2, 4);
    std::atomic<int> deleted{0};
    EXPECT_TRUE(Throws([&] { trainer.forward_backward(batch, HostTensor<double>::make({1, 2, 3}, kDLFloat, &deleted)); },
                       ADPO_STATUS_SHAPE_MISMATCH, "grad_logp"));
    EXPECT_EQ(deleted.load(), 1);
    EXPECT_TRUE(Throws([&] { trainer.optim_step(); }, ADPO_STATUS_INVALID_ARGUMENT));
}

TEST(Trainer, ConfigErrorsAndReferenceModel) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    EXPECT_TRUE(Throws([&] { adpo::Trainer t(policy, R"({"epochs_per_batch": 0})"); }, ADPO_STATUS_INVALID_CONFIG));
    EXPECT_TRUE(Throws([&] { adpo::Trainer t(policy, R"({"not_a_key": true})"); }, ADPO_STATUS_INVALID_CONFIG,
                       "not_a_key"));
    adpo::Batch batch = MakeBatch(1, 3);
    batch.set_rewards({1.0, 0.0, 0.5});
    // Anchor mode "fixed" needs a reference model (or the batch's anchor_logp).
    adpo::Trainer no_ref(policy, R"({"anchor": {"mode": "fixed"}})");
    EXPECT_TRUE(Throws([&] { no_ref.step(batch); }, ADPO_STATUS_INVALID_ARGUMENT, "reference"));
    const adpo::Model reference(path);
    adpo::Trainer with_ref(policy, reference, R"({"anchor": {"mode": "fixed"}})");
    EXPECT_EQ(with_ref.step(batch).step, 1u);
}

TEST(Trainer, SampleGivesAGroupedRightPaddedBatch) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kTrainerConfig);
    const std::vector<std::vector<std::int64_t>> prompts = {{1, 5}, {1, 2, 7}};
    const std::size_t k = 3;
    const adpo::Batch batch = trainer.sample(prompts, k, R"({"max_new_tokens": 4, "seed": 5})");
    const adpo::Batch::Shape s = batch.shape();
    ASSERT_EQ(s.n, prompts.size() * k);
    ASSERT_GE(s.t, 3u + 1u);
    ASSERT_LE(s.t, 3u + 4u);
    const auto ids = batch.ids();
    const auto mask = batch.loss_mask();
    const auto groups = batch.group_ids();
    for (std::size_t i = 0; i < s.n; ++i) {
        const std::size_t g = i / k;
        EXPECT_EQ(groups[i], static_cast<std::int64_t>(g));
        const auto &p = prompts[g];
        std::size_t generated = 0;
        for (std::size_t j = 0; j < s.t; ++j) {
            const std::int64_t tok = ids[i * s.t + j];
            EXPECT_GE(tok, 0);
            EXPECT_LT(tok, 16);
            if (j < p.size()) {
                EXPECT_EQ(tok, p[j]) << "row " << i << " starts with its prompt";
                EXPECT_EQ(mask[i * s.t + j], 0) << "prompt tokens are not scored";
            } else {
                generated += mask[i * s.t + j];
            }
        }
        EXPECT_EQ(generated, 4u) << "row " << i << ": no eos_id, so every row generates max_new_tokens";
    }
    // Same seed, same samples; the flat overload is the same call.
    const std::vector<std::int64_t> flat = {1, 5, 1, 2, 7};
    const std::vector<std::size_t> lengths = {2, 3};
    const adpo::Batch again = trainer.sample(flat, lengths, k, R"({"max_new_tokens": 4, "seed": 5})");
    EXPECT_EQ(again.ids(), ids);
    EXPECT_TRUE(Throws([&] { trainer.sample(flat, {2, 2}, k); }, ADPO_STATUS_SHAPE_MISMATCH, "prompt_tokens"));
    // Library-side validation.
    EXPECT_TRUE(Throws([&] { trainer.sample({{1, 99}}, 2); }, ADPO_STATUS_INVALID_ARGUMENT, "vocabulary"));
    EXPECT_TRUE(Throws([&] { trainer.sample({{1, 2}}, 0); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([&] { trainer.sample({}, 2); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([&] { trainer.sample({{1, 2}}, 2, R"({"temp": 1})"); }, ADPO_STATUS_INVALID_CONFIG));

    // The sampled batch trains: rewards computed here, one step.
    adpo::Batch trainable = trainer.sample(prompts, k, R"({"max_new_tokens": 2})");
    std::vector<double> rewards(trainable.n());
    const auto tids = trainable.ids();
    for (std::size_t i = 0; i < rewards.size(); ++i) rewards[i] = static_cast<double>(tids[i * trainable.t() + 2] % 3);
    trainable.set_rewards(rewards);
    const adpo_trainer_metrics m = trainer.step(trainable);
    EXPECT_EQ(m.step, 1u);
    EXPECT_EQ(m.groups, 2u);
}

TEST(Trainer, CheckpointRoundTripRestoresSequenceLogp) {
    FIXTURE(path, "tiny/llama");
    TempDir dir;
    const std::string ckpt = (dir.path / "policy.safetensors").string();
    adpo::Batch batch = MakeBatch(2, 4);
    batch.set_rewards(RewardsFor(batch));

    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kTrainerConfig);
    trainer.step(batch);
    const std::vector<double> saved = trainer.sequence_logp(batch);
    ASSERT_EQ(saved.size(), 8u);
    trainer.save(ckpt);
    EXPECT_TRUE(fs::exists(ckpt));
    // One file holds weights and trainer state.
    EXPECT_FALSE(fs::exists(dir.path / "policy.trainer.safetensors"));

    trainer.step(batch);
    trainer.step(batch);
    const std::vector<double> moved = trainer.sequence_logp(batch);
    EXPECT_NE(moved, saved) << "training should change the policy";

    // A failed load leaves the trainer as it was.
    EXPECT_TRUE(Throws([&] { trainer.load((dir.path / "missing.safetensors").string()); }, ADPO_STATUS_CHECKPOINT));
    EXPECT_EQ(trainer.sequence_logp(batch), moved);

    trainer.load(ckpt);
    EXPECT_EQ(trainer.sequence_logp(batch), saved); // bit-identical
    EXPECT_EQ(trainer.step(batch).step, 2u);        // step counter restored too

    // A fresh trainer on a fresh copy of the model restores the same policy (zero-copy getter).
    adpo::Model fresh_policy(path);
    adpo::Trainer fresh(fresh_policy, kTrainerConfig);
    fresh.load(ckpt);
    std::vector<double> restored(8);
    fresh.sequence_logp_into(batch, restored);
    EXPECT_EQ(restored, saved);
    double wrong[3];
    EXPECT_TRUE(Throws([&] { fresh.sequence_logp_into(batch, wrong); }, ADPO_STATUS_SHAPE_MISMATCH));

    // A checkpoint of another architecture is refused.
    FIXTURE(other_path, "tiny/qwen2");
    adpo::Model other(other_path);
    adpo::Trainer other_trainer(other, kTrainerConfig);
    EXPECT_TRUE(Throws([&] { other_trainer.load(ckpt); }, ADPO_STATUS_CHECKPOINT));
}

// ---------------------------------------------------------------------------------------------
// Data-parallel training: world, parameters, the host's all-reduce
// ---------------------------------------------------------------------------------------------

namespace {

const char *kDistConfig = R"({"loss": "listwise", "tau": 0.8, "beta_reward": 0.5, "epochs_per_batch": 2,
    "optimizer": {"name": "adamw", "lr": 0.01}, "grad_clip": 1.0, "seed": 3})";

// An all-reduce for a world of one rank: the sum over one rank is the buffer itself. Counts its
// calls and checks what it is given.
struct IdentityAllreduce {
    std::shared_ptr<std::atomic<int>> calls = std::make_shared<std::atomic<int>>(0);
    std::shared_ptr<std::atomic<int>> bad = std::make_shared<std::atomic<int>>(0);
    int operator()(void *buffer, std::size_t count, DLDataType dtype, DLDevice device) const {
        ++*calls;
        const bool ok = buffer != nullptr && count > 0 && dtype.code == kDLFloat &&
                        (dtype.bits == 32 || dtype.bits == 64) && dtype.lanes == 1 && device.device_type == kDLCPU;
        if (!ok) ++*bad;
        return ok ? 0 : 1;
    }
};

} // namespace

TEST(Distributed, HasMpiIsABool) {
    const bool mpi = adpo::has_mpi();
    EXPECT_EQ(mpi, adpo_has_mpi());
}

TEST(Distributed, WorldIsRankZeroOfOneAlone) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kDistConfig);
    const auto [rank, size] = trainer.world();
    EXPECT_EQ(rank, 0);
    EXPECT_EQ(size, 1);
    adpo::Batch batch = MakeBatch(2, 4);
    batch.set_rewards(RewardsFor(batch));
    EXPECT_EQ(trainer.step(batch).reduce_time_ms, 0.0) << "no collectives in one process";
    adpo::Trainer empty;
    EXPECT_TRUE(Throws([&] { (void)empty.world(); }, ADPO_STATUS_NULL_ARGUMENT));
}

TEST(Distributed, ParamsChangeAfterAStep) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    const std::size_t n = policy.num_params();
    ASSERT_GT(n, 0u);
    const std::vector<double> before = policy.params();
    ASSERT_EQ(before.size(), n);
    EXPECT_TRUE(std::any_of(before.begin(), before.end(), [](double v) { return v != 0.0; }));
    EXPECT_EQ(adpo::Model(path).params(), before) << "two loads of one file hold the same weights";

    adpo::Trainer trainer(policy, kDistConfig);
    adpo::Batch batch = MakeBatch(2, 4);
    batch.set_rewards(RewardsFor(batch));
    trainer.step(batch);
    std::vector<double> after(n);
    policy.params_into(after); // the policy handle sees the trained weights
    EXPECT_NE(after, before) << "a step must change the policy's parameters";
    EXPECT_EQ(policy.params(), after);

    std::vector<double> wrong(n + 1);
    EXPECT_TRUE(Throws([&] { policy.params_into(wrong); }, ADPO_STATUS_SHAPE_MISMATCH));
    adpo::Model empty;
    EXPECT_TRUE(Throws([&] { (void)empty.num_params(); }, ADPO_STATUS_NULL_ARGUMENT));
    EXPECT_TRUE(Throws([&] { (void)empty.params(); }, ADPO_STATUS_NULL_ARGUMENT));
}

TEST(Distributed, AllreduceWorldOfOneTrainsExactlyAsAlone) {
    FIXTURE(path, "tiny/llama");
    adpo::Batch batch = MakeBatch(3, 4);
    batch.set_rewards(RewardsFor(batch));

    adpo::Model alone_policy(path);
    adpo::Trainer alone(alone_policy, kDistConfig);
    adpo::Model dp_policy(path);
    adpo::Trainer dp(dp_policy, kDistConfig);
    const IdentityAllreduce identity;
    dp.use_allreduce(0, 1, identity);
    const int joined = *identity.calls;
    EXPECT_GE(joined, 1) << "joining copies rank 0's state through the all-reduce";
    const adpo::World w = dp.world();
    EXPECT_EQ(w.rank, 0);
    EXPECT_EQ(w.size, 1);

    for (int s = 0; s < 3; ++s) {
        const adpo_trainer_metrics a = alone.step(batch);
        const adpo_trainer_metrics d = dp.step(batch);
        EXPECT_EQ(d.step, a.step);
        EXPECT_EQ(d.loss, a.loss);
        EXPECT_EQ(d.grad_norm, a.grad_norm);
        EXPECT_EQ(d.groups, a.groups);
        EXPECT_GE(d.reduce_time_ms, 0.0);
        EXPECT_LE(d.reduce_time_ms, d.step_time_ms);
    }
    EXPECT_GT(*identity.calls, joined) << "steps reduce through the callback";
    EXPECT_EQ(*identity.bad, 0);
    const std::vector<double> trained = dp_policy.params();
    EXPECT_EQ(trained, alone_policy.params()) << "bit-identical weights";
    EXPECT_NE(trained, adpo::Model(path).params());
}

TEST(Distributed, AllreduceFunctionIsDestroyedOnceWithTheTrainer) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    auto token = std::make_shared<int>(0);
    std::atomic<int> calls{0};
    {
        adpo::Trainer trainer(policy, kDistConfig);
        trainer.use_allreduce(0, 1, [token, &calls](void *, std::size_t, DLDataType, DLDevice) {
            ++calls;
            return 0;
        });
        // Only the library's heap copy of the std::function holds a second reference.
        EXPECT_EQ(token.use_count(), 2);
        adpo::Batch batch = MakeBatch(2, 4);
        batch.set_rewards(RewardsFor(batch));
        trainer.step(batch);
        adpo::Trainer moved = std::move(trainer); // moving the handle does not touch the function
        EXPECT_EQ(token.use_count(), 2);
        moved.step(batch);
    }
    EXPECT_EQ(token.use_count(), 1) << "freeing the trainer destroys the function";
    EXPECT_GE(calls.load(), 3);

    // Replacing the communicator destroys the previous function at once.
    adpo::Trainer trainer(policy, kDistConfig);
    auto first = std::make_shared<int>(1);
    auto second = std::make_shared<int>(2);
    trainer.use_allreduce(0, 1, [first](void *, std::size_t, DLDataType, DLDevice) { return 0; });
    EXPECT_EQ(first.use_count(), 2);
    trainer.use_allreduce(0, 1, [second](void *, std::size_t, DLDataType, DLDevice) { return 0; });
    EXPECT_EQ(first.use_count(), 1);
    EXPECT_EQ(second.use_count(), 2);
    trainer.reset();
    EXPECT_EQ(second.use_count(), 1);
}

TEST(Distributed, AllreduceBadRankThrowsInvalidArgument) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kDistConfig);
    auto token = std::make_shared<int>(0);
    int calls = 0;
    auto fn = [token, &calls](void *, std::size_t, DLDataType, DLDevice) {
        ++calls;
        return 0;
    };
    EXPECT_TRUE(Throws([&] { trainer.use_allreduce(2, 2, fn); }, ADPO_STATUS_INVALID_ARGUMENT, "rank"));
    EXPECT_TRUE(Throws([&] { trainer.use_allreduce(-1, 2, fn); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([&] { trainer.use_allreduce(0, 0, fn); }, ADPO_STATUS_INVALID_ARGUMENT));
    EXPECT_TRUE(Throws([&] { trainer.use_allreduce(0, 1, adpo::AllreduceFunction()); }, ADPO_STATUS_NULL_ARGUMENT));
    adpo::Trainer empty;
    EXPECT_TRUE(Throws([&] { empty.use_allreduce(0, 1, fn); }, ADPO_STATUS_NULL_ARGUMENT));
    EXPECT_EQ(calls, 0) << "a refused function is never called";
    EXPECT_EQ(token.use_count(), 2) << "only `fn` holds it: every refused copy was destroyed";
    const adpo::World w = trainer.world();
    EXPECT_EQ(w.rank, 0);
    EXPECT_EQ(w.size, 1);
}

TEST(Distributed, AllreduceFailuresAreCommunicationErrors) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kDistConfig);
    // A non-zero return (e.g. an MPI error code) and an exception both fail the join.
    EXPECT_TRUE(Throws([&] { trainer.use_allreduce(0, 1, [](void *, std::size_t, DLDataType, DLDevice) { return 7; }); },
                       ADPO_STATUS_COMMUNICATION, "returned 7"));
    EXPECT_TRUE(Throws(
        [&] {
            trainer.use_allreduce(0, 1, [](void *, std::size_t, DLDataType, DLDevice) -> int {
                throw std::runtime_error("link down");
            });
        },
        ADPO_STATUS_COMMUNICATION));
    EXPECT_EQ(trainer.world().size, 1) << "after a failed join the trainer trains alone";
    adpo::Batch batch = MakeBatch(2, 4);
    batch.set_rewards(RewardsFor(batch));
    EXPECT_EQ(trainer.step(batch).step, 2u);

    // A step whose all-reduce fails throws on the step and changes no weights.
    auto fail = std::make_shared<std::atomic<bool>>(false);
    trainer.use_allreduce(0, 1, [fail](void *, std::size_t, DLDataType, DLDevice) { return fail->load() ? 1 : 0; });
    const std::vector<double> before = policy.params();
    fail->store(true);
    EXPECT_TRUE(Throws([&] { trainer.step(batch); }, ADPO_STATUS_COMMUNICATION));
    EXPECT_EQ(policy.params(), before);
}

TEST(Distributed, UseMpiAloneOrUnsupported) {
    FIXTURE(path, "tiny/llama");
    adpo::Model policy(path);
    adpo::Trainer trainer(policy, kDistConfig);
    if (!adpo::has_mpi()) {
        EXPECT_TRUE(Throws([&] { trainer.use_mpi(); }, ADPO_STATUS_UNSUPPORTED));
        return;
    }
    // ctest runs every test in its own process: MPI is initialised here as a singleton
    // (MPI_COMM_WORLD of one process), and a world of one trains exactly as alone.
    trainer.use_mpi();
    const adpo::World w = trainer.world();
    EXPECT_EQ(w.rank, 0);
    EXPECT_EQ(w.size, 1);
    adpo::Model alone_policy(path);
    adpo::Trainer alone(alone_policy, kDistConfig);
    adpo::Batch batch = MakeBatch(2, 4);
    batch.set_rewards(RewardsFor(batch));
    for (int s = 0; s < 2; ++s) {
        EXPECT_EQ(trainer.step(batch).loss, alone.step(batch).loss);
    }
    EXPECT_EQ(policy.params(), alone_policy.params());
}

// ---- Tokenizer (fixtures of tests/fixtures/make_tokenizers.py: special tokens first in each
// vocabulary, qwen: <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2; llama3: <|begin_of_text|> 0;
// tests/tokenizer.rs compares every id and rendering with Python).

TEST(Tokenizer, EncodesAndDecodesRoundTrip) {
    FIXTURE(dir, "tokenizers/qwen");
    const adpo::Tokenizer tok(dir);
    const std::string text = "Hello world! Café 東京 🚀 <|im_end|>";
    const std::vector<std::int64_t> ids = tok.encode(text, false);
    ASSERT_GT(ids.size(), 5u);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_EQ(tok.decode(ids), text);
    EXPECT_EQ(tok.decode(ids, true), "Hello world! Café 東京 🚀 ");
    EXPECT_TRUE(tok.encode("").empty());
    std::string emoji;
    for (int i = 0; i < 50; ++i) emoji += "🦀";
    const std::vector<std::int64_t> many = tok.encode(emoji);
    EXPECT_GT(many.size(), emoji.size() / 4);
    EXPECT_EQ(tok.decode(many), emoji);
    EXPECT_EQ(tok.vocab_size(), 700);
    EXPECT_EQ(tok.eos_ids(), (std::vector<std::int64_t>{2, 0}));
    EXPECT_EQ(tok.token_to_id("<|im_start|>"), 1);
    bool found = true;
    EXPECT_EQ(tok.special_token("bos_token", &found), "");
    EXPECT_FALSE(found);
    EXPECT_EQ(tok.special_token("eos_token", &found), "<|im_end|>");
    EXPECT_TRUE(found);
}

TEST(Tokenizer, MoreIdsThanTheFirstGuessAreFetchedAgain) {
    // The wrapper guesses 4 EOS ids; six take the SHAPE_MISMATCH-then-retry path.
    FIXTURE(dir, "tokenizers/qwen");
    TempDir tmp;
    fs::copy_file(fs::path(dir) / "tokenizer.json", tmp.path / "tokenizer.json");
    {
        std::ofstream(tmp.path / "generation_config.json") << R"({"eos_token_id": [5, 4, 3, 2, 1, 0]})";
    }
    const adpo::Tokenizer tok(tmp.path.string());
    EXPECT_EQ(tok.eos_ids(), (std::vector<std::int64_t>{5, 4, 3, 2, 1, 0}));
}

TEST(Tokenizer, BatchFormsMatchOneByOne) {
    FIXTURE(dir, "tokenizers/llama3/tokenizer.json");
    const adpo::Tokenizer tok(dir);
    const std::vector<std::string> texts = {"Hello", "", "東京は日本の首都です。", std::string(300, 'x')};
    const auto seqs = tok.encode_batch(texts);
    ASSERT_EQ(seqs.size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) {
        EXPECT_EQ(seqs[i], tok.encode(texts[i]));
        EXPECT_EQ(seqs[i].front(), 0); // <|begin_of_text|>
    }
    EXPECT_EQ(tok.decode_batch(seqs, true), texts);
    EXPECT_TRUE(tok.encode_batch({}).empty());
    EXPECT_TRUE(tok.decode_batch({}).empty());
}

TEST(Tokenizer, ChatTemplates) {
    FIXTURE(qwen_dir, "tokenizers/qwen");
    FIXTURE(mistral_dir, "tokenizers/mistral");
    const adpo::Tokenizer qwen(qwen_dir), mistral(mistral_dir);
    const std::string user = R"([{"role": "user", "content": "What is 2 + 2?"}])";
    const std::string head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                             "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n";
    EXPECT_EQ(qwen.apply_chat_template(user), head);
    EXPECT_EQ(qwen.apply_chat_template(user, true), head + "<|im_start|>assistant\n");
    EXPECT_EQ(qwen.apply_chat_template_options(
                  user, R"({"add_generation_prompt": true, "variables": {"enable_thinking": false}})"),
              head + "<|im_start|>assistant\n<think>\n\n</think>\n\n");
    EXPECT_EQ(qwen.apply_chat_template_options(user, ""), head);
    EXPECT_EQ(mistral.apply_chat_template(
                  R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])"),
              "<s> [INST] Be brief.\n\nHi [/INST]");
    EXPECT_TRUE(Throws([&] { mistral.apply_chat_template(R"([{"role": "user", "content": "a"},
                                                              {"role": "user", "content": "b"}])"); },
                       ADPO_STATUS_INVALID_ARGUMENT, "conversation roles must alternate"));
    EXPECT_TRUE(Throws([&] { qwen.apply_chat_template("[{\"content\": 1}]"); }, ADPO_STATUS_INVALID_ARGUMENT,
                       "messages[0]"));
    EXPECT_TRUE(Throws([&] { qwen.apply_chat_template_options(user, R"({"tempalte": ""})"); },
                       ADPO_STATUS_INVALID_CONFIG, "tempalte"));
}

TEST(Tokenizer, Errors) {
    FIXTURE(dir, "tokenizers/qwen");
    const adpo::Tokenizer tok(dir);
    EXPECT_TRUE(Throws([&] { adpo::Tokenizer(dir + "/no-such-dir"); }, ADPO_STATUS_IO, "no-such-dir"));
    EXPECT_TRUE(Throws([&] { tok.decode({1, 700}); }, ADPO_STATUS_INVALID_ARGUMENT, "ids[1] = 700"));
    EXPECT_TRUE(Throws([&] { tok.encode("caf\xe9"); }, ADPO_STATUS_INVALID_ARGUMENT, "UTF-8"));
    EXPECT_TRUE(Throws([&] { tok.encode(std::string("a\0b", 3)); }, ADPO_STATUS_INVALID_ARGUMENT, "NUL"));
    EXPECT_TRUE(Throws([&] { tok.encode_batch({"a", "\xff"}); }, ADPO_STATUS_INVALID_ARGUMENT, "texts[1]"));
    EXPECT_TRUE(Throws([&] { tok.token_to_id("<|nope|>"); }, ADPO_STATUS_INVALID_ARGUMENT, "not a token"));
    EXPECT_TRUE(Throws([&] { tok.special_token("bos"); }, ADPO_STATUS_INVALID_ARGUMENT, "bos_token"));
    const adpo::Tokenizer empty;
    EXPECT_TRUE(Throws([&] { empty.encode("x"); }, ADPO_STATUS_NULL_ARGUMENT, "tok"));
}
