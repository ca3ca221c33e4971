/*
 * adpo: Anchored Direct Preference Optimization on libtorch, C++17 wrapper.
 *
 * Header-only RAII layer over the C ABI of adpo.h (link libadpo exactly as for C: pkg-config
 * adpo, or CMake find_package(adpo CONFIG REQUIRED) + adpo::adpo). Nothing here adds state or
 * behaviour to the library; every method is one C call plus argument checks and conversions.
 *
 *   #include <adpo.hpp>
 *
 *   adpo::Objective obj(R"({"tau": 0.8})");
 *   adpo::EvalResult r = obj.eval(logp, anchor_logp, rewards, group_ids);  // r.loss, r.grad
 *
 *   adpo::Model policy("path/to/checkpoint");        // Hugging Face checkpoint directory
 *   adpo::Trainer trainer(policy, R"({"optimizer": {"name": "adamw", "lr": 0.003}})");
 *   adpo::Batch batch = trainer.sample({{1, 5}, {1, 7}}, 8, R"({"max_new_tokens": 4})");
 *   batch.set_rewards(my_rewards(batch));
 *   adpo_trainer_metrics m = trainer.step(batch);
 *
 *   // Data-parallel: every rank joins (MPI, or the host's own all-reduce), then steps on its
 *   // own groups; the update is that of all ranks' groups together.
 *   trainer.use_allreduce(rank, world_size, [comm](void *buf, std::size_t n, DLDataType dt, DLDevice) {
 *       return MPI_Allreduce(MPI_IN_PLACE, buf, static_cast<int>(n),
 *                            dt.bits == 64 ? MPI_DOUBLE : MPI_FLOAT, MPI_SUM, comm);
 *   });
 *
 * Conventions
 * - Errors: every failing call throws adpo::Error (a std::runtime_error) carrying the C status
 *   code (status()) and the library's message (message()). The wrapper checks buffer lengths
 *   itself before calling into C (the C API cannot see them) and throws
 *   ADPO_STATUS_SHAPE_MISMATCH when they disagree.
 * - Handles: Objective, Model, Batch, Trainer and Tokenizer are move-only owners of one C
 *   handle. A default-constructed or moved-from object is empty (get() == nullptr, operator
 *   bool false); calling a method on it throws adpo::Error with ADPO_STATUS_NULL_ARGUMENT (the C
 *   library reports it). get() gives the raw handle for direct C calls; release() gives up ownership,
 *   and the explicit constructor from a raw pointer adopts one.
 * - Buffers: inputs are adpo::View<const T> (pointer + size, no copy), which converts
 *   implicitly from std::vector, std::array, C arrays and braced lists ({1.0, 2.0}; valid for the
 *   call only). Outputs come back as std::vector, or, for zero-copy, are written into a caller's
 *   adpo::View<T> by the *_into methods (an empty output view means "skip this output").
 * - Configuration is JSON text in a std::string ("" = all defaults).
 * - ABI: the first handle created checks adpo_abi_version() against ADPO_ABI_VERSION of the
 *   header compiled in, and throws adpo::Error (ADPO_STATUS_UNSUPPORTED) on a mismatch.
 * - Thread safety is that of the C API: handles may be used from any thread; calls on one
 *   handle are serialised inside the library. Moving or destroying a wrapper object while another
 *   thread uses it is a data race, as for any C++ object.
 */

#ifndef ADPO_HPP
#define ADPO_HPP

#include "adpo.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace adpo {

// ----------------------------------------------------------------------------------------------
// Errors
// ----------------------------------------------------------------------------------------------

/// The name of a status code ("ADPO_STATUS_NON_FINITE"), or "ADPO_STATUS_UNKNOWN".
inline const char *status_name(adpo_status status) noexcept {
    switch (status) {
    case ADPO_STATUS_OK: return "ADPO_STATUS_OK";
    case ADPO_STATUS_NULL_ARGUMENT: return "ADPO_STATUS_NULL_ARGUMENT";
    case ADPO_STATUS_INVALID_ARGUMENT: return "ADPO_STATUS_INVALID_ARGUMENT";
    case ADPO_STATUS_INVALID_CONFIG: return "ADPO_STATUS_INVALID_CONFIG";
    case ADPO_STATUS_SHAPE_MISMATCH: return "ADPO_STATUS_SHAPE_MISMATCH";
    case ADPO_STATUS_NON_FINITE: return "ADPO_STATUS_NON_FINITE";
    case ADPO_STATUS_UNSUPPORTED: return "ADPO_STATUS_UNSUPPORTED";
    case ADPO_STATUS_TORCH: return "ADPO_STATUS_TORCH";
    case ADPO_STATUS_IO: return "ADPO_STATUS_IO";
    case ADPO_STATUS_CHECKPOINT: return "ADPO_STATUS_CHECKPOINT";
    case ADPO_STATUS_MODEL: return "ADPO_STATUS_MODEL";
    case ADPO_STATUS_POISONED: return "ADPO_STATUS_POISONED";
    case ADPO_STATUS_PANIC: return "ADPO_STATUS_PANIC";
    case ADPO_STATUS_COMMUNICATION: return "ADPO_STATUS_COMMUNICATION";
    default: return "ADPO_STATUS_UNKNOWN";
    }
}

/// An error reported by adpo (or by this wrapper's own argument checks).
///
/// what() is "<message> [ADPO_STATUS_NAME]"; message() is the library's message alone. Copying
/// never throws (the message is shared).
class Error : public std::runtime_error {
public:
    Error(adpo_status status, const std::string &message)
        : std::runtime_error(message + " [" + status_name(status) + "]"),
          status_(status),
          message_(std::make_shared<const std::string>(message)) {}

    /// The C status code (never ADPO_STATUS_OK).
    adpo_status status() const noexcept { return status_; }

    /// The message, without the status suffix of what().
    const std::string &message() const noexcept { return *message_; }

private:
    adpo_status status_;
    std::shared_ptr<const std::string> message_;
};

/// Turns the outcome of a C call into an exception: does nothing for ADPO_STATUS_OK, otherwise
/// throws adpo::Error with `status` and the message of `err`. Always frees `err` and sets it to
/// nullptr.
///
/// `err` is taken by reference on purpose: in `adpo::check(adpo_x(..., &err), err)` the two
/// arguments are evaluated in an unspecified order, so a by-value `err` may be read (as nullptr)
/// before the call has filled it in. Through a reference it is read inside check(), after the
/// call.
inline void check(adpo_status status, adpo_error *&err) {
    std::unique_ptr<adpo_error, void (*)(adpo_error *)> owned(err, [](adpo_error *e) { adpo_error_free(e); });
    err = nullptr;
    if (status == ADPO_STATUS_OK) return;
    std::string message;
    if (owned) {
        const char *m = adpo_error_message(owned.get());
        if (m) message = m;
    }
    if (message.empty()) message = std::string("adpo call failed with ") + status_name(status);
    throw Error(status, message);
}

/// check() for a call made with a NULL error pointer (the message is then generic).
inline void check(adpo_status status) {
    adpo_error *none = nullptr;
    check(status, none);
}

