package adpo

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Spec vector V1: one group of four candidates.
var (
	v1Logp    = []float64{-12.0, -15.5, -9.8, -20.1}
	v1Anchor  = []float64{-12.5, -15.0, -10.4, -19.6}
	v1Rewards = []float64{1, 0, 0.5, -0.1}
	v1Groups  = []int64{0, 0, 0, 0}
)

const trainerConfig = `{"loss": "listwise", "tau": 0.8, "beta_reward": 0.5,
 "anchor": {"mode": "on_policy"}, "epochs_per_batch": 2,
 "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.0},
 "grad_clip": 1.0, "seed": 7}`

func fixture(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("ADPO_FIXTURES")
	if dir == "" {
		dir = filepath.Join("..", "..", "tests", "fixtures", "generated")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("fixture %s is missing (run `make fixtures` or set ADPO_FIXTURES): %v", p, err)
	}
	return p
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func wantStatus(t *testing.T, err error, want Status) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want status %v", want)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *adpo.Error", err, err)
	}
	if e.Status != want {
		t.Fatalf("status = %v (%d), want %v (%d); error: %v", e.Status, e.Status, want, want, err)
	}
	if !errors.Is(err, &Error{Status: want}) {
		t.Fatalf("errors.Is(err, &Error{Status: %v}) is false", want)
	}
	if StatusOf(err) != want {
		t.Fatalf("StatusOf = %v, want %v", StatusOf(err), want)
	}
}

