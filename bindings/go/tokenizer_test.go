package adpo

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// Fixtures of tests/fixtures/make_tokenizers.py: special tokens first in each vocabulary (qwen:
// <|endoftext|> 0, <|im_start|> 1, <|im_end|> 2; llama3: <|begin_of_text|> 0), vocabulary 700,
// and the templates' text. tests/tokenizer.rs compares every id and rendering with Python.

func loadTokenizer(t *testing.T, name string) *Tokenizer {
	t.Helper()
	tok, err := LoadTokenizer(fixture(t, filepath.Join("tokenizers", name)))
	if err != nil {
		t.Fatalf("LoadTokenizer(%s): %v", name, err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

func TestTokenizerEncodeDecode(t *testing.T) {
	tok := loadTokenizer(t, "qwen")
	text := "Hello world! Café 東京 🚀 <|im_end|>"
	ids, err := tok.Encode(text, false)
	if err != nil || len(ids) < 5 || ids[len(ids)-1] != 2 {
		t.Fatalf("Encode = %v, %v", ids, err)
	}
	if got, err := tok.Decode(ids, false); err != nil || got != text {
		t.Fatalf("Decode = %q, %v", got, err)
	}
	if got, err := tok.Decode(ids, true); err != nil || got != "Hello world! Café 東京 🚀 " {
		t.Fatalf("Decode(skip) = %q, %v", got, err)
	}
	if got, err := tok.Encode("", true); err != nil || len(got) != 0 {
		t.Fatalf("Encode(\"\") = %v, %v", got, err)
	}
	if v, err := tok.VocabSize(); err != nil || v != 700 {
		t.Fatalf("VocabSize = %d, %v", v, err)
	}
	if eos, err := tok.EOSIDs(); err != nil || !reflect.DeepEqual(eos, []int64{2, 0}) {
		t.Fatalf("EOSIDs = %v, %v", eos, err)
	}
	if id, err := tok.TokenToID("<|im_start|>"); err != nil || id != 1 {
		t.Fatalf("TokenToID = %d, %v", id, err)
	}
	if s, ok, err := tok.SpecialToken("eos_token"); err != nil || !ok || s != "<|im_end|>" {
		t.Fatalf("SpecialToken(eos_token) = %q, %v, %v", s, ok, err)
	}
	if s, ok, err := tok.SpecialToken("bos_token"); err != nil || ok || s != "" {
		t.Fatalf("SpecialToken(bos_token) = %q, %v, %v", s, ok, err)
	}
}

func TestTokenizerBatchMatchesOneByOne(t *testing.T) {
	tok := loadTokenizer(t, "llama3")
	texts := []string{"Hello", "", "東京は日本の首都です。", strings.Repeat("x", 300)}
	seqs, err := tok.EncodeBatch(texts, true)
	if err != nil || len(seqs) != len(texts) {
		t.Fatalf("EncodeBatch = %v, %v", seqs, err)
	}
	for i, text := range texts {
		one, err := tok.Encode(text, true)
		if err != nil || !reflect.DeepEqual(seqs[i], one) || one[0] != 0 {
			t.Fatalf("text %d: batch %v, alone %v (%v)", i, seqs[i], one, err)
		}
	}
	back, err := tok.DecodeBatch(seqs, true)
	if err != nil || !reflect.DeepEqual(back, texts) {
		t.Fatalf("DecodeBatch = %q, %v", back, err)
	}
	if got, err := tok.EncodeBatch(nil, true); err != nil || len(got) != 0 {
		t.Fatalf("EncodeBatch(nil) = %v, %v", got, err)
	}
	if got, err := tok.DecodeBatch(nil, true); err != nil || len(got) != 0 {
		t.Fatalf("DecodeBatch(nil) = %v, %v", got, err)
	}
}

func TestTokenizerChatTemplates(t *testing.T) {
	qwen := loadTokenizer(t, "qwen")
	mistral := loadTokenizer(t, "mistral")
	user := `[{"role": "user", "content": "What is 2 + 2?"}]`
	head := "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
	if got, err := qwen.ApplyChatTemplate(user, false); err != nil || got != head {
		t.Fatalf("ApplyChatTemplate = %q, %v", got, err)
	}
	if got, err := qwen.ApplyChatTemplate(user, true); err != nil || got != head+"<|im_start|>assistant\n" {
		t.Fatalf("ApplyChatTemplate(gen) = %q, %v", got, err)
	}
	got, err := qwen.ApplyChatTemplateOptions(user, `{"add_generation_prompt": true, "variables": {"enable_thinking": false}}`)
	if err != nil || got != head+"<|im_start|>assistant\n<think>\n\n</think>\n\n" {
		t.Fatalf("ApplyChatTemplateOptions = %q, %v", got, err)
	}
	got, err = mistral.ApplyChatTemplate(`[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]`, true)
	if err != nil || got != "<s> [INST] Be brief.\n\nHi [/INST]" {
		t.Fatalf("mistral = %q, %v", got, err)
	}
	_, err = mistral.ApplyChatTemplate(`[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]`, true)
	wantStatus(t, err, StatusInvalidArgument)
	if !strings.Contains(err.Error(), "conversation roles must alternate") {
		t.Fatalf("raise_exception message lost: %v", err)
	}
	_, err = qwen.ApplyChatTemplate(`[{"content": "hi"}]`, true)
	wantStatus(t, err, StatusInvalidArgument)
	_, err = qwen.ApplyChatTemplateOptions(user, `{"tempalte": "x"}`)
	wantStatus(t, err, StatusInvalidConfig)
}

func TestTokenizerErrors(t *testing.T) {
	tok := loadTokenizer(t, "qwen")
	_, err := LoadTokenizer(filepath.Join(os.TempDir(), "adpo-no-such-tokenizer"))
	wantStatus(t, err, StatusIO)
	_, err = tok.Decode([]int64{1, 700}, false)
	wantStatus(t, err, StatusInvalidArgument)
	if !strings.Contains(err.Error(), "ids[1] = 700") {
		t.Fatalf("the id is not named: %v", err)
	}
	_, err = tok.Encode("caf\xe9", true)
	wantStatus(t, err, StatusInvalidArgument)
	_, err = tok.Encode("a\x00b", true)
	wantStatus(t, err, StatusInvalidArgument)
	_, err = tok.EncodeBatch([]string{"a", "\xff"}, true)
	wantStatus(t, err, StatusInvalidArgument)
	if !strings.Contains(err.Error(), "texts[1]") {
		t.Fatalf("the text is not named: %v", err)
	}
	_, err = tok.TokenToID("<|nope|>")
	wantStatus(t, err, StatusInvalidArgument)
	_, _, err = tok.SpecialToken("bos")
	wantStatus(t, err, StatusInvalidArgument)

	tok.Close()
	tok.Close() // idempotent
	_, err = tok.Encode("x", true)
	wantStatus(t, err, StatusNullArgument)
	var none *Tokenizer
	_, err = none.VocabSize()
	wantStatus(t, err, StatusNullArgument)
}

// One tokenizer shared by goroutines (run with -race by run-tests).
func TestTokenizerSharedAcrossGoroutines(t *testing.T) {
	tok := loadTokenizer(t, "mistral")
	want, err := tok.Encode("shared across goroutines", true)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				got, err := tok.Encode("shared across goroutines", true)
				if err != nil || !reflect.DeepEqual(got, want) {
					errs <- "mismatch"
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}