namespace detail {

/// Runs `f(adpo_error **)` (one C call) and throws adpo::Error if it fails.
template <class F>
inline void call(F &&f) {
    adpo_error *err = nullptr;
    const adpo_status status = std::forward<F>(f)(&err);
    check(status, err);
}

[[noreturn]] inline void fail(adpo_status status, const std::string &message) { throw Error(status, message); }

inline void expect_len(const char *what, std::size_t got, std::size_t want) {
    if (got != want)
        fail(ADPO_STATUS_SHAPE_MISMATCH,
             std::string(what) + " has " + std::to_string(got) + " entries, expected " + std::to_string(want));
}

/// n * t, or an ADPO_STATUS_INVALID_ARGUMENT error if it overflows.
inline std::size_t cells(std::size_t n, std::size_t t) {
    if (t != 0 && n > std::numeric_limits<std::size_t>::max() / t)
        fail(ADPO_STATUS_INVALID_ARGUMENT, "n * t overflows");
    return n * t;
}

/// A NUL-terminated copy-free view of `s`; an embedded NUL is an error (C would truncate there).
inline const char *c_str(const std::string &s, const char *what) {
    if (s.find('\0') != std::string::npos)
        fail(ADPO_STATUS_INVALID_ARGUMENT, std::string(what) + " contains a NUL character");
    return s.c_str();
}

struct StringDeleter {
    void operator()(char *s) const noexcept { adpo_string_free(s); }
};

/// Calls `f(char **out, adpo_error **)` and returns the adpo-owned string it produced.
template <class F>
inline std::string owned_string(F &&f) {
    char *raw = nullptr;
    call([&](adpo_error **err) { return std::forward<F>(f)(&raw, err); });
    std::unique_ptr<char, StringDeleter> guard(raw);
    return raw ? std::string(raw) : std::string();
}

} // namespace detail

// ----------------------------------------------------------------------------------------------
// Version and ABI
// ----------------------------------------------------------------------------------------------

/// "adpo X.Y.Z (tch A.B.C, libtorch V)" of the loaded library.
inline std::string version() {
    const char *v = adpo_version();
    return v ? std::string(v) : std::string();
}

/// The ABI version of the loaded library (compare with ADPO_ABI_VERSION).
inline std::uint32_t abi_version() noexcept { return adpo_abi_version(); }

/// DAPO's soft overlong penalty for a completion of `length` tokens: 0 up to max_length - buffer,
/// then linear down to -factor at max_length, -factor beyond.
inline double soft_overlong_penalty(std::uint64_t length, std::uint64_t max_length, std::uint64_t buffer,
                                    double factor) {
    double out = 0.0;
    detail::call([&](adpo_error **err) {
        return adpo_soft_overlong_penalty(length, max_length, buffer, factor, &out, err);
    });
    return out;
}

/// Number of CUDA devices libtorch can use (0 without CUDA).
inline std::int32_t cuda_device_count() noexcept { return adpo_cuda_device_count(); }

/// Fixes libtorch's CPU thread count for the whole process (adpo_set_num_threads; 1 .. 4096);
/// until then adpo uses the cores other processes leave idle.
inline void set_num_threads(std::int32_t n) {
    detail::call([&](adpo_error **err) { return adpo_set_num_threads(n, err); });
}

/// libtorch's CPU thread count.
inline std::int32_t num_threads() noexcept { return adpo_num_threads(); }

/// True when the loaded library can train over MPI (built with the cargo feature `mpi`, as make
/// builds it); without it Trainer::use_mpi() throws ADPO_STATUS_UNSUPPORTED. Trainer::use_allreduce() works in every
/// build.
inline bool has_mpi() noexcept { return adpo_has_mpi(); }

/// Throws adpo::Error (ADPO_STATUS_UNSUPPORTED) unless `library_abi` equals `header_abi`.
inline void check_abi_version(std::uint32_t library_abi, std::uint32_t header_abi) {
    if (library_abi != header_abi)
        detail::fail(ADPO_STATUS_UNSUPPORTED,
                     "adpo ABI mismatch: the loaded libadpo has ABI version " + std::to_string(library_abi) +
                         ", but this program was compiled against adpo.h/adpo.hpp for ABI version " +
                         std::to_string(header_abi) + "; rebuild it against the headers of the installed library");
}

/// Checks, once per process, that the loaded library implements the ABI of this header
/// (ADPO_ABI_VERSION); throws adpo::Error (ADPO_STATUS_UNSUPPORTED) if not. Every constructor
/// that creates a handle calls it, so explicit calls are only needed before raw C calls.
/// (inline, not static: one cached answer per process, and no ODR trouble for the inline
/// member functions that call it.)
inline void check_abi() {
    static const std::uint32_t library_abi = adpo_abi_version();
    check_abi_version(library_abi, ADPO_ABI_VERSION);
}

// ----------------------------------------------------------------------------------------------
// View: pointer + size
// ----------------------------------------------------------------------------------------------

/// A non-owning view of `size()` contiguous elements (a minimal std::span for C++17).
///
/// View<const T> is what the wrapper takes for inputs: it converts implicitly from
/// std::vector<T>, std::array<T, N>, T[N], View<T> and, for a temporary list, from a braced
/// list; the viewed memory must outlive the call (a View made from a braced list is valid only
/// until the end of the full expression: pass it directly, do not store it). View<T> (non-const)
/// is an output buffer written in place.
template <class T>
class View {
    template <class U>
    using compatible = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value, int>;

public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using size_type = std::size_t;
    using pointer = T *;
    using reference = T &;
    using iterator = T *;

    /// An empty view (data() == nullptr, size() == 0).
    constexpr View() noexcept = default;
    /// `size` elements at `data`.
    constexpr View(T *data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <std::size_t N>
    constexpr View(T (&array)[N]) noexcept : data_(array), size_(N) {}
    template <class U, std::size_t N, compatible<U> = 0>
    constexpr View(std::array<U, N> &array) noexcept : data_(array.data()), size_(N) {}
    template <class U, std::size_t N, compatible<const U> = 0>
    constexpr View(const std::array<U, N> &array) noexcept : data_(array.data()), size_(N) {}
    template <class U, class A, compatible<U> = 0>
    View(std::vector<U, A> &vector) noexcept : data_(vector.data()), size_(vector.size()) {}
    template <class U, class A, compatible<const U> = 0>
    View(const std::vector<U, A> &vector) noexcept : data_(vector.data()), size_(vector.size()) {}
    template <class U, compatible<U> = 0>
    constexpr View(const View<U> &other) noexcept : data_(other.data()), size_(other.size()) {}
    /// A braced list (only for View<const T>): valid until the end of the full expression, which
    /// is all a call argument needs. (Without this constructor `{0, 0}` would pick
    /// View(T *, size_t) and silently become an empty view.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Winit-list-lifetime"
#endif
    template <class U = T, std::enable_if_t<std::is_const<U>::value, int> = 0>
    constexpr View(std::initializer_list<value_type> list) noexcept : data_(list.begin()), size_(list.size()) {}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

    constexpr T *data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T *begin() const noexcept { return data_; }
    constexpr T *end() const noexcept { return data_ + size_; }
    constexpr T &operator[](std::size_t i) const noexcept { return data_[i]; }
    /// The viewed elements as a new std::vector.
    std::vector<value_type> to_vector() const { return std::vector<value_type>(begin(), end()); }

private:
    T *data_ = nullptr;
    std::size_t size_ = 0;
};

namespace detail {

/// A required input: never NULL, so that an empty buffer reaches the library's own length checks
/// ("n must be > 0", ...) instead of a NULL-pointer error.
template <class T>
inline const T *required(View<const T> v) noexcept {
    static const T dummy{};
    return v.empty() ? &dummy : v.data();
}

/// An optional input or output: NULL when empty.
template <class T>
inline T *optional(View<T> v) noexcept {
    return v.empty() ? nullptr : v.data();
}

/// An optional output of `want` elements: NULL when empty, else its length must be `want`.
template <class T>
inline T *output(const char *what, View<T> v, std::size_t want) {
    if (v.empty()) return nullptr;
    expect_len(what, v.size(), want);
    return v.data();
}

/// A move-only owner of one C handle; `Traits::free(T *)` releases it (NULL is a no-op).
template <class T, class Traits>
class Handle {
public:
    using handle_type = T;

