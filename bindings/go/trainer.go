package adpo

/*
#include <stdlib.h>
#include "adpo.h"
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"
)

// Trainer applies ADPO steps to a policy model (adpo_trainer).
type Trainer struct {
	h handle[*C.adpo_trainer]

	commMu sync.Mutex
	comm   *allreduceState // the callback of UseAllreduce, to report its errors
}

// NewTrainer creates a trainer for policy (trained in place) with an optional frozen reference
// (nil: none; needed by anchor mode "fixed" unless batches carry anchor log-probs, and by grpo
// with beta_kl > 0). configJSON ("" = defaults) takes the trainer keys (seq_logp,
// micro_batch_rows, epochs_per_batch, seed, anchor, optimizer, grad_clip, schedule) plus every
// objective key. The trainer keeps its own references to the models: closing them afterwards
// is fine.
func NewTrainer(policy, reference *Model, configJSON string) (*Trainer, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	pp, err := policy.acquire()
	if err != nil {
		return nil, err
	}
	defer policy.release()
	var rp *C.adpo_model
	if reference != nil {
		if rp, err = reference.acquire(); err != nil {
			return nil, err
		}
		defer reference.release()
	}
	cfg := cString(configJSON, true)
	defer freeCString(cfg)
	var out *C.adpo_trainer
	var cerr *C.adpo_error
	if err := check(C.adpo_trainer_new(pp, rp, cfg, &out, &cerr), cerr); err != nil {
		return nil, err
	}
	t := &Trainer{h: handle[*C.adpo_trainer]{ptr: out}}
	runtime.SetFinalizer(t, (*Trainer).Close)
	return t, nil
}

// Close frees the trainer. It is safe to call more than once and from any goroutine.
func (t *Trainer) Close() error {
	if t == nil {
		return nil
	}
	if p := t.h.take(); p != nil {
		C.adpo_trainer_free(p)
		runtime.SetFinalizer(t, nil)
	}
	return nil
}

func (t *Trainer) acquire() (*C.adpo_trainer, error) {
	if t == nil {
		return nil, closedErr("Trainer (nil)")
	}
	return t.h.acquire("Trainer")
}

func (t *Trainer) release() {
	t.h.release()
	runtime.KeepAlive(t)
}

// TrainerMetrics are the metrics of a step. Values that do not apply to the loss are NaN.
type TrainerMetrics struct {
	Step         uint64  // optimizer steps taken so far
	Loss         float64 // objective loss at the last epoch's evaluation
	Entropy      float64 // mean entropy of p~ = softmax(s)
	KLTarget     float64 // mean KL(q || p~)
	WinMass      float64 // mean p~ mass on the best-reward candidate(s)
	MeanAbsScore float64
	MaxAbsScore  float64
	Tau          float64 // mean temperature used
	ClipFraction float64 // GRPO: fraction of tokens on the clipped branch
	AnchorKL     float64 // mean k3 estimate of KL(policy || anchor)
	Groups       uint64  // counted groups (size >= 2)
	GradNorm     float64 // global gradient norm before clipping
	LR           float64 // learning rate of the last optimizer step
	Tokens       float64 // loss-masked tokens in the batch
	AnchorDrift  float64 // mean |l - l_anchor|
	StepTimeMs   float64 // wall time of the step in milliseconds
	ReduceTimeMs float64 // of which spent in collectives (data-parallel training; 0 in one process)

	// The RL recipes (README "RL recipes"); NaN where they do not apply.
	FracRewardZeroStd   float64 // share of this rank's groups whose rewards are all equal
	GroupsKept          uint64  // groups trained on after filter_groups
	TruncatedRows       float64 // rows that stopped at max_new_tokens
	BatchAge            float64 // optimizer steps since the batch's policy version
	RolloutKLK3         float64 // mean k3 estimate of KL(rollout || old) over scored tokens
	RolloutFracOutside  float64 // share of scored tokens whose ratio old/rollout leaves the band
	RolloutMaxRatio     float64 // largest token ratio old/rollout
	RolloutFracRejected float64 // share of scored tokens the rejection (rollout_rs) removed

	PolicyEntropy  float64 // mean token entropy of the policy with an entropy bonus (entropy_coef > 0); else NaN
	PaddedFraction float64 // share of the last backward's micro-batch positions (rows x width) that are padding
}

// withMetrics runs one C call that writes a step's metrics (call gets the struct to fill) and
// converts them.
func withMetrics(call func(m *C.adpo_trainer_metrics) error) (TrainerMetrics, error) {
	var m C.adpo_trainer_metrics
	m.struct_size = C.uint32_t(C.sizeof_adpo_trainer_metrics)
	if err := call(&m); err != nil {
		return TrainerMetrics{}, err
	}
	return TrainerMetrics{
		Step:                uint64(m.step),
		Loss:                float64(m.loss),
		Entropy:             float64(m.entropy),
		KLTarget:            float64(m.kl_target),
		WinMass:             float64(m.win_mass),
		MeanAbsScore:        float64(m.mean_abs_score),
		MaxAbsScore:         float64(m.max_abs_score),
		Tau:                 float64(m.tau),
		ClipFraction:        float64(m.clip_fraction),
		AnchorKL:            float64(m.anchor_kl),
		Groups:              uint64(m.groups),
		GradNorm:            float64(m.grad_norm),
		LR:                  float64(m.lr),
		Tokens:              float64(m.tokens),
		AnchorDrift:         float64(m.anchor_drift),
		StepTimeMs:          float64(m.step_time_ms),
		ReduceTimeMs:        float64(m.reduce_time_ms),
		FracRewardZeroStd:   float64(m.frac_reward_zero_std),
		GroupsKept:          uint64(m.groups_kept),
		TruncatedRows:       float64(m.truncated_rows),
		BatchAge:            float64(m.batch_age),
		RolloutKLK3:         float64(m.rollout_kl_k3),
		RolloutFracOutside:  float64(m.rollout_frac_outside),
		RolloutMaxRatio:     float64(m.rollout_max_ratio),
		RolloutFracRejected: float64(m.rollout_frac_rejected),
		PolicyEntropy:       float64(m.policy_entropy),
		PaddedFraction:      float64(m.padded_fraction),
	}, nil
}

// Step takes one ADPO step on batch (epochs_per_batch optimizer updates) and returns its
// metrics. In data-parallel training (UseMPI, UseAllreduce) every rank calls it with its own
// groups: the update is that of all ranks' groups together, the metrics are over all ranks, and
// a failure on any rank is returned by every rank, before any weight changes.
func (t *Trainer) Step(batch *Batch) (TrainerMetrics, error) {
	tp, err := t.acquire()
	if err != nil {
		return TrainerMetrics{}, err
	}
	defer t.release()
	bp, err := batch.acquire()
	if err != nil {
		return TrainerMetrics{}, err
	}
	defer batch.release()
	return withMetrics(func(m *C.adpo_trainer_metrics) error {
		var cerr *C.adpo_error
		return t.callbackErr(check(C.adpo_trainer_step(tp, bp, m, &cerr), cerr))
	})
}

// MetricsJSON returns the metrics of the last step as a JSON object (NaN as null).
func (t *Trainer) MetricsJSON() (string, error) {
	tp, err := t.acquire()
	if err != nil {
		return "", err
	}
	defer t.release()
	var s *C.char
	var cerr *C.adpo_error
	if err := check(C.adpo_trainer_metrics_json(tp, &s, &cerr), cerr); err != nil {
		return "", err
	}
	return takeString(s), nil
}

// Sample draws k candidates for each prompt from the policy and returns them as a new batch of
// len(prompts) * k rows (group id = prompt index, loss mask on the generated tokens up to and
// including EOS, per-token old log-probs set). samplingJSON ("" = defaults): temperature 1,
// top_k 0 (off), top_p 1, max_new_tokens 16, eos_id null, pad_id 0, seed null (continue the
// trainer's generator). Set the batch's rewards and pass it to Step.
func (t *Trainer) Sample(prompts [][]int64, k int, samplingJSON string) (*Batch, error) {
	if len(prompts) == 0 {
		return nil, argErr(StatusInvalidArgument, "n_prompts must be > 0")
	}
	if k <= 0 {
		return nil, argErr(StatusInvalidArgument, "k must be > 0 (got %d)", k)
	}
	total := 0
	for _, p := range prompts {
		total += len(p)
	}
	tokens := make([]int64, 0, total)
	// size_t is not Go's int: copy the lengths into C-typed memory (Go-allocated, pointer-free).
	lengths := make([]C.size_t, len(prompts))
	for i, p := range prompts {
		tokens = append(tokens, p...)
		lengths[i] = C.size_t(len(p))
	}
	var tokPtr *C.int64_t
	if len(tokens) > 0 {
		tokPtr = i64Ptr(tokens)
	} else {
		// All prompts empty: hand adpo a valid (unread) pointer so that it reports on the prompt
		// lengths rather than on a NULL buffer.
		var dummy [1]int64
		tokPtr = (*C.int64_t)(unsafe.Pointer(&dummy[0]))
		defer runtime.KeepAlive(&dummy)
	}
	tp, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	cs := cString(samplingJSON, true)
	defer freeCString(cs)
	var out *C.adpo_batch
	var cerr *C.adpo_error
	st := C.adpo_trainer_sample(tp, tokPtr, &lengths[0], C.size_t(len(prompts)), C.size_t(k), cs, &out, &cerr)
	if err := check(st, cerr); err != nil {
		return nil, err
	}
	return newBatch(out), nil
}

// SequenceLogp returns the sequence log-probs (seq_logp reduction) of the batch's n rows under
// the current policy.
func (t *Trainer) SequenceLogp(batch *Batch) ([]float64, error) {
	tp, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	bp, err := batch.acquire()
	if err != nil {
		return nil, err
	}
	defer batch.release()
	n, _, err := shapeOf(bp)
	if err != nil {
		return nil, err
	}
	out := make([]float64, n)
	var cerr *C.adpo_error
	if err := check(C.adpo_trainer_sequence_logp(tp, bp, f64Ptr(out), C.size_t(n), &cerr), cerr); err != nil {
		return nil, err
	}
	return out, nil
}

// Save writes a checkpoint: one safetensors file at path (policy weights under their names,
// trainer state under "__adpo__." keys), published atomically. In data-parallel training every
// rank calls it, only rank 0 writes, and every rank returns rank 0's outcome.
func (t *Trainer) Save(path string) error {
	return t.withPath(path, func(tp *C.adpo_trainer, cpath *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_trainer_save(tp, cpath, cerr)
	})
}

// Load restores a checkpoint written by Save. A missing, corrupt, truncated or mismatched
// checkpoint is a StatusCheckpoint error and leaves the trainer as it was. In data-parallel
// training every rank calls it: rank 0 reads the file and sends the state to the others.
func (t *Trainer) Load(path string) error {
	return t.withPath(path, func(tp *C.adpo_trainer, cpath *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_trainer_load(tp, cpath, cerr)
	})
}

// withPath runs a checkpoint call (save or load) on path; like Step, it can run the
// all-reduce callback, whose error it reports.
func (t *Trainer) withPath(path string,
	call func(tp *C.adpo_trainer, cpath *C.char, cerr **C.adpo_error) C.adpo_status) error {
	tp, err := t.acquire()
	if err != nil {
		return err
	}
	defer t.release()
	cpath := C.CString(path)
	defer freeCString(cpath)
	var cerr *C.adpo_error
	return t.callbackErr(check(call(tp, cpath, &cerr), cerr))
}
