package adpo

/*
#include <stdint.h>
#include "adpo.h"

// Defined in callbacks.go (//export).
extern int32_t adpoGoAllreduce(uintptr_t handle, void *buffer, size_t count, uint8_t code, uint8_t bits,
                               int32_t device_type, int32_t device_id);
extern void adpoGoFreeAllreduce(uintptr_t handle);

// C-ABI trampolines: the userdata is a runtime/cgo.Handle, which crosses C as an integer.
static int32_t adpo_go_allreduce(void *userdata, void *buffer, size_t count, DLDataType dtype, DLDevice device) {
	return adpoGoAllreduce((uintptr_t)userdata, buffer, count, dtype.code, dtype.bits,
	                       (int32_t)device.device_type, device.device_id);
}

static void adpo_go_free_allreduce(void *userdata) { adpoGoFreeAllreduce((uintptr_t)userdata); }

static adpo_status adpo_go_use_allreduce(adpo_trainer *trainer, int32_t rank, int32_t world_size,
                                         uintptr_t handle, adpo_error **err) {
	return adpo_trainer_use_allreduce(trainer, rank, world_size, adpo_go_allreduce, (void *)handle,
	                                  adpo_go_free_allreduce, err);
}
*/
import "C"

import (
	"fmt"
	"math"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// HasMPI reports whether the loaded libadpo can train over MPI (built with the cargo feature
// `mpi`, as make builds it). Without it, Trainer.UseMPI and the config {"distributed": {"backend": "mpi"}} return
// StatusUnsupported; Trainer.UseAllreduce works in every build.
func HasMPI() bool { return bool(C.adpo_has_mpi()) }

// UseMPI makes the trainer train data-parallel over MPI_COMM_WORLD (the C call with a NULL
// communicator; adpo duplicates it for its own traffic and initialises MPI if nobody has).
// Collective: every rank calls it. Rank 0's weights, optimizer and anchor state are copied to
// every rank. It replaces a communicator set by UseAllreduce (whose callback is then released).
// A build without MPI returns StatusUnsupported (see HasMPI).
func (t *Trainer) UseMPI() error {
	tp, err := t.acquire()
	if err != nil {
		return err
	}
	defer t.release()
	var cerr *C.adpo_error
	if err := check(C.adpo_trainer_use_mpi(tp, nil, &cerr), cerr); err != nil {
		return err
	}
	t.setComm(nil)
	return nil
}

// World returns this trainer's rank and number of ranks: (0, 1) when it trains alone.
func (t *Trainer) World() (rank, size int, err error) {
	tp, err := t.acquire()
	if err != nil {
		return 0, 0, err
	}
	defer t.release()
	var r, s C.int32_t
	var cerr *C.adpo_error
	if err := check(C.adpo_trainer_world(tp, &r, &s, &cerr), cerr); err != nil {
		return 0, 0, err
	}
	return int(r), int(s), nil
}

// DLPack device types of AllreduceBuffer.DeviceType.
const (
	DeviceCPU  int32 = 1 // kDLCPU
	DeviceCUDA int32 = 2 // kDLCUDA
)

// AllreduceBuffer is a buffer that an AllreduceFunc must sum over all ranks, in place. The
// memory belongs to adpo and is valid only during the call: do not keep Data or the slices of
// Float64/Float32 after returning.
type AllreduceBuffer struct {
	// Data points to Count elements of Bits-bit floats on the device (DeviceType, DeviceID).
	Data  unsafe.Pointer
	Count int
	// Bits is 64 (float64) or 32 (float32).
	Bits int
	// DeviceType is DeviceCPU, or DeviceCUDA (adpo synchronised its stream before the call).
	DeviceType int32
	DeviceID   int32
}

// OnCPU reports whether the buffer is in host memory.
func (b AllreduceBuffer) OnCPU() bool { return b.DeviceType == DeviceCPU }

// Float64 returns a float64 view of a host buffer of 64-bit floats (nil for any other buffer).
// The view aliases adpo's memory: write the sum into it; it is valid only during the call.
func (b AllreduceBuffer) Float64() []float64 {
	if !b.OnCPU() || b.Bits != 64 || b.Data == nil || b.Count <= 0 {
		return nil
	}
	return unsafe.Slice((*float64)(b.Data), b.Count)
}

// Float32 returns a float32 view of a host buffer of 32-bit floats (nil for any other buffer),
// valid only during the call, like Float64.
func (b AllreduceBuffer) Float32() []float32 {
	if !b.OnCPU() || b.Bits != 32 || b.Data == nil || b.Count <= 0 {
		return nil
	}
	return unsafe.Slice((*float32)(b.Data), b.Count)
}

// AllreduceFunc sums buf element-wise over all ranks, in place (for example MPI_Allreduce with
// MPI_IN_PLACE and MPI_SUM, an NCCL all-reduce followed by a wait, or a Gloo/gRPC transport of
// the host's own), and returns nil when the result is in buf. A non-nil error (or a panic, which
// is recovered) fails the trainer call with StatusCommunication, and the error's text is added
// to its message. It is called synchronously from the goroutine that called the trainer method
// (UseAllreduce, Step, Save, Load), for each gradient bucket, the small metric and status
// reductions, and the copy of rank 0's state.
type AllreduceFunc func(buf AllreduceBuffer) error

// allreduceState is what the cgo.Handle passed to adpo as userdata refers to.
type allreduceState struct {
	fn      AllreduceFunc
	mu      sync.Mutex
	lastErr error // the callback's last failure, reported with the adpo error
}

func (s *allreduceState) setErr(err error) {
	s.mu.Lock()
	s.lastErr = err
	s.mu.Unlock()
}

func (s *allreduceState) takeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.lastErr
	s.lastErr = nil
	return err
}