    Handle() noexcept = default;
    explicit Handle(T *raw) noexcept : raw_(raw) {}
    Handle(const Handle &) = delete;
    Handle &operator=(const Handle &) = delete;
    Handle(Handle &&other) noexcept : raw_(other.release()) {}
    Handle &operator=(Handle &&other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    ~Handle() { Traits::free(raw_); }

    /// The raw C handle (still owned by this object); nullptr when empty.
    T *get() const noexcept { return raw_; }
    /// Gives up ownership: returns the raw handle (the caller frees it) and leaves this empty.
    T *release() noexcept {
        T *raw = raw_;
        raw_ = nullptr;
        return raw;
    }
    /// Frees the current handle and takes ownership of `raw` (nullptr: becomes empty).
    void reset(T *raw = nullptr) noexcept {
        T *old = raw_;
        raw_ = raw;
        if (old != raw) Traits::free(old);
    }
    /// True when a handle is held.
    explicit operator bool() const noexcept { return raw_ != nullptr; }

private:
    T *raw_ = nullptr;
};

struct ObjectiveTraits {
    static void free(adpo_objective *p) noexcept { adpo_objective_free(p); }
};
struct ModelTraits {
    static void free(adpo_model *p) noexcept { adpo_model_free(p); }
};
struct BatchTraits {
    static void free(adpo_batch *p) noexcept { adpo_batch_free(p); }
};
struct TrainerTraits {
    static void free(adpo_trainer *p) noexcept { adpo_trainer_free(p); }
};

} // namespace detail

// ----------------------------------------------------------------------------------------------
// Data-parallel training
// ----------------------------------------------------------------------------------------------

/// A trainer's place among the ranks of data-parallel training (rank 0 of 1 when it trains
/// alone). `auto [rank, size] = trainer.world();`
struct World {
    std::int32_t rank = 0;
    std::int32_t size = 1;
};

/// The host's all-reduce for Trainer::use_allreduce(): sum `count` elements of `buffer` over all
/// ranks, in place, and return 0 when the result is in `buffer` (any other value is an error,
/// e.g. an MPI error code). `dtype` is float32 or float64 (kDLFloat, bits 32 or 64); `device`
/// is where the buffer lives (kDLCPU, or kDLCUDA after adpo synchronised its stream). Called
/// from the thread that called the trainer method, for each gradient bucket, the small metric
/// and status reductions, and the copy of rank 0's state. An exception it throws is caught (it
/// must not cross the C library) and counts as a failure: the trainer call then throws
/// adpo::Error with ADPO_STATUS_COMMUNICATION.
using AllreduceFunction =
    std::function<int(void *buffer, std::size_t count, DLDataType dtype, DLDevice device)>;

namespace detail {

/// adpo_allreduce_fn over an AllreduceFunction owned by the library (the userdata).
inline std::int32_t allreduce_trampoline(void *userdata, void *buffer, std::size_t count, DLDataType dtype,
                                         DLDevice device) noexcept {
    try {
        return static_cast<std::int32_t>((*static_cast<AllreduceFunction *>(userdata))(buffer, count, dtype, device));
    } catch (...) {
        return -1;
    }
}

/// adpo_userdata_free_fn: destroys the AllreduceFunction (adpo calls it exactly once).
inline void allreduce_free(void *userdata) noexcept { delete static_cast<AllreduceFunction *>(userdata); }

} // namespace detail

// ----------------------------------------------------------------------------------------------
// DLPack
// ----------------------------------------------------------------------------------------------

/// Releases a DLPack tensor by calling its own deleter (NULL and a NULL deleter are no-ops).
struct DLPackDeleter {
    void operator()(DLManagedTensorVersioned *t) const noexcept {
        if (t && t->deleter) t->deleter(t);
    }
};

/// An owned DLPack tensor.
using DLPackTensor = std::unique_ptr<DLManagedTensorVersioned, DLPackDeleter>;

/// Result of Objective::eval_dlpack.
struct DLPackEvalResult {
    double loss = 0.0;
    /// d loss / d logp on logp's device, in logp's dtype (owned; released by its deleter).
    DLPackTensor grad;
};

// ----------------------------------------------------------------------------------------------
// Objective
// ----------------------------------------------------------------------------------------------

/// Result of Objective::eval and its variants (n = number of candidates).
struct EvalResult {
    /// Mean over groups of size >= 2 of the per-group loss.
    double loss = 0.0;
    /// d loss / d logp (n values).
    std::vector<double> grad;
    /// Anchored scores s (n values).
    std::vector<double> scores;
};

/// Result of Objective::eval_tokens (GRPO baseline at token level).
struct TokenEvalResult {
    double loss = 0.0;
    /// d loss / d logp, row-major n x t.
    std::vector<double> grad;
    /// Per-candidate advantages (n values).
    std::vector<double> advantages;
};

/// A configured ADPO objective (adpo_objective): the model-free loss and its closed-form
/// gradient on host buffers or DLPack tensors.
class Objective : public detail::Handle<adpo_objective, detail::ObjectiveTraits> {
public:
    /// An objective with every default (listwise, tau 0.8, ...).
    Objective() : Objective(std::string()) {}

    /// An objective configured by JSON (README "Objective configuration"; "" = defaults).
    /// Throws ADPO_STATUS_INVALID_CONFIG for malformed JSON, unknown keys or bad values.
    explicit Objective(const std::string &config_json) {
        check_abi();
        adpo_objective *raw = nullptr;
        const char *json = detail::c_str(config_json, "config_json");
        detail::call([&](adpo_error **err) { return adpo_objective_new(json, &raw, err); });
        reset(raw);
    }

    /// Takes ownership of a handle from adpo_objective_new (nullptr: empty).
    explicit Objective(adpo_objective *raw) noexcept : Handle(raw) {}

    Objective(Objective &&) noexcept = default;
    Objective &operator=(Objective &&) noexcept = default;

    /// Evaluates on n candidates with rewards: logp, anchor_logp, rewards and group_ids all of
    /// length n (candidates sharing a group id form a group; groups of one count for nothing).
    EvalResult eval(View<const double> logp, View<const double> anchor_logp, View<const double> rewards,
                    View<const std::int64_t> group_ids) const {
        return eval_impl(logp, anchor_logp, rewards, {}, group_ids, {}, false, false);
    }

    /// As eval(), with an explicit target distribution (n values >= 0, summing to 1 per group).
    EvalResult eval_targets(View<const double> logp, View<const double> anchor_logp, View<const double> targets,
                            View<const std::int64_t> group_ids) const {
        return eval_impl(logp, anchor_logp, {}, targets, group_ids, {}, true, false);
    }

    /// As eval(), plus each candidate's normalised mean policy token entropy (n values), needed
    /// by adaptive_tau rule "smooth_hybrid".
    EvalResult eval_entropy(View<const double> logp, View<const double> anchor_logp, View<const double> rewards,
                            View<const std::int64_t> group_ids, View<const double> policy_entropy) const {
        return eval_impl(logp, anchor_logp, rewards, {}, group_ids, policy_entropy, false, true);
    }

