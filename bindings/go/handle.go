package adpo

import "sync"

// handle is the lifecycle every wrapper shares: a C pointer (P is *C.adpo_...) behind a
// read-write lock, so that Close waits for the calls in flight and later calls report the
// handle as closed.
type handle[P comparable] struct {
	mu  sync.RWMutex
	ptr P
}

// take clears the pointer and returns what it held (the zero pointer when already closed).
func (h *handle[P]) take() P {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.ptr
	var closed P
	h.ptr = closed
	return p
}

// acquire read-locks the handle; name is for the error when it is closed. Pair with release.
func (h *handle[P]) acquire(name string) (P, error) {
	h.mu.RLock()
	var closed P
	if h.ptr == closed {
		h.mu.RUnlock()
		return closed, closedErr(name)
	}
	return h.ptr, nil
}

func (h *handle[P]) release() {
	h.mu.RUnlock()
}