// liveAllreduce counts the cgo.Handles given to adpo and not yet released by its free callback.
var liveAllreduce atomic.Int64

// UseAllreduce makes the trainer train data-parallel over the host's own communicator: this
// process is rank of size, and fn sums buffers over the ranks (see AllreduceFunc). Collective,
// like UseMPI: every rank calls it, and rank 0's state is copied to every rank (through fn, so
// fn is already called here). adpo keeps fn until the trainer is closed or another
// communicator (UseAllreduce, UseMPI) replaces it, then releases it; on error it is released
// before UseAllreduce returns, and the trainer trains alone unless a previous communicator is
// still in place (an invalid rank or size leaves it in place; a failed copy of rank 0's state
// does not). rank must be in [0, size).
func (t *Trainer) UseAllreduce(rank, size int, fn AllreduceFunc) error {
	if fn == nil {
		return argErr(StatusNullArgument, "allreduce function is nil")
	}
	if rank < math.MinInt32 || rank > math.MaxInt32 || size < math.MinInt32 || size > math.MaxInt32 {
		return argErr(StatusInvalidArgument, "rank %d and size %d must fit in int32", rank, size)
	}
	tp, err := t.acquire()
	if err != nil {
		return err
	}
	defer t.release()
	state := &allreduceState{fn: fn}
	h := cgo.NewHandle(state)
	liveAllreduce.Add(1)
	// From here adpo owns the handle: it calls adpoGoFreeAllreduce exactly once, whatever the
	// outcome.
	var cerr *C.adpo_error
	st := C.adpo_go_use_allreduce(tp, C.int32_t(rank), C.int32_t(size), C.uintptr_t(h), &cerr)
	err = withCallbackErr(check(st, cerr), state)
	if err == nil {
		t.setComm(state)
	}
	return err
}

// setComm records the state of the trainer's current callback, to report its errors.
func (t *Trainer) setComm(s *allreduceState) {
	t.commMu.Lock()
	t.comm = s
	t.commMu.Unlock()
}

// callbackErr adds the current callback's error (if any) to a StatusCommunication error.
func (t *Trainer) callbackErr(err error) error {
	t.commMu.Lock()
	s := t.comm
	t.commMu.Unlock()
	return withCallbackErr(err, s)
}

func withCallbackErr(err error, s *allreduceState) error {
	if s == nil {
		return err
	}
	cbErr := s.takeErr()
	if err == nil || cbErr == nil {
		return err
	}
	if e, ok := err.(*Error); ok && e.Status == StatusCommunication {
		return &Error{Status: e.Status, Message: fmt.Sprintf("%s (callback error: %v)", e.Message, cbErr), cause: cbErr}
	}
	return err
}

// callAllreduce runs the Go function behind a handle; exported to C in callbacks.go.
func callAllreduce(h cgo.Handle, buf AllreduceBuffer) (rc int32) {
	state, ok := h.Value().(*allreduceState)
	if !ok {
		return -1
	}
	defer func() {
		if r := recover(); r != nil {
			state.setErr(fmt.Errorf("panic in the allreduce function: %v", r))
			rc = 2
		}
	}()
	if err := state.fn(buf); err != nil {
		state.setErr(err)
		return 1
	}
	return 0
}

// freeAllreduce releases a handle; adpo calls it exactly once per UseAllreduce.
func freeAllreduce(h cgo.Handle) {
	h.Delete()
	liveAllreduce.Add(-1)
}