    /// Zero-copy eval(): returns the loss and writes d loss/d logp into `out_grad` and the scores
    /// into `out_scores` (each either empty, to skip it, or of length n).
    double eval_into(View<const double> logp, View<const double> anchor_logp, View<const double> rewards,
                     View<const std::int64_t> group_ids, View<double> out_grad = {},
                     View<double> out_scores = {}) const {
        return eval_raw(logp, anchor_logp, rewards, {}, group_ids, {}, false, false, out_grad, out_scores);
    }

    /// Zero-copy eval_targets() (see eval_into()).
    double eval_targets_into(View<const double> logp, View<const double> anchor_logp, View<const double> targets,
                             View<const std::int64_t> group_ids, View<double> out_grad = {},
                             View<double> out_scores = {}) const {
        return eval_raw(logp, anchor_logp, {}, targets, group_ids, {}, true, false, out_grad, out_scores);
    }

    /// GRPO baseline at token level (config "loss": "grpo"). Row-major n x t buffers `logp`,
    /// `old_logp`, `ref_logp` (empty: none; allowed when beta_kl = 0) and `mask` (1 = token
    /// counts); `rewards` and `group_ids` have n entries.
    TokenEvalResult eval_tokens(std::size_t n, std::size_t t, View<const double> logp, View<const double> old_logp,
                                View<const double> ref_logp, View<const double> mask, View<const double> rewards,
                                View<const std::int64_t> group_ids) const {
        TokenEvalResult r;
        r.grad.resize(detail::cells(n, t));
        r.advantages.resize(n);
        r.loss = eval_tokens_into(n, t, logp, old_logp, ref_logp, mask, rewards, group_ids, r.grad, r.advantages);
        return r;
    }

    /// Zero-copy eval_tokens(): `out_grad` empty or n * t, `out_advantages` empty or n.
    double eval_tokens_into(std::size_t n, std::size_t t, View<const double> logp, View<const double> old_logp,
                            View<const double> ref_logp, View<const double> mask, View<const double> rewards,
                            View<const std::int64_t> group_ids, View<double> out_grad = {},
                            View<double> out_advantages = {}) const {
        const std::size_t nt = detail::cells(n, t);
        detail::expect_len("logp", logp.size(), nt);
        detail::expect_len("old_logp", old_logp.size(), nt);
        if (!ref_logp.empty()) detail::expect_len("ref_logp", ref_logp.size(), nt);
        detail::expect_len("mask", mask.size(), nt);
        detail::expect_len("rewards", rewards.size(), n);
        detail::expect_len("group_ids", group_ids.size(), n);
        double *grad = detail::output("out_grad", out_grad, nt);
        double *adv = detail::output("out_advantages", out_advantages, n);
        double loss = 0.0;
        detail::call([&](adpo_error **err) {
            return adpo_objective_eval_tokens(get(), n, t, detail::required(logp), detail::required(old_logp),
                                              detail::optional(ref_logp), detail::required(mask),
                                              detail::required(rewards), detail::required(group_ids), &loss, grad,
                                              adv, err);
        });
        return loss;
    }

    /// adpo_objective_eval_dlpack: exactly one of `rewards` and `targets` is non-null. Every
    /// input is handed over to adpo (which calls its deleter before returning, whatever the
    /// outcome); the gradient comes back as a new owned tensor.
    DLPackEvalResult eval_dlpack(DLPackTensor logp, DLPackTensor anchor_logp, DLPackTensor rewards,
                                 DLPackTensor targets, DLPackTensor group_ids) const {
        DLPackEvalResult r;
        DLManagedTensorVersioned *grad = nullptr;
        adpo_error *err = nullptr;
        const adpo_status status =
            adpo_objective_eval_dlpack(get(), logp.release(), anchor_logp.release(), rewards.release(),
                                       targets.release(), group_ids.release(), &r.loss, &grad, &err);
        r.grad.reset(grad);
        check(status, err);
        return r;
    }

    /// Metrics of the last successful evaluation (NaN where they do not apply).
    adpo_objective_metrics metrics() const {
        adpo_objective_metrics m{};
        m.struct_size = static_cast<std::uint32_t>(sizeof m);
        detail::call([&](adpo_error **err) { return adpo_objective_get_metrics(get(), &m, err); });
        return m;
    }

    /// Metrics of the last successful evaluation as a JSON object (NaN as null).
    std::string metrics_json() const {
        return detail::owned_string(
            [&](char **out, adpo_error **err) { return adpo_objective_metrics_json(get(), out, err); });
    }

private:
    EvalResult eval_impl(View<const double> logp, View<const double> anchor_logp, View<const double> rewards,
                         View<const double> targets, View<const std::int64_t> group_ids,
                         View<const double> entropy, bool use_targets, bool use_entropy) const {
        EvalResult r;
        r.grad.resize(logp.size());
        r.scores.resize(logp.size());
        r.loss = eval_raw(logp, anchor_logp, rewards, targets, group_ids, entropy, use_targets, use_entropy,
                          r.grad, r.scores);
        return r;
    }

    double eval_raw(View<const double> logp, View<const double> anchor_logp, View<const double> rewards,
                    View<const double> targets, View<const std::int64_t> group_ids, View<const double> entropy,
                    bool use_targets, bool use_entropy, View<double> out_grad, View<double> out_scores) const {
        const std::size_t n = logp.size();
        detail::expect_len("anchor_logp", anchor_logp.size(), n);
        detail::expect_len(use_targets ? "targets" : "rewards", use_targets ? targets.size() : rewards.size(), n);
        detail::expect_len("group_ids", group_ids.size(), n);
        if (use_entropy) detail::expect_len("policy_entropy", entropy.size(), n);
        double *grad = detail::output("out_grad", out_grad, n);
        double *scores = detail::output("out_scores", out_scores, n);
        const double *rw = use_targets ? nullptr : detail::required(rewards);
        const double *tg = use_targets ? detail::required(targets) : nullptr;
        double loss = 0.0;
        detail::call([&](adpo_error **err) {
            return adpo_objective_eval_entropy(get(), n, detail::required(logp), detail::required(anchor_logp), rw,
                                               tg, detail::required(group_ids),
                                               use_entropy ? detail::required(entropy) : nullptr, &loss, grad,
                                               scores, err);
        });
        return loss;
    }
};

// ----------------------------------------------------------------------------------------------
// Model
// ----------------------------------------------------------------------------------------------

/// A causal LM (adpo_model): a Hugging Face checkpoint directory, or a TorchScript module with
/// forward(input_ids [B, T]) or forward(input_ids, attention_mask) -> logits [B, T, V].
class Model : public detail::Handle<adpo_model, detail::ModelTraits> {
public:
    /// An empty model.
    Model() noexcept = default;

    /// Loads `path` (torch.jit.script(model).save(path)) onto `device` ("cpu", "cuda",
    /// "cuda:N"). A missing file or a model off the contract throws ADPO_STATUS_MODEL.
    explicit Model(const std::string &path, const std::string &device = "cpu") {
        check_abi();
        adpo_model *raw = nullptr;
        const char *p = detail::c_str(path, "path");
        const char *d = detail::c_str(device, "device");
        detail::call([&](adpo_error **err) { return adpo_model_load(p, d, &raw, err); });
        reset(raw);
    }

    /// Takes ownership of a handle from adpo_model_load (nullptr: empty).
    explicit Model(adpo_model *raw) noexcept : Handle(raw) {}

