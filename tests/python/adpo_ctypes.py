"""Small ctypes wrapper of adpo's C ABI (include/adpo.h), used by the Python tests and benches.

The library is loaded from $ADPO_LIB (default: target/release/libadpo.so of this checkout).
Every failing call raises AdpoError carrying the status code, its name and adpo's message.

Host entry points take anything numpy can turn into a contiguous float64 / int64 array.
The DLPack entry point works on raw DLManagedTensorVersioned pointers; helpers here take them
from PyCapsules (torch's ``__dlpack__(max_version=(1, 0))``) and wrap returned tensors back.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np

import adpo_raw as raw  # generated from include/adpo.h (make bindings)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LIB = REPO / "target" / "release" / "libadpo.so"

# adpo_status values, from the header through the generated declarations.
STATUS_NAMES = raw.adpo_status_names
STATUS = {name: code for code, name in STATUS_NAMES.items()}
globals().update(STATUS)  # OK, NULL_ARGUMENT, ...


class AdpoError(Exception):
    """A failed adpo call: `status` (int), `status_name` and adpo's `message`."""

    def __init__(self, status: int, message: str, call: str = ""):
        self.status = int(status)
        self.status_name = STATUS_NAMES.get(self.status, f"UNKNOWN({self.status})")
        self.message = message
        self.call = call
        super().__init__(f"{call}: ADPO_STATUS_{self.status_name} ({self.status}): {message}")


# --------------------------------------------------------------------------- DLPack structs
class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


# The generated declarations name this struct of dlpack.h; its layout is given here.
DLManagedTensorVersioned = raw.DLManagedTensorVersioned
DLDeleter = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))
DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", DLDeleter),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", DLTensor),
]
DLManagedPtr = ctypes.POINTER(DLManagedTensorVersioned)

kDLCPU = 1
kDLInt = 0
kDLUInt = 1
kDLFloat = 2
kDLBfloat = 4


Metrics = raw.adpo_objective_metrics
TrainerMetrics = raw.adpo_trainer_metrics


# --------------------------------------------------------------------------- loading
_dbl_p = ctypes.POINTER(ctypes.c_double)
_i64_p = ctypes.POINTER(ctypes.c_int64)
_u8_p = ctypes.POINTER(ctypes.c_uint8)
_size_p = ctypes.POINTER(ctypes.c_size_t)


def lib_path() -> str:
    return os.environ.get("ADPO_LIB") or str(DEFAULT_LIB)


_LIB: ctypes.CDLL | None = None


def load(path: str | None = None) -> ctypes.CDLL:
    """Loads (once) and returns the library with every signature declared."""
    global _LIB
    if _LIB is None or path is not None:
        lib = ctypes.CDLL(path or lib_path())
        raw.declare(lib)
        if lib.adpo_abi_version() != raw.ADPO_ABI_VERSION:
            raise RuntimeError(f"adpo ABI version {lib.adpo_abi_version()} != {raw.ADPO_ABI_VERSION} (this wrapper)")
        if path is not None:
            return lib
        _LIB = lib
    return _LIB


def version() -> str:
    return load().adpo_version().decode()


def set_num_threads(n: int) -> None:
    """libtorch's CPU thread count for the process (adpo_set_num_threads)."""
    err = ctypes.c_void_p()
    check(load().adpo_set_num_threads(n, ctypes.byref(err)), err, "adpo_set_num_threads")


def check(status: int, err: ctypes.c_void_p, call: str) -> None:
    """Raises AdpoError for a non-OK status, reading and freeing the error object."""
    lib = load()
    if status == OK:
        if err.value:
            lib.adpo_error_free(err)
            raise AssertionError(f"{call}: status OK but an error object was returned")
        return
    if not err.value:
        raise AdpoError(status, "<no error object returned>", call)
    msg = lib.adpo_error_message(err).decode("utf-8", "replace")
    err_status = lib.adpo_error_status(err)
    lib.adpo_error_free(err)
    if err_status != status:
        raise AssertionError(f"{call}: returned status {status} but the error says {err_status}: {msg}")
    raise AdpoError(status, msg, call)


