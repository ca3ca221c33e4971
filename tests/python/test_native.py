"""Native Hugging Face models (src/model/native/) through the C ABI, against transformers itself
(tests/native.rs checks the forward, cache and refusals in Rust):

* adpo_model_save writes a directory that transformers' from_pretrained loads to the same logits
  as the checkpoint it came from; after training, to the trained policy's sequence log-probs;
* one and two SGD steps of listwise ADPO on a native policy equal the same steps in eager PyTorch
  on the transformers model (trainer_reference.py: autograd + torch.optim), with the on-policy
  and the fixed anchor (a perturbed reference checkpoint), with padding, tied and untied heads,
  in float32 and float64 (there with transformers' RMSNorm computed in float64, as adpo's).

Run: ADPO_LIB=target/release/libadpo.so .venv/bin/python -m pytest -q tests/python/test_native.py
Fixtures: $ADPO_FIXTURES/hf (default tests/fixtures/generated/hf; made by
tests/fixtures/make_hf_models.py if missing).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForCausalLM

import adpo_ctypes as A
import trainer_reference as R
from parity import assert_weights_close

HF = Path(os.environ.get("ADPO_FIXTURES", R.REPO / "tests" / "fixtures" / "generated")) / "hf"
MAKE_HF = R.REPO / "tests" / "fixtures" / "make_hf_models.py"
TIED = "qwen3_gqa2_headdim16_tied"
UNTIED = "llama_mha_linear_bias"
GQA = "mistral_gqa2_untied"
QWEN2 = "qwen2_gqa2_tied"
N, T = 6, 8
GIDS = np.array([4, 1, 4, 1, 4, 1])  # 2 groups of 3, interleaved
# Loss and gradient-norm (rtol, loss atol); the weights: parity.assert_weights_close.
MTOL = {torch.float32: (1e-5, 1e-6), torch.float64: (1e-9, 1e-12)}


@pytest.fixture(scope="module", autouse=True)
def setup():
    torch.set_num_threads(1)
    if not (HF / TIED / "reference.safetensors").is_file():
        subprocess.run([sys.executable, str(MAKE_HF), str(HF)], check=True)


class HFLogits(nn.Module):
    """forward(input_ids, attention_mask) -> logits of a transformers causal LM, with positions
    from the mask (cumsum - 1, as adpo and generate() do)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits


rms_norm_in_own_dtype = R.rms_norm_in_own_dtype


def hf_model(path, dtype=torch.float32) -> HFLogits:
    """The transformers model, eager PyTorch. In float64 its RMSNorms compute in float64:
    transformers rounds them through float32 even then, adpo does not (it keeps float32 only for
    16-bit dtypes). use_kernels=False: since 5.25 transformers kernelizes by default, and
    kernelize (run again by every train()) puts the class forward back over this patch."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_kernels=False).eval()
    if dtype == torch.float64:
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.forward = types.MethodType(rms_norm_in_own_dtype, module)
    return HFLogits(model)


def assert_float64_norms(model: nn.Module):
    """Every RMSNorm of a float64 reference still computes in float64 (the patch of hf_model was
    not undone, e.g. by a train() that kernelizes): otherwise the reference is 1e-8 off."""
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm") and m.weight.dtype == torch.float64]
    for m in norms:
        assert getattr(m.forward, "__func__", None) is rms_norm_in_own_dtype, f"{type(m).__name__} lost its float64 forward"


def hf_state(model: HFLogits) -> dict[str, torch.Tensor]:
    """Parameters under the checkpoint names (the wrapper's "model." prefix dropped)."""
    return {k.removeprefix("model."): v.detach().clone() for k, v in model.named_parameters()}


def make_batch(seed: int, vocab: int, pad: bool = False) -> R.RefBatch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (N, T))
    lm = np.zeros((N, T), np.uint8)
    attn = np.ones((N, T), np.uint8) if pad else None
    for r in range(N):
        end = T - (r % 3 if pad else 0)
        if pad:
            attn[r, end:] = 0
            ids[r, end:] = 0
        lm[r, 3 + r % 2:end] = 1
    return R.RefBatch(ids=ids, loss_mask=lm, group_ids=GIDS, attention_mask=attn, rewards=rng.normal(size=N))


def to_adpo(b: R.RefBatch) -> A.Batch:
    return A.Batch(b.ids, b.loss_mask, b.group_ids, attention_mask=b.attention_mask, rewards=b.rewards)


def vocab_of(name: str) -> int:
    return AutoModelForCausalLM.from_pretrained(str(HF / name)).config.vocab_size