    Model(Model &&) noexcept = default;
    Model &operator=(Model &&) noexcept = default;

    /// Same as the loading constructor.
    static Model load(const std::string &path, const std::string &device = "cpu") { return Model(path, device); }

    /// Loads `path` (a Hugging Face checkpoint directory or a TorchScript file) with options as
    /// JSON: {"device": "cpu" | "cuda:N", "dtype": "auto" | "float32" | "bfloat16" | ...}.
    static Model load_options(const std::string &path, const std::string &options_json) {
        check_abi();
        adpo_model *raw = nullptr;
        const char *p = detail::c_str(path, "path");
        const char *o = detail::c_str(options_json, "options_json");
        detail::call([&](adpo_error **err) { return adpo_model_load_options(p, o, &raw, err); });
        return Model(raw);
    }

    /// Writes a LoRA policy's adapters as a PEFT adapter directory `dir` (adapter_config.json,
    /// adapter_model.safetensors) that peft.PeftModel.from_pretrained(base, dir) loads.
    void save_adapter(const std::string &dir) const {
        const char *d = detail::c_str(dir, "dir");
        detail::call([&](adpo_error **err) { return adpo_model_save_adapter(get(), d, err); });
    }

    /// Writes the model with its current weights as a Hugging Face checkpoint directory `dir`
    /// (checkpoint directories only; a TorchScript model throws ADPO_STATUS_UNSUPPORTED).
    void save(const std::string &dir) const {
        const char *d = detail::c_str(dir, "dir");
        detail::call([&](adpo_error **err) { return adpo_model_save(get(), d, err); });
    }

    /// Writes the model (a LoRA policy merged; the model itself unchanged) as a GGUF file that
    /// llama.cpp, Ollama, transformers and load() read. options_json: {"dtype": "f32" | "f16" |
    /// "bf16" | "q8_0"} ("" = defaults: f32). Atomic; an existing path is replaced only when it
    /// is a GGUF file.
    void save_gguf(const std::string &path, const std::string &options_json = "") const {
        const char *p = detail::c_str(path, "path");
        const char *o = options_json.empty() ? nullptr : detail::c_str(options_json, "options_json");
        detail::call([&](adpo_error **err) { return adpo_model_save_gguf(get(), p, o, err); });
    }

    /// Writes a LoRA policy's adapters as a llama.cpp LoRA adapter GGUF (`llama-cli --lora`,
    /// Ollama's ADAPTER). Options as save_gguf's.
    void save_adapter_gguf(const std::string &path, const std::string &options_json = "") const {
        const char *p = detail::c_str(path, "path");
        const char *o = options_json.empty() ? nullptr : detail::c_str(options_json, "options_json");
        detail::call([&](adpo_error **err) { return adpo_model_save_adapter_gguf(get(), p, o, err); });
    }

    /// Vocabulary size V of the model's logits.
    std::int64_t vocab_size() const {
        std::int64_t v = 0;
        detail::call([&](adpo_error **err) { return adpo_model_vocab_size(get(), &v, err); });
        return v;
    }

    /// Number of parameter values of the model, all tensors together.
    std::size_t num_params() const {
        std::size_t n = 0;
        detail::call([&](adpo_error **err) { return adpo_model_num_params(get(), &n, err); });
        return n;
    }

    /// A copy of the model's current parameters (a policy's as trained so far) as doubles, every
    /// tensor flattened in the module's parameter order (num_params() values). For checks such as
    /// "every replica holds the same weights".
    std::vector<double> params() const {
        std::vector<double> out(num_params());
        if (!out.empty()) params_into(out);
        return out;
    }

    /// params() written into `out`, whose length must be num_params() (else
    /// ADPO_STATUS_SHAPE_MISMATCH).
    void params_into(View<double> out) const {
        detail::call([&](adpo_error **err) {
            return adpo_model_get_params(get(), out.data(), out.size(), err);
        });
    }
};

// ----------------------------------------------------------------------------------------------
// Batch
// ----------------------------------------------------------------------------------------------

/// A validated training batch of n candidates x t token positions (adpo_batch).
class Batch : public detail::Handle<adpo_batch, detail::BatchTraits> {
public:
    /// n (candidates, rows) and t (positions, columns).
    struct Shape {
        std::size_t n = 0;
        std::size_t t = 0;
    };

    /// An empty batch.
    Batch() noexcept = default;

    /// A batch from row-major n x t arrays (adpo_batch_new): `ids` (token ids >= 0),
    /// `attention_mask` (empty = all ones), `loss_mask` (1 where the token counts; column 0
    /// must be 0), and n `group_ids` (candidates of one prompt share an id). Set rewards or
    /// targets before Trainer::step.
    Batch(std::size_t n, std::size_t t, View<const std::int64_t> ids, View<const std::uint8_t> attention_mask,
          View<const std::uint8_t> loss_mask, View<const std::int64_t> group_ids) {
        check_abi();
        const std::size_t nt = detail::cells(n, t);
        detail::expect_len("ids", ids.size(), nt);
        if (!attention_mask.empty()) detail::expect_len("attention_mask", attention_mask.size(), nt);
        detail::expect_len("loss_mask", loss_mask.size(), nt);
        detail::expect_len("group_ids", group_ids.size(), n);
        adpo_batch *raw = nullptr;
        detail::call([&](adpo_error **err) {
            return adpo_batch_new(n, t, detail::required(ids), detail::optional(attention_mask),
                                  detail::required(loss_mask), detail::required(group_ids), &raw, err);
        });
        reset(raw);
    }

    /// Takes ownership of a handle from adpo_batch_new or adpo_trainer_sample (nullptr: empty).
    explicit Batch(adpo_batch *raw) noexcept : Handle(raw) {}

    Batch(Batch &&) noexcept = default;
    Batch &operator=(Batch &&) noexcept = default;

    /// n and t.
    Shape shape() const {
        Shape s;
        detail::call([&](adpo_error **err) { return adpo_batch_shape(get(), &s.n, &s.t, err); });
        return s;
    }
    /// Number of candidates (rows).
    std::size_t n() const { return shape().n; }
    /// Number of token positions (columns).
    std::size_t t() const { return shape().t; }

    /// The n * t token ids, row-major.
    std::vector<std::int64_t> ids() const {
        std::vector<std::int64_t> out(cells());
        ids_into(out);
        return out;
    }
    /// The n * t loss mask (1 = generated/scored token), row-major.
    std::vector<std::uint8_t> loss_mask() const {
        std::vector<std::uint8_t> out(cells());
        loss_mask_into(out);
        return out;
    }
    /// The n group ids.
    std::vector<std::int64_t> group_ids() const {
        std::vector<std::int64_t> out(n());
        group_ids_into(out);
        return out;
    }

    /// Copies the ids into `out` (length n * t).
    void ids_into(View<std::int64_t> out) const {
        detail::call([&](adpo_error **err) { return adpo_batch_get_ids(get(), out.data(), out.size(), err); });
    }
    /// Copies the loss mask into `out` (length n * t).
    void loss_mask_into(View<std::uint8_t> out) const {
        detail::call([&](adpo_error **err) { return adpo_batch_get_loss_mask(get(), out.data(), out.size(), err); });
    }
    /// Copies the sampling-time log-probs into `out` as the batch holds them: per token (length
    /// n * t, 0 where the loss mask is 0) for a sampled batch, per sequence (length n) if set so.
    void old_logp_into(View<double> out) const {
        detail::call([&](adpo_error **err) { return adpo_batch_get_old_logp(get(), out.data(), out.size(), err); });
    }
    /// Copies the group ids into `out` (length n).
    void group_ids_into(View<std::int64_t> out) const {
        detail::call([&](adpo_error **err) { return adpo_batch_get_group_ids(get(), out.data(), out.size(), err); });
    }