def _f64(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values, expected {n}")
    return a


def _ptr(a: np.ndarray | None, typ=_dbl_p):
    return None if a is None else a.ctypes.data_as(typ)


def _take_string(lib, out: ctypes.c_void_p) -> str:
    """The text of a string adpo returned with ownership, freed."""
    try:
        return ctypes.string_at(out.value).decode()
    finally:
        lib.adpo_string_free(out)


def _ids(call, name: str) -> np.ndarray:
    """int64 ids from a C function that says how many there are when asked with no buffer:
    call(buffer or None, capacity, byref(n), byref(err)) -> status."""
    n, err = ctypes.c_size_t(), ctypes.c_void_p()
    check(call(None, 0, ctypes.byref(n), ctypes.byref(err)), err, name)
    out = np.zeros(max(n.value, 1), dtype=np.int64)
    check(call(_ptr(out, _i64_p), out.size, ctypes.byref(n), ctypes.byref(err)), err, name)
    return out[: n.value]


# --------------------------------------------------------------------------- objective
class Objective:
    """An adpo_objective handle. `config`: dict (JSON-encoded), JSON string, or None (defaults)."""

    def __init__(self, config: dict | str | None = None):
        self._lib = load()
        self._h = ctypes.c_void_p()
        if config is None:
            cfg = None
        elif isinstance(config, str):
            cfg = config.encode()
        else:
            cfg = json.dumps(config).encode()
        err = ctypes.c_void_p()
        st = self._lib.adpo_objective_new(cfg, ctypes.byref(self._h), ctypes.byref(err))
        check(st, err, "adpo_objective_new")
        assert self._h.value, "adpo_objective_new returned OK but no handle"

    @property
    def handle(self) -> ctypes.c_void_p:
        return self._h

    def close(self) -> None:
        if getattr(self, "_h", None) is not None and self._h.value:
            self._lib.adpo_objective_free(self._h)
            self._h = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def eval(self, logp, anchor_logp, group_ids, rewards=None, targets=None, policy_entropy=None,
             grad: bool = True, scores: bool = True):
        """Returns (loss, grad or None, scores or None) from the host float64 entry point.

        Uses adpo_objective_eval, or adpo_objective_eval_entropy when policy_entropy is given."""
        logp = _f64(logp, "logp")
        n = logp.size
        anchor = _f64(anchor_logp, "anchor_logp", n)
        r = None if rewards is None else _f64(rewards, "rewards", n)
        t = None if targets is None else _f64(targets, "targets", n)
        ids = np.ascontiguousarray(np.asarray(group_ids, dtype=np.int64))
        if ids.size != n:
            raise ValueError(f"group_ids has {ids.size} values, expected {n}")
        loss = ctypes.c_double(np.nan)
        g = np.full(n, np.nan) if grad else None
        s = np.full(n, np.nan) if scores else None
        err = ctypes.c_void_p()
        if policy_entropy is None:
            st = self._lib.adpo_objective_eval(
                self._h, n, _ptr(logp), _ptr(anchor), _ptr(r), _ptr(t), _ptr(ids, _i64_p),
                ctypes.byref(loss), _ptr(g), _ptr(s), ctypes.byref(err))
            check(st, err, "adpo_objective_eval")
        else:
            e = _f64(policy_entropy, "policy_entropy", n)
            st = self._lib.adpo_objective_eval_entropy(
                self._h, n, _ptr(logp), _ptr(anchor), _ptr(r), _ptr(t), _ptr(ids, _i64_p), _ptr(e),
                ctypes.byref(loss), _ptr(g), _ptr(s), ctypes.byref(err))
            check(st, err, "adpo_objective_eval_entropy")
        return loss.value, g, s

    def eval_tokens(self, logp, old_logp, mask, rewards, group_ids, ref_logp=None,
                    grad: bool = True, advantages: bool = True):
        """GRPO token level. logp/old_logp/ref_logp/mask: [n, t]. Returns (loss, grad [n, t], adv [n])."""
        logp = _f64(logp, "logp")
        if logp.ndim != 2:
            raise ValueError("logp must be [n, t]")
        n, t = logp.shape
        old = _f64(old_logp, "old_logp", n * t)
        ref = None if ref_logp is None else _f64(ref_logp, "ref_logp", n * t)
        m = _f64(mask, "mask", n * t)
        r = _f64(rewards, "rewards", n)
        ids = np.ascontiguousarray(np.asarray(group_ids, dtype=np.int64))
        if ids.size != n:
            raise ValueError(f"group_ids has {ids.size} values, expected {n}")
        loss = ctypes.c_double(np.nan)
        g = np.full((n, t), np.nan) if grad else None
        a = np.full(n, np.nan) if advantages else None
        err = ctypes.c_void_p()
        st = self._lib.adpo_objective_eval_tokens(
            self._h, n, t, _ptr(logp), _ptr(old), _ptr(ref), _ptr(m), _ptr(r), _ptr(ids, _i64_p),
            ctypes.byref(loss), _ptr(g), _ptr(a), ctypes.byref(err))
        check(st, err, "adpo_objective_eval_tokens")
        return loss.value, g, a

    def eval_dlpack_raw(self, logp, anchor_logp, group_ids, rewards=None, targets=None):
        """adpo_objective_eval_dlpack on raw DLManagedTensorVersioned pointers (int or None).

        adpo owns every non-NULL input from here on. Returns (status, message, loss, grad_ptr):
        status/message instead of raising so callers can check the error path; grad_ptr is an
        int (the caller owns it) or None."""
        def p(x):
            return ctypes.cast(ctypes.c_void_p(x), DLManagedPtr) if x else None

        loss = ctypes.c_double(np.nan)
        out = DLManagedPtr()
        err = ctypes.c_void_p()
        st = self._lib.adpo_objective_eval_dlpack(
            self._h, p(logp), p(anchor_logp), p(rewards), p(targets), p(group_ids),
            ctypes.byref(loss), ctypes.byref(out), ctypes.byref(err))
        msg = ""
        if err.value:
            msg = self._lib.adpo_error_message(err).decode("utf-8", "replace")
            self._lib.adpo_error_free(err)
        grad_ptr = ctypes.cast(out, ctypes.c_void_p).value if out else None
        return st, msg, loss.value, grad_ptr

    def eval_dlpack(self, logp, anchor_logp, group_ids, rewards=None, targets=None):
        """Torch tensors (or anything with __dlpack__) in; (loss, torch gradient) out.

        Each input is exported with __dlpack__(max_version=(1, 0)), its capsule marked as used
        (adpo owns it), and the returned gradient wrapped with torch.from_dlpack."""
        caps = [None if x is None else export_capsule(x) for x in (logp, anchor_logp, rewards, targets, group_ids)]
        ptrs = [None if c is None else consume_capsule(c) for c in caps]
        st, msg, loss, grad_ptr = self.eval_dlpack_raw(ptrs[0], ptrs[1], ptrs[4], ptrs[2], ptrs[3])
        if st != OK:
            raise AdpoError(st, msg, "adpo_objective_eval_dlpack")
        return loss, wrap_managed(grad_ptr)

    def metrics(self) -> dict:
        m = Metrics()
        m.struct_size = ctypes.sizeof(Metrics)
        err = ctypes.c_void_p()
        st = self._lib.adpo_objective_get_metrics(self._h, ctypes.byref(m), ctypes.byref(err))
        check(st, err, "adpo_objective_get_metrics")
        return {name: getattr(m, name) for name, _ in Metrics._fields_}

    def metrics_json(self) -> dict:
        out = ctypes.c_void_p()
        err = ctypes.c_void_p()
        st = self._lib.adpo_objective_metrics_json(self._h, ctypes.byref(out), ctypes.byref(err))
        check(st, err, "adpo_objective_metrics_json")
        return json.loads(_take_string(self._lib, out))


# --------------------------------------------------------------------------- PyCapsule helpers
# PyCapsule stores the name pointer, not a copy: the names must live as long as the module.
_NAME_VERSIONED = ctypes.create_string_buffer(b"dltensor_versioned")
_NAME_USED = ctypes.create_string_buffer(b"used_dltensor_versioned")

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]
_api.PyCapsule_SetName.restype = ctypes.c_int
_api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_void_p]
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]


