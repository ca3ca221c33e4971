"""The trainer's C ABI (models, batches, trainer steps, sampling, checkpoints) through ctypes,
against a plain-PyTorch implementation of the same step (trainer_reference.py).

* Parity: adpo's weights after one and two steps equal torch.optim's after the same steps
  (float64 model: rel 1e-9; float32: rel 1e-5), for listwise, plackett_luce (stable ties) and
  grpo, seq_logp mean and sum, fixed anchor + reference model and on_policy anchor, sgd and
  adamw, and with micro_batch_rows = 2 (two-pass step) equal to one pass; cltr, GRPO's dual
  clip / seq_mean_token_sum / dr_grpo constant, and the entropy bonus (entropy_coef, whose
  reference is the entropy of the full logits).
* Checkpoints: keys are the checkpoint's parameter names, load into the transformers model
  (strict), the trainer-state file exists, save/load round trips, corrupt files are rejected.
* adpo_trainer_sequence_logp equals PyTorch's sequence log-probs.
* Sampling: batch layout, seeded determinism, greedy top_k = 1, old_logp = the policy's own
  token log-probs (an on-policy first step sees s = 0: loss = log K).
* Error paths with their status codes and message substrings.

Run: ADPO_LIB=target/release/libadpo.so .venv/bin/python -m pytest -q tests/python/test_trainer.py
Fixtures: tests/fixtures/generated/tiny (made by tests/fixtures/make_hf_models.py if missing).
"""

from __future__ import annotations

import ctypes
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import adpo_ctypes as A
import trainer_reference as R
from parity import assert_weights_close

FIXTURES = R.REPO / "tests" / "fixtures" / "generated"
F64 = "tiny/llama_f64"
F32 = "tiny/llama"
QWEN2 = "tiny/qwen2"  # another architecture (q/k/v biases)
TIED = "tiny/llama_tied_f64"  # the output head shares the embedding matrix
VOCAB = 16
N, T = 12, 6
GIDS = np.array([7, 3, 7, 9, 3, 9, 9, 7, 3, 3, 7, 9])  # 3 groups of 4, interleaved

# Update rtol: |w_adpo - w_torch| / |w_torch - w_0| over all params (elementwise bounds:
# parity.assert_weights_close, by the weights' dtype).
UTOL = {F64: 1e-8, F32: 2e-3, QWEN2: 2e-3, TIED: 1e-8}
# (loss / grad-norm rtol)
MTOL = {F64: 1e-9, F32: 1e-5, QWEN2: 1e-5, TIED: 1e-9}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread (shared by torch here and adpo's libtorch, which is the
    same library) is fastest and avoids OpenMP spin-waiting when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Paths of the fixture models, plus perturbed copies to serve as reference models."""
    names = [F64, F32, QWEN2, TIED]
    if not all((FIXTURES / n / "config.json").is_file() for n in names):
        subprocess.run([sys.executable, str(R.MAKE_HF_MODELS), str(FIXTURES / "hf"), str(FIXTURES / "tiny")],
                       check=True)
    d = tmp_path_factory.mktemp("models")
    paths = {n: FIXTURES / n for n in names}
    for n in (F64, F32, QWEN2):
        paths["ref:" + n] = R.perturbed_copy(FIXTURES / n, d / ("ref_" + n.replace("/", "_")), scale=0.05, seed=1)
    return paths


def make_batch(seed: int, n: int = N, t: int = T, gids=GIDS, pad: bool = False, rewards: bool = True) -> R.RefBatch:
    """Random ids in [0, 16); loss mask on the last 2-4 positions (varies per row); optional
    right padding (attention 0, loss 0) on some rows."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, t))
    lm = np.zeros((n, t), np.uint8)
    attn = np.ones((n, t), np.uint8) if pad else None
    for r in range(n):
        start = t - 3 + (r % 3) - 1  # t-4, t-3, t-2
        end = t
        if pad and r % 4 == 1:
            end = t - 1 - (r % 2)  # one or two padded positions
            attn[r, end:] = 0
            ids[r, end:] = 0
        lm[r, start:end] = 1
    b = R.RefBatch(ids=ids, loss_mask=lm, group_ids=np.asarray(gids), attention_mask=attn)
    if rewards:
        b.rewards = rng.normal(size=n)
    return b


def to_adpo(b: R.RefBatch) -> A.Batch:
    return A.Batch(b.ids, b.loss_mask, b.group_ids, attention_mask=b.attention_mask, rewards=b.rewards,
                   targets=b.targets, old_logp=b.old_logp, anchor_logp=b.anchor_logp)


STATE_PREFIX = "__adpo__."


