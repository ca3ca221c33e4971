package adpo

/*
#include <stdlib.h>
#include "adpo.h"
*/
import "C"

import (
	"runtime"
	"strconv"
	"strings"
)

// Tokenizer is a Hugging Face tokenizer with its chat templates (adpo_tokenizer): tokenizer.json
// plus tokenizer_config.json, chat_template.jinja and generation_config.json / config.json
// beside it. It is read-only once loaded; calls on one Tokenizer may run in parallel.
type Tokenizer struct {
	h handle[*C.adpo_tokenizer]
}

// LoadTokenizer loads path: a tokenizer.json or a checkpoint directory holding one. A missing
// path or tokenizer.json is a StatusIO error, a file that cannot be parsed a StatusModel error.
func LoadTokenizer(path string) (*Tokenizer, error) {
	if abiErr != nil {
		return nil, abiErr
	}
	cpath, err := nulFree(path, "path")
	if err != nil {
		return nil, err
	}
	defer freeCString(cpath)
	var out *C.adpo_tokenizer
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_load(cpath, &out, &cerr), cerr); err != nil {
		return nil, err
	}
	t := &Tokenizer{h: handle[*C.adpo_tokenizer]{ptr: out}}
	runtime.SetFinalizer(t, (*Tokenizer).Close)
	return t, nil
}

// Close frees the tokenizer handle. It is safe to call more than once and from any goroutine.
func (t *Tokenizer) Close() error {
	if t == nil {
		return nil
	}
	if p := t.h.take(); p != nil {
		C.adpo_tokenizer_free(p)
		runtime.SetFinalizer(t, nil)
	}
	return nil
}

func (t *Tokenizer) acquire() (*C.adpo_tokenizer, error) {
	if t == nil {
		return nil, closedErr("Tokenizer (nil)")
	}
	return t.h.acquire("Tokenizer")
}

func (t *Tokenizer) release() {
	t.h.release()
	runtime.KeepAlive(t)
}

// nulFree returns a C copy of s (free with freeCString); a NUL inside s is an error, since C
// would silently stop there.
func nulFree(s, name string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, argErr(StatusInvalidArgument, "%s contains a NUL byte", name)
	}
	return C.CString(s), nil
}

// sizedIDs runs a sizes-first C call (encode, encode_batch, eos_ids): the size query, then the
// call that fills a buffer of that size.
func sizedIDs(call func(out *C.int64_t, capacity C.size_t, n *C.size_t, cerr **C.adpo_error) C.adpo_status) ([]int64, error) {
	var n C.size_t
	var cerr *C.adpo_error
	if err := check(call(nil, 0, &n, &cerr), cerr); err != nil {
		return nil, err
	}
	ids := make([]int64, int(n))
	if len(ids) == 0 {
		return ids, nil
	}
	if err := check(call(i64Ptr(ids), C.size_t(len(ids)), &n, &cerr), cerr); err != nil {
		return nil, err
	}
	return ids[:int(n)], nil
}

// Encode returns the token ids of UTF-8 text. addSpecialTokens adds what the tokenizer's
// post-processor adds (e.g. BOS); pass false for text from ApplyChatTemplate, which writes its
// own special tokens. Text that is not UTF-8 is a StatusInvalidArgument error.
func (t *Tokenizer) Encode(text string, addSpecialTokens bool) ([]int64, error) {
	p, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	ctext, err := nulFree(text, "text")
	if err != nil {
		return nil, err
	}
	defer freeCString(ctext)
	return sizedIDs(func(out *C.int64_t, capacity C.size_t, n *C.size_t, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_tokenizer_encode(p, ctext, C.bool(addSpecialTokens), out, capacity, n, cerr)
	})
}

// EncodeBatch encodes each text (in parallel inside adpo).
func (t *Tokenizer) EncodeBatch(texts []string, addSpecialTokens bool) ([][]int64, error) {
	p, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	ptrs := make([]*C.char, len(texts)) // C pointers only: may be passed to C
	defer func() {
		for _, s := range ptrs {
			freeCString(s)
		}
	}()
	for i, s := range texts {
		if ptrs[i], err = nulFree(s, "texts["+strconv.Itoa(i)+"]"); err != nil {
			return nil, err
		}
	}
	var first **C.char
	if len(ptrs) > 0 {
		first = &ptrs[0]
	}
	offsets := make([]C.size_t, len(texts)+1)
	flat, err := sizedIDs(func(out *C.int64_t, capacity C.size_t, n *C.size_t, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_tokenizer_encode_batch(p, first, C.size_t(len(ptrs)), C.bool(addSpecialTokens), out, capacity,
			&offsets[0], n, cerr)
	})
	if err != nil {
		return nil, err
	}
	seqs := make([][]int64, len(texts))
	for i := range seqs {
		seqs[i] = flat[offsets[i]:offsets[i+1]:offsets[i+1]]
	}
	return seqs, nil
}

// Decode returns the text of ids; skipSpecialTokens leaves special tokens out. An id outside the
// vocabulary is a StatusInvalidArgument error naming it.
func (t *Tokenizer) Decode(ids []int64, skipSpecialTokens bool) (string, error) {
	p, err := t.acquire()
	if err != nil {
		return "", err
	}
	defer t.release()
	var out *C.char
	var cerr *C.adpo_error
	st := C.adpo_tokenizer_decode(p, i64Ptr(ids), C.size_t(len(ids)), C.bool(skipSpecialTokens), &out, &cerr)
	if err := check(st, cerr); err != nil {
		return "", err
	}
	return takeString(out), nil
}