def export_capsule(x):
    """A DLPack 1.x capsule ("dltensor_versioned") of x."""
    cap = x.__dlpack__(max_version=(1, 0))
    name = capsule_name(cap)
    if name != "dltensor_versioned":
        raise RuntimeError(f"__dlpack__(max_version=(1, 0)) gave a capsule named {name!r}")
    return cap


def capsule_name(cap) -> str:
    name = _api.PyCapsule_GetName(cap)
    return "" if name is None else name.decode()


def consume_capsule(cap) -> int:
    """Takes the DLManagedTensorVersioned* out of a capsule and renames the capsule to
    "used_dltensor_versioned", so its destructor no longer calls the deleter: ownership passes
    to whoever receives the pointer (here: adpo)."""
    ptr = _api.PyCapsule_GetPointer(cap, b"dltensor_versioned")
    if not ptr:
        raise RuntimeError("capsule holds no dltensor_versioned pointer")
    if _api.PyCapsule_SetName(cap, ctypes.addressof(_NAME_USED)) != 0:
        raise RuntimeError("PyCapsule_SetName failed")
    return ptr


def wrap_managed(ptr: int):
    """Hands a DLManagedTensorVersioned* that we own to torch (torch calls its deleter)."""
    import torch

    if not ptr:
        raise ValueError("NULL DLManagedTensorVersioned pointer")
    cap = _api.PyCapsule_New(ptr, ctypes.addressof(_NAME_VERSIONED), None)
    return torch.from_dlpack(cap)


