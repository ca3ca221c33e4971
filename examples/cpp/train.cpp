// Online listwise ADPO from C++ on a toy task: the C++ counterpart of examples/c/demo.c, with
// the RAII classes of adpo.hpp.
//
// A tiny Llama checkpoint (vocabulary 16, make fixtures) sees prompts [1, x] with x in 2..9 and must
// answer with the token x + 1, four times. Each step samples K candidates per prompt from the
// policy, scores each with a reward computed here in C++ (the fraction of answer tokens equal to
// x + 1), hands the rewards to adpo and takes an ADPO step: sample -> reward -> step.
//
// Usage: train [MODEL_DIR] [STEPS] [DEVICE]   (DEVICE: cpu (default), cuda, cuda:N)
// Exit status: 0 when the reward went up (or for runs under 20 steps, too short to tell),
// 1 when it did not, 2 on an adpo error.
#include <adpo.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kPrompts = 8;
constexpr std::size_t kSamples = 8; // K candidates per prompt

// The host's reward for one row: fraction of generated (loss-masked) tokens equal to x + 1.
double Reward(const std::int64_t *row, const std::uint8_t *loss_mask, std::size_t t, std::int64_t x) {
    int hits = 0, total = 0;
    for (std::size_t j = 0; j < t; ++j) {
        if (!loss_mask[j]) continue;
        ++total;
        hits += row[j] == x + 1;
    }
    return total ? static_cast<double>(hits) / total : 0.0;
}

} // namespace

int main(int argc, char **argv) {
    const std::string model_path = argc > 1 ? argv[1] : "tests/fixtures/generated/tiny/llama";
    const int steps = argc > 2 ? std::atoi(argv[2]) : 150;
    const std::string device = argc > 3 ? argv[3] : "cpu";
    std::printf("%s\n", adpo::version().c_str());

    try {
        adpo::Trainer trainer;
        {
            adpo::Model policy(model_path, device);
            trainer = adpo::Trainer(policy, R"({
                "loss": "listwise", "tau": 0.8, "beta_reward": 0.5,
                "anchor": {"mode": "on_policy"}, "epochs_per_batch": 2,
                "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
                "grad_clip": 1.0, "seed": 7})");
        } // the trainer keeps its own reference to the policy
        std::printf("online listwise ADPO on %s: %zu prompts x K=%zu samples per step, %d steps\n", device.c_str(),
                    kPrompts, kSamples, steps);

        double first_reward = 0.0, last_reward = 0.0;
        const int first_n = steps < 5 ? steps : 5, last_n = steps < 10 ? steps : 10;
        unsigned seed = 12345;
        for (int step = 1; step <= steps; ++step) {
            // Prompts [1, x], x drawn from 2..9.
            std::vector<std::vector<std::int64_t>> prompts(kPrompts);
            for (auto &p : prompts) {
                seed = seed * 1103515245u + 12345u;
                p = {1, 2 + static_cast<std::int64_t>((seed >> 16) % 8)};
            }

            adpo::Batch batch = trainer.sample(prompts, kSamples, R"({"max_new_tokens": 4, "temperature": 1.0})");
            const adpo::Batch::Shape shape = batch.shape();
            const std::vector<std::int64_t> ids = batch.ids();
            const std::vector<std::uint8_t> mask = batch.loss_mask();
            const std::vector<std::int64_t> groups = batch.group_ids(); // group id = prompt index

            std::vector<double> rewards(shape.n);
            double mean = 0.0;
            for (std::size_t i = 0; i < shape.n; ++i) {
                const std::int64_t x = prompts[static_cast<std::size_t>(groups[i])][1];
                rewards[i] = Reward(&ids[i * shape.t], &mask[i * shape.t], shape.t, x);
                mean += rewards[i] / static_cast<double>(shape.n);
            }
            batch.set_rewards(rewards);
            const adpo_trainer_metrics m = trainer.step(batch);

            // Start: mean over the first 5 steps; end: mean over the last 10.
            if (step <= first_n) first_reward += mean / first_n;
            if (step > steps - last_n) last_reward += mean / last_n;
            if (step == 1 || step % 10 == 0 || step == steps)
                std::printf("step %3d  reward %.3f  loss %.4f  win_mass %.3f  grad_norm %.3f  %.1f ms/step\n", step,
                            mean, m.loss, m.win_mass, m.grad_norm, m.step_time_ms);
        }
        std::printf("reward at start: %.3f (first %d steps)   reward at end: %.3f (last %d steps)\n", first_reward,
                    first_n, last_reward, last_n);
        if (steps < 20) return 0;
        return last_reward > first_reward ? 0 : 1;
    } catch (const adpo::Error &e) {
        std::fprintf(stderr, "adpo error (%s): %s\n", adpo::status_name(e.status()), e.message().c_str());
        return 2;
    }
}