    /// Rewards of the n candidates (finite); replaces targets.
    void set_rewards(View<const double> rewards) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_rewards(get(), detail::required(rewards), rewards.size(), err);
        });
    }
    /// Explicit targets: n values >= 0 summing to 1 per group; replaces rewards.
    void set_targets(View<const double> targets) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_targets(get(), detail::required(targets), targets.size(), err);
        });
    }
    /// Sampling-time log-probs: n (per sequence) or n * t (per token) values.
    void set_old_logp(View<const double> old_logp) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_old_logp(get(), detail::required(old_logp), old_logp.size(), err);
        });
    }
    /// Precomputed anchor log-probs: n or n * t values (no reference forward then runs).
    void set_anchor_logp(View<const double> anchor_logp) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_anchor_logp(get(), detail::required(anchor_logp), anchor_logp.size(), err);
        });
    }

    // What the rollout engine recorded (see README "RL recipes").

    /// The rollout engine's token log-probs: n * t values aligned with ids.
    void set_rollout_logp(View<const double> logp) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_rollout_logp(get(), detail::required(logp), logp.size(), err);
        });
    }
    /// The rollout log-probs (n * t, 0 where the loss mask is 0).
    std::vector<double> rollout_logp() const {
        std::vector<double> out(cells());
        detail::call(
            [&](adpo_error **err) { return adpo_batch_get_rollout_logp(get(), out.data(), out.size(), err); });
        return out;
    }
    /// Which rows stopped at max_new_tokens (n flags, 1 = truncated).
    void set_truncated(View<const std::uint8_t> flags) {
        detail::call([&](adpo_error **err) {
            return adpo_batch_set_truncated(get(), detail::required(flags), flags.size(), err);
        });
    }
    /// The n truncation flags (1 = stopped at max_new_tokens).
    std::vector<std::uint8_t> truncated() const {
        std::vector<std::uint8_t> out(n());
        detail::call([&](adpo_error **err) { return adpo_batch_get_truncated(get(), out.data(), out.size(), err); });
        return out;
    }
    /// The optimizer step of the policy that generated the batch.
    void set_policy_version(std::uint64_t version) {
        detail::call([&](adpo_error **err) { return adpo_batch_set_policy_version(get(), version, err); });
    }
    /// The batch's policy version (throws when it has none).
    std::uint64_t policy_version() const {
        std::uint64_t v = 0;
        detail::call([&](adpo_error **err) { return adpo_batch_get_policy_version(get(), &v, err); });
        return v;
    }
    /// One new batch of the rows of `batches` in order, each batch's groups kept apart, padded
    /// to the longest row (a DAPO-style refill).
    static Batch concat(const std::vector<const Batch *> &batches) {
        std::vector<const adpo_batch *> raw;
        for (const Batch *b : batches) raw.push_back(b ? b->get() : nullptr);
        adpo_batch *out = nullptr;
        detail::call([&](adpo_error **err) { return adpo_batch_concat(raw.data(), raw.size(), &out, err); });
        return Batch(out);
    }

private:
    std::size_t cells() const {
        const Shape s = shape();
        return detail::cells(s.n, s.t);
    }
};

// ----------------------------------------------------------------------------------------------
// Trainer
// ----------------------------------------------------------------------------------------------

/// Applies ADPO steps to a policy model (adpo_trainer). The trainer keeps its own references to
/// its models: the Model objects may be destroyed after construction.
class Trainer : public detail::Handle<adpo_trainer, detail::TrainerTraits> {
public:
    /// An empty trainer.
    Trainer() noexcept = default;

    /// A trainer for `policy` (trained in place) without a reference model. `config_json`:
    /// trainer keys (seq_logp, micro_batch_rows, epochs_per_batch, seed, anchor, optimizer,
    /// grad_clip, schedule) plus every objective key; "" = defaults.
    explicit Trainer(Model &policy, const std::string &config_json = std::string()) {
        create(policy.get(), nullptr, config_json);
    }

    /// A trainer for `policy` with a frozen `reference` model (anchor mode "fixed", grpo with
    /// beta_kl > 0).
    Trainer(Model &policy, const Model &reference, const std::string &config_json = std::string()) {
        create(policy.get(), reference.get(), config_json);
    }

    /// Takes ownership of a handle from adpo_trainer_new (nullptr: empty).
    explicit Trainer(adpo_trainer *raw) noexcept : Handle(raw) {}

    Trainer(Trainer &&) noexcept = default;
    Trainer &operator=(Trainer &&) noexcept = default;

    /// One ADPO step on `batch` (epochs_per_batch optimizer updates); returns its metrics.
    adpo_trainer_metrics step(const Batch &batch) {
        adpo_trainer_metrics m{};
        m.struct_size = static_cast<std::uint32_t>(sizeof m);
        detail::call([&](adpo_error **err) { return adpo_trainer_step(get(), batch.get(), &m, err); });
        return m;
    }

    /// Runs the policy on `batch` and adds to its gradients: of the configured loss when
    /// `grad_logp` is empty, or of the host's loss given as dL/d(token log-prob) (n * t values,
    /// row-major; off the loss mask ignored), the log-probs being token_logp's. Gradients
    /// accumulate until optim_step; a failed call discards them.
    adpo_trainer_metrics forward_backward(const Batch &batch, View<const double> grad_logp = {}) {
        adpo_trainer_metrics m{};
        m.struct_size = static_cast<std::uint32_t>(sizeof m);
        detail::call([&](adpo_error **err) {
            return adpo_trainer_forward_backward(get(), batch.get(), detail::optional(grad_logp), grad_logp.size(),
                                                 &m, err);
        });
        return m;
    }
    /// forward_backward with the host's gradient as a DLPack tensor ([n, t], floating, CPU or
    /// CUDA), e.g. its own autograd's output where it lives. adpo takes ownership (the
    /// DLPackTensor is released by the call, whatever the outcome).
    adpo_trainer_metrics forward_backward(const Batch &batch, DLPackTensor grad_logp) {
        adpo_trainer_metrics m{};
        m.struct_size = static_cast<std::uint32_t>(sizeof m);
        DLManagedTensorVersioned *raw = grad_logp.release();
        detail::call([&](adpo_error **err) {
            return adpo_trainer_forward_backward_dlpack(get(), batch.get(), raw, &m, err);
        });
        return m;
    }
    /// Clips and applies the gradient forward_backward accumulated, then updates the anchor.
    adpo_trainer_metrics optim_step() {
        adpo_trainer_metrics m{};
        m.struct_size = static_cast<std::uint32_t>(sizeof m);
        detail::call([&](adpo_error **err) { return adpo_trainer_optim_step(get(), &m, err); });
        return m;
    }
    /// Token log-probs of the batch under the current policy (n * t, row-major, 0 off the loss
    /// mask; eval mode): what a host loss for forward_backward is a function of.
    std::vector<double> token_logp(const Batch &batch) const {
        const Batch::Shape s = batch.shape();
        std::vector<double> out(detail::cells(s.n, s.t));
        detail::call([&](adpo_error **err) {
            return adpo_trainer_token_logp(get(), batch.get(), out.data(), out.size(), err);
        });
        return out;
    }

