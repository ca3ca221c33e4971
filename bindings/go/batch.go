package adpo

/*
#include "adpo.h"
*/
import "C"

import (
	"runtime"
)

// Batch is a validated batch of n candidates x t token positions (adpo_batch).
type Batch struct {
	h handle[*C.adpo_batch]
}

func newBatch(p *C.adpo_batch) *Batch {
	b := &Batch{h: handle[*C.adpo_batch]{ptr: p}}
	runtime.SetFinalizer(b, (*Batch).Close)
	return b
}

// NewBatch creates a batch from row-major n x t arrays: ids (token ids >= 0), attentionMask
// (nil = all ones), lossMask (1 at t: the token at t counts, scored from the logits at t - 1,
// so column 0 must be 0), and groupIDs (n ids; candidates of one prompt share an id). Set
// rewards or targets before Trainer.Step.
func NewBatch(n, t int, ids []int64, attentionMask, lossMask []uint8, groupIDs []int64) (*Batch, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	c, err := cells(n, t)
	if err != nil {
		return nil, err
	}
	if err := wantLen("ids", len(ids), c); err != nil {
		return nil, err
	}
	if attentionMask != nil {
		if err := wantLen("attentionMask", len(attentionMask), c); err != nil {
			return nil, err
		}
	}
	if err := wantLen("lossMask", len(lossMask), c); err != nil {
		return nil, err
	}
	if err := wantLen("groupIDs", len(groupIDs), n); err != nil {
		return nil, err
	}
	var out *C.adpo_batch
	var cerr *C.adpo_error
	st := C.adpo_batch_new(C.size_t(n), C.size_t(t), i64Ptr(ids), u8Ptr(attentionMask), u8Ptr(lossMask),
		i64Ptr(groupIDs), &out, &cerr)
	if err := check(st, cerr); err != nil {
		return nil, err
	}
	return newBatch(out), nil
}

// Close frees the batch. It is safe to call more than once and from any goroutine.
func (b *Batch) Close() error {
	if b == nil {
		return nil
	}
	if p := b.h.take(); p != nil {
		C.adpo_batch_free(p)
		runtime.SetFinalizer(b, nil)
	}
	return nil
}

func (b *Batch) acquire() (*C.adpo_batch, error) {
	if b == nil {
		return nil, closedErr("Batch (nil)")
	}
	return b.h.acquire("Batch")
}

func (b *Batch) release() {
	b.h.release()
	runtime.KeepAlive(b)
}

type batchSetter func(*C.adpo_batch, *C.double, C.size_t, **C.adpo_error) C.adpo_status

func (b *Batch) set(name string, values []float64, f batchSetter) error {
	if len(values) == 0 {
		return argErr(StatusShapeMismatch, "%s has 0 entries (the batch has n >= 1 rows)", name)
	}
	p, err := b.acquire()
	if err != nil {
		return err
	}
	defer b.release()
	var cerr *C.adpo_error
	return check(f(p, f64Ptr(values), C.size_t(len(values)), &cerr), cerr)
}

// SetRewards sets the n candidates' rewards (finite). It replaces targets if they were set.
func (b *Batch) SetRewards(rewards []float64) error {
	return b.set("rewards", rewards, func(p *C.adpo_batch, v *C.double, n C.size_t, e **C.adpo_error) C.adpo_status {
		return C.adpo_batch_set_rewards(p, v, n, e)
	})
}

// SetTargets sets an explicit target distribution (n values >= 0 summing to 1 over each
// group). It replaces rewards.
func (b *Batch) SetTargets(targets []float64) error {
	return b.set("targets", targets, func(p *C.adpo_batch, v *C.double, n C.size_t, e **C.adpo_error) C.adpo_status {
		return C.adpo_batch_set_targets(p, v, n, e)
	})
}

// SetOldLogp sets sampling-time log-probs: n values (per sequence) or n * t (per token,
// aligned with the ids).
func (b *Batch) SetOldLogp(oldLogp []float64) error {
	return b.set("oldLogp", oldLogp, func(p *C.adpo_batch, v *C.double, n C.size_t, e **C.adpo_error) C.adpo_status {
		return C.adpo_batch_set_old_logp(p, v, n, e)
	})
}

// SetAnchorLogp sets precomputed anchor log-probs (n or n * t values, as for SetOldLogp); with
// them no reference forward runs.
func (b *Batch) SetAnchorLogp(anchorLogp []float64) error {
	return b.set("anchorLogp", anchorLogp, func(p *C.adpo_batch, v *C.double, n C.size_t, e **C.adpo_error) C.adpo_status {
		return C.adpo_batch_set_anchor_logp(p, v, n, e)
	})
}

// Shape returns the batch's n (candidates) and t (positions).
func (b *Batch) Shape() (n, t int, err error) {
	p, err := b.acquire()
	if err != nil {
		return 0, 0, err
	}
	defer b.release()
	return shapeOf(p)
}

func shapeOf(p *C.adpo_batch) (int, int, error) {
	var cn, ct C.size_t
	var cerr *C.adpo_error
	if err := check(C.adpo_batch_shape(p, &cn, &ct, &cerr), cerr); err != nil {
		return 0, 0, err
	}
	return int(cn), int(ct), nil
}

// batchArray copies one of the batch's arrays out: size(n, t) elements, read by get.
func batchArray[T any](b *Batch, size func(n, t int) int,
	get func(p *C.adpo_batch, out []T, cerr **C.adpo_error) C.adpo_status) ([]T, error) {
	p, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	n, t, err := shapeOf(p)
	if err != nil {
		return nil, err
	}
	out := make([]T, size(n, t))
	var cerr *C.adpo_error
	if err := check(get(p, out, &cerr), cerr); err != nil {
		return nil, err
	}
	return out, nil
}

func perToken(n, t int) int { return n * t }
func perRow(n, _ int) int   { return n }

// IDs returns a copy of the n * t token ids (row-major).
func (b *Batch) IDs() ([]int64, error) {
	return batchArray(b, perToken, func(p *C.adpo_batch, out []int64, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_ids(p, i64Ptr(out), C.size_t(len(out)), cerr)
	})
}

// LossMask returns a copy of the n * t loss mask (1 = generated/scored token, row-major).
func (b *Batch) LossMask() ([]uint8, error) {
	return batchArray(b, perToken, func(p *C.adpo_batch, out []uint8, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_loss_mask(p, u8Ptr(out), C.size_t(len(out)), cerr)
	})
}

// OldLogp returns a copy of the sampling-time log-probs per token (n * t, row-major, 0 where
// the loss mask is 0), as a batch from Sample holds them: a row's sum is log π(completion |
// prompt) at temperature 1. A batch whose old log-probs were set per sequence gives an error.
func (b *Batch) OldLogp() ([]float64, error) {
	return batchArray(b, perToken, func(p *C.adpo_batch, out []float64, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_old_logp(p, f64Ptr(out), C.size_t(len(out)), cerr)
	})
}

// GroupIDs returns a copy of the n group ids.
func (b *Batch) GroupIDs() ([]int64, error) {
	return batchArray(b, perRow, func(p *C.adpo_batch, out []int64, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_group_ids(p, i64Ptr(out), C.size_t(len(out)), cerr)
	})
}

// Completion returns the generated tokens of row r of a sampled batch: its loss-masked tokens
// in order, the ending EOS included, to decode and score.
func (b *Batch) Completion(row int) ([]int64, error) {
	if row < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "row must be >= 0"}
	}
	p, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.release()
	return sizedIDs(func(out *C.int64_t, capacity C.size_t, n *C.size_t, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_completion(p, C.size_t(row), out, capacity, n, cerr)
	})
}