def managed(ptr: int) -> DLManagedTensorVersioned:
    """A ctypes view of the struct behind a DLManagedTensorVersioned pointer."""
    return ctypes.cast(ctypes.c_void_p(ptr), DLManagedPtr).contents


def call_deleter(ptr: int) -> None:
    """Releases a DLManagedTensorVersioned we own by calling its deleter."""
    m = managed(ptr)
    if m.deleter:
        m.deleter(ctypes.cast(ctypes.c_void_p(ptr), DLManagedPtr))


# --------------------------------------------------------------------------- models, batches, trainers
def _json_arg(config) -> bytes | None:
    if config is None:
        return None
    if isinstance(config, bytes):
        return config
    if isinstance(config, str):
        return config.encode()
    return json.dumps(config).encode()


def _i64(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.int64))
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values, expected {n}")
    return a


def _u8(x, name: str, n: int | None = None) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(x, dtype=np.uint8))
    if n is not None and a.size != n:
        raise ValueError(f"{name} has {a.size} values, expected {n}")
    return a


class _Handle:
    """An owned adpo handle freed by `_free` (the name of the adpo_*_free function)."""

    _free = ""

    def __init__(self):
        self._lib = load()
        self._h = ctypes.c_void_p()

    @property
    def handle(self) -> ctypes.c_void_p:
        return self._h

    def close(self) -> None:
        if getattr(self, "_h", None) is not None and self._h.value:
            getattr(self._lib, self._free)(self._h)
            self._h = ctypes.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Model(_Handle):
    """An adpo_model: a Hugging Face checkpoint directory (or a TorchScript file), loaded by
    adpo_model_load (`device` None = cpu), or by adpo_model_load_options when `options` (dict or
    JSON string: device, dtype, lora, adapter) is given."""

    _free = "adpo_model_free"

    def __init__(self, path, device: str | None = None, options=None):
        super().__init__()
        err = ctypes.c_void_p()
        if options is not None:
            fn = "adpo_model_load_options"
            st = self._lib.adpo_model_load_options(str(path).encode(), _json_arg(options), ctypes.byref(self._h),
                                                   ctypes.byref(err))
        else:
            fn = "adpo_model_load"
            st = self._lib.adpo_model_load(str(path).encode(), None if device is None else device.encode(),
                                           ctypes.byref(self._h), ctypes.byref(err))
        check(st, err, fn)
        assert self._h.value, f"{fn} returned OK but no handle"

    def save(self, directory) -> None:
        """adpo_model_save: the model as a Hugging Face checkpoint directory."""
        err = ctypes.c_void_p()
        st = self._lib.adpo_model_save(self._h, str(directory).encode(), ctypes.byref(err))
        check(st, err, "adpo_model_save")

    def save_adapter(self, directory) -> None:
        """adpo_model_save_adapter: the LoRA adapters as a PEFT adapter directory."""
        err = ctypes.c_void_p()
        st = self._lib.adpo_model_save_adapter(self._h, str(directory).encode(), ctypes.byref(err))
        check(st, err, "adpo_model_save_adapter")

    def params(self) -> np.ndarray:
        """adpo_model_get_params: every trainable parameter, flattened, as float64."""
        n = ctypes.c_size_t()
        err = ctypes.c_void_p()
        check(self._lib.adpo_model_num_params(self._h, ctypes.byref(n), ctypes.byref(err)), err,
              "adpo_model_num_params")
        out = np.full(n.value, np.nan)
        check(self._lib.adpo_model_get_params(self._h, _ptr(out), n.value, ctypes.byref(err)), err,
              "adpo_model_get_params")
        return out

    def save_gguf(self, path, options=None) -> None:
        """adpo_model_save_gguf: the model (merged) as a GGUF file; options {"dtype": ...}."""
        err = ctypes.c_void_p()
        st = self._lib.adpo_model_save_gguf(self._h, str(path).encode(), _json_arg(options), ctypes.byref(err))
        check(st, err, "adpo_model_save_gguf")

    def save_adapter_gguf(self, path, options=None) -> None:
        """adpo_model_save_adapter_gguf: the LoRA adapters as a llama.cpp LoRA adapter GGUF."""
        err = ctypes.c_void_p()
        st = self._lib.adpo_model_save_adapter_gguf(self._h, str(path).encode(), _json_arg(options),
                                                    ctypes.byref(err))
        check(st, err, "adpo_model_save_adapter_gguf")

    def vocab_size(self) -> int:
        out = ctypes.c_int64(-1)
        err = ctypes.c_void_p()
        st = self._lib.adpo_model_vocab_size(self._h, ctypes.byref(out), ctypes.byref(err))
        check(st, err, "adpo_model_vocab_size")
        return out.value