    /// Metrics of the last step as JSON (NaN as null).
    std::string metrics_json() const {
        return detail::owned_string(
            [&](char **out, adpo_error **err) { return adpo_trainer_metrics_json(get(), out, err); });
    }

    /// Samples k candidates for each prompt from the policy. Returns a batch of
    /// prompts.size() * k rows (group id = prompt index, right-padded, loss mask on the
    /// generated tokens up to and including EOS, per-token old_logp set). `sampling_json`
    /// ("" = defaults): temperature, top_k, top_p, max_new_tokens, eos_id, pad_id, seed.
    Batch sample(const std::vector<std::vector<std::int64_t>> &prompts, std::size_t k,
                 const std::string &sampling_json = std::string()) {
        std::vector<std::int64_t> tokens;
        std::vector<std::size_t> lengths;
        lengths.reserve(prompts.size());
        for (const auto &p : prompts) {
            tokens.insert(tokens.end(), p.begin(), p.end());
            lengths.push_back(p.size());
        }
        return sample(tokens, lengths, k, sampling_json);
    }

    /// sample() on prompts stored back to back in `prompt_tokens`, prompt i having
    /// `prompt_lengths[i]` tokens.
    Batch sample(View<const std::int64_t> prompt_tokens, View<const std::size_t> prompt_lengths, std::size_t k,
                 const std::string &sampling_json = std::string()) {
        std::size_t total = 0;
        for (std::size_t len : prompt_lengths) {
            if (len > std::numeric_limits<std::size_t>::max() - total)
                detail::fail(ADPO_STATUS_INVALID_ARGUMENT, "prompt lengths overflow");
            total += len;
        }
        detail::expect_len("prompt_tokens", prompt_tokens.size(), total);
        const char *json = sampling_json.empty() ? nullptr : detail::c_str(sampling_json, "sampling_json");
        adpo_batch *raw = nullptr;
        detail::call([&](adpo_error **err) {
            return adpo_trainer_sample(get(), detail::required(prompt_tokens), detail::required(prompt_lengths),
                                       prompt_lengths.size(), k, json, &raw, err);
        });
        return Batch(raw);
    }

    /// Sequence log-probs (seq_logp reduction) of the batch's n rows under the current policy.
    std::vector<double> sequence_logp(const Batch &batch) const {
        std::vector<double> out(batch.n());
        sequence_logp_into(batch, out);
        return out;
    }

    /// sequence_logp() written into `out` (length n).
    void sequence_logp_into(const Batch &batch, View<double> out) const {
        detail::call([&](adpo_error **err) {
            return adpo_trainer_sequence_logp(get(), batch.get(), out.data(), out.size(), err);
        });
    }

    /// Writes a checkpoint: one safetensors file at `path` (policy weights under their names,
    /// trainer state under "__adpo__." keys), published atomically.
    void save(const std::string &path) const {
        const char *p = detail::c_str(path, "path");
        detail::call([&](adpo_error **err) { return adpo_trainer_save(get(), p, err); });
    }

    /// Restores a checkpoint written by save(); on failure (ADPO_STATUS_CHECKPOINT) the trainer
    /// is left as it was.
    void load(const std::string &path) {
        const char *p = detail::c_str(path, "path");
        detail::call([&](adpo_error **err) { return adpo_trainer_load(get(), p, err); });
    }

    /// Data-parallel training over MPI: `mpi_comm` is the address of an MPI_Comm (nullptr:
    /// MPI_COMM_WORLD), which adpo duplicates for its own traffic. Collective: every rank of the
    /// communicator calls it (MPI is initialised if the host has not done it). Rank 0's weights,
    /// optimizer and anchor state are copied to every rank. Throws ADPO_STATUS_UNSUPPORTED when
    /// the library was built without MPI (see adpo::has_mpi()).
    void use_mpi(const void *mpi_comm = nullptr) {
        detail::call([&](adpo_error **err) { return adpo_trainer_use_mpi(get(), mpi_comm, err); });
    }

    /// Data-parallel training over the host's own communicator (NCCL, Gloo, MPI, ...): this
    /// process is `rank` of `world_size`, and `allreduce` sums buffers over the ranks (see
    /// adpo::AllreduceFunction). Collective, like use_mpi(): rank 0's state is copied to every
    /// rank, through `allreduce`, before this returns. The function is moved to the heap and
    /// owned by the library from this call on, whatever its outcome: it is destroyed exactly
    /// once, when the trainer is freed or another communicator replaces it, or before an error
    /// is thrown. Throws ADPO_STATUS_INVALID_ARGUMENT unless 0 <= rank < world_size (a previous
    /// communicator then stays in place), ADPO_STATUS_NULL_ARGUMENT for an empty function, and
    /// ADPO_STATUS_COMMUNICATION when `allreduce` fails (the trainer then trains alone).
    void use_allreduce(std::int32_t rank, std::int32_t world_size, AllreduceFunction allreduce) {
        if (!allreduce) detail::fail(ADPO_STATUS_NULL_ARGUMENT, "allreduce is an empty std::function");
        auto *owned = new AllreduceFunction(std::move(allreduce));
        // From here adpo owns `owned` and calls detail::allreduce_free on it exactly once.
        detail::call([&](adpo_error **err) {
            return adpo_trainer_use_allreduce(get(), rank, world_size, &detail::allreduce_trampoline, owned,
                                              &detail::allreduce_free, err);
        });
    }

    /// This trainer's rank and number of ranks ({0, 1} when it trains alone).
    World world() const {
        World w;
        detail::call([&](adpo_error **err) { return adpo_trainer_world(get(), &w.rank, &w.size, err); });
        return w;
    }

private:
    void create(adpo_model *policy, const adpo_model *reference, const std::string &config_json) {
        check_abi();
        const char *json = detail::c_str(config_json, "config_json");
        adpo_trainer *raw = nullptr;
        detail::call([&](adpo_error **err) { return adpo_trainer_new(policy, reference, json, &raw, err); });
        reset(raw);
    }
};

// ----------------------------------------------------------------------------------------------
// Tokenizer
// ----------------------------------------------------------------------------------------------

namespace detail {
struct TokenizerTraits {
    static void free(adpo_tokenizer *p) noexcept { adpo_tokenizer_free(p); }
};

/// One sized-first C call that writes ids (encode, encode_batch, eos_ids): tries a first guess
/// of the length, and on ADPO_STATUS_SHAPE_MISMATCH (the C call still reports the length)
/// grows the buffer and calls once more.
template <class F>
inline std::vector<std::int64_t> sized_ids(std::size_t guess, F &&f) {
    std::vector<std::int64_t> ids(guess);
    std::size_t n = 0;
    adpo_error *err = nullptr;
    adpo_status status = f(ids.data(), ids.size(), &n, &err);
    if (status == ADPO_STATUS_SHAPE_MISMATCH && n > ids.size()) {
        adpo_error_free(err);
        ids.resize(n);
        call([&](adpo_error **e) { return f(ids.data(), ids.size(), &n, e); });
    } else {
        check(status, err);
    }
    ids.resize(n);
    return ids;
}
} // namespace detail

/// A Hugging Face tokenizer with its chat templates (tokenizer.json plus tokenizer_config.json,
/// chat_template.jinja, generation_config.json / config.json beside it). Read-only once loaded:
/// one Tokenizer may be used from many threads at once.
///
///   adpo::Tokenizer tok("/models/Qwen2.5-0.5B-Instruct");
///   std::string prompt = tok.apply_chat_template(R"([{"role": "user", "content": "Hi"}])", true);
///   std::vector<std::int64_t> ids = tok.encode(prompt, false);  // the template wrote the specials
class Tokenizer : public detail::Handle<adpo_tokenizer, detail::TokenizerTraits> {
public:
    /// An empty tokenizer.
    Tokenizer() noexcept = default;

