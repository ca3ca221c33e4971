package adpo

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// newPolicyTrainer loads a fresh tiny transformer and makes a trainer for it with
// trainerConfig; the model stays open (its Params are the trained weights).
func newPolicyTrainer(t *testing.T) (*Model, *Trainer) {
	t.Helper()
	m := loadModel(t, "tiny/llama")
	tr, err := NewTrainer(m, nil, trainerConfig)
	if err != nil {
		t.Fatalf("NewTrainer: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return m, tr
}

func params(t *testing.T, m *Model) []float64 {
	t.Helper()
	p, err := m.Params()
	if err != nil {
		t.Fatalf("Params: %v", err)
	}
	return p
}

func TestTrainerWorldAlone(t *testing.T) {
	_, tr := newPolicyTrainer(t)
	rank, size, err := tr.World()
	if err != nil {
		t.Fatal(err)
	}
	if rank != 0 || size != 1 {
		t.Fatalf("World() = (%d, %d), want (0, 1) for a trainer that trains alone", rank, size)
	}
	met, err := tr.Step(manualBatch(t))
	if err != nil {
		t.Fatal(err)
	}
	if met.ReduceTimeMs != 0 {
		t.Fatalf("ReduceTimeMs = %v in one process, want 0", met.ReduceTimeMs)
	}
	tr.Close()
	_, _, err = tr.World()
	wantStatus(t, err, StatusNullArgument)
}

func TestModelParams(t *testing.T) {
	m, tr := newPolicyTrainer(t)
	n, err := m.NumParams()
	if err != nil {
		t.Fatal(err)
	}
	if n <= 0 {
		t.Fatalf("NumParams() = %d", n)
	}
	before := params(t, m)
	if len(before) != n {
		t.Fatalf("len(Params()) = %d, NumParams() = %d", len(before), n)
	}
	nonzero := 0
	for _, v := range before {
		if v != 0 {
			nonzero++
		}
	}
	if nonzero == 0 {
		t.Fatal("every parameter is 0")
	}
	// Another load of the same file holds the same weights.
	if other := params(t, loadModel(t, "tiny/llama")); !equalF64(other, before) {
		t.Fatal("two loads of one model file hold different weights")
	}
	if _, err := tr.Step(manualBatch(t)); err != nil {
		t.Fatal(err)
	}
	after := params(t, m)
	if len(after) != n {
		t.Fatalf("len(Params()) after a step = %d, want %d", len(after), n)
	}
	if equalF64(after, before) {
		t.Fatal("a step did not change the policy's parameters")
	}

	m.Close()
	_, err = m.NumParams()
	wantStatus(t, err, StatusNullArgument)
	_, err = m.Params()
	wantStatus(t, err, StatusNullArgument)
}

// A world of one rank whose all-reduce leaves the buffer as it is (the sum over one rank) must
// train exactly as a trainer without a communicator.
func TestUseAllreduceWorldOfOneEqualsAlone(t *testing.T) {
	base := liveAllreduce.Load()
	b := manualBatch(t)

	aloneModel, alone := newPolicyTrainer(t)
	dpModel, dp := newPolicyTrainer(t)
	var calls, float64Calls atomic.Int64
	var bad atomic.Value
	err := dp.UseAllreduce(0, 1, func(buf AllreduceBuffer) error {
		calls.Add(1)
		if !buf.OnCPU() || buf.DeviceType != DeviceCPU || buf.Count <= 0 || buf.Data == nil {
			bad.Store("unexpected buffer")
			return errors.New("unexpected buffer")
		}
		switch buf.Bits {
		case 64:
			float64Calls.Add(1)
			if v := buf.Float64(); len(v) != buf.Count || buf.Float32() != nil {
				bad.Store("float64 view")
			}
		case 32:
			if v := buf.Float32(); len(v) != buf.Count || buf.Float64() != nil {
				bad.Store("float32 view")
			}
		default:
			bad.Store("bits")
		}
		return nil // one rank: the sum is the buffer itself
	})
	if err != nil {
		t.Fatalf("UseAllreduce(0, 1): %v", err)
	}
	if got := liveAllreduce.Load(); got != base+1 {
		t.Fatalf("live callback handles = %d, want %d", got, base+1)
	}
	joined := calls.Load()
	if joined < 1 {
		t.Fatal("joining did not call the all-reduce (rank 0's state is copied through it)")
	}
	rank, size, err := dp.World()
	if err != nil || rank != 0 || size != 1 {
		t.Fatalf("World() = (%d, %d, %v), want (0, 1)", rank, size, err)
	}

	for step := 0; step < 2; step++ {
		ma, err := alone.Step(b)
		if err != nil {
			t.Fatal(err)
		}
		md, err := dp.Step(b)
		if err != nil {
			t.Fatal(err)
		}
		if md.Loss != ma.Loss || md.Step != ma.Step || md.Groups != ma.Groups || md.GradNorm != ma.GradNorm {
			t.Fatalf("step %d: metrics with the callback %+v, alone %+v", step, md, ma)
		}
		if md.ReduceTimeMs < 0 || md.ReduceTimeMs > md.StepTimeMs {
			t.Fatalf("ReduceTimeMs = %v, StepTimeMs = %v", md.ReduceTimeMs, md.StepTimeMs)
		}
	}
	if calls.Load() <= joined {
		t.Fatalf("steps did not call the all-reduce (%d calls, %d when joining)", calls.Load(), joined)
	}
	if float64Calls.Load() == 0 {
		t.Fatal("no float64 buffer was reduced")
	}
	if v := bad.Load(); v != nil {
		t.Fatalf("callback saw a bad buffer: %v", v)
	}
	pa, pd := params(t, aloneModel), params(t, dpModel)
	if !equalF64(pa, pd) {
		t.Fatal("a world of one rank with an identity all-reduce trained differently from a trainer alone")
	}
	if pb := params(t, loadModel(t, "tiny/llama")); equalF64(pb, pd) {
		t.Fatal("the weights did not change")
	}

	// Closing the trainer releases the callback (its cgo.Handle) exactly once.
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("live callback handles after Close = %d, want %d", got, base)
	}
	dp.Close()
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("live callback handles after a second Close = %d, want %d", got, base)
	}
	t.Logf("%d all-reduce calls (%d of float64 buffers)", calls.Load(), float64Calls.Load())
}