class Batch(_Handle):
    """An adpo_batch. ids / attention_mask / loss_mask: [n, t] arrays (attention_mask None = all
    ones); group_ids: n ints. Optional rewards, targets, old_logp, anchor_logp are set right away."""

    _free = "adpo_batch_free"

    def __init__(self, ids, loss_mask, group_ids, attention_mask=None, rewards=None, targets=None,
                 old_logp=None, anchor_logp=None, *, _raw=None):
        super().__init__()
        if _raw is not None:  # adopt a handle adpo returned (adpo_trainer_sample)
            self._h = _raw
            return
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError("ids must be [n, t]")
        n, t = ids.shape
        ids = _i64(ids, "ids", n * t)
        lm = _u8(loss_mask, "loss_mask", n * t)
        am = None if attention_mask is None else _u8(attention_mask, "attention_mask", n * t)
        g = _i64(group_ids, "group_ids", n)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_new(n, t, _ptr(ids, _i64_p), _ptr(am, _u8_p), _ptr(lm, _u8_p),
                                      _ptr(g, _i64_p), ctypes.byref(self._h), ctypes.byref(err))
        check(st, err, "adpo_batch_new")
        assert self._h.value, "adpo_batch_new returned OK but no handle"
        if rewards is not None:
            self.set_rewards(rewards)
        if targets is not None:
            self.set_targets(targets)
        if old_logp is not None:
            self.set_old_logp(old_logp)
        if anchor_logp is not None:
            self.set_anchor_logp(anchor_logp)

    def _set(self, fn: str, values) -> None:
        v = _f64(values, fn).reshape(-1)
        err = ctypes.c_void_p()
        st = getattr(self._lib, fn)(self._h, _ptr(v), v.size, ctypes.byref(err))
        check(st, err, fn)

    def set_rewards(self, rewards) -> None:
        self._set("adpo_batch_set_rewards", rewards)

    def set_targets(self, targets) -> None:
        self._set("adpo_batch_set_targets", targets)

    def set_old_logp(self, old_logp) -> None:
        """n values (per sequence) or n * t / [n, t] (per token)."""
        self._set("adpo_batch_set_old_logp", old_logp)

    def set_anchor_logp(self, anchor_logp) -> None:
        self._set("adpo_batch_set_anchor_logp", anchor_logp)

    def shape(self) -> tuple[int, int]:
        n, t = ctypes.c_size_t(0), ctypes.c_size_t(0)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_shape(self._h, ctypes.byref(n), ctypes.byref(t), ctypes.byref(err))
        check(st, err, "adpo_batch_shape")
        return n.value, t.value

    def ids(self) -> np.ndarray:
        n, t = self.shape()
        out = np.zeros(n * t, dtype=np.int64)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_get_ids(self._h, _ptr(out, _i64_p), out.size, ctypes.byref(err))
        check(st, err, "adpo_batch_get_ids")
        return out.reshape(n, t)

    def loss_mask(self) -> np.ndarray:
        n, t = self.shape()
        out = np.zeros(n * t, dtype=np.uint8)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_get_loss_mask(self._h, _ptr(out, _u8_p), out.size, ctypes.byref(err))
        check(st, err, "adpo_batch_get_loss_mask")
        return out.reshape(n, t)

    def completion(self, row: int) -> np.ndarray:
        """adpo_batch_get_completion: row `row`'s generated ids (its ending EOS included)."""
        return _ids(lambda buf, cap, n, err: self._lib.adpo_batch_get_completion(self._h, row, buf, cap, n, err),
                    "adpo_batch_get_completion")

    def old_logp(self, per_token: bool = True) -> np.ndarray:
        """Sampling-time log-probs as the batch holds them: [n, t] per token (sampled batches),
        or [n] when they were set per sequence (per_token=False)."""
        n, t = self.shape()
        out = np.zeros(n * t if per_token else n, dtype=np.float64)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_get_old_logp(self._h, _ptr(out, _dbl_p), out.size, ctypes.byref(err))
        check(st, err, "adpo_batch_get_old_logp")
        return out.reshape(n, t) if per_token else out

    def group_ids(self) -> np.ndarray:
        n, _ = self.shape()
        out = np.zeros(n, dtype=np.int64)
        err = ctypes.c_void_p()
        st = self._lib.adpo_batch_get_group_ids(self._h, _ptr(out, _i64_p), out.size, ctypes.byref(err))
        check(st, err, "adpo_batch_get_group_ids")
        return out