def read_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, trainer state without the prefix) of one checkpoint file."""
    everything = load_file(str(path))
    weights = {k: v for k, v in everything.items() if not k.startswith(STATE_PREFIX)}
    state = {k[len(STATE_PREFIX):]: v for k, v in everything.items() if k.startswith(STATE_PREFIX)}
    return weights, state


def read_weights(trainer: A.Trainer, path) -> dict[str, torch.Tensor]:
    trainer.save(path)
    return read_checkpoint(path)[0]


def initial_weights(path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in R.load_model(path).named_parameters()}


def run_adpo(models, name, cfg, batches, tmp_path, with_ref=False, tag="a"):
    """Steps an adpo trainer through `batches`; returns [(metrics, weights)] after each step."""
    pol = A.Model(models[name])
    ref = A.Model(models["ref:" + name]) if with_ref else None
    tr = A.Trainer(pol, ref, cfg)
    out = []
    for i, b in enumerate(batches):
        m = tr.step(to_adpo(b))
        out.append((m, read_weights(tr, tmp_path / f"{tag}{i}.safetensors")))
    tr.close()
    return out


def run_torch(models, name, cfg, batches, with_ref=False):
    pol = R.load_model(models[name])
    ref = R.load_model(models["ref:" + name]) if with_ref else None
    tr = R.ReferenceTrainer(pol, ref, cfg)
    return [(tr.step(b), tr.state_dict()) for b in batches]


def assert_weights(got, want, w0, name, what=""):
    assert_weights_close(got, want, w0, what, utol=UTOL[name])


def assert_metrics(got, want, name, what=""):
    tol = MTOL[name]
    assert got["loss"] == pytest.approx(want["loss"], rel=tol, abs=tol), what
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=tol * 10), what
    assert got["lr"] == pytest.approx(want["lr"], rel=1e-12), what
    assert got["anchor_drift"] == pytest.approx(want["anchor_drift"], rel=tol * 100, abs=tol * 10), what
    assert got["step"] == want["step"], what


def check_parity(models, name, cfg, batches, tmp_path, with_ref=False, micro=True):
    w0 = initial_weights(models[name])
    ours = run_adpo(models, name, cfg, batches, tmp_path, with_ref)
    theirs = run_torch(models, name, cfg, batches, with_ref)
    for i, ((m, w), (rm, rw)) in enumerate(zip(ours, theirs)):
        assert_metrics(m, rm, name, f"step {i + 1}")
        assert_weights(w, rw, w0, name, f"step {i + 1}")
    if micro:
        two_pass = run_adpo(models, name, dict(cfg, micro_batch_rows=2), batches, tmp_path, with_ref, tag="m")
        for i, ((m, w), (m1, w1), (rm, rw)) in enumerate(zip(two_pass, ours, theirs)):
            assert_metrics(m, rm, name, f"micro_batch_rows=2, step {i + 1}")
            assert m["loss"] == pytest.approx(m1["loss"], rel=MTOL[name])
            assert_weights(w, rw, w0, name, f"micro_batch_rows=2 vs torch, step {i + 1}")
            assert_weights(w, w1, w0, name, f"micro_batch_rows=2 vs one pass, step {i + 1}")
    return ours, theirs


# ----------------------------------------------------------------------------- parity grid
@pytest.mark.parametrize("anchor", ["fixed", "on_policy"])
@pytest.mark.parametrize("seq_logp", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["listwise", "plackett_luce", "grpo"])
@pytest.mark.parametrize("name", [F64, F32])
def test_parity_sgd_two_steps(models, tmp_path, name, loss, seq_logp, anchor):
    """Two sgd steps (two different batches); fixed = reference model (grpo: beta_kl > 0 against
    the reference), on_policy = the detached policy at the start of each step."""
    cfg = dict(loss=loss, seq_logp=seq_logp, anchor=dict(mode=anchor), optimizer=dict(name="sgd", lr=0.5))
    if loss == "plackett_luce":
        cfg["pl_ties"] = "stable"
    if loss == "grpo" and anchor == "fixed":
        cfg["beta_kl"] = 0.05
    with_ref = anchor == "fixed"
    check_parity(models, name, cfg, [make_batch(1), make_batch(2)], tmp_path, with_ref=with_ref)


def test_tied_weights_are_updated_once(models, tmp_path):
    """The tied head and embedding are one tensor: one SGD update per step, as PyTorch's,
    which sees the tensor once. Enumerated under both names, it was stepped twice."""
    model = R.load_model(models[TIED])
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for opt in (dict(name="sgd", lr=0.5), dict(name="sgd", lr=0.3, momentum=0.9)):
        ours, _ = check_parity(models, TIED, dict(optimizer=opt), [make_batch(1), make_batch(2)], tmp_path)
        assert "lm_head.weight" not in ours[0][1] and "model.embed_tokens.weight" in ours[0][1]


EXTRA = {
    # id: (model, config, batch modifier, steps, reference model)
    "adamw_fixed_f64": (F64, dict(optimizer=dict(name="adamw", lr=1e-2), anchor=dict(mode="fixed")), None, 2, True),
    # float32: eps 1e-4, because some gradients are zero in exact arithmetic (the key bias of the
    # attention: softmax is shift invariant) and float32 rounding noise there (~1e-9, different
    # in adpo's float32 objective and torch's) would be blown up to +-lr by AdamW with eps 1e-8.
    "adamw_fixed_f32": (F32, dict(optimizer=dict(name="adamw", lr=1e-2, eps=1e-4), anchor=dict(mode="fixed")), None,
                        2, True),
    "adamw_custom_pl_sum": (F64, dict(loss="plackett_luce", pl_ties="stable", seq_logp="sum",
                                      optimizer=dict(name="adamw", lr=5e-3, betas=[0.8, 0.99], eps=1e-6,
                                                     weight_decay=0.1)), None, 3, False),
    "sgd_momentum_clip_cosine": (F64, dict(optimizer=dict(name="sgd", lr=0.3, momentum=0.9, weight_decay=0.01),
                                           grad_clip=0.5, anchor=dict(mode="fixed"),
                                           schedule=dict(name="cosine", warmup_steps=1, total_steps=3, min_lr=0.01)),
                                 None, 3, True),
    "epochs2_micro5": (F64, dict(epochs_per_batch=2, micro_batch_rows=5, optimizer=dict(name="sgd", lr=0.5)),
                       None, 2, False),
    "epochs3_fixed_sum": (F64, dict(epochs_per_batch=3, seq_logp="sum", anchor=dict(mode="fixed"),
                                    optimizer=dict(name="sgd", lr=0.2, momentum=0.5)), None, 1, True),
    "old_logp_tokens": (F64, dict(optimizer=dict(name="sgd", lr=0.5)), "old_tokens", 2, False),
    "old_logp_sequence": (F64, dict(seq_logp="sum", optimizer=dict(name="sgd", lr=0.5)), "old_seq", 2, False),
    "anchor_logp_tokens_no_ref": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)),
                                  "anchor_tokens", 2, False),
    "anchor_logp_seq_over_ref": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)),
                                 "anchor_seq", 2, True),
    "targets": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)), "targets", 2, True),
    "tau_center": (F64, dict(tau=0.5, beta_reward=1.0, reward_transform="center", anchor=dict(mode="fixed"),
                             optimizer=dict(name="sgd", lr=0.5)), None, 2, True),
    "padding": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)), "pad", 2, True),
    "singleton_group": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)), "singleton", 2,
                        True),
    "pl_stable_ties": (F64, dict(loss="plackett_luce", pl_ties="stable", anchor=dict(mode="fixed"),
                                 optimizer=dict(name="sgd", lr=0.5)), "ties", 2, True),
    "empty_row_mean": (F64, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)), "empty_row", 2, True),
    "empty_row_grpo": (F64, dict(loss="grpo", aggregation="grpo", optimizer=dict(name="sgd", lr=0.5)), "empty_row", 2,
                       False),
    "grpo_old_tokens_f64": (F64, dict(loss="grpo", aggregation="grpo", clip_eps_high=0.3,
                                      optimizer=dict(name="sgd", lr=0.5)), "old_tokens_grpo", 2, False),
    "grpo_old_tokens_f32": (F32, dict(loss="grpo", optimizer=dict(name="sgd", lr=0.5)), "old_tokens_grpo", 2, False),
    "grpo_gspo_dr": (F64, dict(loss="grpo", ratio_level="sequence", aggregation="dr_grpo", beta_kl=0.1,
                               optimizer=dict(name="adamw", lr=1e-2)), "old_tokens_grpo", 2, True),
    # issue 24: CLTR through the trainer; GRPO with the dual clip, verl's token-sum aggregation
    # and dr_grpo's constant; the entropy bonus on a sequence loss and on GRPO, with micro-batches.
    "cltr": (F64, dict(loss="cltr", pl_ties="stable", anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)),
             None, 2, True),
    "grpo_dual_clip_token_sum": (F64, dict(loss="grpo", clip_ratio_c=1.1, aggregation="seq_mean_token_sum",
                                           optimizer=dict(name="sgd", lr=0.5)), "old_tokens_grpo", 2, False),
    "grpo_dr_constant": (F64, dict(loss="grpo", aggregation="dr_grpo", max_completion_length=12,
                                   optimizer=dict(name="sgd", lr=0.5)), "old_tokens_grpo", 2, False),
    "entropy_bonus_listwise": (F64, dict(entropy_coef=0.2, micro_batch_rows=5, anchor=dict(mode="fixed"),
                                         optimizer=dict(name="sgd", lr=0.5)), None, 2, True),
    "entropy_bonus_grpo_f32": (F32, dict(loss="grpo", entropy_coef=0.1, optimizer=dict(name="sgd", lr=0.5)),
                               "old_tokens_grpo", 2, False),
    "qwen2_f32": (QWEN2, dict(seq_logp="sum", anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)), None, 2,
                True),
}


def modify(kind, b: R.RefBatch, seed: int, models, name) -> R.RefBatch:
    rng = np.random.default_rng(100 + seed)
    if kind is None:
        return b
    if kind in ("old_tokens", "old_tokens_grpo", "anchor_tokens"):
        # The perturbed model's token log-probs (+ noise for grpo, so ratios get clipped), with
        # junk where loss_mask is 0 (it must be ignored).
        ids, attn, mask = b.tensors()
        with torch.no_grad():
            tok = R.token_logp(R.load_model(models["ref:" + name]), ids, attn, mask).double().numpy()
        if kind == "old_tokens_grpo":
            tok = tok + rng.normal(scale=0.3, size=tok.shape)
        tok = np.where(b.loss_mask == 1, tok, rng.normal(size=tok.shape) * 5)
        if kind == "anchor_tokens":
            b.anchor_logp = tok
        else:
            b.old_logp = tok
    elif kind == "old_seq":
        b.old_logp = rng.normal(loc=-8, scale=1, size=b.n)
    elif kind == "anchor_seq":
        b.anchor_logp = rng.normal(loc=-3, scale=0.5, size=b.n)
    elif kind == "targets":
        q = np.zeros(b.n)
        for g in np.unique(b.group_ids):
            rows = np.flatnonzero(b.group_ids == g)
            q[rows] = rng.dirichlet(np.ones(len(rows)))
        b.rewards, b.targets = None, q
    elif kind == "pad":
        out = make_batch(seed, pad=True)
        return out
    elif kind == "ties":
        b.rewards = rng.integers(0, 2, size=b.n).astype(np.float64)  # many ties: broken by row index
    elif kind == "empty_row":
        b.loss_mask = b.loss_mask.copy()
        b.loss_mask[4] = 0  # no scored token: l = 0 (mean divides by max(1, 0)), no gradient
    elif kind == "singleton":
        gids = GIDS.copy()
        gids[5] = 42  # one row alone (its own group of one: contributes nothing)
        return make_batch(seed, gids=gids)
    else:
        raise ValueError(kind)
    return b


@pytest.mark.parametrize("case", list(EXTRA))
def test_parity_configs(models, tmp_path, case):
    name, cfg, kind, steps, with_ref = EXTRA[case]
    batches = [modify(kind, make_batch(10 + s), s, models, name) for s in range(steps)]
    check_parity(models, name, cfg, batches, tmp_path, with_ref=with_ref, micro=case in ("adamw_fixed_f64",
                                                                                          "grpo_old_tokens_f64",
                                                                                          "padding"))


def test_on_policy_first_step_loss_is_log_k(models, tmp_path):
    """on_policy without old_logp: s = 0 at the start of every step, so loss = log K."""
    ours = run_adpo(models, F64, dict(optimizer=dict(name="sgd", lr=0.5)), [make_batch(3), make_batch(3)], tmp_path)
    for m, _ in ours:
        assert m["loss"] == pytest.approx(math.log(4), rel=1e-12)
        assert m["anchor_drift"] == pytest.approx(0.0, abs=1e-12)
        assert m["groups"] == 3
        assert m["tokens"] == float(make_batch(3).loss_mask.sum())


def test_metrics_json_matches_struct(models):
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.1)))
    m = tr.step(to_adpo(make_batch(4)))
    j = tr.metrics_json()
    assert j["step"] == m["step"] == 1
    for key in ("loss", "grad_norm", "lr", "tokens", "anchor_drift"):
        assert j[key] == pytest.approx(m[key], rel=1e-12, abs=1e-15), key
    # The JSON form is derived from the same definition as the struct: the same fields.
    fields = {f for f, _ in A.TrainerMetrics._fields_} - {"struct_size"}
    assert set(j) == fields


def test_entropy_bonus_metric_and_config(models):
    """policy_entropy: null without a bonus; with one, the mean next-token entropy over the
    scored tokens, from PyTorch on the same float64 weights; a negative coefficient is refused."""
    batch = make_batch(4)
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.1)))
    tr.step(to_adpo(batch))
    assert tr.metrics_json()["policy_entropy"] is None
    model = A.Model(models[F64])
    tr = A.Trainer(model, None, dict(optimizer=dict(name="sgd", lr=0.1), entropy_coef=0.05))
    ids = torch.as_tensor(batch.ids)
    with torch.no_grad():
        logits = R.logits_of(R.load_model(models[F64]), ids, torch.ones_like(ids))
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    h = -(logp.exp() * logp).sum(-1)
    scored = torch.as_tensor(batch.loss_mask[:, 1:]).double()
    want = float((h * scored).sum() / scored.sum())
    m = tr.step(to_adpo(batch))
    assert m["policy_entropy"] == pytest.approx(want, rel=1e-10)
    assert tr.metrics_json()["policy_entropy"] == pytest.approx(want, rel=1e-10)
    raises(A.INVALID_CONFIG, "entropy_coef", A.Trainer, A.Model(models[F64]), None, dict(entropy_coef=-1.0))


# ----------------------------------------------------------------------------- sequence log-probs
@pytest.mark.parametrize("seq_logp", ["mean", "sum"])
@pytest.mark.parametrize("name", [F64, F32, QWEN2])
def test_sequence_logp(models, name, seq_logp):
    tr = A.Trainer(A.Model(models[name]), None, dict(seq_logp=seq_logp, micro_batch_rows=5))
    for b in (make_batch(5), make_batch(6, pad=True)):
        got = tr.sequence_logp(to_adpo(b))
        want = R.sequence_logp(R.load_model(models[name]), b, seq_logp).double().numpy()
        tol = 1e-12 if name == F64 else 1e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_sequence_logp_after_steps(models, tmp_path):
    """After two adamw steps the policy's sequence log-probs equal torch's updated model's."""
    cfg = dict(optimizer=dict(name="adamw", lr=1e-2), seq_logp="sum")
    batches = [make_batch(7), make_batch(8)]
    tr = A.Trainer(A.Model(models[F64]), None, cfg)
    for b in batches:
        tr.step(to_adpo(b))
    ref = R.ReferenceTrainer(R.load_model(models[F64]), None, cfg)
    for b in batches:
        ref.step(b)
    probe = make_batch(9)
    np.testing.assert_allclose(tr.sequence_logp(to_adpo(probe)), R.sequence_logp(ref.policy, probe, "sum").numpy(),
                               rtol=1e-10)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", [F64, F32, QWEN2])
