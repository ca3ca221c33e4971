// Command gguf_lora: from llama.cpp's format and back. Loads SmolLM2-135M-Instruct straight from
// its GGUF file (the Q4_1 file Ollama and llama.cpp run), puts new LoRA adapters on it, takes a
// few listwise ADPO steps on a reward computed here in Go (replies that name the colour blue),
// and writes the adapters as a llama.cpp LoRA adapter GGUF (and, with -merged, the whole merged
// model as GGUF). Serve the result with
//
//	llama-cli -m SmolLM2-135M-Instruct.Q4_1.gguf --lora adapter.gguf
//
// or an Ollama Modelfile (FROM the base GGUF, ADAPTER adapter.gguf): README "From and to
// llama.cpp and Ollama".
//
// Run from the repository root (after `make lib setup`), about a minute on a laptop CPU:
//
//	go -C examples/go run ./gguf_lora -steps 3 -out /tmp/adpo-gguf
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	adpo "github.com/adpo-dev/adpo/bindings/go"
)

const (
	prompts = 2 // questions per step
	k       = 4 // replies per question
)

const lora = `{"lora": {"r": 8, "alpha": 16, "seed": 0, "target_modules":
 ["q_proj", "k_proj", "v_proj", "o_proj"]}}`

const config = `{"loss": "listwise", "anchor": {"mode": "on_policy"}, "epochs_per_batch": 1,
 "optimizer": {"name": "adamw", "lr": 0.0005, "weight_decay": 0.0}, "grad_clip": 1.0, "seed": 1}`

var questions = []string{
	"Name a colour.", "What colour is the sky?", "Pick a colour for a car.", "What is your favourite colour?",
}

// reward: 1 when the reply names blue, and a little for being short (the task lives in Go).
func reward(reply string) float64 {
	r := 0.0
	if strings.Contains(strings.ToLower(reply), "blue") {
		r = 1
	}
	if len(strings.Fields(reply)) <= 6 {
		r += 0.2
	}
	return r
}

func step(trainer *adpo.Trainer, tok *adpo.Tokenizer, s int) (float64, error) {
	ids := make([][]int64, prompts)
	for q := range ids {
		msg := fmt.Sprintf(`[{"role": "user", "content": %q}]`, questions[(s*prompts+q)%len(questions)])
		text, err := tok.ApplyChatTemplate(msg, true)
		if err == nil {
			ids[q], err = tok.Encode(text, false)
		}
		if err != nil {
			return 0, err
		}
	}
	batch, err := trainer.Sample(ids, k, `{"temperature": 0.9, "max_new_tokens": 10}`)
	if err != nil {
		return 0, err
	}
	defer batch.Close()
	rewards, mean := make([]float64, prompts*k), 0.0
	for r := range rewards {
		c, err := batch.Completion(r)
		var reply string
		if err == nil {
			reply, err = tok.Decode(c, true)
		}
		if err != nil {
			return 0, err
		}
		rewards[r] = reward(reply)
		mean += rewards[r] / float64(len(rewards))
	}
	if err := batch.SetRewards(rewards); err != nil {
		return 0, err
	}
	_, err = trainer.Step(batch)
	return mean, err
}

func run(model, out string, steps int, merged bool) error {
	policy, err := adpo.LoadModelOptions(model, lora)
	if err != nil {
		return err
	}
	defer policy.Close()
	tok, err := adpo.LoadTokenizer(model) // the tokenizer and chat template of the GGUF
	if err != nil {
		return err
	}
	defer tok.Close()
	trainer, err := adpo.NewTrainer(policy, nil, config)
	if err != nil {
		return err
	}
	defer trainer.Close()
	for s := 1; s <= steps; s++ {
		start := time.Now()
		mean, err := step(trainer, tok, s)
		if err != nil {
			return err
		}
		fmt.Printf("step %d  mean reward %.3f  %.1f s\n", s, mean, time.Since(start).Seconds())
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	adapter := filepath.Join(out, "adapter.gguf")
	if err := policy.SaveAdapterGGUF(adapter, ""); err != nil {
		return err
	}
	fmt.Printf("wrote %s\n  llama-cli -m %s --lora %s\n", adapter, model, adapter)
	if merged {
		file := filepath.Join(out, "merged-q8_0.gguf")
		if err := policy.SaveGGUF(file, `{"dtype": "q8_0"}`); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n  llama-cli -m %s\n", file, file)
	}
	return nil
}

func main() {
	model := flag.String("model", filepath.Join("..", "..", ".venv", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
		"SmolLM2-135M-Instruct GGUF file (scripts/fetch_model.py fetches it)")
	out := flag.String("out", filepath.Join(os.TempDir(), "adpo-gguf"), "directory for the written GGUF files")
	steps := flag.Int("steps", 3, "sample -> reward -> step iterations")
	merged := flag.Bool("merged", false, "also write the merged model as a q8_0 GGUF")
	flag.Parse()
	if err := run(*model, *out, *steps, *merged); err != nil {
		fmt.Fprintln(os.Stderr, "gguf_lora:", err)
		os.Exit(1)
	}
}
