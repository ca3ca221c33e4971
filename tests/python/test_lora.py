"""LoRA adapters (load options "lora" / "adapter", adpo_model_save_adapter, merged adpo_model_save)
against the real peer, PEFT on transformers (tests/lora.rs checks the rest in Rust):

* a PEFT adapter with random A and B (init_lora_weights=False) loaded by adpo gives PEFT's token
  log-probs at every position (log_softmax of the logits; the C ABI has no logits call) to 1e-5;
* adpo's saved adapter directory loads in PeftModel.from_pretrained (same config, same logits),
  also for fresh adapters (adpo's init: B = 0, A within PEFT's kaiming bound);
* adpo's merged save loads in transformers to the PEFT model's logits;
* one and two SGD steps of listwise ADPO with the fixed anchor and no reference handle (the base
  is the anchor) give the adapters that eager PyTorch + PEFT computes (autograd through the PEFT
  model, the anchor from its disable_adapter() context), f32 and f64.

Run: ADPO_LIB=target/release/libadpo.so .venv/bin/python -m pytest -q tests/python/test_lora.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

import adpo_ctypes as A
import trainer_reference as R
from parity import assert_weights_close
from test_native import (GQA, HF, MAKE_HF, TIED, UNTIED, HFLogits, assert_float64_norms, hf_model, make_batch, to_adpo,
                         vocab_of)

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PREFIX = "base_model.model."
# (loss / grad-norm rtol, loss atol, update rtol: |w_adpo - w_torch| / |w_torch - w_0|); the
# elementwise bounds are parity.assert_weights_close's. The update as a whole agrees to ~3e-6
# (float32) and ~5e-15 (float64).
TOL = {torch.float32: (1e-5, 1e-5, 1e-4), torch.float64: (1e-9, 1e-12, 1e-10)}


@pytest.fixture(scope="module", autouse=True)
def setup():
    torch.set_num_threads(1)
    if not (HF / TIED / "reference.safetensors").is_file():
        subprocess.run([sys.executable, str(MAKE_HF), str(HF)], check=True)


def peft_adapter(name: str, out, targets=ALL, r: int = 4, alpha: int = 8, seed: int = 5):
    """A PEFT adapter on the fixture with random A and B (init_lora_weights=False: both keep
    nn.Linear's init, so the adapter changes the model), saved."""
    torch.manual_seed(seed)
    model = get_peft_model(hf_model(HF / name).model, LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(str(out))
    return out


def peft_model(name: str, adapter, dtype=torch.float32, trainable: bool = False) -> PeftModel:
    return PeftModel.from_pretrained(hf_model(HF / name, dtype).model, str(adapter), is_trainable=trainable).eval()


def every_token_batch(vocab: int, pad: bool) -> R.RefBatch:
    """Each row scores one position of one of 3 sequences (rows cover every position 1..T-1),
    so sum-reduced sequence log-probs are the token log-probs of every position."""
    base = make_batch(21, vocab, pad=pad)
    rows = [(s, t) for s in range(3) for t in range(1, base.t)]
    ids = np.stack([base.ids[s] for s, _ in rows])
    attn = np.stack([base.attention_mask[s] for s, _ in rows]) if pad else None
    lm = np.zeros(ids.shape, np.uint8)
    for i, (s, t) in enumerate(rows):
        lm[i, t] = 1 if attn is None else attn[i, t]
    return R.RefBatch(ids=ids, loss_mask=lm, group_ids=np.arange(len(rows)) // 2, attention_mask=attn)


def adpo_token_logp(model: A.Model, b: R.RefBatch) -> np.ndarray:
    tr = A.Trainer(model, None, dict(seq_logp="sum"))
    return tr.sequence_logp(A.Batch(b.ids, b.loss_mask, b.group_ids, attention_mask=b.attention_mask))


def torch_token_logp(model: nn.Module, b: R.RefBatch) -> np.ndarray:
    return R.sequence_logp(HFLogits(model), b, "sum").double().numpy()


# ----------------------------------------------------------------------------- logits
@pytest.mark.parametrize("pad", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("name", [TIED, UNTIED, GQA])
def test_a_peft_adapter_loaded_by_adpo_gives_peft_logprobs(tmp_path, name, pad):
    adapter = peft_adapter(name, tmp_path / "adapter")
    b = every_token_batch(vocab_of(name), pad)
    ours = adpo_token_logp(A.Model(HF / name, options=dict(adapter=str(adapter))), b)
    theirs = torch_token_logp(peft_model(name, adapter), b)
    base = torch_token_logp(hf_model(HF / name).model, b)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)
    assert np.abs(theirs - base).max() > 1e-2, "the adapter does not change the model"


def test_saved_adapter_loads_in_peft_with_equal_logits(tmp_path):
    vocab = vocab_of(UNTIED)
    lora = dict(r=4, alpha=16, target_modules=["q_proj", "v_proj", "mlp.down_proj"])
    policy = A.Model(HF / UNTIED, options=dict(lora=lora))
    # Fresh: adpo's init loads in PEFT, B = 0 and A inside PEFT's kaiming_uniform bound.
    policy.save_adapter(tmp_path / "fresh")
    fresh = load_file(str(tmp_path / "fresh" / "adapter_model.safetensors"))
    assert len(fresh) == 2 * 2 * 3
    for k, v in fresh.items():
        if "lora_B" in k:
            assert torch.count_nonzero(v) == 0, k
        else:
            assert 0.5 / math.sqrt(v.shape[1]) < v.abs().max() <= 1 / math.sqrt(v.shape[1]), k
    tr = A.Trainer(policy, None, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=1.0)))
    for i in range(2):
        tr.step(to_adpo(make_batch(30 + i, vocab)))
    policy.save_adapter(tmp_path / "trained")
    config = json.loads((tmp_path / "trained" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"])) == (4, 16, sorted(lora["target_modules"]))
    model = peft_model(UNTIED, tmp_path / "trained")
    assert model.peft_config["default"].r == 4
    names = sorted(k.replace(".default.", ".") for k, _ in model.named_parameters() if "lora_" in k)
    assert names == sorted(load_file(str(tmp_path / "trained" / "adapter_model.safetensors")))
    b = every_token_batch(vocab, pad=True)
    theirs = torch_token_logp(model, b)
    np.testing.assert_allclose(adpo_token_logp(policy, b), theirs, rtol=0, atol=1e-5)
    assert np.abs(theirs - torch_token_logp(hf_model(HF / UNTIED).model, b)).max() > 1e-3, "training did nothing"


@pytest.mark.parametrize("name", [TIED, UNTIED])
def test_merged_save_loads_in_transformers_with_peft_logits(tmp_path, name):
    adapter = peft_adapter(name, tmp_path / "adapter")
    A.Model(HF / name, options=dict(adapter=str(adapter))).save(tmp_path / "merged")
    ref = load_file(str(HF / name / "reference.safetensors"))
    merged, lora = hf_model(tmp_path / "merged"), HFLogits(peft_model(name, adapter))
    for side in ("right", "left"):
        ids, mask = ref[f"{side}_input_ids"], ref[f"{side}_attention_mask"]
        with torch.no_grad():
            got, want = merged(ids, mask), lora(ids, mask)
        keep = mask.bool()
        torch.testing.assert_close(got[keep], want[keep], rtol=0, atol=1e-5)
        assert (want[keep] - ref[f"{side}_logits"][keep]).abs().max() > 1e-2
    assert sorted(load_file(str(tmp_path / "merged" / "model.safetensors"))) == sorted(
        load_file(str(HF / name / "model.safetensors")))


# ----------------------------------------------------------------------------- SGD parity
class LoraPolicy(nn.Module):
    """The PEFT model as the reference trainer's policy: logits with positions from the mask;
    named_parameters lists only the adapters (what is trained)."""

    def __init__(self, model: PeftModel):
        super().__init__()
        self.logits = HFLogits(model)

    def forward(self, input_ids, attention_mask):
        return self.logits(input_ids, attention_mask)

    def named_parameters(self, *args, **kwargs):
        return ((n, p) for n, p in self.logits.named_parameters() if "lora_" in n)


class BaseOf:
    """The same PEFT model with its adapters disabled: the fixed anchor. Not an nn.Module, so
    the reference trainer's freezing of the reference's parameters cannot reach the adapters."""

    def __init__(self, model: PeftModel):
        self.model, self.logits = model, HFLogits(model)

    def parameters(self):
        return iter(())

    def forward(self, input_ids, attention_mask):
        with self.model.disable_adapter():
            return self.logits(input_ids, attention_mask)

    __call__ = forward


def peft_name(k: str) -> str:
    """[model.]base_model.model.X.lora_A.default.weight -> X.lora_A.weight (adpo's name)."""
    return k.removeprefix("model.").removeprefix(PREFIX).replace(".default.", ".")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", [TIED, UNTIED, GQA])
def test_listwise_sgd_steps_with_the_base_as_anchor_equal_pytorch_peft(tmp_path, name, dtype):
    vocab = vocab_of(name)
    adapter = peft_adapter(name, tmp_path / "adapter")
    cfg = dict(loss="listwise", anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5))
    batches = [make_batch(41, vocab), make_batch(42, vocab, pad=True)]
    options = dict(adapter=str(adapter), dtype="float64" if dtype == torch.float64 else "float32")
    tr = A.Trainer(A.Model(HF / name, options=options), None, cfg)
    ours = []
    for i, b in enumerate(batches):
        m = tr.step(to_adpo(b))
        tr.save(tmp_path / f"w{i}.safetensors")
        # One checkpoint file: the weights under their names, the trainer state under __adpo__.
        everything = load_file(str(tmp_path / f"w{i}.safetensors"))
        ours.append((m, {k: v for k, v in everything.items() if not k.startswith("__adpo__.")}))
    model = peft_model(name, adapter, dtype, trainable=True).train()
    ref = R.ReferenceTrainer(LoraPolicy(model), BaseOf(model), cfg)
    w0 = {peft_name(k): v.detach().clone() for k, v in ref.policy.named_parameters()}
    assert all(v.dtype == dtype for v in w0.values())
    rtol, atol, utol = TOL[dtype]
    for i, ((m, w), b) in enumerate(zip(ours, batches)):
        rm = ref.step(b)
        assert_float64_norms(model)
        rw = {peft_name(k): v.detach() for k, v in ref.policy.named_parameters()}
        assert sorted(w) == sorted(rw), "adpo's checkpoint holds exactly the adapters"
        assert m["loss"] == pytest.approx(rm["loss"], rel=rtol * 10, abs=atol), f"step {i + 1}"
        assert m["grad_norm"] == pytest.approx(rm["grad_norm"], rel=rtol * 100), f"step {i + 1}"
        assert_weights_close(w, rw, w0, f"step {i + 1}", utol=utol)