def test_checkpoint_keys_and_state_dict(models, tmp_path, name):
    tr = A.Trainer(A.Model(models[name]), None, dict(optimizer=dict(name="sgd", lr=0.5)))
    tr.step(to_adpo(make_batch(1)))
    path = tmp_path / "policy.safetensors"
    tr.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["policy.safetensors"]  # one file
    weights, state = read_checkpoint(path)
    module = R.load_model(models[name])
    params = dict(module.named_parameters())
    assert sorted(weights) == sorted(params)
    for k, v in params.items():
        assert weights[k].shape == v.shape and weights[k].dtype == v.dtype, k
    module.load_state_dict(weights, strict=True)
    # the loaded module computes what the trainer's policy computes
    b = make_batch(2)
    tol = 1e-12 if name == F64 else 1e-5
    np.testing.assert_allclose(tr.sequence_logp(to_adpo(b)), R.sequence_logp(module, b, "mean").numpy(), rtol=tol,
                               atol=tol)
    assert int(state["optimizer.steps"].reshape(-1)[0]) == 1
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "adpo.checkpoint" and meta["format_version"] == "1"
    assert sorted(k for k in meta if k.startswith("crc32.")) == sorted("crc32." + k for k in load_file(str(path)))


def test_checkpoint_other_extension(models, tmp_path):
    tr = A.Trainer(A.Model(models[F64]), None, None)
    tr.save(tmp_path / "ckpt.bin")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
    tr.load(tmp_path / "ckpt.bin")


