package adpo

/*
#include "adpo.h"
*/
import "C"

import (
	"runtime"
)

// Objective is a configured ADPO objective (adpo_objective): the model-free loss and its
// gradient with respect to the candidates' sequence log-probs.
type Objective struct {
	h handle[*C.adpo_objective]
}

// NewObjective creates an objective from a JSON configuration ("" = all defaults; unknown keys
// are a StatusInvalidConfig error). Keys: README "Objective configuration".
func NewObjective(configJSON string) (*Objective, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	cfg := cString(configJSON, true)
	defer freeCString(cfg)
	var out *C.adpo_objective
	var cerr *C.adpo_error
	if err := check(C.adpo_objective_new(cfg, &out, &cerr), cerr); err != nil {
		return nil, err
	}
	o := &Objective{h: handle[*C.adpo_objective]{ptr: out}}
	runtime.SetFinalizer(o, (*Objective).Close)
	return o, nil
}

// Close frees the objective. It is safe to call more than once and from any goroutine.
func (o *Objective) Close() error {
	if o == nil {
		return nil
	}
	if p := o.h.take(); p != nil {
		C.adpo_objective_free(p)
		runtime.SetFinalizer(o, nil)
	}
	return nil
}

// acquire read-locks the handle (Close waits for the matching release).
func (o *Objective) acquire() (*C.adpo_objective, error) {
	if o == nil {
		return nil, closedErr("Objective (nil)")
	}
	return o.h.acquire("Objective")
}

func (o *Objective) release() {
	o.h.release()
	runtime.KeepAlive(o)
}

// Result is the outcome of an evaluation on n candidates.
type Result struct {
	// Loss is the mean over groups of two or more candidates of the per-group loss.
	Loss float64
	// Grad is d Loss / d logp (n values).
	Grad []float64
	// Scores are the anchored scores s (n values).
	Scores []float64
}

// TokenResult is the outcome of a token-level (GRPO) evaluation on n x t tokens.
type TokenResult struct {
	Loss float64
	// Grad is d Loss / d logp, row-major n x t.
	Grad []float64
	// Advantages has n values.
	Advantages []float64
}

// Eval evaluates the objective from rewards: logp, anchorLogp, rewards and groupIDs all hold
// one entry per candidate. Candidates sharing a group id form a group, in any order.
func (o *Objective) Eval(logp, anchorLogp, rewards []float64, groupIDs []int64) (Result, error) {
	return o.eval(logp, anchorLogp, rewards, nil, groupIDs, nil)
}

// EvalTargets evaluates the objective from an explicit target distribution (n values >= 0
// summing to 1 over each group) instead of rewards.
func (o *Objective) EvalTargets(logp, anchorLogp, targets []float64, groupIDs []int64) (Result, error) {
	return o.eval(logp, anchorLogp, nil, targets, groupIDs, nil)
}

// EvalEntropy is Eval plus each candidate's normalised mean token entropy under the policy,
// which the adaptive tau rule "smooth_hybrid" needs (adpo_objective_eval_entropy).
func (o *Objective) EvalEntropy(logp, anchorLogp, rewards []float64, groupIDs []int64, policyEntropy []float64) (Result, error) {
	if policyEntropy == nil {
		return Result{}, argErr(StatusNullArgument, "policyEntropy is nil")
	}
	return o.eval(logp, anchorLogp, rewards, nil, groupIDs, policyEntropy)
}

func (o *Objective) eval(logp, anchor, rewards, targets []float64, groupIDs []int64, entropy []float64) (Result, error) {
	n := len(logp)
	if n == 0 {
		return Result{}, argErr(StatusInvalidArgument, "n must be > 0 (logp is empty)")
	}
	if err := wantLen("anchorLogp", len(anchor), n); err != nil {
		return Result{}, err
	}
	if rewards != nil {
		if err := wantLen("rewards", len(rewards), n); err != nil {
			return Result{}, err
		}
	} else if err := wantLen("targets", len(targets), n); err != nil {
		return Result{}, err
	}
	if err := wantLen("groupIDs", len(groupIDs), n); err != nil {
		return Result{}, err
	}
	if entropy != nil {
		if err := wantLen("policyEntropy", len(entropy), n); err != nil {
			return Result{}, err
		}
	}
	p, err := o.acquire()
	if err != nil {
		return Result{}, err
	}
	defer o.release()
	res := Result{Grad: make([]float64, n), Scores: make([]float64, n)}
	var loss C.double
	var cerr *C.adpo_error
	st := C.adpo_objective_eval_entropy(p, C.size_t(n), f64Ptr(logp), f64Ptr(anchor), f64Ptr(rewards),
		f64Ptr(targets), i64Ptr(groupIDs), f64Ptr(entropy), &loss, f64Ptr(res.Grad), f64Ptr(res.Scores), &cerr)
	if err := check(st, cerr); err != nil {
		return Result{}, err
	}
	res.Loss = float64(loss)
	return res, nil
}