// DecodeBatch decodes each id sequence.
func (t *Tokenizer) DecodeBatch(seqs [][]int64, skipSpecialTokens bool) ([]string, error) {
	p, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	if len(seqs) == 0 {
		return []string{}, nil
	}
	var flat []int64
	offsets := make([]C.size_t, 1, len(seqs)+1)
	for _, s := range seqs {
		flat = append(flat, s...)
		offsets = append(offsets, C.size_t(len(flat)))
	}
	out := make([]*C.char, len(seqs))
	var cerr *C.adpo_error
	st := C.adpo_tokenizer_decode_batch(p, i64Ptr(flat), &offsets[0], C.size_t(len(seqs)), C.bool(skipSpecialTokens),
		&out[0], &cerr)
	if err := check(st, cerr); err != nil {
		return nil, err
	}
	texts := make([]string, len(out))
	for i, s := range out {
		texts[i] = takeString(s)
	}
	return texts, nil
}

// ApplyChatTemplate renders the tokenizer's default chat template for messagesJSON (a JSON list
// of {"role", "content"} objects) as transformers' apply_chat_template(tokenize=False) does.
// Malformed messages and template errors, the template's own raise_exception included, are
// StatusInvalidArgument errors carrying the template's message.
func (t *Tokenizer) ApplyChatTemplate(messagesJSON string, addGenerationPrompt bool) (string, error) {
	p, err := t.acquire()
	if err != nil {
		return "", err
	}
	defer t.release()
	cm, err := nulFree(messagesJSON, "messagesJSON")
	if err != nil {
		return "", err
	}
	defer freeCString(cm)
	var out *C.char
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_apply_chat_template(p, cm, C.bool(addGenerationPrompt), &out, &cerr), cerr); err != nil {
		return "", err
	}
	return takeString(out), nil
}

// ApplyChatTemplateOptions renders with options JSON: {"template": NAME or SOURCE,
// "add_generation_prompt": bool, "tools": [...], "documents": [...], "variables": {...}}
// ("" = defaults; unknown keys are a StatusInvalidConfig error).
func (t *Tokenizer) ApplyChatTemplateOptions(messagesJSON, optionsJSON string) (string, error) {
	p, err := t.acquire()
	if err != nil {
		return "", err
	}
	defer t.release()
	cm, err := nulFree(messagesJSON, "messagesJSON")
	if err != nil {
		return "", err
	}
	defer freeCString(cm)
	co, err := nulFree(optionsJSON, "optionsJSON")
	if err != nil {
		return "", err
	}
	defer freeCString(co)
	var out *C.char
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_apply_chat_template_options(p, cm, co, &out, &cerr), cerr); err != nil {
		return "", err
	}
	return takeString(out), nil
}

// EOSIDs returns the ids that end generation (generation_config.json's eos_token_id, else
// config.json's, else the EOS token's id).
func (t *Tokenizer) EOSIDs() ([]int64, error) {
	p, err := t.acquire()
	if err != nil {
		return nil, err
	}
	defer t.release()
	return sizedIDs(func(out *C.int64_t, capacity C.size_t, n *C.size_t, cerr **C.adpo_error) C.adpo_status {
		return C.adpo_tokenizer_eos_ids(p, out, capacity, n, cerr)
	})
}

// VocabSize returns the number of tokens, added tokens included (Python's len(tokenizer)).
func (t *Tokenizer) VocabSize() (int, error) {
	p, err := t.acquire()
	if err != nil {
		return 0, err
	}
	defer t.release()
	var v C.int64_t
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_vocab_size(p, &v, &cerr), cerr); err != nil {
		return 0, err
	}
	return int(v), nil
}

// TokenToID returns the id of a token string such as "<|im_end|>"; a string that is not one
// token of the vocabulary is a StatusInvalidArgument error.
func (t *Tokenizer) TokenToID(token string) (int64, error) {
	p, err := t.acquire()
	if err != nil {
		return 0, err
	}
	defer t.release()
	ct, err := nulFree(token, "token")
	if err != nil {
		return 0, err
	}
	defer freeCString(ct)
	var id C.int64_t
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_token_to_id(p, ct, &id, &cerr), cerr); err != nil {
		return 0, err
	}
	return int64(id), nil
}

// SpecialToken returns a named special token of tokenizer_config.json ("bos_token",
// "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token") and whether the
// tokenizer sets it.
func (t *Tokenizer) SpecialToken(name string) (string, bool, error) {
	p, err := t.acquire()
	if err != nil {
		return "", false, err
	}
	defer t.release()
	cn, err := nulFree(name, "name")
	if err != nil {
		return "", false, err
	}
	defer freeCString(cn)
	var out *C.char
	var cerr *C.adpo_error
	if err := check(C.adpo_tokenizer_special_token(p, cn, &out, &cerr), cerr); err != nil {
		return "", false, err
	}
	if out == nil {
		return "", false, nil
	}
	return takeString(out), true, nil
}