def test_checkpoint_round_trip_resumes_exactly(models, tmp_path):
    """step, save, step == fresh trainer: load, step (adamw moments and step count restored)."""
    cfg = dict(optimizer=dict(name="adamw", lr=1e-2), anchor=dict(mode="fixed"))
    b1, b2 = make_batch(1), make_batch(2)
    a = A.Trainer(A.Model(models[F64]), A.Model(models["ref:" + F64]), cfg)
    a.step(to_adpo(b1))
    a.save(tmp_path / "c.safetensors")
    ma = a.step(to_adpo(b2))
    wa = read_weights(a, tmp_path / "a.safetensors")
    b = A.Trainer(A.Model(models[F64]), A.Model(models["ref:" + F64]), cfg)
    b.load(tmp_path / "c.safetensors")
    mb = b.step(to_adpo(b2))
    wb = read_weights(b, tmp_path / "b.safetensors")
    assert mb["step"] == ma["step"] == 2
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def flip_data_byte(b: bytes, fraction: float) -> bytes:
    """One bit flipped at `fraction` of the way through the tensor data."""
    start = 8 + int.from_bytes(b[:8], "little")
    at = start + int((len(b) - start) * fraction)
    return b[:at] + bytes([b[at] ^ 0x04]) + b[at + 1:]