func TestUseAllreduceErrors(t *testing.T) {
	base := liveAllreduce.Load()
	_, tr := newPolicyTrainer(t)
	var calls atomic.Int64
	identity := func(AllreduceBuffer) error { calls.Add(1); return nil }

	// An invalid rank or size is refused and the callback released at once, never called.
	wantStatus(t, tr.UseAllreduce(2, 2, identity), StatusInvalidArgument)
	wantStatus(t, tr.UseAllreduce(-1, 2, identity), StatusInvalidArgument)
	wantStatus(t, tr.UseAllreduce(0, 0, identity), StatusInvalidArgument)
	wantStatus(t, tr.UseAllreduce(0, 1, nil), StatusNullArgument)
	wantStatus(t, tr.UseAllreduce(0, 1<<40, identity), StatusInvalidArgument)
	if calls.Load() != 0 {
		t.Fatalf("a refused callback was called %d times", calls.Load())
	}
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("live callback handles = %d after refusals, want %d", got, base)
	}
	if r, s, err := tr.World(); err != nil || r != 0 || s != 1 {
		t.Fatalf("World() = (%d, %d, %v) after refusals, want (0, 1)", r, s, err)
	}

	// A failing callback: StatusCommunication with the Go error in the message, released, and
	// the trainer still trains alone.
	err := tr.UseAllreduce(0, 1, func(AllreduceBuffer) error { return errors.New("link down") })
	wantStatus(t, err, StatusCommunication)
	if !strings.Contains(err.Error(), "link down") {
		t.Fatalf("error %q lacks the callback's error", err)
	}
	err = tr.UseAllreduce(0, 1, func(AllreduceBuffer) error { panic("boom") })
	wantStatus(t, err, StatusCommunication)
	if !strings.Contains(err.Error(), "boom") {
		t.Fatalf("error %q lacks the callback's panic", err)
	}
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("live callback handles = %d after failures, want %d", got, base)
	}
	if r, s, err := tr.World(); err != nil || r != 0 || s != 1 {
		t.Fatalf("World() = (%d, %d, %v) after a failed join, want (0, 1)", r, s, err)
	}
	if _, err := tr.Step(manualBatch(t)); err != nil {
		t.Fatalf("step after failed joins: %v", err)
	}

	// Replacing a communicator releases the old callback; a step that fails in the callback
	// reports it with its error.
	if err := tr.UseAllreduce(0, 1, identity); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	if err := tr.UseAllreduce(0, 1, func(AllreduceBuffer) error {
		if fail.Load() {
			return errors.New("peer lost")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := liveAllreduce.Load(); got != base+1 {
		t.Fatalf("live callback handles = %d after a replacement, want %d", got, base+1)
	}
	fail.Store(true)
	_, err = tr.Step(manualBatch(t))
	wantStatus(t, err, StatusCommunication)
	if !strings.Contains(err.Error(), "peer lost") {
		t.Fatalf("step error %q lacks the callback's error", err)
	}
	tr.Close()
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("live callback handles = %d after Close, want %d", got, base)
	}
	wantStatus(t, tr.UseAllreduce(0, 1, identity), StatusNullArgument)
	if got := liveAllreduce.Load(); got != base {
		t.Fatalf("a closed trainer kept a callback: %d live, want %d", got, base)
	}
}

func TestHasMPIAndUseMPI(t *testing.T) {
	if !HasMPI() {
		_, tr := newPolicyTrainer(t)
		wantStatus(t, tr.UseMPI(), StatusUnsupported)
		m := loadModel(t, "tiny/llama")
		_, err := NewTrainer(m, nil, `{"distributed": {"backend": "mpi"}}`)
		wantStatus(t, err, StatusUnsupported)
		return
	}
	if os.Getenv(mpiChildEnv) == "1" {
		mpiWorldOfOne(t)
		return
	}
	// Joining MPI initialises MPI (a singleton without mpirun) and installs its signal handlers:
	// do it in a child process (this test binary, running only this test), not in this one.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHasMPIAndUseMPI$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), mpiChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestHasMPIAndUseMPI") {
		t.Fatalf("the MPI child process failed (%v):\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if i := strings.Index(line, "mpi: "); i >= 0 {
			t.Log("child: " + line[i:])
		}
	}
}