def perturbed_copy(name: str, out: Path) -> Path:
    """The checkpoint with every parameter moved by N(0, 0.05^2): a reference that differs."""
    model = AutoModelForCausalLM.from_pretrained(str(HF / name))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_pretrained(str(out), safe_serialization=True)
    return out


# ----------------------------------------------------------------------------- save
@pytest.mark.parametrize("name", [TIED, UNTIED, GQA, QWEN2, "llama_sharded"])
def test_saved_directory_loads_in_transformers_to_the_same_logits(tmp_path, name):
    A.Model(HF / name).save(tmp_path / "out")
    ref = load_file(str(HF / name / "reference.safetensors"))
    model, original = hf_model(tmp_path / "out"), hf_model(HF / name)
    for side in ("right", "left"):
        ids, mask = ref[f"{side}_input_ids"], ref[f"{side}_attention_mask"]
        with torch.no_grad():
            got, want = model(ids, mask), original(ids, mask)
        keep = mask.bool()
        # Bit for bit against the original directory in this process (same kernels); the stored
        # logits came from the fixture's run, maybe on another instruction set.
        assert torch.equal(got[keep], want[keep]), side
        torch.testing.assert_close(got[keep], ref[f"{side}_logits"][keep], rtol=0, atol=1e-5)
    names = sorted(load_file(str(tmp_path / "out" / "model.safetensors")))
    assert names == sorted(hf_state(hf_model(HF / name)))


def test_saved_directory_holds_the_trained_weights(tmp_path):
    vocab = vocab_of(TIED)
    policy = A.Model(HF / TIED)
    tr = A.Trainer(policy, None, dict(optimizer=dict(name="sgd", lr=0.5)))
    tr.step(to_adpo(make_batch(1, vocab)))
    policy.save(tmp_path / "trained")
    trained = hf_model(tmp_path / "trained")
    probe = make_batch(2, vocab, pad=True)
    got = tr.sequence_logp(to_adpo(probe))
    want = R.sequence_logp(trained, probe, "mean").double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    before = R.sequence_logp(hf_model(HF / TIED), probe, "mean").double().numpy()
    assert np.abs(before - want).max() > 1e-3, "the step did not change the saved weights"
    assert (tmp_path / "trained" / "tokenizer.json").read_bytes() == (HF / TIED / "tokenizer.json").read_bytes()


# ----------------------------------------------------------------------------- SGD parity
def run_adpo(name, cfg, batches, tmp_path, dtype, reference=None):
    options = dict(dtype="float64" if dtype == torch.float64 else "float32")
    ref = None if reference is None else A.Model(reference, options=options)
    tr = A.Trainer(A.Model(HF / name, options=options), ref, cfg)
    out = []
    for i, b in enumerate(batches):
        m = tr.step(to_adpo(b))
        tr.save(tmp_path / f"w{i}.safetensors")
        # The checkpoint file holds the weights under their names and the trainer state under
        # the __adpo__. prefix.
        everything = load_file(str(tmp_path / f"w{i}.safetensors"))
        out.append((m, {k: v for k, v in everything.items() if not k.startswith("__adpo__.")}))
    return out


def run_torch(name, cfg, batches, dtype, reference=None):
    ref = None if reference is None else hf_model(reference, dtype)
    tr = R.ReferenceTrainer(hf_model(HF / name, dtype), ref, cfg)
    out = [(tr.step(b), hf_state(tr.policy)) for b in batches]
    assert_float64_norms(tr.policy)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("anchor", ["on_policy", "fixed"])
@pytest.mark.parametrize("name", [TIED, UNTIED, GQA, QWEN2])
def test_listwise_sgd_steps_equal_pytorch_on_the_transformers_model(tmp_path, name, anchor, dtype):
    vocab = vocab_of(name)
    cfg = dict(loss="listwise", anchor=dict(mode=anchor), optimizer=dict(name="sgd", lr=0.5))
    reference = perturbed_copy(name, tmp_path / "reference") if anchor == "fixed" else None
    batches = [make_batch(11, vocab), make_batch(12, vocab, pad=True)]
    ours = run_adpo(name, cfg, batches, tmp_path, dtype, reference)
    theirs = run_torch(name, cfg, batches, dtype, reference)
    w0 = hf_state(hf_model(HF / name, dtype))
    rtol, atol = MTOL[dtype]
    for i, ((m, w), (rm, rw)) in enumerate(zip(ours, theirs)):
        assert m["loss"] == pytest.approx(rm["loss"], rel=rtol * 10, abs=atol), f"step {i + 1}"
        assert m["grad_norm"] == pytest.approx(rm["grad_norm"], rel=rtol * 100), f"step {i + 1}"
        assert_weights_close(w, rw, w0, f"step {i + 1}")