class Trainer(_Handle):
    """An adpo_trainer on `policy` (a Model) with an optional `reference` Model. `config`: dict
    (JSON-encoded), JSON string, or None (defaults). Keeps the Model objects alive."""

    _free = "adpo_trainer_free"

    def __init__(self, policy: Model, reference: Model | None = None, config=None):
        super().__init__()
        self.policy, self.reference = policy, reference
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_new(policy.handle, None if reference is None else reference.handle,
                                        _json_arg(config), ctypes.byref(self._h), ctypes.byref(err))
        check(st, err, "adpo_trainer_new")
        assert self._h.value, "adpo_trainer_new returned OK but no handle"

    def step(self, batch: Batch, metrics: bool = True) -> dict | None:
        """One adpo_trainer_step; returns the adpo_trainer_metrics as a dict (None if metrics=False)."""
        m = TrainerMetrics()
        m.struct_size = ctypes.sizeof(TrainerMetrics)
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_step(self._h, batch.handle, ctypes.byref(m) if metrics else None,
                                         ctypes.byref(err))
        check(st, err, "adpo_trainer_step")
        if not metrics:
            return None
        return {name: getattr(m, name) for name, _ in TrainerMetrics._fields_}

    def metrics_json(self) -> dict:
        out = ctypes.c_void_p()
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_metrics_json(self._h, ctypes.byref(out), ctypes.byref(err))
        check(st, err, "adpo_trainer_metrics_json")
        return json.loads(_take_string(self._lib, out))

    def sample(self, prompts, k: int, sampling=None) -> Batch:
        """prompts: a list of token-id lists. Returns the sampled Batch (n_prompts * k rows)."""
        lengths = np.ascontiguousarray(np.array([len(p) for p in prompts], dtype=np.uintp))
        flat = _i64([tok for p in prompts for tok in p], "prompt_tokens")
        out = ctypes.c_void_p()
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_sample(self._h, _ptr(flat, _i64_p), _ptr(lengths, _size_p), len(prompts), k,
                                           _json_arg(sampling), ctypes.byref(out), ctypes.byref(err))
        check(st, err, "adpo_trainer_sample")
        assert out.value, "adpo_trainer_sample returned OK but no batch"
        return Batch(None, None, None, _raw=out)

    def token_logp(self, batch: Batch) -> np.ndarray:
        """adpo_trainer_token_logp: [n, t] token log-probs, 0 off the loss mask."""
        n, t = batch.shape()
        out = np.full((n, t), np.nan)
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_token_logp(self._h, batch.handle, _ptr(out), n * t, ctypes.byref(err))
        check(st, err, "adpo_trainer_token_logp")
        return out

    def _metrics_call(self, fn: str, *args) -> dict:
        m = TrainerMetrics()
        m.struct_size = ctypes.sizeof(TrainerMetrics)
        err = ctypes.c_void_p()
        st = getattr(self._lib, fn)(self._h, *args, ctypes.byref(m), ctypes.byref(err))
        check(st, err, fn)
        return {name: getattr(m, name) for name, _ in TrainerMetrics._fields_}

    def forward_backward(self, batch: Batch, grad_logp=None) -> dict:
        """adpo_trainer_forward_backward: the configured loss (None) or the host's [n, t] dL/dlogp."""
        g = None if grad_logp is None else np.ascontiguousarray(grad_logp, dtype=np.float64)
        return self._metrics_call("adpo_trainer_forward_backward", batch.handle, _ptr(g),
                                  0 if g is None else g.size)

    def forward_backward_dlpack(self, batch: Batch, grad_logp=None) -> dict:
        """adpo_trainer_forward_backward_dlpack: a torch tensor handed over through __dlpack__."""
        ptr = None if grad_logp is None else consume_capsule(export_capsule(grad_logp))
        raw = None if ptr is None else ctypes.cast(ctypes.c_void_p(ptr), DLManagedPtr)
        return self._metrics_call("adpo_trainer_forward_backward_dlpack", batch.handle, raw)

    def optim_step(self) -> dict:
        return self._metrics_call("adpo_trainer_optim_step")

    def sequence_logp(self, batch: Batch) -> np.ndarray:
        n, _ = batch.shape()
        out = np.full(n, np.nan)
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_sequence_logp(self._h, batch.handle, _ptr(out), n, ctypes.byref(err))
        check(st, err, "adpo_trainer_sequence_logp")
        return out

    def save(self, path) -> None:
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_save(self._h, str(path).encode(), ctypes.byref(err))
        check(st, err, "adpo_trainer_save")

    def load(self, path) -> None:
        err = ctypes.c_void_p()
        st = self._lib.adpo_trainer_load(self._h, str(path).encode(), ctypes.byref(err))
        check(st, err, "adpo_trainer_load")


