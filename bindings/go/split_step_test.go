package adpo

import (
	"math"
	"testing"
)

// Two ForwardBackward calls with a host gradient g each move the weights as one call with 2g
// (an SGD step is linear in the accumulated gradient); OptimStep without a pending gradient
// and a gradient of the wrong length are refused.
func TestForwardBackwardAccumulatesTheHostsGradient(t *testing.T) {
	const cfg = `{"optimizer": {"name": "sgd", "lr": 0.05}}`
	run := func(calls int, scale float64) []float64 {
		m, tr, b, logp := sampledBatch(t, cfg)
		defer tr.Close()
		defer b.Close()
		g := make([]float64, len(logp))
		for i, lp := range logp {
			g[i] = scale * (math.Sin(float64(i)) + lp) // any function of the log-probs
		}
		for i := 0; i < calls; i++ {
			m, err := tr.ForwardBackward(b, g)
			if err != nil {
				t.Fatal(err)
			}
			if !math.IsNaN(m.Loss) || !math.IsNaN(m.GradNorm) {
				t.Fatalf("host-loss metrics: loss %v grad norm %v, want NaN", m.Loss, m.GradNorm)
			}
		}
		om, err := tr.OptimStep()
		if err != nil || om.Step != 1 || !(om.GradNorm > 0) {
			t.Fatalf("OptimStep = %+v, %v", om, err)
		}
		_, err = tr.OptimStep()
		wantStatus(t, err, StatusInvalidArgument)
		_, err = tr.ForwardBackward(b, g[:3])
		wantStatus(t, err, StatusShapeMismatch)
		return params(t, m)
	}
	twice, once := run(2, 1), run(1, 2)
	for i := range twice {
		if d := math.Abs(twice[i] - once[i]); d > 1e-5*math.Max(1, math.Abs(once[i])) {
			t.Fatalf("param %d: two calls %v, one call with 2g %v", i, twice[i], once[i])
		}
	}
}

// sampledBatch loads tiny/llama as the policy of a trainer with config cfg, samples a batch of
// 2 prompts x 3 replies from it, and returns them with the batch's token log-probs.
func sampledBatch(t *testing.T, cfg string) (*Model, *Trainer, *Batch, []float64) {
	t.Helper()
	m := loadModel(t, "tiny/llama")
	tr, err := NewTrainer(m, nil, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := tr.Sample([][]int64{{1, 2}, {1, 5, 7}}, 3, `{"max_new_tokens": 3, "seed": 4}`)
	if err != nil {
		t.Fatal(err)
	}
	logp, err := tr.TokenLogp(b)
	if err != nil {
		t.Fatal(err)
	}
	return m, tr, b, logp
}
