package adpo

/*
#include <stdlib.h>
#include <string.h>
#include "adpo.h"

// A host tensor the Go binding builds: one allocation holding the DLPack struct and its shape,
// and a C copy of the data (Go memory may not be kept by C after a call returns), both freed
// by the tensor's own deleter.
typedef struct {
	DLManagedTensorVersioned managed;
	int64_t shape[8];
} adpo_go_host_tensor;

static long adpo_go_live_host_tensors; // made and not yet deleted: what the tests count

static void adpo_go_host_tensor_delete(DLManagedTensorVersioned *self) {
	if (self == NULL) return;
	free(self->dl_tensor.data);
	free(self);
	__atomic_fetch_sub(&adpo_go_live_host_tensors, 1, __ATOMIC_SEQ_CST);
}

static DLManagedTensorVersioned *adpo_go_host_tensor_new(const void *data, size_t bytes, int32_t ndim,
                                                         const int64_t *shape, uint8_t code, uint8_t bits) {
	if (ndim < 0 || ndim > 8) return NULL;
	adpo_go_host_tensor *t = calloc(1, sizeof *t);
	void *copy = malloc(bytes > 0 ? bytes : 1);
	if (t == NULL || copy == NULL) {
		free(t);
		free(copy);
		return NULL;
	}
	memcpy(copy, data, bytes);
	memcpy(t->shape, shape, sizeof(int64_t) * (size_t)ndim);
	t->managed.version.major = DLPACK_MAJOR_VERSION;
	t->managed.version.minor = DLPACK_MINOR_VERSION;
	t->managed.deleter = adpo_go_host_tensor_delete;
	t->managed.dl_tensor.data = copy;
	t->managed.dl_tensor.device.device_type = kDLCPU;
	t->managed.dl_tensor.ndim = ndim;
	t->managed.dl_tensor.dtype.code = code;
	t->managed.dl_tensor.dtype.bits = bits;
	t->managed.dl_tensor.dtype.lanes = 1;
	t->managed.dl_tensor.shape = t->shape;
	__atomic_fetch_add(&adpo_go_live_host_tensors, 1, __ATOMIC_SEQ_CST);
	return &t->managed;
}

static long adpo_go_live_host_tensor_count(void) {
	return __atomic_load_n(&adpo_go_live_host_tensors, __ATOMIC_SEQ_CST);
}

static void adpo_go_dlpack_delete(DLManagedTensorVersioned *t) {
	if (t != NULL && t->deleter != NULL) t->deleter(t);
}
*/
import "C"

import (
	"math"
	"runtime"
	"sync"
	"unsafe"
)

// DLPackTensor owns one DLManagedTensorVersioned* (DLPack >= 1.0): a tensor from any producer
// (a GPU library's Go binding, adpo's own EvalDLPack result) or a host copy made by
// NewDLPackFloat64 / NewDLPackFloat32 / NewDLPackInt64. Handing it to EvalDLPack or
// ForwardBackwardDLPack passes its ownership to adpo, which calls its deleter exactly once
// whatever the outcome; the Go value is then empty, and using it again is an error.
type DLPackTensor struct {
	mu sync.Mutex
	p  *C.DLManagedTensorVersioned
}

// DLPackFromPointer takes ownership of p, a DLManagedTensorVersioned* another library made
// (nil for nil). Its deleter runs when the tensor is handed to adpo, released, or collected.
func DLPackFromPointer(p unsafe.Pointer) *DLPackTensor {
	if p == nil {
		return nil
	}
	return wrapDLPack((*C.DLManagedTensorVersioned)(p))
}

func wrapDLPack(p *C.DLManagedTensorVersioned) *DLPackTensor {
	t := &DLPackTensor{p: p}
	runtime.SetFinalizer(t, (*DLPackTensor).Release)
	return t
}

// NewDLPackFloat64 copies data into a new CPU float64 tensor of the given shape (row-major;
// the shape's product must be len(data)).
func NewDLPackFloat64(data []float64, shape ...int64) (*DLPackTensor, error) {
	return newHostTensor(unsafe.Pointer(unsafe.SliceData(data)), len(data), 8, shape, C.kDLFloat)
}

