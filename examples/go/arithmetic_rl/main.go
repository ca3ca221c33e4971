// Command arithmetic_rl: the main job from Go (the twin of examples/c/arithmetic_rl.c, shorter).
//
// SmolLM2-135M-Instruct with new LoRA adapters learns "What is A + B?" for single digits:
// sample K replies per question with the model's chat template, reward the right sum in Go,
// take listwise ADPO steps with an on-policy anchor, and compare greedy accuracy on held-out
// questions before and after.
//
// Run from the repository root (after `make lib setup`):
//
//	go -C examples/go run ./arithmetic_rl -steps 6
//
// It exits 1 on an error or when held-out accuracy did not rise.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	adpo "github.com/adpo-dev/adpo/bindings/go"
)

const (
	prompts = 4 // questions per step
	k       = 8 // replies per question
	pairs   = 100
)

const lora = `{"lora": {"r": 16, "alpha": 32, "seed": 0, "target_modules":
 ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}}`

const config = `{"loss": "listwise", "anchor": {"mode": "on_policy"}, "epochs_per_batch": 1,
 "optimizer": {"name": "adamw", "lr": 0.0002, "weight_decay": 0.0}, "grad_clip": 1.0, "seed": 1}`

// Question i is (i / 10) + (i % 10); every third is held out from training.
func heldOut(i int) bool { return i%3 == 0 }

var lastInteger = regexp.MustCompile(`-?\d+`)

// reward is 1 when the reply's last integer is the sum (the rule of the C demo).
func reward(reply string, sum int) float64 {
	all := lastInteger.FindAllString(reply, -1)
	if len(all) == 0 {
		return 0
	}
	if v, err := strconv.Atoi(all[len(all)-1]); err == nil && v == sum {
		return 1
	}
	return 0
}

type job struct {
	trainer *adpo.Trainer
	tok     *adpo.Tokenizer
}

// sample draws k replies to each question and decodes them.
func (j job) sample(questions []int, k int, sampling string) (*adpo.Batch, []string, error) {
	ids := make([][]int64, len(questions))
	for q, i := range questions {
		msg := fmt.Sprintf(`[{"role": "user", "content": "What is %d + %d? Answer with a number."}]`, i/10, i%10)
		text, err := j.tok.ApplyChatTemplate(msg, true)
		if err == nil {
			ids[q], err = j.tok.Encode(text, false)
		}
		if err != nil {
			return nil, nil, err
		}
	}
	batch, err := j.trainer.Sample(ids, k, sampling)
	if err != nil {
		return nil, nil, err
	}
	replies := make([]string, len(questions)*k)
	for r := range replies {
		c, err := batch.Completion(r)
		if err == nil {
			replies[r], err = j.tok.Decode(c, true)
		}
		if err != nil {
			batch.Close()
			return nil, nil, err
		}
	}
	return batch, replies, nil
}

func (j job) accuracy() (float64, error) {
	var questions []int
	for i := 0; i < pairs; i++ {
		if heldOut(i) {
			questions = append(questions, i)
		}
	}
	batch, replies, err := j.sample(questions, 1, `{"top_k": 1, "max_new_tokens": 12}`)
	if err != nil {
		return 0, err
	}
	defer batch.Close()
	right := 0.0
	for q, i := range questions {
		right += reward(replies[q], i/10+i%10)
	}
	return right / float64(len(questions)), nil
}

func (j job) step(questions []int) (float64, error) {
	batch, replies, err := j.sample(questions, k, `{"temperature": 0.8, "max_new_tokens": 12}`)
	if err != nil {
		return 0, err
	}
	defer batch.Close()
	rewards, mean := make([]float64, len(replies)), 0.0
	for r, reply := range replies {
		i := questions[r/k]
		rewards[r] = reward(reply, i/10+i%10)
		mean += rewards[r] / float64(len(replies))
	}
	if err := batch.SetRewards(rewards); err != nil {
		return 0, err
	}
	_, err = j.trainer.Step(batch)
	return mean, err
}

func run(model string, steps int) error {
	policy, err := adpo.LoadModelOptions(model, lora)
	if err != nil {
		return err
	}
	defer policy.Close()
	tok, err := adpo.LoadTokenizer(model)
	if err != nil {
		return err
	}
	defer tok.Close()
	trainer, err := adpo.NewTrainer(policy, nil, config)
	if err != nil {
		return err
	}
	defer trainer.Close()
	j := job{trainer, tok}
	before, err := j.accuracy()
	if err != nil {
		return err
	}
	fmt.Printf("held-out greedy accuracy before: %.3f\n", before)
	state := uint64(2024) // the C demo's generator: the same questions
	for s := 1; s <= steps; s++ {
		questions := make([]int, prompts)
		for q := range questions {
			for {
				state = state*6364136223846793005 + 1442695040888963407
				if questions[q] = int((state >> 33) % pairs); !heldOut(questions[q]) {
					break
				}
			}
		}
		start := time.Now()
		mean, err := j.step(questions)
		if err != nil {
			return err
		}
		fmt.Printf("step %d  reward %.3f  %.1f s\n", s, mean, time.Since(start).Seconds())
	}
	after, err := j.accuracy()
	if err != nil {
		return err
	}
	fmt.Printf("held-out greedy accuracy after:  %.3f\n", after)
	if !(after > before) {
		return fmt.Errorf("held-out accuracy did not rise (%.3f -> %.3f)", before, after)
	}
	return nil
}

func main() {
	model := flag.String("model", filepath.Join("..", "..", ".venv", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
		"SmolLM2-135M-Instruct: its GGUF file (scripts/setup fetches it) or a checkpoint directory")
	steps := flag.Int("steps", 6, "sample -> reward -> step iterations")
	flag.Parse()
	if err := run(*model, *steps); err != nil {
		fmt.Fprintln(os.Stderr, "arithmetic_rl:", err)
		os.Exit(1)
	}
}
