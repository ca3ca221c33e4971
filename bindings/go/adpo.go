// Package adpo is the Go binding of adpo (Anchored Direct Preference Optimization on libtorch)
// through its stable C ABI (include/adpo.h).
//
// # Building and linking
//
// The package uses cgo. By default it compiles against the header of this repository and links
// the library built by `make lib` (target/release/libadpo.so), with an rpath to that directory,
// so that no LD_LIBRARY_PATH is needed:
//
//	#cgo CFLAGS: -I${SRCDIR}/../../include
//	#cgo LDFLAGS: -L${SRCDIR}/../../target/release -ladpo -Wl,-rpath,${SRCDIR}/../../target/release
//
// For an installed copy (scripts/install, `make install PREFIX=...`), build with the tag
// adpo_system, which takes the flags from pkg-config (adpo.pc) instead:
//
//	PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig go build -tags adpo_system ./...
//
// Without pkg-config, flags in CGO_CFLAGS/CGO_LDFLAGS come before the #cgo ones, so they also
// take precedence (the first -I and -L directory holding adpo wins):
//
//	CGO_CFLAGS=-I$PREFIX/include CGO_LDFLAGS="-L$PREFIX/lib -Wl,-rpath,$PREFIX/lib" go build ./...
//
// # ABI check
//
// When the package initialises it compares adpo_abi_version() of the loaded library with the
// ADPO_ABI_VERSION of the header it was compiled against. It does not panic on a mismatch:
// every constructor (NewObjective, LoadModel, NewBatch, NewTrainer, LoadTokenizer) then returns
// an *Error with Status StatusUnsupported that matches ErrABIMismatch under errors.Is, and
// CheckABI reports the same error. Version, ABIVersion and CUDADeviceCount keep working, to
// help diagnose it.
//
// # Handles, errors, threads
//
// Objective, Model, Batch, Trainer and Tokenizer wrap adpo handles. Close frees the handle; it is
// idempotent, safe from any goroutine, and waits for calls in flight on that handle to return.
// A finalizer frees a handle that was never closed, as a safety net only: close handles
// explicitly (a Trainer holds a whole model and optimizer state).
// Every method may be called from any goroutine; the library serialises calls on one handle
// and runs calls on different handles in parallel. A method on a closed handle returns an
// *Error with Status StatusNullArgument.
//
// Every error returned by this package is an *Error carrying the adpo Status and message.
// Go-side validation (slice lengths that disagree, n = 0) happens before any C call, because the
// C ABI takes a pointer and a count and cannot check a Go slice's length itself.
//
// Slices are passed to C without copying: they hold no Go pointers, and adpo reads or writes
// them only during the call (it never retains a caller's buffer), which the cgo pointer rules
// allow. Results are returned in newly allocated Go slices.
package adpo

