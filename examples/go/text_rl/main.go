// Command text_rl: online ADPO on text from Go (the twin of examples/c/text_rl.c).
//
// Loads a Hugging Face checkpoint directory and its tokenizer, builds the prompts with the chat
// template, samples K completions per prompt, decodes them, rewards the answer "blue" in Go and
// takes listwise ADPO steps. The fixture model (tests/fixtures/make_text_model.py) answers one
// of four colours about equally often at the start.
//
// Run from the repository root (after `make lib fixtures`):
//
//	go -C examples/go run ./text_rl -steps 40
//
// It exits 1 on an error, or with -require-improvement when the share of "blue" did not rise.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	adpo "github.com/adpo-dev/adpo/bindings/go"
)

const k = 8

var questions = []string{"Name a colour.", "Say a colour.", "Pick a colour.", "Which colour?"}

const config = `{"loss": "listwise", "anchor": {"mode": "on_policy"}, "epochs_per_batch": 1,
 "optimizer": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0}, "grad_clip": 1.0, "seed": 3}`

func defaultDir() string {
	if dir := os.Getenv("ADPO_FIXTURES"); dir != "" {
		return filepath.Join(dir, "colours")
	}
	for _, d := range []string{"../../tests/fixtures/generated", "tests/fixtures/generated"} {
		if _, err := os.Stat(filepath.Join(d, "colours", "config.json")); err == nil {
			return filepath.Join(d, "colours")
		}
	}
	return "../../tests/fixtures/generated/colours"
}

func main() {
	dir := flag.String("model", defaultDir(), "checkpoint directory with its tokenizer")
	steps := flag.Int("steps", 40, "sample -> reward -> step iterations")
	device := flag.String("device", "cpu", `"cpu", "cuda" or "cuda:N"`)
	require := flag.Bool("require-improvement", false, "exit 1 unless the share of \"blue\" rises by 0.3")
	flag.Parse()
	if err := run(*dir, *steps, *device, *require); err != nil {
		fmt.Fprintln(os.Stderr, "text_rl:", err)
		os.Exit(1)
	}
}

// prompts are the chat-formatted questions as token ids.
func prompts(tok *adpo.Tokenizer) ([][]int64, error) {
	out := make([][]int64, len(questions))
	for i, q := range questions {
		text, err := tok.ApplyChatTemplate(fmt.Sprintf(`[{"role": "user", "content": %q}]`, q), true)
		if err != nil {
			return nil, err
		}
		if out[i], err = tok.Encode(text, false); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// rewards are 1 for each completion that reads "blue"; also the first completion's text.
func rewards(tok *adpo.Tokenizer, batch *adpo.Batch, n int) ([]float64, string, error) {
	out := make([]float64, n)
	first := ""
	for r := 0; r < n; r++ {
		ids, err := batch.Completion(r)
		if err != nil {
			return nil, "", err
		}
		text, err := tok.Decode(ids, true)
		if err != nil {
			return nil, "", err
		}
		if text == "blue" {
			out[r] = 1
		}
		if r == 0 {
			first = text
		}
	}
	return out, first, nil
}

func run(dir string, steps int, device string, require bool) error {
	policy, err := adpo.LoadModel(dir, device)
	if err != nil {
		return err
	}
	tok, err := adpo.LoadTokenizer(dir)
	if err != nil {
		return err
	}
	defer tok.Close()
	trainer, err := adpo.NewTrainer(policy, nil, config)
	policy.Close() // the trainer keeps its own reference
	if err != nil {
		return err
	}
	defer trainer.Close()
	ps, err := prompts(tok)
	if err != nil {
		return err
	}
	first, last := 0.0, 0.0
	for step := 1; step <= steps; step++ {
		start := time.Now()
		batch, err := trainer.Sample(ps, k, `{"max_new_tokens": 6}`)
		if err != nil {
			return err
		}
		rs, shown, err := rewards(tok, batch, len(ps)*k)
		if err == nil {
			err = batch.SetRewards(rs)
		}
		var m adpo.TrainerMetrics
		if err == nil {
			m, err = trainer.Step(batch)
		}
		batch.Close()
		if err != nil {
			return err
		}
		share := 0.0
		for _, r := range rs {
			share += r / float64(len(rs))
		}
		if step <= 5 {
			first += share / 5
		}
		if step > steps-5 {
			last += share / 5
		}
		if step == 1 || step%5 == 0 {
			fmt.Printf("step %3d  share \"blue\" %.3f  grad norm %.3f  %.1f ms/iteration  e.g. %q\n",
				step, share, m.GradNorm, float64(time.Since(start).Microseconds())/1e3, shown)
		}
	}
	fmt.Printf("share of \"blue\" at start: %.3f   at end: %.3f\n", first, last)
	if require && !(last > first+0.3) {
		return fmt.Errorf("the share of \"blue\" did not rise (%.3f -> %.3f)", first, last)
	}
	return nil
}