def corrupt_variants(path):
    """(description, file, transform bytes -> bytes)."""
    return [
        ("truncated", path, lambda b: b[: len(b) // 2]),
        ("cut inside the header", path, lambda b: b[:20]),
        ("empty", path, lambda b: b""),
        ("flipped header length", path, lambda b: bytes([b[0] ^ 0xFF, b[1] ^ 0xFF]) + b[2:]),
        ("flipped header json", path, lambda b: b[:8] + bytes(x ^ 0x5A for x in b[8:40]) + b[40:]),
        ("last 7 bytes cut", path, lambda b: b[: len(b) - 7]),
        ("a bit flipped in the weights' data", path, lambda b: flip_data_byte(b, 0.1)),
        ("a bit flipped in the trainer state's data", path, lambda b: flip_data_byte(b, 0.9)),
        ("missing", path, None),
    ]


@pytest.mark.parametrize("variant", range(9))
def test_corrupt_checkpoint_rejected_and_trainer_intact(models, tmp_path, variant):
    cfg = dict(optimizer=dict(name="sgd", lr=0.5))
    good = tmp_path / "good.safetensors"
    tr = A.Trainer(A.Model(models[F64]), None, cfg)
    tr.step(to_adpo(make_batch(1)))
    tr.save(good)
    before = read_checkpoint(good)[0]
    # another trainer's checkpoint (different weights), then corrupted
    other = A.Trainer(A.Model(models[F64]), None, cfg)
    for s in range(3):
        other.step(to_adpo(make_batch(20 + s)))
    bad = tmp_path / "bad.safetensors"
    other.save(bad)
    what, file, fn = corrupt_variants(bad)[variant]
    if fn is None:
        file.unlink()
    else:
        file.write_bytes(fn(file.read_bytes()))
    with pytest.raises(A.AdpoError) as e:
        tr.load(bad)
    assert e.value.status == A.CHECKPOINT, (what, e.value)
    assert "checkpoint" in e.value.message, what
    after = read_weights(tr, tmp_path / "after.safetensors")
    for k in before:
        assert torch.equal(before[k], after[k]), (what, k)
    assert read_checkpoint(tmp_path / "after.safetensors")[1]["optimizer.steps"].item() == 1, what
    m = tr.step(to_adpo(make_batch(2)))
    assert m["step"] == 2 and math.isfinite(m["loss"]), what


def test_checkpoint_mismatched_model_rejected(models, tmp_path):
    other = A.Trainer(A.Model(models[QWEN2], options=dict(dtype="float64")), None, None)
    other.save(tmp_path / "qwen2.safetensors")
    f32 = A.Trainer(A.Model(models[F32]), None, None)
    f32.save(tmp_path / "f32.safetensors")
    tr = A.Trainer(A.Model(models[F64]), None, None)
    for p, needle in ((tmp_path / "qwen2.safetensors", "does not have"), (tmp_path / "f32.safetensors", "Float")):
        with pytest.raises(A.AdpoError) as e:
            tr.load(p)
        assert e.value.status == A.CHECKPOINT and needle in e.value.message, e.value
    with pytest.raises(A.AdpoError) as e:
        tr.load(tmp_path / "nothing_here.safetensors")
    assert e.value.status == A.CHECKPOINT and "not found" in e.value.message


# ----------------------------------------------------------------------------- sampling
PROMPTS = [[1, 2, 3], [4, 5], [6]]


def torch_tokens(model, ids, loss_mask):
    ids_t = torch.as_tensor(ids, dtype=torch.int64)
    mask = torch.as_tensor(loss_mask, dtype=torch.float64)
    with torch.no_grad():
        return R.token_logp(model, ids_t, torch.ones_like(ids_t), mask).double().numpy()


def check_layout(batch: A.Batch, prompts, k, max_new, eos=None, pad=0):
    ids, lm, g = batch.ids(), batch.loss_mask(), batch.group_ids()
    n, t = batch.shape()
    assert n == len(prompts) * k and ids.shape == (n, t)
    assert list(g) == [i for i in range(len(prompts)) for _ in range(k)]
    assert t <= max(len(p) for p in prompts) + max_new
    for r in range(n):
        p = prompts[r // k]
        assert list(ids[r, : len(p)]) == p, r
        assert not lm[r, : len(p)].any(), r
        on = np.flatnonzero(lm[r])
        assert len(on) >= 1 and on[0] == len(p) and np.all(np.diff(on) == 1), (r, lm[r])
        gen = ids[r, on]
        assert np.all((gen >= 0) & (gen < VOCAB))
        last = on[-1]
        if eos is not None and eos in gen:
            assert gen[-1] == eos and list(gen).index(eos) == len(gen) - 1, (r, gen)
        else:
            assert len(on) == max_new, (r, lm[r])
        assert np.all(ids[r, last + 1:] == pad), (r, ids[r])
    return ids, lm, g


@pytest.mark.parametrize("name", [F64, QWEN2])
def test_sample_layout_and_old_logp(models, tmp_path, name):
    """Layout; then the sampled batch's old_logp equals torch's log-softmax of the same model:
    an on-policy step on it sees s = 0 (loss log K, drift 0) and gives the same update as the
    same batch with old_logp computed by torch."""
    cfg = dict(optimizer=dict(name="sgd", lr=0.5), seed=3)
    sampling = dict(max_new_tokens=5, eos_id=3, seed=123)
    tr = A.Trainer(A.Model(models[name]), None, cfg)
    b = tr.sample(PROMPTS, 4, sampling)
    ids, lm, g = check_layout(b, PROMPTS, 4, 5, eos=3)
    rewards = np.random.default_rng(0).normal(size=len(g))
    b.set_rewards(rewards)
    model = R.load_model(models[name])
    tok = torch_tokens(model, ids, lm)
    # read back through adpo_batch_get_old_logp: torch's values on the loss mask, 0 off it
    np.testing.assert_allclose(b.old_logp(), np.where(lm == 1, tok, 0.0), rtol=1e-5, atol=1e-6)
    # the same rows with torch's old_logp
    manual = A.Batch(ids, lm, g, attention_mask=None, rewards=rewards, old_logp=tok)
    tr2 = A.Trainer(A.Model(models[name]), None, cfg)
    m1 = tr.step(b)
    m2 = tr2.step(manual)
    # float32-level agreement for both dtypes (see test_sample_old_logp_has_the_models_float64_precision)
    tol = 1e-6
    assert m2["anchor_drift"] == pytest.approx(0.0, abs=1e-15 if name == F64 else 1e-6)
    assert m1["loss"] == pytest.approx(math.log(4), rel=tol)
    assert m1["anchor_drift"] == pytest.approx(0.0, abs=tol)
    w1 = read_weights(tr, tmp_path / "s.safetensors")
    w2 = read_weights(tr2, tmp_path / "m.safetensors")
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=tol * 10, atol=tol)


def test_sample_old_logp_has_the_models_float64_precision(models):
    """For a float64 policy, adpo_trainer_sample's per-token old_logp is float64-exact, so an
    on-policy step on a freshly sampled batch starts at s = 0 (anchor_drift ~1e-16; it was
    ~5e-8 when sampling computed the log-softmax in float32)."""
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.5)))
    b = tr.sample(PROMPTS, 4, dict(max_new_tokens=5, seed=123))
    b.set_rewards(np.random.default_rng(0).normal(size=12))
    m = tr.step(b)
    assert m["anchor_drift"] == pytest.approx(0.0, abs=1e-13), "old_logp of a float64 policy is rounded to float32"
    assert m["loss"] == pytest.approx(math.log(4), rel=1e-13)


