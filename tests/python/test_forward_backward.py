"""A step in two calls through the C ABI with a host loss written in PyTorch: the host takes the
token log-probs (adpo_trainer_token_logp), computes its own loss with autograd, and hands
dL/dlogp back as a host buffer (adpo_trainer_forward_backward) or as the torch gradient itself
through DLPack (adpo_trainer_forward_backward_dlpack). Both give the same weights; float32 and
strided gradients give them within float32 rounding; a host loss equal to the listwise loss
gives adpo_trainer_step's weights; bad gradients are refused with nothing accumulated."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adpo_ctypes as A
from test_trainer import F64, make_batch, models, one_thread, to_adpo  # noqa: F401 (fixtures)

CFG = dict(optimizer=dict(name="adamw", lr=0.01), anchor=dict(mode="fixed"))


def reinforce_grad(logp: np.ndarray, mask: np.ndarray, rewards: np.ndarray) -> torch.Tensor:
    """dL/dlogp of a host's own loss by autograd: REINFORCE with a mean baseline, token mean."""
    x = torch.tensor(logp, requires_grad=True)
    m = torch.tensor(mask, dtype=torch.float64)
    adv = torch.tensor(rewards - rewards.mean())
    loss = -((x * m).sum(1) / m.sum(1) * adv).mean()
    loss.backward()
    return x.grad


def trained(path, batch, grad_of, send, cfg=CFG) -> np.ndarray:
    model = A.Model(path)
    tr = A.Trainer(model, None, cfg)
    b = to_adpo(batch)
    g = grad_of(tr.token_logp(b))
    m = send(tr, b, g)
    assert np.isnan(m["loss"]) and np.isnan(m["grad_norm"])
    assert tr.optim_step()["step"] == 1
    return model.params()


def test_dlpack_and_host_buffer_gradients_give_the_same_weights(models):
    batch = make_batch(3)
    grad = lambda logp: reinforce_grad(logp, batch.loss_mask, batch.rewards)  # noqa: E731
    start = A.Model(models[F64]).params()
    host = trained(models[F64], batch, grad, lambda tr, b, g: tr.forward_backward(b, g.numpy()))
    dl = trained(models[F64], batch, grad, lambda tr, b, g: tr.forward_backward_dlpack(b, g))
    assert np.abs(host - start).max() > 1e-4, "the step moved the weights"
    np.testing.assert_allclose(dl, host, rtol=0, atol=1e-14)
    # A float32 gradient, and a strided view of one (every other column of a wider buffer).
    f32 = trained(models[F64], batch, grad, lambda tr, b, g: tr.forward_backward_dlpack(b, g.float()))
    wide = lambda g: torch.stack([g, torch.zeros_like(g)], 2).reshape(g.shape[0], -1)[:, ::2]  # noqa: E731
    strided = trained(models[F64], batch, grad, lambda tr, b, g: tr.forward_backward_dlpack(b, wide(g)))
    np.testing.assert_allclose(strided, host, rtol=0, atol=1e-14)
    moved = np.abs(host - start).max()
    assert np.abs(f32 - host).max() < 1e-5 * max(moved, 1.0)


def test_a_host_listwise_gradient_through_dlpack_gives_the_steps_weights(models):
    """The listwise loss written in PyTorch on adpo's token log-probs (fixed anchor from the
    batch, seq_logp mean, the default tau, zscore rewards and beta_reward) is
    adpo_trainer_step's loss, so the weights agree to 1e-10."""
    batch = make_batch(5)
    anchor = -2.0 - 0.1 * np.arange(len(batch.group_ids))
    batch.anchor_logp = anchor
    sgd = {**CFG, "optimizer": dict(name="sgd", lr=0.5)}  # AdamW's first step is sign-like
    stepped = A.Model(models[F64])
    A.Trainer(stepped, None, {**sgd, "loss": "listwise"}).step(to_adpo(batch))

    def listwise_grad(logp):
        x = torch.tensor(logp, requires_grad=True)
        m = torch.tensor(batch.loss_mask, dtype=torch.float64)
        s = ((x * m).sum(1) / m.sum(1) - torch.tensor(anchor)) / 0.8  # the default tau
        r = torch.tensor(batch.rewards)
        loss = 0.0
        groups = np.unique(batch.group_ids)
        for gid in groups:
            idx = torch.tensor(np.flatnonzero(batch.group_ids == gid))
            z = (r[idx] - r[idx].mean()) / (r[idx].std() + 1e-4)  # the default zscore transform
            q = torch.softmax(z / 0.5, 0)  # the default target, beta_reward 0.5
            loss = loss - (q * torch.log_softmax(s[idx], 0)).sum()
        (loss / len(groups)).backward()
        return x.grad

    ours = trained(models[F64], batch, listwise_grad, lambda tr, b, g: tr.forward_backward_dlpack(b, g), sgd)
    np.testing.assert_allclose(ours, stepped.params(), rtol=0, atol=1e-10)


def test_bad_gradients_are_refused_and_nothing_is_accumulated(models):
    tr = A.Trainer(A.Model(models[F64]), None, CFG)
    b = to_adpo(make_batch(2))
    n, t = b.shape()
    for bad, status in [
        (torch.zeros(n, t + 1, dtype=torch.float64), A.SHAPE_MISMATCH),
        (torch.full((n, t), float("nan"), dtype=torch.float64), A.NON_FINITE),
        (torch.zeros(n, t, dtype=torch.int64), A.UNSUPPORTED),
    ]:
        with pytest.raises(A.AdpoError) as e:
            tr.forward_backward_dlpack(b, bad)
        assert e.value.status == status, e.value
        with pytest.raises(A.AdpoError) as e:
            tr.optim_step()
        assert e.value.status == A.INVALID_ARGUMENT and "forward_backward first" in str(e.value)