// EvalTokens is the GRPO baseline at token level (the objective's loss must be "grpo").
// logp, oldLogp, refLogp and mask are row-major n x t; refLogp may be nil when beta_kl = 0;
// mask is 1 where a token counts and 0 where it is ignored. rewards and groupIDs have n entries.
func (o *Objective) EvalTokens(n, t int, logp, oldLogp, refLogp, mask, rewards []float64, groupIDs []int64) (TokenResult, error) {
	c, err := cells(n, t)
	if err != nil {
		return TokenResult{}, err
	}
	for _, a := range []struct {
		name string
		got  int
	}{{"logp", len(logp)}, {"oldLogp", len(oldLogp)}, {"mask", len(mask)}} {
		if err := wantLen(a.name, a.got, c); err != nil {
			return TokenResult{}, err
		}
	}
	if refLogp != nil {
		if err := wantLen("refLogp", len(refLogp), c); err != nil {
			return TokenResult{}, err
		}
	}
	if err := wantLen("rewards", len(rewards), n); err != nil {
		return TokenResult{}, err
	}
	if err := wantLen("groupIDs", len(groupIDs), n); err != nil {
		return TokenResult{}, err
	}
	p, err := o.acquire()
	if err != nil {
		return TokenResult{}, err
	}
	defer o.release()
	res := TokenResult{Grad: make([]float64, c), Advantages: make([]float64, n)}
	var loss C.double
	var cerr *C.adpo_error
	st := C.adpo_objective_eval_tokens(p, C.size_t(n), C.size_t(t), f64Ptr(logp), f64Ptr(oldLogp), f64Ptr(refLogp),
		f64Ptr(mask), f64Ptr(rewards), i64Ptr(groupIDs), &loss, f64Ptr(res.Grad), f64Ptr(res.Advantages), &cerr)
	if err := check(st, cerr); err != nil {
		return TokenResult{}, err
	}
	res.Loss = float64(loss)
	return res, nil
}

// ObjectiveMetrics are the metrics of the last successful evaluation. Values that do not apply
// to the loss are NaN.
type ObjectiveMetrics struct {
	Loss         float64 // mean over counted groups of the per-group loss
	Entropy      float64 // mean entropy of p~ = softmax(s)
	KLTarget     float64 // mean KL(q || p~)
	WinMass      float64 // mean p~ mass on the best-reward candidate(s)
	MeanAbsScore float64 // mean |s| over rows of counted groups
	MaxAbsScore  float64 // max |s| over rows of counted groups
	Tau          float64 // mean temperature used
	ClipFraction float64 // GRPO: fraction of tokens on the clipped branch
	AnchorKL     float64 // mean k3 estimate of KL(policy || anchor)
	Groups       uint64  // number of counted groups
}

// Metrics returns the metrics of the last successful evaluation.
func (o *Objective) Metrics() (ObjectiveMetrics, error) {
	p, err := o.acquire()
	if err != nil {
		return ObjectiveMetrics{}, err
	}
	defer o.release()
	var m C.adpo_objective_metrics
	m.struct_size = C.uint32_t(C.sizeof_adpo_objective_metrics)
	var cerr *C.adpo_error
	if err := check(C.adpo_objective_get_metrics(p, &m, &cerr), cerr); err != nil {
		return ObjectiveMetrics{}, err
	}
	return ObjectiveMetrics{
		Loss:         float64(m.loss),
		Entropy:      float64(m.entropy),
		KLTarget:     float64(m.kl_target),
		WinMass:      float64(m.win_mass),
		MeanAbsScore: float64(m.mean_abs_score),
		MaxAbsScore:  float64(m.max_abs_score),
		Tau:          float64(m.tau),
		ClipFraction: float64(m.clip_fraction),
		AnchorKL:     float64(m.anchor_kl),
		Groups:       uint64(m.groups),
	}, nil
}

// MetricsJSON returns the metrics of the last successful evaluation as a JSON object (NaN as
// null).
func (o *Objective) MetricsJSON() (string, error) {
	p, err := o.acquire()
	if err != nil {
		return "", err
	}
	defer o.release()
	var s *C.char
	var cerr *C.adpo_error
	if err := check(C.adpo_objective_metrics_json(p, &s, &cerr), cerr); err != nil {
		return "", err
	}
	return takeString(s), nil
}