// NewDLPackFloat32 is NewDLPackFloat64 for float32 data.
func NewDLPackFloat32(data []float32, shape ...int64) (*DLPackTensor, error) {
	return newHostTensor(unsafe.Pointer(unsafe.SliceData(data)), len(data), 4, shape, C.kDLFloat)
}

// NewDLPackInt64 is NewDLPackFloat64 for int64 data (group ids).
func NewDLPackInt64(data []int64, shape ...int64) (*DLPackTensor, error) {
	return newHostTensor(unsafe.Pointer(unsafe.SliceData(data)), len(data), 8, shape, C.kDLInt)
}

func newHostTensor(data unsafe.Pointer, n, size int, shape []int64, code C.uint8_t) (*DLPackTensor, error) {
	if len(shape) == 0 || len(shape) > 8 {
		return nil, argErr(StatusInvalidArgument, "a DLPack tensor needs 1 to 8 dimensions, got %d", len(shape))
	}
	cells := int64(1)
	for _, d := range shape {
		if d < 0 || (d > 0 && cells > math.MaxInt64/d) {
			return nil, argErr(StatusInvalidArgument, "DLPack shape %v is negative or too large", shape)
		}
		cells *= d
	}
	if cells != int64(n) {
		return nil, argErr(StatusShapeMismatch, "DLPack shape %v holds %d values, the data has %d", shape, cells, n)
	}
	p := C.adpo_go_host_tensor_new(data, C.size_t(n*size), C.int32_t(len(shape)),
		(*C.int64_t)(unsafe.Pointer(unsafe.SliceData(shape))), code, C.uint8_t(8*size))
	if p == nil {
		return nil, argErr(StatusInvalidArgument, "could not allocate a DLPack tensor of %d bytes", n*size)
	}
	return wrapDLPack(p), nil
}

// take empties t and returns its pointer (nil for a nil or already used tensor).
func (t *DLPackTensor) take() *C.DLManagedTensorVersioned {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.p
	t.p = nil
	runtime.SetFinalizer(t, nil)
	return p
}

// Pointer hands the DLManagedTensorVersioned* to another DLPack consumer, which then owns it;
// t is empty afterwards. Nil when t is nil or already used.
func (t *DLPackTensor) Pointer() unsafe.Pointer { return unsafe.Pointer(t.take()) }

// Release calls the tensor's deleter now (nothing when it was already handed on). Safe to call
// more than once.
func (t *DLPackTensor) Release() { C.adpo_go_dlpack_delete(t.take()) }