# ------------------------------------------------------------- trainable and bf16-mixed
def test_frozen_embeddings_through_c_equal_the_full_pytorch_step_elsewhere(tmp_path):
    """trainable ["!model.embed_tokens.*"]: the checkpoint holds every other parameter, each
    equal to PyTorch's full SGD step (SGD steps each tensor by its own gradient); the
    embedding stays as loaded."""
    name, dtype = UNTIED, torch.float64
    cfg = dict(loss="listwise", optimizer=dict(name="sgd", lr=0.5))
    batches = [make_batch(11, vocab_of(name))]
    ours = run_adpo(name, dict(cfg, trainable=["!model.embed_tokens.*"]), batches, tmp_path, dtype)
    theirs = run_torch(name, cfg, batches, dtype)
    (_, w), (_, rw) = ours[0], theirs[0]
    assert sorted(w) == sorted(k for k in rw if not k.startswith("model.embed_tokens."))
    for k in w:
        torch.testing.assert_close(w[k], rw[k], rtol=1e-9, atol=1e-12, msg=lambda s: f"{k}: {s}")
    w0 = hf_state(hf_model(HF / name, dtype))
    assert not torch.equal(w0["model.embed_tokens.weight"], rw["model.embed_tokens.weight"])


def test_bf16_mixed_through_c_follows_the_float32_pytorch_step(tmp_path):
    """A bfloat16 policy with precision bf16-mixed: the checkpoint's float32 masters after two
    SGD steps are within bfloat16's forward noise of PyTorch's float32 steps."""
    name = TIED
    cfg = dict(loss="listwise", optimizer=dict(name="sgd", lr=0.05))
    batches = [make_batch(11, vocab_of(name)), make_batch(12, vocab_of(name), pad=True)]
    tr = A.Trainer(A.Model(HF / name, options=dict(dtype="bfloat16")), None,
                   dict(cfg, precision="bf16-mixed"))
    for b in batches:
        tr.step(to_adpo(b))
    tr.save(tmp_path / "mixed.safetensors")
    ours = {k: v for k, v in load_file(str(tmp_path / "mixed.safetensors")).items()
            if not k.startswith("__adpo__.")}
    theirs = run_torch(name, cfg, batches, torch.float32)[-1][1]
    w0 = hf_state(hf_model(HF / name, torch.float32))
    den = 0.0
    for k, v in theirs.items():
        assert ours[k].dtype == torch.float32, k
        den += float(((v.double() - w0[k].double()) ** 2).sum())
    # The masters start from the bfloat16-rounded checkpoint: compare updates, not weights.
    start = {k: v.to(torch.bfloat16).float() for k, v in w0.items()}
    upd = sum(float(((ours[k].double() - start[k].double() - (theirs[k].double() - w0[k].double())) ** 2).sum())
              for k in theirs)
    assert den > 0
    assert math.sqrt(upd / den) < 0.1, f"mixed update off by {math.sqrt(upd / den):.3f}"


def test_trainable_and_precision_refusals_through_c():
    model = A.Model(HF / TIED)
    for cfg, status, words in [
        (dict(trainable=["*.mpl.*"]), A.INVALID_CONFIG, "matches no parameter"),
        (dict(precision="fp16-mixed"), A.INVALID_CONFIG, "loss scaling"),
        (dict(precision="bf16-mixed"), A.INVALID_ARGUMENT, '"dtype": "bfloat16"'),
    ]:
        with pytest.raises(A.AdpoError) as e:
            A.Trainer(model, None, cfg)
        assert e.value.status == status and words in e.value.message, e.value.message


