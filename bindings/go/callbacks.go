package adpo

// The Go functions that C calls back (the all-reduce trampolines of distributed.go). A file
// with //export may only declare things in its preamble, so the C side lives in distributed.go.

/*
#include <stddef.h>
#include <stdint.h>
*/
import "C"

import (
	"runtime/cgo"
	"unsafe"
)

//export adpoGoAllreduce
func adpoGoAllreduce(handle C.uintptr_t, buffer unsafe.Pointer, count C.size_t, code, bits C.uint8_t,
	deviceType, deviceID C.int32_t) C.int32_t {
	const kDLFloat = 2
	if code != kDLFloat || (bits != 32 && bits != 64) {
		return 3 // adpo only reduces float32 and float64 buffers
	}
	return C.int32_t(callAllreduce(cgo.Handle(handle), AllreduceBuffer{
		Data:       buffer,
		Count:      int(count),
		Bits:       int(bits),
		DeviceType: int32(deviceType),
		DeviceID:   int32(deviceID),
	}))
}

//export adpoGoFreeAllreduce
func adpoGoFreeAllreduce(handle C.uintptr_t) {
	freeAllreduce(cgo.Handle(handle))
}