// Float64s copies a CPU tensor's values (float64 or float32, any strides) in row-major order.
// The tensor stays owned by t.
func (t *DLPackTensor) Float64s() ([]float64, error) {
	if t == nil {
		return nil, argErr(StatusNullArgument, "DLPack tensor is nil")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.p == nil {
		return nil, argErr(StatusInvalidArgument, "DLPack tensor was already handed on or released")
	}
	dl := &t.p.dl_tensor
	if dl.device.device_type != C.kDLCPU {
		return nil, argErr(StatusUnsupported, "Float64s reads CPU tensors; this one is on device type %d", int(dl.device.device_type))
	}
	if dl.dtype.code != C.kDLFloat || (dl.dtype.bits != 64 && dl.dtype.bits != 32) || dl.dtype.lanes != 1 {
		return nil, argErr(StatusUnsupported, "Float64s reads float64 and float32 tensors, not code %d bits %d",
			int(dl.dtype.code), int(dl.dtype.bits))
	}
	shape, strides := dlpackLayout(dl)
	out := make([]float64, 0, product(shape))
	base := unsafe.Add(dl.data, uintptr(dl.byte_offset))
	size := int64(dl.dtype.bits / 8)
	forEachIndex(shape, strides, func(offset int64) {
		p := unsafe.Add(base, offset*size)
		if size == 8 {
			out = append(out, *(*float64)(p))
		} else {
			out = append(out, float64(*(*float32)(p)))
		}
	})
	return out, nil
}

// Shape is the tensor's shape (nil when t is empty).
func (t *DLPackTensor) Shape() []int64 {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.p == nil {
		return nil
	}
	shape, _ := dlpackLayout(&t.p.dl_tensor)
	return shape
}

// dlpackLayout returns shape and element strides (row-major when the producer gave none).
func dlpackLayout(dl *C.DLTensor) (shape, strides []int64) {
	nd := int(dl.ndim)
	shape = append([]int64(nil), unsafe.Slice((*int64)(unsafe.Pointer(dl.shape)), nd)...)
	if dl.strides != nil {
		return shape, append([]int64(nil), unsafe.Slice((*int64)(unsafe.Pointer(dl.strides)), nd)...)
	}
	strides = make([]int64, nd)
	step := int64(1)
	for i := nd - 1; i >= 0; i-- {
		strides[i] = step
		step *= shape[i]
	}
	return shape, strides
}

func product(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// forEachIndex calls f with the element offset of every index, in row-major order.
func forEachIndex(shape, strides []int64, f func(offset int64)) {
	if product(shape) == 0 {
		return
	}
	idx := make([]int64, len(shape))
	for {
		var off int64
		for i, j := range idx {
			off += j * strides[i]
		}
		f(off)
		i := len(idx) - 1
		for ; i >= 0; i-- {
			idx[i]++
			if idx[i] < shape[i] {
				break
			}
			idx[i] = 0
		}
		if i < 0 {
			return
		}
	}
}

// liveHostTensors counts the host tensors NewDLPack* made whose deleter has not run yet.
func liveHostTensors() int { return int(C.adpo_go_live_host_tensor_count()) }

// takeAll empties every tensor, refusing the same tensor twice (adpo would delete it twice);
// on that error every distinct tensor is released, as adpo would have done.
func takeAll(ts ...*DLPackTensor) ([]*C.DLManagedTensorVersioned, error) {
	out := make([]*C.DLManagedTensorVersioned, len(ts))
	seen := map[*DLPackTensor]bool{}
	var dup bool
	for i, t := range ts {
		if t != nil && seen[t] {
			dup = true
			continue
		}
		seen[t] = true
		out[i] = t.take()
	}
	if dup {
		releaseAll(out)
		return nil, argErr(StatusInvalidArgument, "the same DLPackTensor was passed twice (each input is consumed)")
	}
	return out, nil
}

func releaseAll(ps []*C.DLManagedTensorVersioned) {
	for _, p := range ps {
		C.adpo_go_dlpack_delete(p)
	}
}

// EvalDLPack is Eval on DLPack tensors of any device (float64, float32, float16 or bfloat16;
// groupIDs int64): exactly one of rewards and targets is non-nil. Every input is consumed
// (see DLPackTensor). It returns the loss and d loss/d logp as a new tensor on logp's device,
// in logp's dtype, owned by the caller.
func (o *Objective) EvalDLPack(logp, anchorLogp, rewards, targets, groupIDs *DLPackTensor) (float64, *DLPackTensor, error) {
	ps, err := takeAll(logp, anchorLogp, rewards, targets, groupIDs)
	if err != nil {
		return 0, nil, err
	}
	op, err := o.acquire()
	if err != nil {
		releaseAll(ps)
		return 0, nil, err
	}
	defer o.release()
	var loss C.double
	var grad *C.DLManagedTensorVersioned
	var cerr *C.adpo_error
	st := C.adpo_objective_eval_dlpack(op, ps[0], ps[1], ps[2], ps[3], ps[4], &loss, &grad, &cerr)
	if err := check(st, cerr); err != nil {
		return 0, nil, err
	}
	return float64(loss), wrapDLPack(grad), nil
}

// ForwardBackwardDLPack is ForwardBackward with the host's dL/d(token log-prob) as a DLPack
// tensor ([n, t], floating, CPU or CUDA: the output of the host's own autograd, where it
// lives). gradLogp is consumed; nil runs the configured loss.
func (t *Trainer) ForwardBackwardDLPack(batch *Batch, gradLogp *DLPackTensor) (TrainerMetrics, error) {
	g := gradLogp.take()
	tp, err := t.acquire()
	if err != nil {
		C.adpo_go_dlpack_delete(g)
		return TrainerMetrics{}, err
	}
	defer t.release()
	bp, err := batch.acquire()
	if err != nil {
		C.adpo_go_dlpack_delete(g)
		return TrainerMetrics{}, err
	}
	defer batch.release()
	return withMetrics(func(m *C.adpo_trainer_metrics) error {
		var cerr *C.adpo_error
		return check(C.adpo_trainer_forward_backward_dlpack(tp, bp, g, m, &cerr), cerr)
	})
}