def test_sample_old_logp_exact_under_truncation(models):
    """old_logp is the policy's own log-prob even when sampling truncates (top_k 1, top_p, T)."""
    for sampling in (dict(top_k=1), dict(top_p=0.5, temperature=0.7), dict(temperature=2.0, top_k=4)):
        tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.1)))
        b = tr.sample(PROMPTS, 3, dict(sampling, max_new_tokens=4, seed=5))
        b.set_rewards(np.arange(9.0))
        m = tr.step(b)
        # float32-level (see test_sample_old_logp_has_the_models_float64_precision); a truncated or
        # tempered distribution's log-probs would be off by >= 1e-2
        assert m["loss"] == pytest.approx(math.log(3), rel=1e-6), sampling
        assert m["anchor_drift"] == pytest.approx(0.0, abs=1e-6), sampling


def test_sample_seeded_determinism(models):
    tr = A.Trainer(A.Model(models[F64]), None, None)
    a = tr.sample(PROMPTS, 4, dict(max_new_tokens=6, seed=11)).ids()
    b = tr.sample(PROMPTS, 4, dict(max_new_tokens=6, seed=11)).ids()
    c = tr.sample(PROMPTS, 4, dict(max_new_tokens=6, seed=12)).ids()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # without a seed: the trainer's generator continues (seeded from the trainer's seed)
    t1 = A.Trainer(A.Model(models[F64]), None, dict(seed=4))
    t2 = A.Trainer(A.Model(models[F64]), None, dict(seed=4))
    s1 = [t1.sample(PROMPTS, 4, dict(max_new_tokens=6)).ids() for _ in range(2)]
    s2 = [t2.sample(PROMPTS, 4, dict(max_new_tokens=6)).ids() for _ in range(2)]
    assert np.array_equal(s1[0], s2[0]) and np.array_equal(s1[1], s2[1])
    assert not np.array_equal(s1[0], s1[1])
    # samples are actually diverse at temperature 1
    assert len({tuple(r) for r in a}) > 3


@pytest.mark.parametrize("name", [F64, F32, QWEN2])
def test_sample_top_k_1_is_greedy(models, name):
    tr = A.Trainer(A.Model(models[name]), None, None)
    b = tr.sample(PROMPTS, 2, dict(top_k=1, max_new_tokens=6, seed=1))
    ids, lm, _ = check_layout(b, PROMPTS, 2, 6)
    model = R.load_model(models[name])
    with torch.no_grad():
        ids_t = torch.as_tensor(ids)
        logits = R.logits_of(model, ids_t, torch.ones_like(ids_t))
    for r in range(ids.shape[0]):
        for j in np.flatnonzero(lm[r]):
            assert ids[r, j] == int(logits[r, j - 1].argmax()), (r, j)
    # top_p small is greedy too
    b2 = tr.sample(PROMPTS, 2, dict(top_p=1e-6, max_new_tokens=6, seed=9))
    assert np.array_equal(b2.ids(), ids)


def test_sample_then_grpo_step(models):
    """Sampled batches feed grpo (per-token old_logp): ratio 1 on the first epoch, nothing clipped."""
    tr = A.Trainer(A.Model(models[F64]), None, dict(loss="grpo", optimizer=dict(name="sgd", lr=0.1)))
    b = tr.sample(PROMPTS, 4, dict(max_new_tokens=4, seed=2))
    b.set_rewards(np.random.default_rng(1).normal(size=12))
    m = tr.step(b)
    assert m["clip_fraction"] == 0.0
    assert m["anchor_drift"] == pytest.approx(0.0, abs=1e-6)


