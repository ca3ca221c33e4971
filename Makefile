# adpo: `make demo` (the main job) and `make test` (all tests) work on a fresh machine:
# both run scripts/setup first, which installs what is missing (idempotent, seconds when done).
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := demo

VENV ?= $(CURDIR)/.venv
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(HOME)/.cargo/bin:$(PATH)
# libtorch: the PyPI torch==2.11.0 of the venv (scripts/setup links it at .venv/libtorch, and
# .cargo/config.toml points cargo there), unless the user points LIBTORCH at their own.
TORCH_LIB := $(if $(LIBTORCH),$(LIBTORCH),$(CURDIR)/.venv/libtorch)/lib
PY := $(VENV)/bin/python
CARGO ?= cargo
# MPI support is a cargo feature (build.rs compiles the shim only when asked): make builds with it.
export CARGO_FEATURES ?= --features mpi
PREFIX ?= /usr/local

RELEASE := $(CURDIR)/target/release
LIB := $(RELEASE)/libadpo.so
CBUILD := $(CURDIR)/target/c
CFLAGS_ADPO := -std=c11 -O2 -Wall -Wextra -Werror -I$(CURDIR)/include
LDFLAGS_ADPO := -L$(RELEASE) -ladpo -Wl,-rpath,$(RELEASE) -lm -pthread
SETUP_STAMP := $(VENV)/.adpo-setup-done

FIXTURES := $(CURDIR)/tests/fixtures/generated
FIXTURE_STAMP := $(FIXTURES)/.done
# Tiny GGUF models and transformers' outputs on them and on the real SmolLM2 GGUF (tests/gguf.rs).
GGUF_STAMP := $(FIXTURES)/gguf/.done
# llama.cpp for the GGUF-writing tests only (scripts/setup-llama-cpp; see test-rust).
LLAMA_CPP := $(VENV)/llama-cpp
LLAMA_CPP_STAMP := $(LLAMA_CPP)/.adpo-llama-cpp-0.3.36

