package adpo

/*
#include "adpo.h"
*/
import "C"

import "runtime"

// What the rollout engine recorded on a batch, batches joined, and DAPO's overlong penalty
// (README "RL recipes").

// SetRolloutLogp sets the rollout engine's token log-probs: n * t values aligned with the ids
// (values where the loss mask is 0 are ignored).
func (b *Batch) SetRolloutLogp(logp []float64) error {
	return b.set("rolloutLogp", logp, func(p *C.adpo_batch, v *C.double, n C.size_t, e **C.adpo_error) C.adpo_status {
		return C.adpo_batch_set_rollout_logp(p, v, n, e)
	})
}

// RolloutLogp returns a copy of the rollout log-probs (n * t, row-major, 0 where the loss mask
// is 0): the sampler's own for a batch from Sample.
func (b *Batch) RolloutLogp() ([]float64, error) {
	return batchArray(b, perToken, func(p *C.adpo_batch, out []float64, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_rollout_logp(p, f64Ptr(out), C.size_t(len(out)), cerr)
	})
}

// SetTruncated sets which rows stopped at max_new_tokens (n flags, 1 = truncated), for a batch
// the host generated.
func (b *Batch) SetTruncated(flags []uint8) error {
	if len(flags) == 0 {
		return argErr(StatusShapeMismatch, "truncated has 0 entries (the batch has n >= 1 rows)")
	}
	p, err := b.acquire()
	if err != nil {
		return err
	}
	defer b.release()
	var cerr *C.adpo_error
	return check(C.adpo_batch_set_truncated(p, u8Ptr(flags), C.size_t(len(flags)), &cerr), cerr)
}

// Truncated returns the n truncation flags (1 = the row stopped at max_new_tokens).
func (b *Batch) Truncated() ([]uint8, error) {
	return batchArray(b, perRow, func(p *C.adpo_batch, out []uint8, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_batch_get_truncated(p, u8Ptr(out), C.size_t(len(out)), cerr)
	})
}

// SetPolicyVersion sets the optimizer step of the policy that generated the batch.
func (b *Batch) SetPolicyVersion(version uint64) error {
	p, err := b.acquire()
	if err != nil {
		return err
	}
	defer b.release()
	var cerr *C.adpo_error
	return check(C.adpo_batch_set_policy_version(p, C.uint64_t(version), &cerr), cerr)
}

// PolicyVersion returns the batch's policy version (an error when it has none).
func (b *Batch) PolicyVersion() (uint64, error) {
	p, err := b.acquire()
	if err != nil {
		return 0, err
	}
	defer b.release()
	var v C.uint64_t
	var cerr *C.adpo_error
	if err := check(C.adpo_batch_get_policy_version(p, &v, &cerr), cerr); err != nil {
		return 0, err
	}
	return uint64(v), nil
}

// ConcatBatches returns one new batch of the rows of batches in order, each batch's groups
// kept apart, padded to the longest row (a DAPO-style refill). The batches are not changed.
func ConcatBatches(batches ...*Batch) (*Batch, error) {
	if len(batches) == 0 {
		return nil, argErr(StatusInvalidArgument, "ConcatBatches needs at least one batch")
	}
	// Each distinct batch read-locked once (a second read lock of one RWMutex can deadlock
	// behind a waiting Close).
	held := map[*Batch]*C.adpo_batch{}
	defer func() {
		for b := range held {
			b.release()
		}
	}()
	// Go memory holding C pointers only: cgo lets C read it during the call.
	ptrs := make([]*C.adpo_batch, len(batches))
	for i, b := range batches {
		p, ok := held[b]
		if !ok {
			var err error
			if p, err = b.acquire(); err != nil {
				return nil, err
			}
			held[b] = p
		}
		ptrs[i] = p
	}
	var out *C.adpo_batch
	var cerr *C.adpo_error
	st := C.adpo_batch_concat(&ptrs[0], C.size_t(len(batches)), &out, &cerr)
	runtime.KeepAlive(batches)
	if err := check(st, cerr); err != nil {
		return nil, err
	}
	return newBatch(out), nil
}

// SoftOverlongPenalty is DAPO's soft overlong penalty for a completion of length tokens: 0 up
// to maxLength - buffer, then linear down to -factor at maxLength, -factor beyond.
func SoftOverlongPenalty(length, maxLength, buffer uint64, factor float64) (float64, error) {
	var out C.double
	var cerr *C.adpo_error
	st := C.adpo_soft_overlong_penalty(C.uint64_t(length), C.uint64_t(maxLength), C.uint64_t(buffer),
		C.double(factor), &out, &cerr)
	if err := check(st, cerr); err != nil {
		return 0, err
	}
	return float64(out), nil
}
