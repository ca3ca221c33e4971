// The main job from C++ with the RAII classes of adpo.hpp (the twin of examples/c/arithmetic_rl.c,
// shorter): SmolLM2-135M-Instruct with new LoRA adapters learns "What is A + B?" for single
// digits from rewards computed here, and greedy accuracy on held-out questions is compared
// before and after.
//
// Usage: arithmetic_rl MODEL [STEPS]   (MODEL: the SmolLM2 GGUF file scripts/setup fetches, or a
// checkpoint directory; the tokenizer and chat template come from the same file)
// Exit status: 0 when held-out accuracy rose, 1 when it did not, 2 on an adpo error.
#include <adpo.hpp>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kPrompts = 4; // questions per step
constexpr std::size_t kSamples = 8; // replies per question
constexpr int kPairs = 100;         // question i is (i / 10) + (i % 10)

bool HeldOut(int i) { return i % 3 == 0; }

// 1 when the reply's last integer is the sum (the rule of the C demo).
double Reward(const std::string &reply, int sum) {
    std::size_t end = reply.find_last_of("0123456789");
    if (end == std::string::npos) return 0.0;
    std::size_t begin = end;
    while (begin > 0 && std::isdigit(static_cast<unsigned char>(reply[begin - 1]))) --begin;
    long value = std::strtol(reply.c_str() + begin, nullptr, 10);
    if (begin > 0 && reply[begin - 1] == '-') value = -value;
    return value == sum ? 1.0 : 0.0;
}

struct Job {
    adpo::Trainer &trainer;
    adpo::Tokenizer &tok;

    // Samples k replies to each question; returns the decoded replies, row by row.
    std::vector<std::string> Sample(const std::vector<int> &questions, std::size_t k, const char *sampling,
                                    adpo::Batch *out) {
        std::vector<std::vector<std::int64_t>> prompts;
        for (int i : questions) {
            const std::string msg = "[{\"role\": \"user\", \"content\": \"What is " + std::to_string(i / 10) +
                                    " + " + std::to_string(i % 10) + "? Answer with a number.\"}]";
            prompts.push_back(tok.encode(tok.apply_chat_template(msg, true), false));
        }
        *out = trainer.sample(prompts, k, sampling);
        const std::vector<std::int64_t> ids = out->ids();
        const std::vector<std::uint8_t> generated = out->loss_mask(); // 1 on each reply token
        std::vector<std::string> replies;
        for (std::size_t r = 0; r < out->n(); ++r) {
            std::vector<std::int64_t> reply;
            for (std::size_t j = r * out->t(); j < (r + 1) * out->t(); ++j)
                if (generated[j]) reply.push_back(ids[j]);
            replies.push_back(tok.decode(reply, true));
        }
        return replies;
    }

    double Accuracy() {
        std::vector<int> questions;
        for (int i = 0; i < kPairs; ++i)
            if (HeldOut(i)) questions.push_back(i);
        adpo::Batch batch;
        const std::vector<std::string> replies = Sample(questions, 1, R"({"top_k": 1, "max_new_tokens": 12})", &batch);
        double right = 0.0;
        for (std::size_t q = 0; q < questions.size(); ++q) right += Reward(replies[q], questions[q] / 10 + questions[q] % 10);
        return right / static_cast<double>(questions.size());
    }

    double Step(const std::vector<int> &questions) {
        adpo::Batch batch;
        const std::vector<std::string> replies =
            Sample(questions, kSamples, R"({"temperature": 0.8, "max_new_tokens": 12})", &batch);
        std::vector<double> rewards;
        double mean = 0.0;
        for (std::size_t r = 0; r < replies.size(); ++r) {
            const int i = questions[r / kSamples];
            rewards.push_back(Reward(replies[r], i / 10 + i % 10));
            mean += rewards.back() / static_cast<double>(replies.size());
        }
        batch.set_rewards(rewards);
        trainer.step(batch);
        return mean;
    }
};

} // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL [STEPS]\n", argv[0]);
        return 2;
    }
    const int steps = argc > 2 ? std::atoi(argv[2]) : 6;
    try {
        adpo::Model policy = adpo::Model::load_options(argv[1], R"({"lora": {"r": 16, "alpha": 32, "seed": 0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}})");
        adpo::Tokenizer tok(argv[1]);
        adpo::Trainer trainer(policy, R"({"loss": "listwise", "anchor": {"mode": "on_policy"}, "epochs_per_batch": 1,
            "optimizer": {"name": "adamw", "lr": 0.0002, "weight_decay": 0.0}, "grad_clip": 1.0, "seed": 1})");
        Job job{trainer, tok};
        const double before = job.Accuracy();
        std::printf("held-out greedy accuracy before: %.3f\n", before);
        std::uint64_t state = 2024; // the C demo's generator: the same questions
        for (int s = 1; s <= steps; ++s) {
            std::vector<int> questions;
            while (questions.size() < kPrompts) {
                state = state * 6364136223846793005ULL + 1442695040888963407ULL;
                const int i = static_cast<int>((state >> 33) % kPairs);
                if (!HeldOut(i)) questions.push_back(i);
            }
            std::printf("step %d  reward %.3f\n", s, job.Step(questions));
        }
        const double after = job.Accuracy();
        std::printf("held-out greedy accuracy after:  %.3f\n", after);
        return after > before ? 0 : 1;
    } catch (const adpo::Error &e) {
        std::fprintf(stderr, "adpo error (status %d): %s\n", static_cast<int>(e.status()), e.what());
        return 2;
    }
}