func newObjective(t *testing.T, cfg string) *Objective {
	t.Helper()
	o, err := NewObjective(cfg)
	if err != nil {
		t.Fatalf("NewObjective(%q): %v", cfg, err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func loadModel(t *testing.T, name string) *Model {
	t.Helper()
	m, err := LoadModel(fixture(t, name), "cpu")
	if err != nil {
		t.Fatalf("LoadModel(%s): %v", name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func newTrainer(t *testing.T) *Trainer {
	t.Helper()
	_, tr := newPolicyTrainer(t)
	return tr
}

func TestVersionAndABI(t *testing.T) {
	if v := Version(); !strings.HasPrefix(v, "adpo ") {
		t.Fatalf("Version() = %q", v)
	}
	if err := CheckABI(); err != nil {
		t.Fatal(err)
	}
	if ABIVersion() != HeaderABIVersion {
		t.Fatalf("ABIVersion() = %d, header %d", ABIVersion(), HeaderABIVersion)
	}
	if n := CUDADeviceCount(); n < 0 {
		t.Fatalf("CUDADeviceCount() = %d", n)
	}
	if !strings.Contains(Version(), "0.1.0") && HeaderVersionMajor == 0 && HeaderVersionMinor == 1 {
		t.Logf("note: library version %q differs from header 0.1.x", Version())
	}
}

func TestObjectiveV1Default(t *testing.T) {
	o := newObjective(t, "")
	r, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.Loss, 1.0152, 1e-4) {
		t.Fatalf("loss = %.6f, want 1.0152", r.Loss)
	}
	if len(r.Grad) != 4 || len(r.Scores) != 4 {
		t.Fatalf("grad %v scores %v", r.Grad, r.Scores)
	}
	sum := 0.0
	for _, g := range r.Grad {
		sum += g
	}
	if !near(sum, 0, 1e-9) {
		t.Fatalf("listwise gradient over one group sums to %g, want 0", sum)
	}
	// The inputs are untouched.
	if v1Logp[0] != -12.0 || v1Anchor[3] != -19.6 {
		t.Fatal("inputs were modified")
	}
}

func TestObjectiveV1Raw(t *testing.T) {
	o := newObjective(t, `{"reward_transform":"raw"}`)
	r, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
	if err != nil {
		t.Fatal(err)
	}
	if !near(r.Loss, 1.15766, 1e-5) {
		t.Fatalf("loss = %.7f, want 1.15766", r.Loss)
	}
	want := []float64{-0.312555, 0.0275269, 0.238502, 0.0465261}
	for i := range want {
		if !near(r.Grad[i], want[i], 1e-6) {
			t.Fatalf("grad = %v, want %v", r.Grad, want)
		}
	}
	// Scores: s = (logp - anchor) / tau with the default tau 0.8.
	for i := range v1Logp {
		if s := (v1Logp[i] - v1Anchor[i]) / 0.8; !near(r.Scores[i], s, 1e-9) {
			t.Fatalf("scores = %v, want (logp - anchor)/0.8", r.Scores)
		}
	}

	m, err := o.Metrics()
	if err != nil {
		t.Fatal(err)
	}
	if !near(m.Loss, r.Loss, 1e-12) || m.Groups != 1 || !near(m.Tau, 0.8, 1e-12) {
		t.Fatalf("metrics %+v", m)
	}
	if !math.IsNaN(m.ClipFraction) {
		t.Fatalf("clip_fraction = %v, want NaN for listwise", m.ClipFraction)
	}
	js, err := o.MetricsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal([]byte(js), &parsed); err != nil {
		t.Fatalf("MetricsJSON %q: %v", js, err)
	}
	if l, ok := parsed["loss"].(float64); !ok || !near(l, r.Loss, 1e-9) {
		t.Fatalf("MetricsJSON loss: %q", js)
	}
}

func TestObjectiveTargetsAndGroups(t *testing.T) {
	o := newObjective(t, "")
	// A one-hot target on the first candidate.
	r, err := o.EvalTargets(v1Logp, v1Anchor, []float64{1, 0, 0, 0}, v1Groups)
	if err != nil {
		t.Fatal(err)
	}
	if !(r.Loss > 0) || r.Grad[0] >= 0 {
		t.Fatalf("one-hot target: loss %v grad %v (want loss > 0, grad[0] < 0)", r.Loss, r.Grad)
	}
	// Two interleaved groups equal the mean of the groups evaluated alone.
	logp := []float64{-1, -3, -2, -4, -1.5, -2.5}
	anch := []float64{-1.2, -2.7, -2.1, -3.9, -1.4, -2.6}
	rew := []float64{1, 0, 0.3, 0.7, 0.2, 0.9}
	gid := []int64{5, 9, 5, 9, 5, 9}
	both, err := o.Eval(logp, anch, rew, gid)
	if err != nil {
		t.Fatal(err)
	}
	a, err := o.Eval([]float64{-1, -2, -1.5}, []float64{-1.2, -2.1, -1.4}, []float64{1, 0.3, 0.2}, []int64{0, 0, 0})
	if err != nil {
		t.Fatal(err)
	}
	b, err := o.Eval([]float64{-3, -4, -2.5}, []float64{-2.7, -3.9, -2.6}, []float64{0, 0.7, 0.9}, []int64{1, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	if !near(both.Loss, (a.Loss+b.Loss)/2, 1e-12) {
		t.Fatalf("two groups: %v, separately %v and %v", both.Loss, a.Loss, b.Loss)
	}
	if m, _ := o.Metrics(); m.Groups != 1 {
		t.Fatalf("metrics after the last eval: groups %d, want 1", m.Groups)
	}
}

func TestObjectiveEntropy(t *testing.T) {
	o := newObjective(t, `{"adaptive_tau": {"rule": "smooth_hybrid"}}`)
	r, err := o.EvalEntropy(v1Logp, v1Anchor, v1Rewards, v1Groups, []float64{0.5, 0.4, 0.6, 0.3})
	if err != nil {
		t.Fatal(err)
	}
	if math.IsNaN(r.Loss) || math.IsInf(r.Loss, 0) {
		t.Fatalf("loss %v", r.Loss)
	}
	_, err = o.EvalEntropy(v1Logp, v1Anchor, v1Rewards, v1Groups, []float64{0.5})
	wantStatus(t, err, StatusShapeMismatch)
}

func TestObjectiveTokens(t *testing.T) {
	o := newObjective(t, `{"loss": "grpo"}`)
	const n, tt = 4, 3
	logp := []float64{-1, -2, -1.5, -0.5, -1, -2, -2, -1, -0.7, -1.1, -0.9, -1.3}
	old := []float64{-1.1, -1.9, -1.5, -0.6, -1, -2.1, -2, -1.2, -0.7, -1, -0.8, -1.3}
	mask := []float64{0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1}
	rew := []float64{1, 0, 0.5, 0.2}
	gid := []int64{0, 0, 1, 1}
	r, err := o.EvalTokens(n, tt, logp, old, nil, mask, rew, gid)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Grad) != n*tt || len(r.Advantages) != n || math.IsNaN(r.Loss) {
		t.Fatalf("result %+v", r)
	}
	for i, m := range mask {
		if m == 0 && r.Grad[i] != 0 {
			t.Fatalf("grad at a masked token %d = %v", i, r.Grad[i])
		}
	}
	if !(r.Advantages[0] > r.Advantages[1]) {
		t.Fatalf("advantages %v: the better candidate should have the larger advantage", r.Advantages)
	}
	_, err = o.EvalTokens(n, tt, logp[:5], old, nil, mask, rew, gid)
	wantStatus(t, err, StatusShapeMismatch)
	_, err = o.EvalTokens(0, tt, nil, nil, nil, nil, nil, nil)
	wantStatus(t, err, StatusInvalidArgument)

	// The listwise objective rejects the token-level call.
	lw := newObjective(t, "")
	if _, err := lw.EvalTokens(n, tt, logp, old, nil, mask, rew, gid); err == nil {
		t.Fatal("EvalTokens on a listwise objective succeeded")
	} else {
		t.Logf("listwise EvalTokens: %v", err)
	}
}

func TestObjectiveErrors(t *testing.T) {
	o := newObjective(t, "")

	_, err := o.Eval(v1Logp, v1Anchor, []float64{1, math.NaN(), 0, 0}, v1Groups)
	wantStatus(t, err, StatusNonFinite)
	_, err = o.Eval([]float64{math.Inf(-1), -1, -2, -3}, v1Anchor, v1Rewards, v1Groups)
	wantStatus(t, err, StatusNonFinite)

	_, err = NewObjective(`{"no_such_key": 1}`)
	wantStatus(t, err, StatusInvalidConfig)
	_, err = NewObjective(`{"tau": -1}`)
	wantStatus(t, err, StatusInvalidConfig)
	_, err = NewObjective(`{not json`)
	wantStatus(t, err, StatusInvalidConfig)
	if !strings.Contains(err.Error(), "adpo: invalid config") {
		t.Fatalf("message %q", err.Error())
	}

	// Length checks happen in Go, before C sees the pointers.
	_, err = o.Eval(v1Logp, v1Anchor[:3], v1Rewards, v1Groups)
	wantStatus(t, err, StatusShapeMismatch)
	_, err = o.Eval(v1Logp, v1Anchor, v1Rewards, []int64{0})
	wantStatus(t, err, StatusShapeMismatch)
	_, err = o.EvalTargets(v1Logp, v1Anchor, nil, v1Groups)
	wantStatus(t, err, StatusShapeMismatch)
	_, err = o.Eval(nil, nil, nil, nil)
	wantStatus(t, err, StatusInvalidArgument)

	// Targets that do not sum to 1 over the group.
	_, err = o.EvalTargets(v1Logp, v1Anchor, []float64{0.5, 0.5, 0.5, 0}, v1Groups)
	if err == nil {
		t.Fatal("targets summing to 1.5 were accepted")
	}

	// A failed call leaves the metrics of the last successful one.
	if _, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups); err != nil {
		t.Fatal(err)
	}
	before, _ := o.Metrics()
	_, _ = o.Eval(v1Logp, v1Anchor, []float64{1, math.NaN(), 0, 0}, v1Groups)
	after, _ := o.Metrics()
	if before.Loss != after.Loss {
		t.Fatalf("metrics changed by a failed call: %v -> %v", before.Loss, after.Loss)
	}

	wantStatus(t, testPanic(), StatusPanic)
}

func TestModelErrors(t *testing.T) {
	_, err := LoadModel(fixture(t, "tiny/llama/model.safetensors"), "cpu")
	wantStatus(t, err, StatusModel)
	_, err = LoadModel(filepath.Join(t.TempDir(), "missing.pt"), "")
	wantStatus(t, err, StatusModel)
	junk := filepath.Join(t.TempDir(), "junk.pt")
	if err := os.WriteFile(junk, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadModel(junk, "cpu")
	wantStatus(t, err, StatusModel)

	m := loadModel(t, "tiny/llama")
	v, err := m.VocabSize()
	if err != nil || v != 16 {
		t.Fatalf("VocabSize = %d, %v; want 16", v, err)
	}
	q := loadModel(t, "tiny/qwen2")
	if v, err := q.VocabSize(); err != nil || v <= 0 {
		t.Fatalf("qwen2 VocabSize = %d, %v", v, err)
	}
}

func TestBatch(t *testing.T) {
	const n, tt = 4, 5
	ids := make([]int64, n*tt)
	lm := make([]uint8, n*tt)
	for r := 0; r < n; r++ {
		for c := 0; c < tt; c++ {
			ids[r*tt+c] = int64((r*7 + c*3) % 16)
			if c >= 3 {
				lm[r*tt+c] = 1
			}
		}
	}
	gids := []int64{3, 3, 8, 8}
	b, err := NewBatch(n, tt, ids, nil, lm, gids)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	gn, gt, err := b.Shape()
	if err != nil || gn != n || gt != tt {
		t.Fatalf("Shape = %d, %d, %v", gn, gt, err)
	}
	gotIDs, err := b.IDs()
	if err != nil || !equalI64(gotIDs, ids) {
		t.Fatalf("IDs = %v, %v", gotIDs, err)
	}
	gotLM, err := b.LossMask()
	if err != nil || string(gotLM) != string(lm) {
		t.Fatalf("LossMask = %v, %v", gotLM, err)
	}
	gotG, err := b.GroupIDs()
	if err != nil || !equalI64(gotG, gids) {
		t.Fatalf("GroupIDs = %v, %v", gotG, err)
	}
	if err := b.SetRewards([]float64{1, 0, 0.5, 0.2}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetTargets([]float64{1, 0, 0.5, 0.5}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetOldLogp(make([]float64, n*tt)); err != nil {
		t.Fatal(err)
	}
	if err := b.SetAnchorLogp(make([]float64, n)); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, b.SetRewards([]float64{1, 2, 3}), StatusShapeMismatch)
	wantStatus(t, b.SetRewards([]float64{1, math.NaN(), 0, 0}), StatusNonFinite)
	wantStatus(t, b.SetRewards(nil), StatusShapeMismatch)

	// Validation: the loss mask's column 0 must be 0, ids >= 0, lengths agree.
	bad := append([]uint8(nil), lm...)
	bad[0] = 1
	_, err = NewBatch(n, tt, ids, nil, bad, gids)
	wantStatus(t, err, StatusInvalidArgument)
	neg := append([]int64(nil), ids...)
	neg[1] = -1
	_, err = NewBatch(n, tt, neg, nil, lm, gids)
	if err == nil {
		t.Fatal("negative token id accepted")
	}
	_, err = NewBatch(n, tt, ids[:3], nil, lm, gids)
	wantStatus(t, err, StatusShapeMismatch)
	_, err = NewBatch(n, tt, ids, make([]uint8, 2), lm, gids)
	wantStatus(t, err, StatusShapeMismatch)
	_, err = NewBatch(0, tt, nil, nil, nil, nil)
	wantStatus(t, err, StatusInvalidArgument)
}

func equalI64(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// manualBatch: 2 groups of 4 rows, prompt [1, x], answer tokens on the last 3 positions.
func manualBatch(t *testing.T) *Batch {
	t.Helper()
	const n, tt = 8, 5
	ids := make([]int64, n*tt)
	lm := make([]uint8, n*tt)
	gids := make([]int64, n)
	rewards := make([]float64, n)
	for r := 0; r < n; r++ {
		gids[r] = int64(r / 4)
		ids[r*tt] = 1
		ids[r*tt+1] = int64(2 + r/4)
		for c := 2; c < tt; c++ {
			ids[r*tt+c] = int64((r + c) % 16)
			lm[r*tt+c] = 1
		}
		rewards[r] = float64(r%4) / 3
	}
	b, err := NewBatch(n, tt, ids, nil, lm, gids)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.SetRewards(rewards); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTrainerStep(t *testing.T) {
	m := loadModel(t, "tiny/llama")
	tr, err := NewTrainer(m, nil, `{"anchor": {"mode": "fixed"}, "optimizer": {"name": "sgd", "lr": 0.01}}`)
	if err == nil {
		// anchor "fixed" without a reference model needs anchor_logp on the batch; a step
		// without it must fail cleanly.
		b := manualBatch(t)
		_, err = tr.Step(b)
		t.Logf("fixed anchor without reference/anchor_logp: %v", err)
		tr.Close()
	} else {
		t.Logf("NewTrainer(fixed anchor, no reference): %v", err)
	}

	tr = newTrainer(t)
	// The model handle may be closed once the trainer exists.
	m.Close()
	b := manualBatch(t)
	before, err := tr.SequenceLogp(b)
	if err != nil {
		t.Fatal(err)
	}
	met, err := tr.Step(b)
	if err != nil {
		t.Fatal(err)
	}
	// epochs_per_batch = 2: two optimizer steps.
	if met.Step != 2 || met.Groups != 2 || math.IsNaN(met.Loss) || !(met.GradNorm > 0) || !near(met.LR, 0.003, 1e-12) {
		t.Fatalf("metrics %+v", met)
	}
	if met.Tokens != 24 {
		t.Fatalf("tokens = %v, want 24", met.Tokens)
	}
	after, err := tr.SequenceLogp(b)
	if err != nil {
		t.Fatal(err)
	}
	changed := false
	for i := range before {
		changed = changed || before[i] != after[i]
	}
	if !changed {
		t.Fatal("a step did not change the policy's sequence log-probs")
	}
	js, err := tr.MetricsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var parsed map[string]any
	if err := json.Unmarshal([]byte(js), &parsed); err != nil {
		t.Fatalf("MetricsJSON %q: %v", js, err)
	}
	if s, ok := parsed["step"].(float64); !ok || s != 2 {
		t.Fatalf("MetricsJSON step: %s", js)
	}

	// A batch without rewards or targets cannot be stepped on.
	nb, err := NewBatch(2, 3, []int64{1, 2, 3, 1, 2, 4}, nil, []uint8{0, 1, 1, 0, 1, 1}, []int64{0, 0})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if _, err := tr.Step(nb); err == nil {
		t.Fatal("a step on a batch without rewards succeeded")
	} else {
		t.Logf("step without rewards: %v", err)
	}
	// Token ids outside the vocabulary.
	ob, err := NewBatch(2, 3, []int64{1, 2, 99, 1, 2, 4}, nil, []uint8{0, 1, 1, 0, 1, 1}, []int64{0, 0})
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	if err := ob.SetRewards([]float64{1, 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Step(ob); err == nil {
		t.Fatal("a step with token id 99 >= vocab 16 succeeded")
	} else {
		t.Logf("step with out-of-vocabulary id: %v", err)
	}
	// The trainer still works after the failed calls.
	if _, err := tr.Step(b); err != nil {
		t.Fatalf("step after failed calls: %v", err)
	}

	_, err = NewTrainer(nil, nil, "")
	wantStatus(t, err, StatusNullArgument)
	m2 := loadModel(t, "tiny/llama")
	_, err = NewTrainer(m2, nil, `{"optimizer": {"name": "nope"}}`)
	wantStatus(t, err, StatusInvalidConfig)
}

func TestTrainerSample(t *testing.T) {
	tr := newTrainer(t)
	prompts := [][]int64{{1, 2}, {1, 5, 7}, {1, 9}}
	const k = 4
	b, err := tr.Sample(prompts, k, `{"max_new_tokens": 4, "temperature": 1.0, "seed": 3}`)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	n, tt, err := b.Shape()
	if err != nil {
		t.Fatal(err)
	}
	if n != len(prompts)*k {
		t.Fatalf("rows = %d, want %d", n, len(prompts)*k)
	}
	if tt < 3+1 || tt > 3+4 {
		t.Fatalf("t = %d, want the longest prompt (3) + 1..4 new tokens", tt)
	}
	gids, err := b.GroupIDs()
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range gids {
		if g != int64(i/k) {
			t.Fatalf("group ids %v, want prompt index per row", gids)
		}
	}
	ids, _ := b.IDs()
	lm, _ := b.LossMask()
	old, err := b.OldLogp()
	if err != nil || len(old) != n*tt {
		t.Fatalf("OldLogp = %d values, %v; want %d", len(old), err, n*tt)
	}
	for i := range old {
		if (lm[i] == 0) != (old[i] == 0) || old[i] > 0 {
			t.Fatalf("old log-prob %d = %v with loss mask %d: want < 0 exactly where the mask is 1", i, old[i], lm[i])
		}
	}
	for r := 0; r < n; r++ {
		p := prompts[r/k]
		masked := 0
		for c := 0; c < tt; c++ {
			if c < len(p) {
				if ids[r*tt+c] != p[c] || lm[r*tt+c] != 0 {
					t.Fatalf("row %d: prompt not copied / masked: ids %v mask %v", r, ids[r*tt:r*tt+tt], lm[r*tt:r*tt+tt])
				}
			}
			if lm[r*tt+c] == 1 {
				masked++
				if ids[r*tt+c] < 0 || ids[r*tt+c] >= 16 {
					t.Fatalf("sampled id %d outside the vocabulary", ids[r*tt+c])
				}
			}
		}
		if masked < 1 || masked > 4 {
			t.Fatalf("row %d: %d generated tokens, want 1..4", r, masked)
		}
	}
	// Same seed, same samples.
	b2, err := tr.Sample(prompts, k, `{"max_new_tokens": 4, "temperature": 1.0, "seed": 3}`)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	ids2, _ := b2.IDs()
	if !equalI64(ids, ids2) {
		t.Fatal("seeded sampling is not deterministic")
	}
	// Rewards in Go, then a step.
	rew := make([]float64, n)
	for i := range rew {
		rew[i] = float64(ids[i*tt+tt-1] % 3)
	}
	if err := b.SetRewards(rew); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Step(b); err != nil {
		t.Fatal(err)
	}

	_, err = tr.Sample(nil, k, "")
	wantStatus(t, err, StatusInvalidArgument)
	_, err = tr.Sample(prompts, 0, "")
	wantStatus(t, err, StatusInvalidArgument)
	_, err = tr.Sample(prompts, k, `{"bogus": 1}`)
	wantStatus(t, err, StatusInvalidConfig)
	if _, err := tr.Sample([][]int64{{}}, k, ""); err == nil {
		t.Fatal("an empty prompt was accepted")
	} else {
		t.Logf("empty prompt: %v", err)
	}
}

func TestCheckpointRoundTrip(t *testing.T) {
	tr := newTrainer(t)
	b := manualBatch(t)
	if _, err := tr.Step(b); err != nil {
		t.Fatal(err)
	}
	saved, err := tr.SequenceLogp(b)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.safetensors")
	if err := tr.Save(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	// One file holds weights and trainer state.
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 1 {
		t.Fatalf("the checkpoint should be one file: %v %v", entries, err)
	}
	for i := 0; i < 2; i++ {
		if _, err := tr.Step(b); err != nil {
			t.Fatal(err)
		}
	}
	moved, _ := tr.SequenceLogp(b)
	if equalF64(moved, saved) {
		t.Fatal("steps after Save did not change the policy")
	}
	if err := tr.Load(path); err != nil {
		t.Fatal(err)
	}
	restored, err := tr.SequenceLogp(b)
	if err != nil {
		t.Fatal(err)
	}
	if !equalF64(restored, saved) {
		t.Fatalf("after Load: %v, saved %v", restored, saved)
	}
	// A fresh trainer loads the same checkpoint and continues identically.
	tr2 := newTrainer(t)
	if err := tr2.Load(path); err != nil {
		t.Fatal(err)
	}
	r2, _ := tr2.SequenceLogp(b)
	if !equalF64(r2, saved) {
		t.Fatalf("fresh trainer after Load: %v, saved %v", r2, saved)
	}
	m1, err := tr.Step(b)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := tr2.Step(b)
	if err != nil {
		t.Fatal(err)
	}
	// Equal to float32 rounding, not bit for bit: MKL's matrix products round differently
	// with their operands' memory alignment (MKL_CBWR=COMPATIBLE makes them bitwise equal),
	// and the two trainers' buffers lie at different addresses.
	if m1.Step != m2.Step || !near(m1.Loss, m2.Loss, 1e-6*math.Abs(m2.Loss)) ||
		!near(m1.GradNorm, m2.GradNorm, 1e-5*m2.GradNorm) {
		t.Fatalf("continued steps differ: %+v vs %+v", m1, m2)
	}

	wantStatus(t, tr.Load(filepath.Join(dir, "missing.safetensors")), StatusCheckpoint)
	corrupt := filepath.Join(dir, "corrupt.safetensors")
	if err := os.WriteFile(corrupt, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, tr.Load(corrupt), StatusCheckpoint)
	err = tr.Save(filepath.Join(dir, "no", "such", "dir", "x.safetensors"))
	if err == nil {
		t.Fatal("Save into a missing directory succeeded")
	}
	t.Logf("save into missing dir: %v", err)
}

func equalF64(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestConcurrentObjectives(t *testing.T) {
	const workers, iters = 8, 200
	ref := newObjective(t, `{"reward_transform":"raw"}`)
	want, err := ref.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
	if err != nil {
		t.Fatal(err)
	}
	shared := newObjective(t, `{"reward_transform":"raw"}`)
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			own, err := NewObjective(`{"reward_transform":"raw"}`)
			if err != nil {
				errs <- err
				return
			}
			defer own.Close()
			for i := 0; i < iters; i++ {
				o := own
				if i%4 == 3 {
					o = shared // calls on one handle are serialised by the library
				}
				r, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
				if err != nil {
					errs <- err
					return
				}
				if r.Loss != want.Loss || !equalF64(r.Grad, want.Grad) {
					errs <- &Error{Status: StatusInvalidArgument, Message: "concurrent result differs"}
					return
				}
				if i%50 == 0 {
					if _, err := own.MetricsJSON(); err != nil {
						errs <- err
						return
					}
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestCloseTwiceAndUseAfterClose(t *testing.T) {
	o, err := NewObjective("")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
	wantStatus(t, err, StatusNullArgument)
	_, err = o.Metrics()
	wantStatus(t, err, StatusNullArgument)

	m, err := LoadModel(fixture(t, "tiny/llama"), "cpu")
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewTrainer(m, nil, trainerConfig)
	if err != nil {
		t.Fatal(err)
	}
	b := manualBatch(t)
	m.Close()
	m.Close()
	_, err = m.VocabSize()
	wantStatus(t, err, StatusNullArgument)
	_, err = NewTrainer(m, nil, "")
	wantStatus(t, err, StatusNullArgument)

	b.Close()
	b.Close()
	_, err = tr.Step(b)
	wantStatus(t, err, StatusNullArgument)
	_, _, err = b.Shape()
	wantStatus(t, err, StatusNullArgument)

	tr.Close()
	tr.Close()
	_, err = tr.SequenceLogp(manualBatch(t))
	wantStatus(t, err, StatusNullArgument)
	wantStatus(t, tr.Save(filepath.Join(t.TempDir(), "x")), StatusNullArgument)

	// nil handles behave like closed ones.
	var nilObj *Objective
	if err := nilObj.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = nilObj.MetricsJSON()
	wantStatus(t, err, StatusNullArgument)
}

func TestCloseWhileInUse(t *testing.T) {
	o, err := NewObjective("")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				_, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups)
				if err != nil {
					if StatusOf(err) != StatusNullArgument {
						t.Errorf("unexpected error: %v", err)
					}
					return
				}
			}
		}()
	}
	close(start)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); o.Close() }()
	}
	wg.Wait()
}

func TestFinalizerFreesUnclosed(t *testing.T) {
	// Handles dropped without Close are freed by their finalizers (no crash, no double free
	// with Close).
	for i := 0; i < 50; i++ {
		o, err := NewObjective("")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Eval(v1Logp, v1Anchor, v1Rewards, v1Groups); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			o.Close()
		}
	}
	for i := 0; i < 3; i++ {
		runtimeGC()
	}
}

func runtimeGC() {
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
}

func TestConcurrentTrainers(t *testing.T) {
	// Separate trainers in parallel, plus one trainer shared by two goroutines (the library
	// serialises calls on one handle).
	shared := newTrainer(t)
	trainers := []*Trainer{newTrainer(t), newTrainer(t), shared, shared}
	var wg sync.WaitGroup
	errs := make(chan error, len(trainers))
	for w, tr := range trainers {
		wg.Add(1)
		go func(w int, tr *Trainer) {
			defer wg.Done()
			for i := 0; i < 3; i++ {
				b, err := tr.Sample([][]int64{{1, int64(2 + w)}, {1, 7}}, 4, `{"max_new_tokens": 3}`)
				if err != nil {
					errs <- err
					return
				}
				n, _, _ := b.Shape()
				rew := make([]float64, n)
				for j := range rew {
					rew[j] = float64((j + i) % 3)
				}
				if err := b.SetRewards(rew); err == nil {
					_, err = tr.Step(b)
				}
				b.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}(w, tr)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestABIMismatchIsReportedByConstructors(t *testing.T) {
	if abiCheck(HeaderABIVersion) != nil {
		t.Fatal("matching ABI reported as a mismatch")
	}
	m := loadModel(t, "tiny/llama")
	saved := abiErr
	abiErr = abiCheck(HeaderABIVersion + 1)
	defer func() { abiErr = saved }()
	t.Logf("mismatch error: %v", abiErr)
	_, e1 := NewObjective("")
	_, e2 := LoadModel(fixture(t, "tiny/llama"), "cpu")
	_, e3 := NewBatch(1, 2, []int64{1, 2}, nil, []uint8{0, 1}, []int64{0})
	_, e4 := NewTrainer(m, nil, "")
	for i, err := range []error{e1, e2, e3, e4, CheckABI()} {
		if !errors.Is(err, ErrABIMismatch) {
			t.Fatalf("constructor %d: %v, want ErrABIMismatch", i, err)
		}
		wantStatus(t, err, StatusUnsupported)
		if !strings.Contains(err.Error(), "ABI version mismatch") {
			t.Fatalf("message %q", err.Error())
		}
	}
	if Version() == "" || ABIVersion() != HeaderABIVersion {
		t.Fatal("Version/ABIVersion must keep working")
	}
}

func TestCheckpointDirectoryLoadsWithOptionsAndSavesBack(t *testing.T) {
	dir := fixture(t, filepath.Join("hf", "qwen3_gqa2_headdim16_tied"))
	m, err := LoadModelOptions(dir, `{"dtype": "float64"}`)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	before, err := m.Params()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "saved")
	if err := m.Save(out); err != nil {
		t.Fatal(err)
	}
	back, err := LoadModelOptions(out, `{"dtype": "float64"}`)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	after, err := back.Params()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || len(before) == 0 {
		t.Fatalf("saved model has %d values, the model %d", len(after), len(before))
	}
	for i := range before {
		if after[i] != before[i] {
			t.Fatalf("value %d: saved %v, model %v", i, after[i], before[i])
		}
	}
	_, err = LoadModelOptions(dir, `{"dtype": "int8"}`)
	wantStatus(t, err, StatusInvalidConfig)
}

func TestNumThreads(t *testing.T) {
	before := NumThreads()
	if before < 1 {
		t.Fatalf("NumThreads() = %d", before)
	}
	defer SetNumThreads(before)
	if err := SetNumThreads(1); err != nil || NumThreads() != 1 {
		t.Fatalf("SetNumThreads(1): %v, now %d", err, NumThreads())
	}
	wantStatus(t, SetNumThreads(0), StatusInvalidArgument)
	if NumThreads() != 1 {
		t.Fatalf("a refused count changed the setting to %d", NumThreads())
	}
}

func TestLoRAAdapterSaves(t *testing.T) {
	dir := fixture(t, filepath.Join("hf", "qwen3_gqa2_headdim16_tied"))
	m, err := LoadModelOptions(dir, `{"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}`)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	out := filepath.Join(t.TempDir(), "adapter")
	if err := m.SaveAdapter(out); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(out, "adapter_config.json")); err != nil {
		t.Fatal(err)
	}
	full, err := LoadModelOptions(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	wantStatus(t, full.SaveAdapter(out+"2"), StatusUnsupported)
}