# ----------------------------------------------------------------------------- errors
def raises(status, needle, fn, *args, **kw):
    with pytest.raises(A.AdpoError) as e:
        fn(*args, **kw)
    assert e.value.status == status, e.value
    assert needle.lower() in e.value.message.lower(), e.value
    return e.value


def test_model_load_errors(models, tmp_path):
    raises(A.MODEL, "not found", A.Model, tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    raises(A.MODEL, "cannot load", A.Model, junk)
    raises(A.INVALID_ARGUMENT, "tpu", A.Model, models[F64], device="tpu")
    raises(A.INVALID_ARGUMENT, "cuda:x", A.Model, models[F64], device="cuda:x")
    if A.load().adpo_cuda_device_count() == 0:
        raises(A.UNSUPPORTED, "cuda", A.Model, models[F64], device="cuda:0")
    m = A.Model(models[F64], device="cpu")
    assert m.vocab_size() == VOCAB
    assert A.Model(models[QWEN2]).vocab_size() == VOCAB


def test_batch_errors():
    b = make_batch(1)
    bad = b.loss_mask.copy()
    bad[4, 0] = 1
    raises(A.INVALID_ARGUMENT, "position 0", A.Batch, b.ids, bad, b.group_ids)
    raises(A.INVALID_ARGUMENT, "t must be >= 2", A.Batch, b.ids[:, :1], b.loss_mask[:, :1], b.group_ids)
    neg = b.ids.copy()
    neg[2, 3] = -1
    raises(A.INVALID_ARGUMENT, "negative", A.Batch, neg, b.loss_mask, b.group_ids)
    two = b.loss_mask.copy()
    two[1, 5] = 2
    raises(A.INVALID_ARGUMENT, "only 0 and 1", A.Batch, b.ids, two, b.group_ids)
    attn = np.ones_like(b.loss_mask)
    attn[0, 5] = 0
    raises(A.INVALID_ARGUMENT, "attention_mask is 0", A.Batch, b.ids, b.loss_mask, b.group_ids, attention_mask=attn)
    ok = A.Batch(b.ids, b.loss_mask, b.group_ids)
    assert ok.shape() == (N, T)
    assert np.array_equal(ok.ids(), b.ids) and np.array_equal(ok.loss_mask(), b.loss_mask)
    assert np.array_equal(ok.group_ids(), b.group_ids)
    raises(A.SHAPE_MISMATCH, "rewards has 11", ok.set_rewards, np.zeros(N - 1))
    raises(A.SHAPE_MISMATCH, "targets has 13", ok.set_targets, np.zeros(N + 1))
    raises(A.SHAPE_MISMATCH, "old_logp has 13", ok.set_old_logp, np.zeros(N + 1))
    raises(A.SHAPE_MISMATCH, "anchor_logp has 71", ok.set_anchor_logp, np.zeros(N * T - 1))
    r = np.ones(N)
    r[2] = np.nan
    raises(A.NON_FINITE, "rewards[2]", ok.set_rewards, r)
    o = np.zeros(N * T)
    o[7] = np.inf
    raises(A.NON_FINITE, "old_logp[7]", ok.set_old_logp, o)
    raises(A.NON_FINITE, "anchor_logp", ok.set_anchor_logp, np.full(N, -np.inf))
    q = np.full(N, 0.25)
    q[0] = 0.3
    raises(A.INVALID_ARGUMENT, "sum to 1", ok.set_targets, q)
    q = np.full(N, 0.25)
    q[0], q[2] = -0.25, 0.75
    raises(A.INVALID_ARGUMENT, ">= 0", ok.set_targets, q)
    ok.set_targets(np.full(N, 0.25))


def test_trainer_config_errors(models):
    pol = A.Model(models[F64])
    raises(A.INVALID_CONFIG, "unknown field", A.Trainer, pol, None, dict(no_such_key=1))
    raises(A.INVALID_CONFIG, "unknown field", A.Trainer, pol, None, dict(optimizer=dict(name="sgd", lr=1, nesterov=1)))
    raises(A.INVALID_CONFIG, "trainer config", A.Trainer, pol, None, "{not json")
    raises(A.INVALID_CONFIG, "micro_batch_rows", A.Trainer, pol, None, dict(micro_batch_rows=0))
    raises(A.INVALID_CONFIG, "epochs_per_batch", A.Trainer, pol, None, dict(epochs_per_batch=0))
    raises(A.INVALID_CONFIG, "grad_clip", A.Trainer, pol, None, dict(grad_clip=0))
    raises(A.INVALID_CONFIG, "lr", A.Trainer, pol, None, dict(optimizer=dict(name="sgd", lr=-1)))
    # A key given twice is ambiguous (JSON text: a Python dict cannot hold it twice).
    raises(A.INVALID_CONFIG, "duplicate key `anchor.mode`", A.Trainer, pol, None,
           '{"anchor": {"mode": "fixed", "mode": "ema"}}')
    raises(A.INVALID_CONFIG, "duplicate key `tau`", A.Objective, '{"tau": 0.8, "tau": 0.5}')
    raises(A.INVALID_CONFIG, "duplicate key `dtype`", A.Model, models[F64], None,
           '{"dtype": "float64", "dtype": "float32"}')
    raises(A.INVALID_ARGUMENT, "different model handle", A.Trainer, pol, pol, None)
    raises(A.INVALID_ARGUMENT, "reference model", A.Trainer, pol, None, dict(loss="grpo", beta_kl=0.1))
    A.Trainer(pol, A.Model(models[F64]), None)  # the same file through another handle is fine


def test_step_errors_leave_weights_unchanged(models, tmp_path):
    pol = A.Model(models[F64])
    tr = A.Trainer(pol, None, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)))
    w0 = read_weights(tr, tmp_path / "w0.safetensors")
    b = make_batch(1)
    no_signal = A.Batch(b.ids, b.loss_mask, b.group_ids)
    raises(A.INVALID_ARGUMENT, "neither rewards nor targets", tr.step, no_signal)
    raises(A.INVALID_ARGUMENT, "anchor mode fixed needs", tr.step, to_adpo(b))
    w1 = read_weights(tr, tmp_path / "w1.safetensors")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    raises(A.INVALID_ARGUMENT, "no step", tr.metrics_json)
    # with anchor_logp the fixed anchor needs no reference
    b.anchor_logp = np.full(N, -2.0)
    assert tr.step(to_adpo(b))["step"] == 1
    # grpo: per-sequence old_logp and targets are refused
    g = A.Trainer(A.Model(models[F64]), None, dict(loss="grpo", optimizer=dict(name="sgd", lr=0.5)))
    bb = make_batch(2)
    bb.old_logp = np.full(N, -1.0)
    raises(A.INVALID_ARGUMENT, "per-token old_logp", g.step, to_adpo(bb))
    bt = modify("targets", make_batch(2), 0, models, F64)
    raises(A.INVALID_ARGUMENT, "needs rewards", g.step, to_adpo(bt))
    # adpo_trainer_sequence_logp with a buffer of the wrong length
    ab = to_adpo(b)
    buf = (ctypes.c_double * 3)()
    err = ctypes.c_void_p()
    st = A.load().adpo_trainer_sequence_logp(tr.handle, ab.handle, buf, 3, ctypes.byref(err))
    raises(A.SHAPE_MISMATCH, "out has 3", A.check, st, err, "adpo_trainer_sequence_logp")


