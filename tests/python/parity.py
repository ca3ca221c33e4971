"""How close adpo's weights after training steps must be to eager PyTorch's.

float64 shows exactness: elementwise rtol 1e-9 / atol 1e-12. float32 bounds come from float32
rounding and the size of the quantities, so that they hold whichever kernels, and so summation
orders, libtorch, MKL and oneDNN pick on a given CPU:

* elementwise, |w - w_ref| <= RTOL32 |w_ref| + UPDATE32 max|w_ref - w0| over the tensor: the
  weight's own rounding (RTOL32 = 84 float32 epsilons), plus the rounding of its update. The
  update is lr times a gradient that sums many products, so its error scales with the tensor's
  largest update, not with each element: a flat atol fails on elements whose update is near
  zero while the rest of the tensor moved (2 of 7,680 embedding entries on one CPU);
* the update as a whole, |w - w_ref| <= utol |w_ref - w0| over every tensor, is what catches a
  wrong step: a bug moves the update by far more than utol.
"""

from __future__ import annotations

import math

import torch

RTOL32 = 1e-5
UPDATE32 = 1e-3
# (elementwise rtol, elementwise atol, update rtol) in float64.
EXACT64 = (1e-9, 1e-12, 1e-8)


def assert_weights_close(got: dict, want: dict, w0: dict, what: str = "", utol: float | None = None,
                         utol32: float = 2e-3):
    """got, want: name -> tensor after the same steps (adpo's, PyTorch's); w0: before them."""
    assert sorted(got) == sorted(want), what
    num = den = 0.0
    for k in want:
        g, w = got[k], want[k].detach()
        assert g.dtype == w.dtype, (what, k)
        update = (w.double() - w0[k].double()).abs()
        if w.dtype == torch.float64:
            rtol, atol, _ = EXACT64
        else:
            rtol, atol = RTOL32, max(UPDATE32 * float(update.max()), 8 * torch.finfo(w.dtype).eps * float(w.abs().max()))
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m: f"{what} {k}: {m}")
        num += float(((g.double() - w.double()) ** 2).sum())
        den += float((update ** 2).sum())
    assert den > 0, f"{what}: the reference did not move the weights"
    if utol is None:
        utol = EXACT64[2] if next(iter(want.values())).dtype == torch.float64 else utol32
    assert math.sqrt(num) <= utol * math.sqrt(den), f"{what}: update off by {math.sqrt(num / den):.2e} (relative)"
