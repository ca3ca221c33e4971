package adpo

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// nativeTrainer: a trainer on the tiny Qwen3 checkpoint directory loaded with options.
func nativeTrainer(t *testing.T, options, config string) (*Model, *Trainer) {
	t.Helper()
	dir := fixture(t, filepath.Join("hf", "qwen3_gqa2_headdim16_tied"))
	m, err := LoadModelOptions(dir, options)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	tr, err := NewTrainer(m, nil, config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return m, tr
}

func sampleIDs(t *testing.T, tr *Trainer, prompt []int64, options string) []int64 {
	t.Helper()
	b, err := tr.Sample([][]int64{prompt}, 1, options)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ids, err := b.IDs()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func TestNativeSamplingStopsAtAStopSequenceOrAnyEosID(t *testing.T) {
	_, tr := nativeTrainer(t, "", `{"optimizer": {"name": "sgd", "lr": 0.1}}`)
	prompt := []int64{3, 9, 4}
	free := sampleIDs(t, tr, prompt, `{"max_new_tokens": 8, "top_k": 1, "eos_id": []}`)
	if len(free) != 3+8 {
		t.Fatalf("greedy run without EOS: %d tokens, want 11", len(free))
	}
	a, b, c := free[3], free[4], free[5]
	stop := fmt.Sprintf(`{"max_new_tokens": 8, "top_k": 1, "eos_id": [], "stop_sequences": [[%d, %d]]}`, a, b)
	if got := sampleIDs(t, tr, prompt, stop); len(got) != 3+2 {
		t.Fatalf("stop sequence [%d %d]: row %v, want it to end after them", a, b, got)
	}
	other := int64(159)
	for other == a || other == b || other == c {
		other--
	}
	eos := fmt.Sprintf(`{"max_new_tokens": 8, "top_k": 1, "eos_id": [%d, %d]}`, other, c)
	got := sampleIDs(t, tr, prompt, eos)
	if len(got) > 3+3 || got[len(got)-1] != c {
		t.Fatalf("eos list [%d %d]: row %v, want it to end at the first %d", other, c, got, c)
	}
	_, err := tr.Sample([][]int64{prompt}, 1, `{"stop_sequences": [[]]}`)
	wantStatus(t, err, StatusInvalidConfig)
}

func TestTrainableAndBf16MixedPrecision(t *testing.T) {
	m, tr := nativeTrainer(t, `{"dtype": "bfloat16"}`,
		`{"optimizer": {"name": "sgd", "lr": 0.1}, "precision": "bf16-mixed", "trainable": ["*.mlp.*"]}`)
	before, err := m.Params()
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.Sample([][]int64{{3, 9, 4}, {5, 1}}, 3, `{"max_new_tokens": 4, "seed": 2}`)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.SetRewards([]float64{0, 1, 2, 0, 1, 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Step(b); err != nil {
		t.Fatal(err)
	}
	after, _ := m.Params()
	if len(after) != len(before) || equalF64(after, before) {
		t.Fatal("the trainable MLP masters did not move")
	}
	dir := fixture(t, filepath.Join("hf", "qwen3_gqa2_headdim16_tied"))
	f32, err := LoadModel(dir, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer f32.Close()
	_, err = NewTrainer(f32, nil, `{"precision": "bf16-mixed"}`)
	wantStatus(t, err, StatusInvalidArgument)
	_, err = NewTrainer(f32, nil, `{"trainable": ["*.mpl.*"]}`)
	wantStatus(t, err, StatusInvalidConfig)
	if !strings.Contains(err.Error(), "matches no parameter") {
		t.Fatalf("message %q", err.Error())
	}
}

// activation_checkpointing recomputes the layers in the backward: the step is the same.
func TestActivationCheckpointingGivesTheSameStep(t *testing.T) {
	cfg := `{"optimizer": {"name": "sgd", "lr": 0.5}, "seed": 3`
	m1, whole := nativeTrainer(t, `{"dtype": "float64"}`, cfg+`}`)
	m2, recomputed := nativeTrainer(t, `{"dtype": "float64"}`, cfg+`, "activation_checkpointing": true}`)
	b, err := whole.Sample([][]int64{{3, 9, 4}, {5, 1}}, 3, `{"max_new_tokens": 4, "seed": 2}`)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.SetRewards([]float64{0, 1, 2, 2, 0, 1}); err != nil {
		t.Fatal(err)
	}
	before, _ := m1.Params()
	for _, tr := range []*Trainer{whole, recomputed} {
		if _, err := tr.Step(b); err != nil {
			t.Fatal(err)
		}
	}
	p1, _ := m1.Params()
	p2, _ := m2.Params()
	if equalF64(p1, before) {
		t.Fatal("the step did not move the weights")
	}
	for i := range p1 {
		if d := p1[i] - p2[i]; d > 1e-10 || d < -1e-10 {
			t.Fatalf("parameter %d: %g (whole graph) vs %g (checkpointed)", i, p1[i], p2[i])
		}
	}
}
