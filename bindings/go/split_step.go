package adpo

/*
#include "adpo.h"
*/
import "C"

// A step in two calls, for a loss the host defines (README "RL recipes", "A step in two calls").

// ForwardBackward runs the policy on batch and adds to its gradients: of the configured loss
// when gradLogp is nil, or of the host's loss given as dL/d(token log-prob) (n * t values,
// row-major; values off the loss mask are ignored), the log-probs being TokenLogp's. Gradients
// accumulate until OptimStep; a failed call discards them.
func (t *Trainer) ForwardBackward(batch *Batch, gradLogp []float64) (TrainerMetrics, error) {
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
		st := C.adpo_trainer_forward_backward(tp, bp, f64Ptr(gradLogp), C.size_t(len(gradLogp)), m, &cerr)
		return check(st, cerr)
	})
}

// OptimStep clips and applies the gradient ForwardBackward accumulated, then updates the anchor.
func (t *Trainer) OptimStep() (TrainerMetrics, error) {
	tp, err := t.acquire()
	if err != nil {
		return TrainerMetrics{}, err
	}
	defer t.release()
	return withMetrics(func(m *C.adpo_trainer_metrics) error {
		var cerr *C.adpo_error
		return check(C.adpo_trainer_optim_step(tp, m, &cerr), cerr)
	})
}

// TokenLogp returns the batch's token log-probs under the current policy (n * t, row-major, 0
// off the loss mask; eval mode): what a host loss for ForwardBackward is a function of.
func (t *Trainer) TokenLogp(batch *Batch) ([]float64, error) {
	tp, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	return batchArray(batch, perToken, func(bp *C.adpo_batch, out []float64, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_trainer_token_logp(tp, bp, f64Ptr(out), C.size_t(len(out)), cerr)
	})
}
