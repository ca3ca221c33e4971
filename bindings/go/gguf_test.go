package adpo

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// SaveGGUF writes a GGUF file that loads back with the same weights; options, refusals and the
// LoRA adapter file.
func TestGGUFSaves(t *testing.T) {
	dir := fixture(t, filepath.Join("hf", "qwen3_sharded_tied"))
	m, err := LoadModel(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	out := filepath.Join(t.TempDir(), "m.gguf")
	if err := m.SaveGGUF(out, ""); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	f.Read(head)
	f.Close()
	if !bytes.Equal(head, []byte("GGUF")) {
		t.Fatalf("%s starts with %q", out, head)
	}
	back, err := LoadModel(out, "")
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	want, err := m.Params()
	if err != nil {
		t.Fatal(err)
	}
	got, err := back.Params()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d parameter values back, %d written", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("value %d: %v back, %v written", i, got[i], want[i])
		}
	}
	if err := m.SaveGGUF(out, `{"dtype": "q8_0"}`); err != nil {
		t.Fatal(err)
	}
	wantStatus(t, m.SaveGGUF(out, `{"dtype": "q4_0"}`), StatusInvalidConfig)
	notGGUF := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notGGUF, []byte("keep"), 0o644)
	wantStatus(t, m.SaveGGUF(notGGUF, ""), StatusInvalidArgument)
	wantStatus(t, m.SaveAdapterGGUF(filepath.Join(t.TempDir(), "a.gguf"), ""), StatusUnsupported)

	lora, err := LoadModelOptions(dir, `{"lora": {"r": 4}}`)
	if err != nil {
		t.Fatal(err)
	}
	defer lora.Close()
	adapter := filepath.Join(t.TempDir(), "a.gguf")
	if err := lora.SaveAdapterGGUF(adapter, ""); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(adapter); err != nil || st.Size() < 64 {
		t.Fatalf("adapter file: %v %v", st, err)
	}
}