NATIVE_GRID = {
    # id: (config, reference model?)
    "pl_fixed_sum": (dict(loss="plackett_luce", pl_ties="stable", seq_logp="sum", anchor=dict(mode="fixed"),
                          optimizer=dict(name="sgd", lr=0.5)), True),
    "grpo_fixed_kl": (dict(loss="grpo", beta_kl=0.05, anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)),
                      True),
    "grpo_dr_on_policy": (dict(loss="grpo", aggregation="dr_grpo", optimizer=dict(name="sgd", lr=0.5)), False),
    "adamw_epochs2_micro2": (dict(epochs_per_batch=2, micro_batch_rows=2, anchor=dict(mode="fixed"),
                                  optimizer=dict(name="adamw", lr=1e-2)), True),
    "momentum_clip_cosine_chunks": (dict(optimizer=dict(name="sgd", lr=0.3, momentum=0.9, weight_decay=0.01),
                                         grad_clip=0.5, logprob_chunk_rows=3,
                                         schedule=dict(name="cosine", warmup_steps=1, total_steps=3, min_lr=0.01)),
                                    False),
    # Activation checkpointing: the layers recomputed one at a time in the backward.
    "recompute_adamw_epochs2_micro2": (dict(activation_checkpointing=True, epochs_per_batch=2, micro_batch_rows=2,
                                            anchor=dict(mode="fixed"), optimizer=dict(name="adamw", lr=1e-2)), True),
    "recompute_grpo_one_pass": (dict(activation_checkpointing=True, loss="grpo", logprob_chunk_rows=3,
                                     optimizer=dict(name="adamw", lr=1e-2)), False),
}


# How adpo computes, not what: the PyTorch trainer has no such keys.
ADPO_ONLY = ("logprob_chunk_rows", "activation_checkpointing")


@pytest.mark.parametrize("case", list(NATIVE_GRID))
def test_losses_anchors_and_schedules_on_native_models_equal_pytorch(tmp_path, case):
    """The trainer's other losses, anchors, epochs, micro-batches, optimizers and schedules on a
    native checkpoint (float64) against the eager PyTorch trainer on the transformers model."""
    cfg, with_ref = NATIVE_GRID[case]
    name, dtype = GQA, torch.float64
    vocab = vocab_of(name)
    reference = perturbed_copy(name, tmp_path / "reference") if with_ref else None
    batches = [make_batch(21, vocab), make_batch(22, vocab, pad=True), make_batch(23, vocab)]
    ours = run_adpo(name, cfg, batches, tmp_path, dtype, reference)
    theirs = run_torch(name, {k: v for k, v in cfg.items() if k not in ADPO_ONLY}, batches, dtype, reference)
    rtol, atol = MTOL[dtype]
    for i, ((m, w), (rm, rw)) in enumerate(zip(ours, theirs)):
        assert m["loss"] == pytest.approx(rm["loss"], rel=rtol * 10, abs=atol), f"step {i + 1}"
        for k in rw:
            torch.testing.assert_close(w[k], rw[k], rtol=1e-8, atol=1e-10, msg=lambda s: f"step {i + 1} {k}: {s}")


# ------------------------------------------------------------------- refusals through the C ABI
def broken(tmp_path, name, config=None, tensors=None, files=None) -> Path:
    """A copy of fixture `name` with config.json edited by `config(dict)`, model.safetensors
    by `tensors(dict)`, or the directory by `files(Path)`."""
    import json
    import shutil

    from safetensors.torch import save_file

    out = tmp_path / f"broken-{name}"
    shutil.copytree(HF / name, out)
    if config:
        cfg = json.loads((out / "config.json").read_text())
        config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    if tensors:
        t = load_file(str(out / "model.safetensors"))
        tensors(t)
        save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    if files:
        files(out)
    return out


def _drop(key):
    return lambda d: d.pop(key)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _first_shard(d: Path) -> Path:
    return sorted(d.glob("model-*.safetensors"))[0]


