package adpo

import (
	"math"
	"testing"
)

// EvalDLPack on host tensors gives Eval's loss and gradient (float64 exactly, float32 to its
// rounding), deletes every input exactly once, and refuses a tensor passed twice or reused.
func TestEvalDLPackMatchesEval(t *testing.T) {
	o, err := NewObjective(`{"loss": "listwise"}`)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	logp := []float64{-1.2, -0.7, -2.5, -0.4, -1.9, -3.1}
	anchor := []float64{-1.0, -0.9, -2.0, -0.6, -1.5, -2.8}
	rewards := []float64{1, 0, 0.5, 0.2, 0.9, 0}
	groups := []int64{0, 0, 0, 1, 1, 1}
	want, err := o.Eval(logp, anchor, rewards, groups)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(f32 bool) []*DLPackTensor {
		var ts []*DLPackTensor
		for _, v := range [][]float64{logp, anchor, rewards} {
			var d *DLPackTensor
			if f32 {
				v32 := make([]float32, len(v))
				for i, x := range v {
					v32[i] = float32(x)
				}
				d, err = NewDLPackFloat32(v32, int64(len(v)))
			} else {
				d, err = NewDLPackFloat64(v, int64(len(v)))
			}
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, d)
		}
		g, err := NewDLPackInt64(groups, int64(len(groups)))
		if err != nil {
			t.Fatal(err)
		}
		return append(ts, g)
	}
	live := liveHostTensors()
	for _, c := range []struct {
		f32 bool
		tol float64
	}{{false, 1e-15}, {true, 1e-6}} {
		in := mk(c.f32)
		loss, grad, err := o.EvalDLPack(in[0], in[1], in[2], nil, in[3])
		if err != nil {
			t.Fatal(err)
		}
		if n := liveHostTensors(); n != live {
			t.Fatalf("float32 %v: %d host tensors not deleted by adpo", c.f32, n-live)
		}
		got, err := grad.Float64s()
		if err != nil {
			t.Fatal(err)
		}
		grad.Release()
		if math.Abs(loss-want.Loss) > c.tol {
			t.Fatalf("float32 %v: loss %v, Eval %v", c.f32, loss, want.Loss)
		}
		for i := range got {
			if math.Abs(got[i]-want.Grad[i]) > c.tol {
				t.Fatalf("float32 %v: grad[%d] %v, Eval %v", c.f32, i, got[i], want.Grad[i])
			}
		}
		if _, _, err := o.EvalDLPack(in[0], in[1], in[2], nil, in[3]); err == nil {
			t.Fatal("a consumed tensor was accepted again")
		}
	}
	in := mk(false)
	_, _, err = o.EvalDLPack(in[0], in[0], in[2], nil, in[3])
	wantStatus(t, err, StatusInvalidArgument)
	in[1].Release()
	if n := liveHostTensors(); n != live {
		t.Fatalf("%d host tensors leaked after a refused call", n-live)
	}
	if _, err := NewDLPackFloat64(logp, 2, 2); StatusOf(err) != StatusShapeMismatch {
		t.Fatalf("shape [2 2] for 6 values: %v", err)
	}
}

// ForwardBackwardDLPack with the host's gradient as a [n, t] float64 tensor moves the weights
// exactly as ForwardBackward with the same values in a slice; a tensor of the wrong shape is
// refused (nothing accumulated) and still deleted.
func TestForwardBackwardDLPackMatchesHostBuffer(t *testing.T) {
	const cfg = `{"optimizer": {"name": "sgd", "lr": 0.05}}`
	live := liveHostTensors()
	run := func(viaDLPack bool) []float64 {
		m, tr, b, logp := sampledBatch(t, cfg)
		defer tr.Close()
		defer b.Close()
		n, width, err := b.Shape()
		if err != nil {
			t.Fatal(err)
		}
		g := make([]float64, len(logp))
		for i, lp := range logp {
			g[i] = math.Cos(float64(i)) * lp
		}
		if viaDLPack {
			flat, err := NewDLPackFloat64(g, int64(n*width))
			if err != nil {
				t.Fatal(err)
			}
			_, err = tr.ForwardBackwardDLPack(b, flat)
			wantStatus(t, err, StatusShapeMismatch)
			d, err := NewDLPackFloat64(g, int64(n), int64(width))
			if err != nil {
				t.Fatal(err)
			}
			_, err = tr.ForwardBackwardDLPack(b, d)
		} else {
			_, err = tr.ForwardBackward(b, g)
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tr.OptimStep(); err != nil {
			t.Fatal(err)
		}
		return params(t, m)
	}
	viaDLPack, viaSlice := run(true), run(false)
	if n := liveHostTensors(); n != live {
		t.Fatalf("%d host tensors not deleted by adpo", n-live)
	}
	for i := range viaSlice {
		if viaDLPack[i] != viaSlice[i] {
			t.Fatalf("param %d: DLPack %v, slice %v", i, viaDLPack[i], viaSlice[i])
		}
	}
}