/*
#include <stdlib.h>
#include "adpo.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"unsafe"
)

// HeaderABIVersion is ADPO_ABI_VERSION of the header this package was compiled against.
const HeaderABIVersion = uint32(C.ADPO_ABI_VERSION)

// Version constants of the header this package was compiled against.
const (
	HeaderVersionMajor = int(C.ADPO_VERSION_MAJOR)
	HeaderVersionMinor = int(C.ADPO_VERSION_MINOR)
	HeaderVersionPatch = int(C.ADPO_VERSION_PATCH)
)

// Status is an adpo status code (adpo_status). Values are stable.
type Status int32

// The status codes of the C ABI.
const (
	StatusOK              Status = C.ADPO_STATUS_OK
	StatusNullArgument    Status = C.ADPO_STATUS_NULL_ARGUMENT
	StatusInvalidArgument Status = C.ADPO_STATUS_INVALID_ARGUMENT
	StatusInvalidConfig   Status = C.ADPO_STATUS_INVALID_CONFIG
	StatusShapeMismatch   Status = C.ADPO_STATUS_SHAPE_MISMATCH
	StatusNonFinite       Status = C.ADPO_STATUS_NON_FINITE
	StatusUnsupported     Status = C.ADPO_STATUS_UNSUPPORTED
	StatusTorch           Status = C.ADPO_STATUS_TORCH
	StatusIO              Status = C.ADPO_STATUS_IO
	StatusCheckpoint      Status = C.ADPO_STATUS_CHECKPOINT
	StatusModel           Status = C.ADPO_STATUS_MODEL
	StatusPoisoned        Status = C.ADPO_STATUS_POISONED
	StatusPanic           Status = C.ADPO_STATUS_PANIC
	StatusCommunication   Status = C.ADPO_STATUS_COMMUNICATION
)

var statusNames = map[Status]string{
	StatusOK:              "ok",
	StatusNullArgument:    "null argument",
	StatusInvalidArgument: "invalid argument",
	StatusInvalidConfig:   "invalid config",
	StatusShapeMismatch:   "shape mismatch",
	StatusNonFinite:       "non-finite input",
	StatusUnsupported:     "unsupported",
	StatusTorch:           "torch error",
	StatusIO:              "i/o error",
	StatusCheckpoint:      "checkpoint error",
	StatusModel:           "model error",
	StatusPoisoned:        "poisoned handle",
	StatusPanic:           "panic in adpo",
	StatusCommunication:   "communication error",
}

// String returns a short description of the status.
func (s Status) String() string {
	if name, ok := statusNames[s]; ok {
		return name
	}
	return fmt.Sprintf("status %d", int32(s))
}

// Error is an error reported by adpo (or by this binding's argument checks): a Status and a
// message.
type Error struct {
	Status  Status
	Message string
	cause   error
}

// Error formats the error as "adpo: <status>: <message>".
func (e *Error) Error() string {
	if e.Message == "" {
		return "adpo: " + e.Status.String()
	}
	return "adpo: " + e.Status.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same Status and either the same or an empty
// Message, so that errors.Is(err, &adpo.Error{Status: adpo.StatusNonFinite}) tests the status.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
}

// Unwrap returns the underlying cause (ErrABIMismatch for an ABI mismatch), or nil.
func (e *Error) Unwrap() error { return e.cause }

// StatusOf returns the Status of err if it is (or wraps) an *Error, StatusOK for nil, and
// StatusInvalidArgument (as the nearest code) for any other error.
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return StatusInvalidArgument
}

// ErrABIMismatch is wrapped by the error that constructors return when the loaded libadpo has
// another ABI version than the header this package was compiled against.
var ErrABIMismatch = errors.New("adpo ABI version mismatch")

var abiErr error

func init() { abiErr = abiCheck(uint32(C.adpo_abi_version())) }

// abiCheck compares a library ABI version with the header's.
func abiCheck(got uint32) error {
	if got == HeaderABIVersion {
		return nil
	}
	return &Error{
		Status: StatusUnsupported,
		Message: fmt.Sprintf("ABI version mismatch: this Go binding was compiled against adpo.h ABI %d, "+
			"but the loaded libadpo (%s) has ABI %d; rebuild the binding against the library's header "+
			"(or point CGO_CFLAGS/CGO_LDFLAGS or -tags adpo_system at a matching install)",
			HeaderABIVersion, C.GoString(C.adpo_version()), got),
		cause: ErrABIMismatch,
	}
}

// CheckABI returns nil when the loaded library's ABI version matches the header, else the
// error that every constructor returns.
func CheckABI() error { return abiErr }

// Version returns the loaded library's version string, "adpo X.Y.Z (tch A.B.C, libtorch V)".
func Version() string { return C.GoString(C.adpo_version()) }

// ABIVersion returns adpo_abi_version() of the loaded library.
func ABIVersion() uint32 { return uint32(C.adpo_abi_version()) }

// CUDADeviceCount returns the number of CUDA devices libtorch can use (0 without CUDA).
func CUDADeviceCount() int { return int(C.adpo_cuda_device_count()) }

// SetNumThreads fixes libtorch's CPU thread count for the whole process (1 .. 4096). Until it
// is called, adpo uses the cores other processes leave idle; fix the count when the Go
// program's own goroutines load the CPU (adpo does not see load from its own process).
func SetNumThreads(n int) error {
	var cerr *C.adpo_error
	return check(C.adpo_set_num_threads(C.int32_t(n), &cerr), cerr)
}

// NumThreads returns libtorch's CPU thread count.
func NumThreads() int { return int(C.adpo_num_threads()) }

// check turns a status and an optional adpo_error into a Go error, freeing the adpo_error.
func check(st C.adpo_status, cerr *C.adpo_error) error {
	if st == C.ADPO_STATUS_OK && cerr == nil {
		return nil
	}
	e := &Error{Status: Status(st)}
	if cerr != nil {
		e.Status = Status(C.adpo_error_status(cerr))
		e.Message = C.GoString(C.adpo_error_message(cerr))
		C.adpo_error_free(cerr)
	}
	if e.Status == StatusOK { // defensive: an error object on success is not an error
		return nil
	}
	return e
}

func argErr(status Status, format string, args ...any) error {
	return &Error{Status: status, Message: fmt.Sprintf(format, args...)}
}

func closedErr(what string) error {
	return &Error{Status: StatusNullArgument, Message: what + " is closed"}
}

// takeString copies and frees a string that adpo returned with ownership.
func takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.adpo_string_free(s)
	return C.GoString(s)
}

// cString returns a C copy of s, or NULL for "" when emptyIsNull; free with freeCString.
func cString(s string, emptyIsNull bool) *C.char {
	if s == "" && emptyIsNull {
		return nil
	}
	return C.CString(s)
}

func freeCString(s *C.char) {
	if s != nil {
		C.free(unsafe.Pointer(s))
	}
}

// Pointers to the first element of Go slices without Go pointers in them (cgo rules allow
// passing them; adpo does not retain them). Empty slices give NULL.

func f64Ptr(s []float64) *C.double {
	if len(s) == 0 {
		return nil
	}
	return (*C.double)(unsafe.Pointer(&s[0]))
}

func i64Ptr(s []int64) *C.int64_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.int64_t)(unsafe.Pointer(&s[0]))
}

func u8Ptr(s []uint8) *C.uint8_t {
	if len(s) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&s[0]))
}

// cells returns n * t, or an error when either is not positive or the product overflows.
func cells(n, t int) (int, error) {
	if n <= 0 {
		return 0, argErr(StatusInvalidArgument, "n must be > 0 (got %d)", n)
	}
	if t <= 0 {
		return 0, argErr(StatusInvalidArgument, "t must be > 0 (got %d)", t)
	}
	c := n * t
	if c/t != n {
		return 0, argErr(StatusInvalidArgument, "n * t overflows")
	}
	return c, nil
}

func wantLen(name string, got, want int) error {
	if got != want {
		return argErr(StatusShapeMismatch, "%s has %d entries, want %d", name, got, want)
	}
	return nil
}

// testPanic calls adpo_test_panic (cgo cannot be used in _test.go files).
func testPanic() error {
	var cerr *C.adpo_error
	st := C.adpo_test_panic(&cerr)
	return check(st, cerr)
}
