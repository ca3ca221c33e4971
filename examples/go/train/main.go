// Command train: online listwise ADPO from Go on a toy task (the Go twin of examples/c/demo.c).
//
// A tiny Llama checkpoint (vocabulary 16, make fixtures) sees prompts [1, x] with x in 2..9 and must
// answer with the token x + 1, four times. Each step samples K candidates per prompt from the
// policy, scores each in Go (the fraction of answer tokens equal to x + 1), hands the rewards
// to adpo and takes an ADPO step: sample -> reward -> step.
//
// Run from the repository root (after `make lib fixtures`):
//
//	go -C examples/go run ./train                 # 150 steps on the CPU
//	go -C examples/go run ./train -steps 20 -device cuda
//
// It exits 0 when training ran (1 on an error); with -require-improvement it also exits 1
// unless the reward at the end beats the reward at the start, like the C demo.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	adpo "github.com/adpo-dev/adpo/bindings/go"
)

const (
	prompts   = 8
	k         = 8
	newTokens = 4
)

const config = `{"loss": "listwise", "tau": 0.8, "beta_reward": 0.5,
 "anchor": {"mode": "on_policy"}, "epochs_per_batch": 2,
 "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
 "grad_clip": 1.0, "seed": 7}`

func defaultModel() string {
	dir := os.Getenv("ADPO_FIXTURES")
	if dir == "" {
		// `go -C examples/go run ./train` runs in examples/go; also try the repository root.
		for _, d := range []string{"../../tests/fixtures/generated", "tests/fixtures/generated"} {
			if _, err := os.Stat(filepath.Join(d, "tiny", "llama")); err == nil {
				dir = d
				break
			}
		}
		if dir == "" {
			dir = "../../tests/fixtures/generated"
		}
	}
	return filepath.Join(dir, "tiny", "llama")
}

// reward is the fraction of generated tokens (loss mask 1) equal to x + 1.
func reward(row []int64, mask []uint8, x int64) float64 {
	hits, total := 0, 0
	for j, m := range mask {
		if m == 0 {
			continue
		}
		total++
		if row[j] == x+1 {
			hits++
		}
	}
	if total == 0 {
		return 0
	}
	return float64(hits) / float64(total)
}

func main() {
	model := flag.String("model", defaultModel(), "checkpoint directory of a causal LM (vocabulary >= 11)")
	steps := flag.Int("steps", 150, "number of sample -> reward -> step iterations")
	device := flag.String("device", "cpu", `"cpu", "cuda" or "cuda:N"`)
	requireImprovement := flag.Bool("require-improvement", false, "exit 1 unless the end reward beats the start reward")
	flag.Parse()
	if err := run(*model, *steps, *device, *requireImprovement); err != nil {
		fmt.Fprintln(os.Stderr, "train:", err)
		os.Exit(1)
	}
}

func run(modelPath string, steps int, device string, requireImprovement bool) error {
	if steps < 1 {
		return fmt.Errorf("-steps must be >= 1 (got %d)", steps)
	}
	fmt.Println(adpo.Version())
	policy, err := adpo.LoadModel(modelPath, device)
	if err != nil {
		return fmt.Errorf("load %s: %w", modelPath, err)
	}
	trainer, err := adpo.NewTrainer(policy, nil, config)
	policy.Close() // the trainer keeps its own reference
	if err != nil {
		return fmt.Errorf("new trainer: %w", err)
	}
	defer trainer.Close()
	fmt.Printf("online listwise ADPO on %s: %d prompts x K=%d samples per step, %d steps\n", device, prompts, k, steps)

	sampling := fmt.Sprintf(`{"max_new_tokens": %d, "temperature": 1.0}`, newTokens)
	seed := uint32(12345)
	// Start: mean over the first min(5, steps) steps; end: mean over the last min(10, steps).
	nFirst, nLast := min(5, steps), min(10, steps)
	firstReward, lastReward := 0.0, 0.0
	for step := 1; step <= steps; step++ {
		ps := make([][]int64, prompts)
		for p := range ps {
			seed = seed*1103515245 + 12345
			ps[p] = []int64{1, 2 + int64((seed>>16)%8)}
		}
		batch, err := trainer.Sample(ps, k, sampling)
		if err != nil {
			return fmt.Errorf("sample: %w", err)
		}
		mean, m, err := rewardAndStep(trainer, batch, ps)
		batch.Close()
		if err != nil {
			return err
		}
		if step <= nFirst {
			firstReward += mean / float64(nFirst)
		}
		if step > steps-nLast {
			lastReward += mean / float64(nLast)
		}
		if step == 1 || step%10 == 0 || step == steps {
			fmt.Printf("step %3d  reward %.3f  loss %.4f  win_mass %.3f  grad_norm %.3f  %.1f ms/step\n",
				step, mean, m.Loss, m.WinMass, m.GradNorm, m.StepTimeMs)
		}
	}
	fmt.Printf("reward at start: %.3f (first %d steps)   reward at end: %.3f (last %d steps)\n",
		firstReward, nFirst, lastReward, nLast)
	if requireImprovement && !(lastReward > firstReward) {
		return fmt.Errorf("the reward did not improve (%.3f -> %.3f)", firstReward, lastReward)
	}
	return nil
}

func rewardAndStep(trainer *adpo.Trainer, batch *adpo.Batch, ps [][]int64) (float64, adpo.TrainerMetrics, error) {
	n, t, err := batch.Shape()
	if err != nil {
		return 0, adpo.TrainerMetrics{}, err
	}
	ids, err := batch.IDs()
	if err != nil {
		return 0, adpo.TrainerMetrics{}, err
	}
	mask, err := batch.LossMask()
	if err != nil {
		return 0, adpo.TrainerMetrics{}, err
	}
	groups, err := batch.GroupIDs()
	if err != nil {
		return 0, adpo.TrainerMetrics{}, err
	}
	rewards := make([]float64, n)
	mean := 0.0
	for i := range rewards {
		rewards[i] = reward(ids[i*t:(i+1)*t], mask[i*t:(i+1)*t], ps[groups[i]][1])
		mean += rewards[i] / float64(n)
	}
	if err := batch.SetRewards(rewards); err != nil {
		return 0, adpo.TrainerMetrics{}, fmt.Errorf("set rewards: %w", err)
	}
	m, err := trainer.Step(batch)
	if err != nil {
		return 0, adpo.TrainerMetrics{}, fmt.Errorf("step: %w", err)
	}
	return mean, m, nil
}