const mpiChildEnv = "ADPO_GO_TEST_MPI_CHILD"

// mpiWorldOfOne runs in the child process: UseMPI on MPI_COMM_WORLD of one process gives
// World() = (0, 1) and trains exactly as a trainer alone.
func mpiWorldOfOne(t *testing.T) {
	b := manualBatch(t)
	aloneModel, alone := newPolicyTrainer(t)
	mpiModel, tr := newPolicyTrainer(t)
	if err := tr.UseMPI(); err != nil {
		t.Fatalf("UseMPI: %v", err)
	}
	rank, size, err := tr.World()
	if err != nil || rank != 0 || size != 1 {
		t.Fatalf("World() = (%d, %d, %v) after UseMPI without mpirun, want (0, 1)", rank, size, err)
	}
	var reduce float64
	for step := 0; step < 2; step++ {
		if _, err := alone.Step(b); err != nil {
			t.Fatal(err)
		}
		m, err := tr.Step(b)
		if err != nil {
			t.Fatal(err)
		}
		reduce += m.ReduceTimeMs
	}
	if !equalF64(params(t, aloneModel), params(t, mpiModel)) {
		t.Fatal("MPI with one rank trained differently from a trainer alone")
	}
	t.Logf("mpi: one rank, World() = (0, 1), identical weights, %.3f ms in collectives", reduce)
}