class Tokenizer(_Handle):
    """An adpo_tokenizer: a checkpoint directory, tokenizer.json or GGUF file."""

    _free = "adpo_tokenizer_free"

    def __init__(self, path):
        super().__init__()
        err = ctypes.c_void_p()
        check(self._lib.adpo_tokenizer_load(str(path).encode(), ctypes.byref(self._h), ctypes.byref(err)), err,
              "adpo_tokenizer_load")

    def apply_chat_template(self, messages, add_generation_prompt: bool = True) -> str:
        out, err = ctypes.c_void_p(), ctypes.c_void_p()
        st = self._lib.adpo_tokenizer_apply_chat_template(self._h, json.dumps(messages).encode(),
                                                          add_generation_prompt, ctypes.byref(out),
                                                          ctypes.byref(err))
        check(st, err, "adpo_tokenizer_apply_chat_template")
        return _take_string(self._lib, out)

    def encode(self, text: str, add_special_tokens: bool = False) -> np.ndarray:
        b = text.encode()
        return _ids(lambda buf, cap, n, err: self._lib.adpo_tokenizer_encode(self._h, b, add_special_tokens, buf,
                                                                             cap, n, err),
                    "adpo_tokenizer_encode")

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        a = _i64(ids, "ids")
        out, err = ctypes.c_void_p(), ctypes.c_void_p()
        st = self._lib.adpo_tokenizer_decode(self._h, _ptr(a, _i64_p), a.size, skip_special_tokens,
                                             ctypes.byref(out), ctypes.byref(err))
        check(st, err, "adpo_tokenizer_decode")
        return _take_string(self._lib, out)