    /// Loads `path`: a tokenizer.json or a checkpoint directory holding one. A missing file
    /// throws ADPO_STATUS_IO, a malformed one ADPO_STATUS_MODEL.
    explicit Tokenizer(const std::string &path) {
        check_abi();
        adpo_tokenizer *raw = nullptr;
        const char *p = detail::c_str(path, "path");
        detail::call([&](adpo_error **err) { return adpo_tokenizer_load(p, &raw, err); });
        reset(raw);
    }

    /// Takes ownership of a handle from adpo_tokenizer_load (nullptr: empty).
    explicit Tokenizer(adpo_tokenizer *raw) noexcept : Handle(raw) {}

    Tokenizer(Tokenizer &&) noexcept = default;
    Tokenizer &operator=(Tokenizer &&) noexcept = default;

    /// Same as the loading constructor.
    static Tokenizer load(const std::string &path) { return Tokenizer(path); }

    /// Token ids of UTF-8 `text`. `add_special_tokens` adds what the tokenizer's post-processor
    /// adds (e.g. BOS); pass false for text from apply_chat_template. Text that is not UTF-8
    /// throws ADPO_STATUS_INVALID_ARGUMENT.
    std::vector<std::int64_t> encode(const std::string &text, bool add_special_tokens = true) const {
        const char *t = detail::c_str(text, "text");
        return detail::sized_ids(text.size() + 8, [&](std::int64_t *out, std::size_t cap, std::size_t *n,
                                                      adpo_error **err) {
            return adpo_tokenizer_encode(get(), t, add_special_tokens, out, cap, n, err);
        });
    }

    /// encode() of each text (in parallel inside adpo).
    std::vector<std::vector<std::int64_t>> encode_batch(const std::vector<std::string> &texts,
                                                        bool add_special_tokens = true) const {
        std::vector<const char *> ptrs;
        ptrs.reserve(texts.size());
        std::size_t guess = 0;
        for (std::size_t i = 0; i < texts.size(); ++i) {
            ptrs.push_back(detail::c_str(texts[i], ("texts[" + std::to_string(i) + "]").c_str()));
            guess += texts[i].size() + 8;
        }
        std::vector<std::size_t> offsets(texts.size() + 1);
        const std::vector<std::int64_t> flat = detail::sized_ids(
            guess, [&](std::int64_t *out, std::size_t cap, std::size_t *n, adpo_error **err) {
                return adpo_tokenizer_encode_batch(get(), ptrs.data(), ptrs.size(), add_special_tokens, out, cap,
                                                   offsets.data(), n, err);
            });
        std::vector<std::vector<std::int64_t>> out(texts.size());
        for (std::size_t i = 0; i < texts.size(); ++i)
            out[i].assign(flat.begin() + static_cast<std::ptrdiff_t>(offsets[i]),
                          flat.begin() + static_cast<std::ptrdiff_t>(offsets[i + 1]));
        return out;
    }

    /// The text of `ids`; an id outside the vocabulary throws ADPO_STATUS_INVALID_ARGUMENT.
    std::string decode(View<const std::int64_t> ids, bool skip_special_tokens = false) const {
        return detail::owned_string([&](char **out, adpo_error **err) {
            return adpo_tokenizer_decode(get(), ids.data(), ids.size(), skip_special_tokens, out, err);
        });
    }

    /// decode() of each sequence.
    std::vector<std::string> decode_batch(const std::vector<std::vector<std::int64_t>> &seqs,
                                          bool skip_special_tokens = false) const {
        std::vector<std::int64_t> flat;
        std::vector<std::size_t> offsets{0};
        for (const auto &s : seqs) {
            flat.insert(flat.end(), s.begin(), s.end());
            offsets.push_back(flat.size());
        }
        std::vector<char *> raw(seqs.size(), nullptr);
        detail::call([&](adpo_error **err) {
            return adpo_tokenizer_decode_batch(get(), flat.data(), offsets.data(), seqs.size(), skip_special_tokens,
                                               raw.data(), err);
        });
        std::vector<std::unique_ptr<char, detail::StringDeleter>> guards;
        guards.reserve(raw.size());
        for (char *p : raw) guards.emplace_back(p);
        std::vector<std::string> out;
        out.reserve(raw.size());
        for (char *p : raw) out.emplace_back(p ? p : "");
        return out;
    }

    /// Renders the default chat template for `messages_json` (a JSON list of {"role",
    /// "content"} objects) as transformers' apply_chat_template(tokenize=False). Malformed
    /// messages and template errors, the template's own raise_exception included, throw
    /// ADPO_STATUS_INVALID_ARGUMENT with the template's message.
    std::string apply_chat_template(const std::string &messages_json, bool add_generation_prompt = false) const {
        const char *m = detail::c_str(messages_json, "messages_json");
        return detail::owned_string([&](char **out, adpo_error **err) {
            return adpo_tokenizer_apply_chat_template(get(), m, add_generation_prompt, out, err);
        });
    }

    /// With options JSON: {"template": NAME or SOURCE, "add_generation_prompt": bool, "tools":
    /// [...], "documents": [...], "variables": {...}} ("" = defaults; unknown keys throw
    /// ADPO_STATUS_INVALID_CONFIG).
    std::string apply_chat_template_options(const std::string &messages_json, const std::string &options_json) const {
        const char *m = detail::c_str(messages_json, "messages_json");
        const char *o = detail::c_str(options_json, "options_json");
        return detail::owned_string([&](char **out, adpo_error **err) {
            return adpo_tokenizer_apply_chat_template_options(get(), m, o, out, err);
        });
    }

    /// The ids that end generation (generation_config.json, else config.json, else the EOS token).
    std::vector<std::int64_t> eos_ids() const {
        return detail::sized_ids(4, [&](std::int64_t *out, std::size_t cap, std::size_t *n, adpo_error **err) {
            return adpo_tokenizer_eos_ids(get(), out, cap, n, err);
        });
    }

    /// Number of tokens, added tokens included (Python's len(tokenizer)).
    std::int64_t vocab_size() const {
        std::int64_t v = 0;
        detail::call([&](adpo_error **err) { return adpo_tokenizer_vocab_size(get(), &v, err); });
        return v;
    }

    /// The id of a token string; one that is not a token throws ADPO_STATUS_INVALID_ARGUMENT.
    std::int64_t token_to_id(const std::string &token) const {
        const char *t = detail::c_str(token, "token");
        std::int64_t id = 0;
        detail::call([&](adpo_error **err) { return adpo_tokenizer_token_to_id(get(), t, &id, err); });
        return id;
    }

    /// A named special token ("bos_token", "eos_token", "pad_token", ...); `found` tells whether
    /// the tokenizer sets it ("" is returned when it does not).
    std::string special_token(const std::string &name, bool *found = nullptr) const {
        const char *n = detail::c_str(name, "name");
        char *raw = nullptr;
        detail::call([&](adpo_error **err) { return adpo_tokenizer_special_token(get(), n, &raw, err); });
        std::unique_ptr<char, detail::StringDeleter> guard(raw);
        if (found) *found = raw != nullptr;
        return raw ? std::string(raw) : std::string();
    }
};

} // namespace adpo

#endif /* ADPO_HPP */