REFUSALS = {
    # id: (fixture, edits, status, words in the message)
    "model_type": ("qwen2_gqa2_tied", dict(config=_set("model_type", "gpt2")), A.MODEL,
                   ["model_type", "gpt2", "llama, mistral, qwen2, qwen3"]),
    "hidden_act": ("qwen2_gqa2_tied", dict(config=_set("hidden_act", "gelu")), A.MODEL, ["hidden_act", "gelu"]),
    "rope_scaling": ("llama_mha_linear_bias", dict(config=_set("rope_scaling", {"rope_type": "yarn", "factor": 2.0})),
                     A.MODEL, ["yarn", "linear, llama3"]),
    "sliding_window": ("mistral_gqa2_untied", dict(config=_set("sliding_window", 16)), A.MODEL,
                       ["sliding_window = 16"]),
    "missing_field": ("qwen3_gqa2_headdim16_tied", dict(config=_drop("hidden_size")), A.MODEL, ["hidden_size"]),
    "missing_tensor": ("llama_mha_linear_bias", dict(tensors=_drop("model.layers.1.mlp.up_proj.weight")),
                       A.CHECKPOINT, ["model.layers.1.mlp.up_proj.weight", "missing"]),
    "extra_tensor": ("llama_mha_linear_bias",
                     dict(tensors=_set("model.layers.0.mlp.extra.weight", torch.zeros(2, 2))),
                     A.CHECKPOINT, ["model.layers.0.mlp.extra.weight", "unexpected"]),
    "misshapen_tensor": ("qwen3_gqa2_headdim16_tied",
                         dict(tensors=_set("model.layers.0.self_attn.k_norm.weight", torch.ones(8))),
                         A.CHECKPOINT, ["model.layers.0.self_attn.k_norm.weight", "[8]", "[16]"]),
    "missing_shard": ("llama_sharded", dict(files=lambda d: _first_shard(d).unlink()), A.CHECKPOINT,
                      ["model-0000"]),
    "truncated_shard": ("llama_sharded", dict(files=lambda d: _truncate(_first_shard(d))), A.CHECKPOINT,
                        ["model-0000"]),
    "truncated_file": ("qwen2_gqa2_tied", dict(files=lambda d: _truncate(d / "model.safetensors")), A.CHECKPOINT,
                       ["model.safetensors", "truncated"]),
    "no_config": ("qwen2_gqa2_tied", dict(files=lambda d: (d / "config.json").unlink()), A.MODEL, ["config.json"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_every_checkpoint_refusal_comes_through_c_naming_the_field_tensor_or_file(tmp_path, case):
    name, edits, status, words = REFUSALS[case]
    path = broken(tmp_path, name, **edits)
    with pytest.raises(A.AdpoError) as e:
        A.Model(path)
    assert e.value.status == status, e.value
    for w in words:
        assert w in e.value.message, (w, e.value.message)


def test_files_that_are_not_models_are_named_through_c(tmp_path):
    weights = HF / "qwen2_gqa2_tied" / "model.safetensors"
    pickle = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    for path, words in [(weights, "a safetensors weights file"), (pickle, "a torch.save pickle")]:
        with pytest.raises(A.AdpoError) as e:
            A.Model(path)
        assert e.value.status == A.MODEL and words in e.value.message, e.value.message
        assert "PytorchStreamReader" not in e.value.message


def test_bad_sampling_requests_on_a_checkpoint_are_refused_through_c():
    """The sampler's bad inputs, through adpo_trainer_sample on a native model: each a clear
    status, none a crash; the limit on prompt + new tokens is max_position_embeddings."""
    import json

    name = TIED
    tr = A.Trainer(A.Model(HF / name), None, dict(optimizer=dict(name="sgd", lr=0.1)))
    vocab = vocab_of(name)
    max_pos = json.loads((HF / name / "config.json").read_text())["max_position_embeddings"]
    ok = dict(max_new_tokens=4, eos_id=[])
    cases = [
        ([[]], 2, ok, A.INVALID_ARGUMENT, "empty"),
        ([[1] * (max_pos - 3)], 2, ok, A.INVALID_ARGUMENT, "max_position_embeddings"),
        ([[1, vocab]], 2, ok, A.INVALID_ARGUMENT, "outside the vocabulary"),
        ([[1, -1]], 2, ok, A.INVALID_ARGUMENT, "outside the vocabulary"),
        ([[1, 2]], 0, ok, A.INVALID_ARGUMENT, "k"),
        ([[1, 2]], 2, dict(ok, stop_sequences=[[]]), A.INVALID_CONFIG, "stop_sequences"),
        ([[1, 2]], 2, dict(ok, stop_sequences=[[1, vocab]]), A.INVALID_ARGUMENT, "outside the vocabulary"),
        ([[1, 2]], 2, dict(ok, stop_sequences=[1, 2]), A.INVALID_CONFIG, "stop_sequences"),
        ([[1, 2]], 2, dict(ok, eos_id=[vocab]), A.INVALID_ARGUMENT, "outside the vocabulary"),
        ([[1, 2]], 2, dict(ok, max_new_tokens=2**64 - 1), A.INVALID_CONFIG, "max_new_tokens"),
        ([[1, 2]], 2, dict(ok, top_p=1.5), A.INVALID_CONFIG, "top_p"),
    ]
    for prompts, k, sampling, status, words in cases:
        with pytest.raises(A.AdpoError) as e:
            tr.sample(prompts, k, sampling)
        assert e.value.status == status and words in e.value.message, (prompts, k, sampling, e.value)
    # Exactly at the limit is fine.
    b = tr.sample([[1] * (max_pos - 4)], 2, ok)
    assert b.shape() == (2, max_pos)
