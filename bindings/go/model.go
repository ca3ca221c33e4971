package adpo

/*
#include <stdlib.h>
#include "adpo.h"
*/
import "C"

import (
	"runtime"
)

// Model is a causal LM (adpo_model). A Trainer keeps its own reference to the
// models it was created with, so a Model may be closed right after NewTrainer.
type Model struct {
	h handle[*C.adpo_model]
}

// LoadModel loads a Hugging Face checkpoint directory (config.json + safetensors; the
// architectures the README lists) or a TorchScript file (torch.jit.script(model).save(path))
// whose forward is forward(input_ids, attention_mask) -> logits [B, T, V] or forward(input_ids).
// device is "cpu" (or ""), "cuda" or "cuda:N". A missing file or a model that breaks the
// contract is a StatusModel error.
func LoadModel(path, device string) (*Model, error) {
	return loadWith(path, device, func(p, arg *C.char, out **C.adpo_model, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_load(p, arg, out, cerr)
	})
}

// loadWith calls one of the two C loaders with the path and its second string ("" = NULL).
func loadWith(path, arg string, call func(p, arg *C.char, out **C.adpo_model, cerr **C.adpo_error) C.adpo_status) (*Model, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	cpath := C.CString(path)
	defer freeCString(cpath)
	carg := cString(arg, true)
	defer freeCString(carg)
	var out *C.adpo_model
	var cerr *C.adpo_error
	if err := check(call(cpath, carg, &out, &cerr), cerr); err != nil {
		return nil, err
	}
	m := &Model{h: handle[*C.adpo_model]{ptr: out}}
	runtime.SetFinalizer(m, (*Model).Close)
	return m, nil
}

// LoadModelOptions loads a Hugging Face checkpoint directory (config.json + safetensors, of an
// architecture the library supports: see the README) or a TorchScript file, with options as JSON, e.g.
// `{"device": "cuda:0", "dtype": "bfloat16"}` ("" = defaults: cpu, the checkpoint's dtype).
func LoadModelOptions(path, optionsJSON string) (*Model, error) {
	return loadWith(path, optionsJSON, func(p, arg *C.char, out **C.adpo_model, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_load_options(p, arg, out, cerr)
	})
}

// Save writes the model with its current weights as a Hugging Face checkpoint directory that
// transformers' from_pretrained and LoadModel read (checkpoint-directory models only).
func (m *Model) Save(dir string) error {
	return m.withDir(dir, func(p *C.adpo_model, cdir *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_save(p, cdir, cerr)
	})
}

// SaveAdapter writes a LoRA policy's adapters as a PEFT adapter directory that
// peft.PeftModel.from_pretrained(base, dir) loads.
func (m *Model) SaveAdapter(dir string) error {
	return m.withDir(dir, func(p *C.adpo_model, cdir *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_save_adapter(p, cdir, cerr)
	})
}

// SaveGGUF writes the model (a LoRA policy merged; the model itself unchanged) as a GGUF file that
// llama.cpp (`llama-cli -m`), Ollama (`FROM`), transformers and LoadModel read, with options as
// JSON: `{"dtype": "f32" | "f16" | "bf16" | "q8_0"}` ("" = defaults: f32). The write is atomic;
// an existing path is replaced only when it is a GGUF file.
func (m *Model) SaveGGUF(path, optionsJSON string) error {
	return m.withPathOptions(path, optionsJSON, func(p *C.adpo_model, cpath, copts *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_save_gguf(p, cpath, copts, cerr)
	})
}

// SaveAdapterGGUF writes a LoRA policy's adapters as a llama.cpp LoRA adapter GGUF, which
// `llama-cli -m base.gguf --lora FILE` and Ollama's `ADAPTER` load on the base model. Options as
// SaveGGUF's.
func (m *Model) SaveAdapterGGUF(path, optionsJSON string) error {
	return m.withPathOptions(path, optionsJSON, func(p *C.adpo_model, cpath, copts *C.char, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_model_save_adapter_gguf(p, cpath, copts, cerr)
	})
}

// withPathOptions runs a C call that takes the model, a path and options JSON ("" = NULL).
func (m *Model) withPathOptions(path, optionsJSON string, call func(p *C.adpo_model, cpath, copts *C.char, cerr **C.adpo_error) C.adpo_status) error {
	p, err := m.acquire()
	if err != nil {
		return err
	}
	defer m.release()
	cpath := C.CString(path)
	defer freeCString(cpath)
	var copts *C.char
	if optionsJSON != "" {
		copts = C.CString(optionsJSON)
		defer freeCString(copts)
	}
	var cerr *C.adpo_error
	return check(call(p, cpath, copts, &cerr), cerr)
}

// withDir runs a C call that takes the model and a directory path.
func (m *Model) withDir(dir string, call func(p *C.adpo_model, cdir *C.char, cerr **C.adpo_error) C.adpo_status) error {
	p, err := m.acquire()
	if err != nil {
		return err
	}
	defer m.release()
	cdir := C.CString(dir)
	defer freeCString(cdir)
	var cerr *C.adpo_error
	return check(call(p, cdir, &cerr), cerr)
}

// Close frees the model handle. It is safe to call more than once and from any goroutine.
func (m *Model) Close() error {
	if m == nil {
		return nil
	}
	if p := m.h.take(); p != nil {
		C.adpo_model_free(p)
		runtime.SetFinalizer(m, nil)
	}
	return nil
}

func (m *Model) acquire() (*C.adpo_model, error) {
	if m == nil {
		return nil, closedErr("Model (nil)")
	}
	return m.h.acquire("Model")
}

func (m *Model) release() {
	m.h.release()
	runtime.KeepAlive(m)
}

// VocabSize returns the vocabulary size V of the model's logits.
func (m *Model) VocabSize() (int, error) {
	p, err := m.acquire()
	if err != nil {
		return 0, err
	}
	defer m.release()
	var v C.int64_t
	var cerr *C.adpo_error
	if err := check(C.adpo_model_vocab_size(p, &v, &cerr), cerr); err != nil {
		return 0, err
	}
	return int(v), nil
}

// NumParams returns the number of parameter values of the model, all tensors together.
func (m *Model) NumParams() (int, error) {
	p, err := m.acquire()
	if err != nil {
		return 0, err
	}
	defer m.release()
	return numParams(p)
}

func numParams(p *C.adpo_model) (int, error) {
	var n C.size_t
	var cerr *C.adpo_error
	if err := check(C.adpo_model_num_params(p, &n, &cerr), cerr); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Params returns a copy of the model's current parameters (a policy's as trained so far) as
// float64, every tensor flattened in the module's parameter order: NumParams values. For checks
// such as "every replica holds the same weights".
func (m *Model) Params() ([]float64, error) {
	p, err := m.acquire()
	if err != nil {
		return nil, err
	}
	defer m.release()
	n, err := numParams(p)
	if err != nil {
		return nil, err
	}
	out := make([]float64, n)
	if n == 0 {
		return out, nil
	}
	var cerr *C.adpo_error
	if err := check(C.adpo_model_get_params(p, f64Ptr(out), C.size_t(n), &cerr), cerr); err != nil {
		return nil, err
	}
	return out, nil
}