C_TESTS := $(patsubst tests/c/%.c,$(CBUILD)/tests/%,$(wildcard tests/c/*.c))
# Under valgrind too, except test_old_logp: it samples from a model, which takes minutes there.
VALGRIND_C_TESTS := $(filter-out %/test_old_logp,$(C_TESTS))
# train_mpi.c needs mpi.h: built with mpicc by its own rule.
C_EXAMPLES := $(patsubst examples/c/%.c,$(CBUILD)/examples/%,$(filter-out examples/c/train_mpi.c,$(wildcard examples/c/*.c)))
MPICC ?= mpicc
# OpenMPI refuses to run as root (containers, CI) unless told; --oversubscribe: more ranks than cores.
MPIRUN := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe

.PHONY: setup fixtures build lib test test-rust test-torchscript test-header test-c test-readme test-fuzz test-python test-lower-isa test-install test-cpp test-go test-julia test-bandit bench-bandit test-rl bench-rl bench-rl-real bench-rollout-correction test-mpi bench-dp demo header bindings readme-options install bench

setup: $(SETUP_STAMP)
$(SETUP_STAMP): scripts/setup requirements.lock
	scripts/setup
	touch $@

# Tiny TorchScript LMs for the tests and examples, made by PyTorch, and tiny Hugging Face
# checkpoints with transformers' reference outputs (hf/), made by transformers (never committed).
fixtures: $(FIXTURE_STAMP) $(GGUF_STAMP)
$(FIXTURE_STAMP): tests/fixtures/make_models.py tests/fixtures/make_hf_models.py tests/fixtures/make_tokenizers.py tests/fixtures/make_text_model.py $(SETUP_STAMP)
	$(PY) tests/fixtures/make_models.py $(FIXTURES)
	$(PY) tests/fixtures/make_hf_models.py $(FIXTURES)/hf $(FIXTURES)/tiny
	$(PY) tests/fixtures/make_tokenizers.py $(FIXTURES)/tokenizers
	$(PY) tests/fixtures/make_text_model.py $(FIXTURES)
	touch $@

# One cargo profile (release) for the library, tests and benches, so torch-sys builds once.
lib: setup
	$(CARGO) build --locked $(CARGO_FEATURES) --release --lib
	@# The library's SONAME is libadpo.so.0: give the loader that name in the build tree too.
	ln -sf libadpo.so $(RELEASE)/libadpo.so.0

$(CBUILD)/tests/%: tests/c/%.c tests/c/check.h include/adpo.h include/dlpack.h lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ADPO) -o $@ $< $(LDFLAGS_ADPO)

$(CBUILD)/examples/%: examples/c/%.c include/adpo.h lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ADPO) -o $@ $< $(LDFLAGS_ADPO)

# The README's relative spellings (make target/c/examples/demo) name the same files.
target/c/%: $(CBUILD)/% ;

$(CBUILD)/examples/train_mpi: examples/c/train_mpi.c include/adpo.h lib
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS_ADPO) -o $@ $< $(LDFLAGS_ADPO)

# The main job: a real chat model (SmolLM2-135M-Instruct, which scripts/setup fetches) learns
# single-digit addition from C (loaded from its GGUF file) with LoRA and listwise ADPO
# (examples/c/arithmetic_rl.c), and writes the adapter as PEFT and GGUF; it exits
# non-zero unless held-out accuracy rises. The colour fixture (examples/c/text_rl.c) is the fast
# text example; examples/c/demo.c the token-level toy.
MODEL := $(VENV)/models/SmolLM2-135M-Instruct
DEMO_OUT := $(CURDIR)/target/demo/arithmetic-lora
$(MODEL)/.adpo-fetched: scripts/fetch_model.py $(SETUP_STAMP)
	$(PY) scripts/fetch_model.py $(MODEL)
# The checked Q4_1 GGUF the directory was converted from, kept beside it (tests/gguf.rs loads it).
GGUF_MODEL := $(VENV)/models/SmolLM2-135M-Instruct.Q4_1.gguf
$(GGUF_STAMP): tests/fixtures/make_gguf.py $(SETUP_STAMP) $(MODEL)/.adpo-fetched
	$(PY) tests/fixtures/make_gguf.py $(FIXTURES)/gguf $(GGUF_MODEL)
	touch $@
demo: $(CBUILD)/examples/arithmetic_rl $(MODEL)/.adpo-fetched
	@mkdir -p $(dir $(DEMO_OUT))
	$(CBUILD)/examples/arithmetic_rl $(GGUF_MODEL) 6 $(DEMO_OUT)

test: test-rust test-torchscript test-header test-c test-readme test-fuzz test-python test-lower-isa test-install test-cpp test-go test-julia test-bandit test-rl test-mpi
	@echo "make test: all suites passed"

# Which CPU kernels libtorch runs here (the parity suites' logs say which ISA they used).
KERNELS = $(PY) -c 'import torch; print("libtorch CPU kernels:", torch.backends.cpu.get_cpu_capability())'

test-rust: setup fixtures $(LLAMA_CPP_STAMP)
	@$(KERNELS)
	ADPO_FIXTURES=$(FIXTURES) ADPO_LLAMA_CPP=$(LLAMA_CPP) $(CARGO) test --locked $(CARGO_FEATURES) --release

# llama.cpp (the pinned llama-cpp-python sdist, CPU) for tests/gguf_save.rs's check that llama.cpp
# runs adpo's GGUF files: built once per machine by scripts/setup-llama-cpp, for the tests only
# (make demo never waits for it).
$(LLAMA_CPP_STAMP): scripts/setup-llama-cpp | $(SETUP_STAMP)
	scripts/setup-llama-cpp >/dev/null

# The committed header must be what cbindgen generates (the Rust test `header` checks drift);
# here: it compiles alone as C11 and C++17, declares exactly the library's exports, the raw
# Python and Julia layers generated from it are up to date (make bindings), and the Go mirrors
# of its metrics structs match it field for field.
test-header: lib
	$(CC) -std=c11 -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude -x c include/adpo.h
	$(CXX) -std=c++17 -Wall -Wextra -Werror -pedantic -fsyntax-only -Iinclude -x c++ include/adpo.h
	$(PY) tests/check_exports.py $(LIB) include/adpo.h
	$(PY) scripts/gen_bindings.py --check
	$(PY) tests/check_metrics_mirrors.py include/adpo.h

# The optional TorchScript model kind (cargo feature `torchscript`, off in the default build):
# its own tests, in a build with the feature.
test-torchscript: setup fixtures
	ADPO_FIXTURES=$(FIXTURES) $(CARGO) test --locked $(CARGO_FEATURES) --features torchscript --release --test torchscript

test-c: $(C_TESTS) $(C_EXAMPLES) fixtures $(MODEL)/.adpo-fetched
	@set -e; for t in $(C_TESTS); do echo "== $$t"; env -u LD_LIBRARY_PATH ADPO_FIXTURES=$(FIXTURES) $$t; done
	@set -e; for t in $(VALGRIND_C_TESTS); do echo "== valgrind $$t"; \
	  ADPO_FIXTURES=$(FIXTURES) valgrind -q --error-exitcode=9 --leak-check=no --suppressions=tests/c/valgrind.supp $$t >/dev/null; done
	@echo "C tests under valgrind: clean"
	$(CBUILD)/examples/objective_host >/dev/null
	$(CBUILD)/examples/objective_dlpack >/dev/null
	$(CBUILD)/examples/demo $(FIXTURES)/tiny/llama 40 | tail -1
	$(CBUILD)/examples/text_rl $(FIXTURES)/colours 40 | tail -1
	$(CBUILD)/examples/async_rl $(FIXTURES)/colours 40 | tail -1
	@mkdir -p $(CBUILD)/demo-test
	$(CBUILD)/examples/arithmetic_rl $(GGUF_MODEL) 2 $(CBUILD)/demo-test/arithmetic-lora | tail -1
	test -s $(CBUILD)/demo-test/arithmetic-lora.gguf
	@echo "C examples: 6 passed, 0 failed"

# Every repository path the docs name exists (tests/readme/check_paths.py); every C/C++ block of
# README.md compiled and run (tests/readme/check_snippets.py), then the check
# itself on tests/readme/broken.md: its four broken blocks must fail it.
test-readme: lib fixtures
	$(PY) tests/readme/check_paths.py README.md docs/*.md benches/README.md
	ADPO_FIXTURES=$(FIXTURES) $(PY) tests/readme/check_snippets.py README.md
	ADPO_FIXTURES=$(FIXTURES) $(PY) tests/readme/check_snippets.py --expect-fail 4 tests/readme/broken.md

# The C-ABI fuzz test (tests/fuzz/fuzz_abi.c): the adversarial table for every export of the
# header (check_coverage.py fails on an export without cases) and seeded random cases, each in a
# forked child with a time limit; about a minute on 2 cores. FUZZ_CASES and FUZZ_SEED vary it.
FUZZ_CASES ?= 300
FUZZ_SEED ?= 20261202
$(CBUILD)/fuzz/fuzz_abi: tests/fuzz/fuzz_abi.c include/adpo.h include/dlpack.h lib
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ADPO) -o $@ $< $(LDFLAGS_ADPO)

test-fuzz: $(CBUILD)/fuzz/fuzz_abi fixtures
	$(PY) tests/fuzz/check_coverage.py include/adpo.h $<
	ADPO_FIXTURES=$(FIXTURES) $< $(FUZZ_CASES) $(FUZZ_SEED)

test-python: lib
	@$(KERNELS)
	ADPO_LIB=$(LIB) $(PY) -m pytest -q tests/python

# The Rust suite (its native-model tests compare with transformers' stored outputs) and the
# Python parity suites (PyTorch, transformers, PEFT, tokenizers) again, with libtorch's CPU
# kernels one instruction set below this machine's (tests/lower-isa): tolerances must hold on
# any x86-64 CPU, not only on the kernels of this one. About two minutes.
test-lower-isa: lib fixtures
	ADPO_FIXTURES=$(FIXTURES) PY=$(PY) tests/lower-isa $(CARGO) test --locked $(CARGO_FEATURES) --release -q
	ADPO_LIB=$(LIB) PY=$(PY) tests/lower-isa $(PY) -m pytest -q tests/python

# Installs into a temporary prefix, builds against it (pkg-config, CMake; shared, static) and
# runs the programs with the clone hidden (tests/install/run).
test-install: lib fixtures
	ADPO_LIBTORCH_LIB=$(TORCH_LIB) tests/install/run

# C++: the RAII header with GoogleTest, built with CMake against an installed copy.
test-cpp: lib fixtures
	ADPO_LIBTORCH_LIB=$(TORCH_LIB) tests/cpp/run

test-go: lib fixtures
	ADPO_FIXTURES=$(FIXTURES) bindings/go/run-tests

# Julia cannot be installed here: the check that the package wraps every C function through the
# generated raw.jl always runs, the Julia suite runs where julia is on PATH (a visible SKIP line
# otherwise).
test-julia: lib fixtures
	ADPO_LIB=$(LIB) ADPO_FIXTURES=$(FIXTURES) bindings/julia/run-tests

# Evidence that ADPO learns: the contextual-bandit benchmark (studies/bandit, cargo example
# `bandit`; docs/RESULTS.md). Quick mode in make test.
test-bandit: setup
	$(CARGO) run --locked $(CARGO_FEATURES) --release --example bandit -- --quick --out target/bandit-quick

bench-bandit: setup
	$(CARGO) run --locked $(CARGO_FEATURES) --release --example bandit -- --out target/bandit
	$(PY) scripts/plot_bandit.py target/bandit

# Evidence that ADPO learns: SFT then online RL, listwise ADPO vs GRPO (studies/rl, cargo
# example `rl`, run by scripts/bench-rl; docs/RESULTS.md). Quick mode in
# make test (SFT ~50 s the first time, then ~30 s); the full study takes ~10 min on 2 cores.
test-rl: setup
	scripts/bench-rl --quick

bench-rl: setup
	scripts/bench-rl

# The paper's comparison on a real model (studies/rl_real/study.py; docs/RESULTS.md): SmolLM2 from
# its GGUF with LoRA learns two-digit addition, listwise ADPO vs GRPO, on- and off-policy, 3 seeds.
# Hours on 2 cores (one thread); resumable: a rerun skips the runs already in target/rl-real.
bench-rl-real: lib $(MODEL)/.adpo-fetched
	OMP_NUM_THREADS=1 $(PY) studies/rl_real/study.py --seeds 3 --steps 24 --eval-every 8 --out target/rl-real

# Rollouts from the bfloat16 copy with and without each rollout correction on the same task
# (studies/rollout_correction/study.py; docs/RESULTS.md): f32, bf16, bf16 + TIS, bf16 + IcePop,
# 3 seeds x 24 steps, about half an hour on 2 cores; resumable like bench-rl-real.
bench-rollout-correction: lib $(MODEL)/.adpo-fetched
	$(PY) studies/rollout_correction/study.py --seeds 3 --steps 24 --eval-every 8 --out target/rollout-correction

# Data-parallel training. Two and three ranks against one process (examples/c/train_mpi.c),
# on tiny checkpoint directories (float64, float32) and a tied one.
# float64 shows the reduction exact; float32 is the README's command, with float32's tolerance.
test-mpi: $(CBUILD)/examples/train_mpi fixtures
	$(MPIRUN) -np 2 -x OMP_NUM_THREADS=1 $< $(FIXTURES)/tiny/llama_f64
	$(MPIRUN) -np 3 -x OMP_NUM_THREADS=1 $< $(FIXTURES)/tiny/llama_f64 | tail -1
	$(MPIRUN) -np 2 -x OMP_NUM_THREADS=1 $< $(FIXTURES)/tiny/llama | tail -1
	$(MPIRUN) -np 2 -x OMP_NUM_THREADS=1 $< $(FIXTURES)/hf/qwen3_gqa2_headdim16_tied | tail -1

# Step time on 1 and 2 processes for the same global batch, and the time in reduction.
bench-dp: $(CBUILD)/examples/train_mpi fixtures
	PY=$(PY) benches/dp_bench

# include/adpo.h from src/ffi, then the raw layers that transcribe it (make bindings).
header: setup
	ADPO_WRITE_HEADER=1 $(CARGO) test --locked $(CARGO_FEATURES) --release --test header
	$(PY) scripts/gen_bindings.py

# The Python ctypes declarations (tests/python/adpo_raw.py) and the Julia ccalls
# (bindings/julia/src/raw.jl), generated from include/adpo.h; make test-header fails while
# they are stale.
bindings: setup
	$(PY) scripts/gen_bindings.py

# README.md's option tables, made from the declarations (the lib test `config::table` checks drift).
readme-options: setup
	ADPO_WRITE_README=1 $(CARGO) test --locked $(CARGO_FEATURES) --release --lib config::table

# The libtorch is copied under PREFIX/lib/adpo (hard links on the same filesystem), or, with
# ADPO_INSTALL_LIBTORCH=record and LIBTORCH outside the clone, used in place (scripts/install).
install: lib
	ADPO_LIBTORCH_LIB=$(TORCH_LIB) scripts/install "$(PREFIX)"

bench: setup
	$(CARGO) bench --locked $(CARGO_FEATURES) --bench objective
	$(PY) benches/objective_torch.py
