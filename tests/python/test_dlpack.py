"""adpo_objective_eval_dlpack with torch tensors handed over through __dlpack__ (DLPack 1.x,
"dltensor_versioned" capsules) via ctypes: same loss / gradient as the host float64 entry point
for float64, float32 and bfloat16, contiguous, strided and offset views; the gradient comes back
as a torch tensor of logp's dtype and device; every input is released exactly once, on success
and on errors; many iterations without crash or leak."""

from __future__ import annotations

import ctypes
import gc

import numpy as np
import pytest
import torch

import adpo_ctypes as A

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LAYOUTS = ["contiguous", "strided", "offset", "strided_offset", "column"]
# (loss rtol, grad rtol, grad atol) against the host float64 evaluation of the same rounded values
TOL = {
    torch.float64: (1e-12, 1e-10, 1e-13),
    torch.float32: (2e-5, 2e-4, 2e-6),
    torch.bfloat16: (1e-3, 2e-2, 2e-3),  # the gradient itself is rounded to bfloat16
    torch.float16: (1e-4, 3e-3, 3e-4),
}


def storage_uses(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def laid_out(values: torch.Tensor, layout: str) -> torch.Tensor:
    """A tensor equal to `values` in the given memory layout (a view into a larger buffer)."""
    n = values.numel()
    fill = torch.full((3 * n + 4,), 7, dtype=values.dtype, device=values.device)
    if layout == "contiguous":
        return values.clone()
    if layout == "strided":
        v = fill[: 2 * n][::2]
    elif layout == "offset":
        v = fill[1 : n + 1]
    elif layout == "strided_offset":
        v = fill[3 : 3 + 3 * n][::3]
    elif layout == "column":
        # a column of a 2-D tensor: stride 2 and storage offset 1
        v = fill[: 2 * n].view(n, 2)[:, 1]
    else:
        raise ValueError(layout)
    v.copy_(values)
    assert v.numel() == n
    return v


def make_inputs(seed: int, n_groups: int = 12):
    rng = np.random.default_rng(seed)
    sizes = rng.choice([1, 2, 3, 5, 8], size=n_groups).tolist()
    sizes[0] = 4
    ids = np.concatenate([np.full(k, int(rng.integers(-10**9, 10**9)), dtype=np.int64) for k in sizes])
    ids = ids[rng.permutation(ids.size)]
    n = ids.size
    logp = rng.normal(-3.0, 1.0, n)
    anchor = logp + rng.normal(0.0, 0.5, n)
    rewards = rng.choice([0.0, 1.0, 0.25, -0.1], size=n) + rng.normal(0, 0.05, n)
    return logp, anchor, rewards, ids


CONFIGS = {
    "listwise": None,
    "pl": {"loss": "plackett_luce", "pl_ties": "stable", "pl_poly_eps": 0.5},
    "top1-adaptive-kl": {"loss": "top1", "adaptive_tau": {"rule": "target_entropy"}, "beta_anchor_kl": 0.1},
}


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_dlpack_matches_host(dtype_name, layout, cfg_name):
    dtype = DTYPES[dtype_name]
    logp, anchor, rewards, ids = make_inputs(hash((dtype_name, layout, cfg_name)) % 1000)
    # Round to the dtype first; the host reference sees exactly the same values.
    tl, ta, tr = (torch.tensor(v).to(dtype) for v in (logp, anchor, rewards))
    ti = torch.tensor(ids)
    lt, at, rt, it = (laid_out(t, layout) for t in (tl, ta, tr, ti))
    if layout != "contiguous":
        assert not lt.is_contiguous() or lt.storage_offset() > 0
    with A.Objective(CONFIGS[cfg_name]) as obj:
        loss, grad = obj.eval_dlpack(lt, at, it, rewards=rt)
        h_loss, h_grad, _ = obj.eval(tl.double().numpy(), ta.double().numpy(), ids, rewards=tr.double().numpy())
    assert isinstance(grad, torch.Tensor)
    assert grad.dtype == dtype
    assert grad.device.type == "cpu"
    assert grad.shape == (ids.size,)
    assert torch.isfinite(grad.float()).all()
    lrt, grt, gat = TOL[dtype]
    assert loss == pytest.approx(h_loss, rel=lrt, abs=lrt)
    np.testing.assert_allclose(grad.double().numpy(), h_grad, rtol=grt, atol=gat)
    # the inputs were not modified
    torch.testing.assert_close(lt, tl, rtol=0, atol=0)
    torch.testing.assert_close(it, ti, rtol=0, atol=0)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_dlpack_explicit_targets(dtype_name):
    dtype = DTYPES[dtype_name]
    logp, anchor, _, ids = make_inputs(5)
    rng = np.random.default_rng(0)
    targets = np.zeros(ids.size)
    for g in np.unique(ids):
        rows = np.flatnonzero(ids == g)
        targets[rows] = rng.dirichlet(np.ones(rows.size))
    tl, ta = (torch.tensor(v).to(dtype) for v in (logp, anchor))
    tt = torch.tensor(targets, dtype=torch.float64)  # float64 targets with a 16-bit logp
    with A.Objective() as obj:
        loss, grad = obj.eval_dlpack(laid_out(tl, "strided"), ta, torch.tensor(ids), targets=tt)
        h_loss, h_grad, _ = obj.eval(tl.double().numpy(), ta.double().numpy(), ids, targets=targets)
    lrt, grt, gat = TOL[dtype]
    assert grad.dtype == dtype
    assert loss == pytest.approx(h_loss, rel=lrt, abs=lrt)
    np.testing.assert_allclose(grad.double().numpy(), h_grad, rtol=grt, atol=gat)


def test_dlpack_mixed_dtypes():
    logp, anchor, rewards, ids = make_inputs(6)
    tl = torch.tensor(logp, dtype=torch.float32)
    ta = torch.tensor(anchor).to(torch.bfloat16)
    tr = torch.tensor(rewards).to(torch.float16)
    with A.Objective() as obj:
        loss, grad = obj.eval_dlpack(tl, ta, torch.tensor(ids), rewards=tr)
        h_loss, h_grad, _ = obj.eval(tl.double().numpy(), ta.double().numpy(), ids, rewards=tr.double().numpy())
    assert grad.dtype == torch.float32
    assert loss == pytest.approx(h_loss, rel=2e-5)
    np.testing.assert_allclose(grad.numpy(), h_grad, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("case,status", [
    ("empty", A.INVALID_ARGUMENT),
    ("logp_2d", A.SHAPE_MISMATCH),
    ("ids_float", A.UNSUPPORTED),
    ("anchor_length", A.SHAPE_MISMATCH),
])
def test_dlpack_torch_errors_release_inputs(case, status):
    logp, anchor, rewards, ids = make_inputs(13)
    t = [torch.tensor(v) for v in (logp, anchor, rewards, ids)]
    if case == "empty":
        t = [x[:0].clone() for x in t]
    elif case == "logp_2d":
        n = (len(logp) // 2) * 2
        t = [x[:n].clone() for x in t]
        t[0] = t[0].view(2, -1)
    elif case == "ids_float":
        t[3] = t[3].double()
    elif case == "anchor_length":
        t[1] = t[1][:-1].clone()
    before = [storage_uses(b) for b in t]
    caps = [_export_fresh(b) for b in t]
    ptrs = [A.consume_capsule(c) for c in caps]
    with A.Objective() as obj:
        st, msg, loss, grad_ptr = obj.eval_dlpack_raw(ptrs[0], ptrs[1], ptrs[3], rewards=ptrs[2])
    assert st == status, (st, msg)
    assert grad_ptr is None and np.isnan(loss)
    assert [storage_uses(b) for b in t] == before


def _export_fresh(t: torch.Tensor):
    """A capsule of a fresh view of t: while the capsule (or whoever owns its tensor) lives,
    t's storage has one more user; when the deleter runs, the count drops back."""
    v = t[:]
    cap = A.export_capsule(v)
    del v
    return cap


def test_inputs_released_once_on_success():
    logp, anchor, rewards, ids = make_inputs(7)
    bases = [torch.tensor(v) for v in (logp, anchor, rewards, ids)]
    before = [storage_uses(b) for b in bases]
    caps = [_export_fresh(b) for b in bases]
    assert [storage_uses(b) for b in bases] == [u + 1 for u in before]
    ptrs = [A.consume_capsule(c) for c in caps]
    assert all(A.capsule_name(c) == "used_dltensor_versioned" for c in caps)
    with A.Objective() as obj:
        st, msg, loss, grad_ptr = obj.eval_dlpack_raw(ptrs[0], ptrs[1], ptrs[3], rewards=ptrs[2])
    assert st == A.OK, msg
    assert [storage_uses(b) for b in bases] == before, "adpo did not release every input"
    del caps
    gc.collect()
    assert [storage_uses(b) for b in bases] == before
    grad = A.wrap_managed(grad_ptr)
    assert grad.dtype == torch.float64 and np.isfinite(loss)
    del grad
    gc.collect()


def _int32_case():
    logp, anchor, rewards, ids = make_inputs(8)
    return [
        torch.tensor(np.round(logp * 100).astype(np.int32)),
        torch.tensor(anchor),
        torch.tensor(rewards),
        torch.tensor(ids),
    ]


def test_int32_logp_is_unsupported_and_inputs_released():
    bases = _int32_case()
    before = [storage_uses(b) for b in bases]
    caps = [_export_fresh(b) for b in bases]
    assert [storage_uses(b) for b in bases] == [u + 1 for u in before]
    ptrs = [A.consume_capsule(c) for c in caps]
    with A.Objective() as obj:
        st, msg, loss, grad_ptr = obj.eval_dlpack_raw(ptrs[0], ptrs[1], ptrs[3], rewards=ptrs[2])
    assert st == A.UNSUPPORTED, (st, msg)
    assert "logp" in msg
    assert grad_ptr is None, "the output was written although the call failed"
    assert np.isnan(loss), "the loss was written although the call failed"
    assert [storage_uses(b) for b in bases] == before, "inputs not released on the error path"
    assert all(A.capsule_name(c) == "used_dltensor_versioned" for c in caps)
    del caps
    gc.collect()
    assert [storage_uses(b) for b in bases] == before
    # the producers' tensors are intact and usable
    assert int(bases[0].sum()) == int(np.round(make_inputs(8)[0] * 100).astype(np.int32).sum())
    # and through the raising wrapper
    with A.Objective() as obj:
        with pytest.raises(A.AdpoError) as e:
            obj.eval_dlpack(*bases[:2], bases[3], rewards=bases[2])
    assert e.value.status == A.UNSUPPORTED
    assert [storage_uses(b) for b in bases] == before


# --------------------------------------------------------------------------- counted deleters
class CountingProducer:
    """Builds DLManagedTensorVersioned structs over numpy arrays whose deleter counts its calls."""

    def __init__(self):
        self.calls: dict[int, int] = {}
        self._keep = []
        self._deleter = A.DLDeleter(self._on_delete)

    def _on_delete(self, mptr):
        ctx = mptr.contents.manager_ctx
        self.calls[ctx] = self.calls.get(ctx, 0) + 1

    def make(self, arr: np.ndarray, code: int, bits: int, major: int = 1, strides=None, offset_elems: int = 0):
        arr = np.ascontiguousarray(arr)
        n = arr.size - offset_elems if strides is None else (arr.size - offset_elems + strides - 1) // strides
        shape = (ctypes.c_int64 * 1)(n)
        st = None if strides is None else (ctypes.c_int64 * 1)(strides)
        m = A.DLManagedTensorVersioned()
        m.version = A.DLPackVersion(major, 0)
        ctx = len(self._keep) + 1
        m.manager_ctx = ctx
        m.deleter = self._deleter
        m.flags = 0
        m.dl_tensor.data = arr.ctypes.data
        m.dl_tensor.device = A.DLDevice(A.kDLCPU, 0)
        m.dl_tensor.ndim = 1
        m.dl_tensor.dtype = A.DLDataType(code, bits, 1)
        m.dl_tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        m.dl_tensor.strides = ctypes.cast(st, ctypes.POINTER(ctypes.c_int64)) if st is not None else None
        m.dl_tensor.byte_offset = offset_elems * arr.itemsize
        self._keep.append((arr, shape, st, m))
        self.calls[ctx] = 0
        return ctypes.addressof(m)


def _counted_inputs(p: CountingProducer, logp_dtype=np.float64, major=1, ids_len_delta=0):
    logp, anchor, rewards, ids = make_inputs(9)
    code, bits = {np.float64: (A.kDLFloat, 64), np.int32: (A.kDLInt, 32), np.float32: (A.kDLFloat, 32)}[logp_dtype]
    # logp with a byte offset and anchor with a stride, to exercise both through raw structs
    lp = np.concatenate([[123.0], logp]).astype(logp_dtype)
    an = np.repeat(anchor, 2)
    return dict(
        logp=p.make(lp, code, bits, major=major, offset_elems=1),
        anchor=p.make(an, A.kDLFloat, 64, strides=2),
        rewards=p.make(rewards, A.kDLFloat, 64),
        ids=p.make(ids[: ids.size + ids_len_delta] if ids_len_delta < 0 else ids, A.kDLInt, 64),
        host=(logp, anchor, rewards, ids),
    )


def test_counted_deleters_success_and_values():
    p = CountingProducer()
    c = _counted_inputs(p)
    with A.Objective() as obj:
        st, msg, loss, grad_ptr = obj.eval_dlpack_raw(c["logp"], c["anchor"], c["ids"], rewards=c["rewards"])
        h_loss, h_grad, _ = obj.eval(*c["host"][:2], c["host"][3], rewards=c["host"][2])
    assert st == A.OK, msg
    assert set(p.calls.values()) == {1}, p.calls
    m = A.managed(grad_ptr)
    assert m.version.major == 1
    assert m.dl_tensor.dtype.code == A.kDLFloat and m.dl_tensor.dtype.bits == 64
    assert m.dl_tensor.ndim == 1 and m.dl_tensor.shape[0] == c["host"][0].size
    assert m.dl_tensor.device.device_type == A.kDLCPU
    assert loss == pytest.approx(h_loss, rel=1e-13)
    got = np.ctypeslib.as_array(ctypes.cast(m.dl_tensor.data + m.dl_tensor.byte_offset,
                                            ctypes.POINTER(ctypes.c_double)), shape=(c["host"][0].size,)).copy()
    np.testing.assert_allclose(got, h_grad, rtol=1e-12, atol=1e-15)
    A.call_deleter(grad_ptr)  # we own it: release without torch
    assert set(p.calls.values()) == {1}


@pytest.mark.parametrize("case,status", [
    ("int32_logp", A.UNSUPPORTED),
    ("dlpack_v2", A.UNSUPPORTED),
    ("both_signals", A.INVALID_ARGUMENT),
    ("no_signal", A.NULL_ARGUMENT),
    ("null_obj", A.NULL_ARGUMENT),
    ("ids_length", A.SHAPE_MISMATCH),
    ("non_finite", A.NON_FINITE),
    ("null_out", A.NULL_ARGUMENT),
])
def test_counted_deleters_on_errors(case, status):
    p = CountingProducer()
    kw = {}
    if case == "int32_logp":
        kw["logp_dtype"] = np.int32
    if case == "dlpack_v2":
        kw["major"] = 2
    if case == "ids_length":
        kw["ids_len_delta"] = -1
    c = _counted_inputs(p, **kw)
    if case == "non_finite":
        p._keep[2][0][3] = np.inf  # the rewards buffer adpo reads
    targets = None
    rewards = c["rewards"]
    if case == "both_signals":
        targets = p.make(np.full(c["host"][0].size, 0.5), A.kDLFloat, 64)
    passed = [c["logp"], c["anchor"], rewards, targets, c["ids"]]
    if case == "no_signal":
        rewards = None
        passed[2] = None
    ctx_of = {ctypes.addressof(k[3]): i + 1 for i, k in enumerate(p._keep)}
    lib = A.load()
    loss = ctypes.c_double(np.nan)
    out = A.DLManagedPtr()
    err = ctypes.c_void_p()
    obj = A.Objective()

    def ptr(x):
        return ctypes.cast(ctypes.c_void_p(x), A.DLManagedPtr) if x else None

    st = lib.adpo_objective_eval_dlpack(
        None if case == "null_obj" else obj.handle, ptr(c["logp"]), ptr(c["anchor"]), ptr(rewards),
        ptr(targets), ptr(c["ids"]), ctypes.byref(loss), None if case == "null_out" else ctypes.byref(out),
        ctypes.byref(err))
    msg = lib.adpo_error_message(err).decode() if err.value else ""
    assert err.value, "no error object"
    assert lib.adpo_error_status(err) == st
    lib.adpo_error_free(err)
    obj.close()
    assert st == status, (st, msg)
    assert not out, "output written on failure"
    assert np.isnan(loss.value), "loss written on failure"
    expected = {ctx: 0 for ctx in p.calls}
    for x in passed:
        if x:
            expected[ctx_of[x]] = 1
    assert p.calls == expected, (case, p.calls, expected)


# --------------------------------------------------------------------------- many iterations
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_many_iterations_no_double_free_no_leak():
    logp, anchor, rewards, ids = make_inputs(11)
    bases = {dt: [torch.tensor(v).to(dt) for v in (logp, anchor, rewards)] for dt in DTYPES.values()}
    tids = torch.tensor(ids)
    before = {dt: [storage_uses(b) for b in bs] for dt, bs in bases.items()}
    ids_before = storage_uses(tids)
    first = {}
    with A.Objective({"loss": "plackett_luce", "pl_ties": "stable"}) as obj:
        for it in range(300):
            dt = list(DTYPES.values())[it % len(DTYPES)]
            lp, an, rw = bases[dt]
            layout = LAYOUTS[it % len(LAYOUTS)]
            views = [lp[:], an[:], rw[:]] if layout == "contiguous" else [lp, an, rw]
            loss, grad = obj.eval_dlpack(*views[:2], tids[:], rewards=views[2])
            key = dt
            if key not in first:
                first[key] = (loss, grad.clone())
            else:
                assert loss == first[key][0]
                torch.testing.assert_close(grad, first[key][1], rtol=0, atol=0)
            del grad, views
            if it % 50 == 0:
                gc.collect()
    gc.collect()
    assert {dt: [storage_uses(b) for b in bs] for dt, bs in bases.items()} == before
    assert storage_uses(tids) == ids_before

    # Returned gradients are released when torch drops them: 40 large gradients stay bounded.
    n = 200_000
    big_logp = torch.randn(n, dtype=torch.float64)
    big_anchor = big_logp + 0.1
    big_rewards = torch.randn(n, dtype=torch.float64)
    big_ids = torch.arange(n, dtype=torch.int64) // 8
    with A.Objective() as obj:
        obj.eval_dlpack(big_logp, big_anchor, big_ids, rewards=big_rewards)
        gc.collect()
        rss0 = _rss_bytes()
        for _ in range(40):
            loss, grad = obj.eval_dlpack(big_logp, big_anchor, big_ids, rewards=big_rewards)
            assert grad.shape == (n,)
            del grad
        gc.collect()
        growth = _rss_bytes() - rss0
    # 40 leaked gradients would be 64 MB
    assert growth < 40 * n * 8 // 2, f"RSS grew by {growth / 1e6:.1f} MB"


CUDA = pytest.mark.skipif(not torch.cuda.is_available() or A.load().adpo_cuda_device_count() == 0,
                          reason="no CUDA device (torch or adpo)")


@CUDA
@pytest.mark.parametrize("layout", ["contiguous", "strided", "offset"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_dlpack_cuda(dtype_name, layout):
    dtype = DTYPES[dtype_name]
    logp, anchor, rewards, ids = make_inputs(12)
    tl, ta, tr = (torch.tensor(v).to(dtype) for v in (logp, anchor, rewards))
    dev = torch.device("cuda", torch.cuda.current_device())
    lt, at, rt, it = (laid_out(t.to(dev), layout) for t in (tl, ta, tr, torch.tensor(ids)))
    cfg = {"loss": "plackett_luce", "pl_ties": "stable", "adaptive_tau": {"rule": "target_entropy"}}
    with A.Objective(cfg) as obj:
        torch.cuda.synchronize()
        loss, grad = obj.eval_dlpack(lt, at, it, rewards=rt)
        h_loss, h_grad, _ = obj.eval(tl.double().numpy(), ta.double().numpy(), ids, rewards=tr.double().numpy())
    assert grad.device == dev and grad.dtype == dtype and grad.shape == (ids.size,)
    lrt, grt, gat = TOL[dtype]
    assert loss == pytest.approx(h_loss, rel=max(lrt, 1e-10))
    np.testing.assert_allclose(grad.double().cpu().numpy(), h_grad, rtol=max(grt, 1e-9), atol=max(gat, 1e-12))


@CUDA
def test_dlpack_cuda_ids_on_host_and_mixed_device_error():
    logp, anchor, rewards, ids = make_inputs(14)
    dev = torch.device("cuda", torch.cuda.current_device())
    tl, ta, tr = (torch.tensor(v, device=dev) for v in (logp, anchor, rewards))
    ti = torch.tensor(ids)  # group ids may live on any device
    with A.Objective() as obj:
        loss, grad = obj.eval_dlpack(tl, ta, ti, rewards=tr)
        h_loss, h_grad, _ = obj.eval(logp, anchor, ids, rewards=rewards)
        assert loss == pytest.approx(h_loss, rel=1e-10)
        np.testing.assert_allclose(grad.cpu().numpy(), h_grad, rtol=1e-9, atol=1e-12)
        # rewards on the host while logp is on the GPU: UNSUPPORTED, everything released
        bases = [tl, ta, torch.tensor(rewards), ti]
        before = [storage_uses(b) for b in bases]
        caps = [_export_fresh(b) for b in bases]
        ptrs = [A.consume_capsule(c) for c in caps]
        st, msg, loss, grad_ptr = obj.eval_dlpack_raw(ptrs[0], ptrs[1], ptrs[3], rewards=ptrs[2])
    assert st == A.UNSUPPORTED, (st, msg)
    assert grad_ptr is None
    assert [storage_uses(b) for b in bases] == before


@CUDA
def test_dlpack_cuda_many_iterations():
    logp, anchor, rewards, ids = make_inputs(15)
    dev = torch.device("cuda", torch.cuda.current_device())
    tl, ta, tr, ti = (torch.tensor(v, device=dev) for v in (logp, anchor, rewards, ids))
    before = [storage_uses(b) for b in (tl, ta, tr, ti)]
    torch.cuda.synchronize()
    mem0 = torch.cuda.memory_allocated()
    with A.Objective() as obj:
        first = None
        for _ in range(200):
            loss, grad = obj.eval_dlpack(tl[:], ta[:], ti[:], rewards=tr[:])
            if first is None:
                first = (loss, grad.clone())
            assert loss == pytest.approx(first[0], rel=1e-13)
            del grad
    gc.collect()
    torch.cuda.synchronize()
    assert [storage_uses(b) for b in (tl, ta, tr, ti)] == before
    assert torch.cuda.memory_allocated() - mem0 <= first[1].numel() * 8 + 4096