def test_step_metrics_struct_versioning(models):
    """struct_size = 16 (an older, shorter struct): adpo writes struct_size and step only."""
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.5)))
    ab = to_adpo(make_batch(1))
    m = A.TrainerMetrics()
    m.struct_size = 16
    m.loss = -123.0
    err = ctypes.c_void_p()
    st = A.load().adpo_trainer_step(tr.handle, ab.handle, ctypes.byref(m), ctypes.byref(err))
    A.check(st, err, "adpo_trainer_step")
    assert m.struct_size == 16 and m.step == 1 and m.loss == -123.0
    full = tr.step(ab)
    assert full["struct_size"] == ctypes.sizeof(A.TrainerMetrics) and full["step"] == 2


def test_step_with_bad_metrics_struct_size_changes_nothing(models, tmp_path):
    """adpo_trainer_step with out_metrics->struct_size = 0 returns INVALID_ARGUMENT before any
    work: weights, step counter and metrics are untouched ("inputs are validated before any
    work")."""
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.5)))
    w0 = read_weights(tr, tmp_path / "w0.safetensors")
    ab = to_adpo(make_batch(1))
    m = A.TrainerMetrics()
    m.struct_size = 0
    err = ctypes.c_void_p()
    st = A.load().adpo_trainer_step(tr.handle, ab.handle, ctypes.byref(m), ctypes.byref(err))
    raises(A.INVALID_ARGUMENT, "struct_size", A.check, st, err, "adpo_trainer_step")
    w1 = read_weights(tr, tmp_path / "w1.safetensors")
    changed = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not changed, f"a failed adpo_trainer_step changed {len(changed)} parameter tensors"


def test_models_freed_after_trainer_new(models):
    """The trainer keeps its own reference to the models: freeing the handles is fine."""
    pol, ref = A.Model(models[F64]), A.Model(models["ref:" + F64])
    tr = A.Trainer(pol, ref, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)))
    pol.close()
    ref.close()
    m = tr.step(to_adpo(make_batch(1)))
    assert m["step"] == 1 and math.isfinite(m["loss"])
    assert tr.sample(PROMPTS, 2, dict(max_new_tokens=3, seed=0)).shape()[0] == 6


def test_reference_model_is_not_trained(models, tmp_path):
    """After fixed-anchor steps the reference's weights are unchanged (seen through a second
    trainer that uses the same reference handle as its policy, before any step of its own)."""
    ref = A.Model(models["ref:" + F64])
    tr = A.Trainer(A.Model(models[F64]), ref, dict(anchor=dict(mode="fixed"), optimizer=dict(name="sgd", lr=0.5)))
    for s in range(2):
        tr.step(to_adpo(make_batch(s)))
    viewer = A.Trainer(ref, None, None)
    w = read_weights(viewer, tmp_path / "ref.safetensors")
    want = initial_weights(models["ref:" + F64])
    for k in want:
        assert torch.equal(w[k], want[k]), k


def test_step_with_out_of_vocab_ids_is_an_error(models):
    tr = A.Trainer(A.Model(models[F64]), None, dict(optimizer=dict(name="sgd", lr=0.5)))
    b = make_batch(1)
    b.ids[3, 4] = VOCAB + 5
    with pytest.raises(A.AdpoError) as e:
        tr.step(to_adpo(b))
    assert e.value.status in (A.TORCH, A.INVALID_ARGUMENT), e.value
    assert tr.step(to_adpo(make_batch(1)))["step"] == 1


def test_sampling_errors(models):
    tr = A.Trainer(A.Model(models[F64]), None, None)
    raises(A.INVALID_CONFIG, "temperature", tr.sample, PROMPTS, 2, dict(temperature=0))
    raises(A.INVALID_CONFIG, "unknown field", tr.sample, PROMPTS, 2, dict(beam=2))
    raises(A.INVALID_CONFIG, "top_p", tr.sample, PROMPTS, 2, dict(top_p=0))
    raises(A.INVALID_CONFIG, "duplicate key `top_k`", tr.sample, PROMPTS, 2, '{"top_k": 1, "top_k": 2}')
    raises(A.INVALID_ARGUMENT, "outside the vocabulary", tr.sample, [[1, 99]], 2, None)
    raises(A.INVALID_ARGUMENT, "prompt 1 is empty", tr.sample, [[1], []], 2, None)
    raises(A.INVALID_ARGUMENT, "k >= 1", tr.sample, PROMPTS, 0, None)
