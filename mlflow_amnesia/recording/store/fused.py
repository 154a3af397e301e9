"""The hot loops compiled, when numba is installed: the rollback's dequantise + add, and the
Recorder's per-step delta + quantise + error feedback, each fused into one pass.

``DeltaStore.sum`` adds each int8 / int4 payload to a float64 accumulator as ``out += float32(code)
* scale`` (the product rounded to float32, then added in the accumulator's dtype), payloads in
step order. numpy runs that as a cast, a multiply and an add per slice and step, each a pass
over memory; :func:`add_block_payloads` runs it as one compiled loop over each cache-sized slice,
with the same arithmetic in the same order, so the same bits (tests/store/test_encoded.py
compares them). docs/BENCHMARKS.md ("Rollback") measures both.

The Recorder's CPU step computes, per tensor, ``d = float32(theta - r)`` (float64 difference
rounded once), the block codec's ``scale = absmax / levels`` and codes ``round(d / scale)``, and
``r += float32(code * scale)``: in torch that is about ten passes over each 64K-value slice.
:func:`encode_block_tensor` does it block by block in one compiled loop with the same arithmetic
(IEEE float32 division, round half to even, the clamp and the -0.0 fold), so the same codes,
scales and ``r`` bits (tests/store/test_encoded.py); the Recorder takes it on CPU for models of
at least :data:`MIN_STEP_VALUES` recorded values (on a ResNet18 its half second of loading is
earned back in 10-30 steps), or always with ``MLFLOW_AMNESIA_FUSED=1``; ``=0`` never.

numba is optional (``pip install 'mlflow-amnesia[fast]'``; the test extra installs it). The loops
are compiled on a machine's first use and cached by numba (in ``__pycache__`` beside this file,
or numba's per-user cache where that is not writable); even cached, a process pays about half a
second to import numba and load them, which only a long rollback earns back, so ``sum`` takes the
compiled loop (:func:`wanted`) when it adds at least :data:`MIN_WORK` values (steps x values per
step: about 180 steps of a ResNet18) or when ``MLFLOW_AMNESIA_FUSED=1``; ``MLFLOW_AMNESIA_FUSED=0``
keeps numpy everywhere. ``fastmath`` stays off: no reassociation, no fused multiply-add.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ENV", "MIN_STEP_VALUES", "MIN_WORK", "add_block_payloads", "available", "encode_block_tensor", "wanted"]

#: ``1``: the compiled loops for every sum and every Recorder (where numba is installed); ``0``: never;
#: unset: :data:`MIN_WORK` and :data:`MIN_STEP_VALUES`.
ENV = "MLFLOW_AMNESIA_FUSED"
#: Values a sum adds (steps x values per step) from which the compiled loop pays for loading it:
#: it saves ~0.6 ns a value on this project's 2-core machine (bench/sum_kernels.py: 4.7 against
#: 11.5 ms per 11.2M values), against ~0.5 s a process to import numba and load its cached
#: specialisations (a few: per payload count, accumulator dtype, read-only-ness of the arrays).
MIN_WORK = 2_000_000_000
#: Recorded values per step from which the Recorder quantises with the compiled loop (a ResNet18
#: has 11.2M; bench/recording.py: it saves ~3-6 ns a value a step at batch 8 and ~1.6 at batch 128,
#: against ~0.5 s a process to load numba).
MIN_STEP_VALUES = 1_000_000

_lock = threading.Lock()
_kernel: Any = None
_encoder: Any = None
_tried = False


def _load_numba() -> Any:
    """numba, or None where it is not installed."""
    try:
        import numba
    except ImportError:
        return None
    return numba


def _build(numba: Any) -> Any:
    jit = numba.njit(cache=True, nogil=True, fastmath=False, boundscheck=False)

    @jit
    def add_blocks(out, codes, scales, block, sl, bits):  # pragma: no cover - compiled
        n = out.shape[0]
        for s in range(0, n, sl):
            e = min(n, s + sl)
            for k in range(len(codes)):
                q, sc = codes[k], scales[k]
                for b in range(s // block, (e + block - 1) // block):
                    lo, hi = max(s, b * block), min(e, (b + 1) * block)
                    f, a = sc[b], out[lo:hi]
                    if bits == 8:  # one int8 code a byte
                        c = q[lo:hi]
                        for i in range(hi - lo):  # on views LLVM vectorises it (indexing out itself: ~3x slower)
                            a[i] += np.float32(c[i]) * f
                    else:  # two nibbles a byte, the first in the low one; lo is even (whole blocks)
                        c = q[lo >> 1 : (hi + 1) >> 1]
                        for j in range((hi - lo) >> 1):
                            byte = np.int32(c[j])
                            a[2 * j] += np.float32((byte & 15) - 8) * f
                            a[2 * j + 1] += np.float32((byte >> 4) - 8) * f
                        if (hi - lo) & 1:  # a tensor's odd last value: the low nibble of its last byte
                            a[hi - lo - 1] += np.float32((np.int32(c[(hi - lo) >> 1]) & 15) - 8) * f

    @jit
    def encode_blocks(theta, r, codes, scales, block, levels, bits, feedback, d):  # pragma: no cover - compiled
        # d: float32 scratch of one block; codes: uint8 bytes (int8 codes, or nibble pairs)
        n = theta.shape[0]
        du = d.view(np.uint32)
        lv = np.float32(levels)
        for b in range((n + block - 1) // block):
            lo = b * block
            m = min(n, lo + block) - lo
            t, rr = theta[lo : lo + m], r[lo : lo + m]
            for i in range(m):
                d[i] = np.float32(np.float64(t[i]) - rr[i])  # float64 difference, rounded once
            top = np.uint32(0)  # absmax as bits: an integer max vectorises; a NaN gives a NaN
            for i in range(m):
                top = max(top, du[i] & np.uint32(0x7FFFFFFF))
            du[m] = top  # a spare slot to view the bits as float32 (the scratch has block + 1 values)
            s = d[m] / lv
            scales[b] = s
            if not s > 0:  # a zero (or NaN) scale: the block's codes are 0
                for i in range(m):
                    d[i] = 0
            else:
                for i in range(m):
                    q = np.rint(d[i] / s)
                    d[i] = min(max(q, -lv), lv) + np.float32(0.0)  # -0.0 -> +0.0
            if bits == 8:
                c = codes[lo : lo + m]
                for i in range(m):
                    c[i] = np.uint8(np.int32(d[i]) & 255)
            else:  # two nibbles a byte, the first in the low one; lo is even (whole blocks)
                c = codes[lo >> 1 : (lo + m + 1) >> 1]
                for j in range(m >> 1):
                    c[j] = np.uint8((np.int32(d[2 * j]) + 8) | ((np.int32(d[2 * j + 1]) + 8) << 4))
                if m & 1:  # the odd last value's partner is a zero code
                    c[m >> 1] = np.uint8((np.int32(d[m - 1]) + 8) | (8 << 4))
            if feedback:
                for i in range(m):
                    rr[i] += np.float64(d[i] * s)
            else:
                for i in range(m):
                    rr[i] = np.float64(t[i])

    return add_blocks, encode_blocks


def wanted(values: int, threshold: int = MIN_WORK) -> bool:
    """Whether work of ``values`` values takes the compiled loop: a sum's steps x values per step
    against :data:`MIN_WORK`, a Recorder's values per step against :data:`MIN_STEP_VALUES`."""
    mode = os.environ.get(ENV, "").strip()
    if mode == "0" or (mode != "1" and values < threshold):
        return False
    return available()


def available() -> bool:
    """Whether the compiled loops can run here: numba imports and takes them (decided once a
    process; where that fails, e.g. no writable cache directory or a broken llvmlite: a warning,
    then numpy)."""
    global _kernel, _encoder, _tried
    with _lock:
        if not _tried:
            _tried = True
            try:
                numba = _load_numba()
                if numba is not None:
                    _kernel, _encoder = _build(numba)
            except Exception as e:  # noqa: BLE001 - any failure of an optional accelerator: numpy
                _kernel = _encoder = None
                _warn(e)
    return _kernel is not None


def _warn(e: Exception) -> None:
    import warnings

    warnings.warn(
        f"the compiled loops are unavailable ({type(e).__name__}: {e}); rolling back with numpy and "
        f"recording with torch (set {ENV}=0 not to try)",
        RuntimeWarning,
        stacklevel=4,
    )


def add_block_payloads(
    out: np.ndarray, codes: Sequence[np.ndarray], scales: Sequence[np.ndarray], *, bits: int, block: int, sl: int
) -> bool:
    """``out += dequantised payload`` for each (codes, scales) in order, compiled; False (nothing
    done) where numba is not importable. ``codes``: uint8 bytes (int8 codes, or int4 nibble pairs),
    ``scales``: float32 per ``block`` values; ``out``: float32 or float64, 1-D, C-contiguous."""
    if not codes or not available():
        return False
    kernel = _kernel  # read once: _disable may clear it from another thread
    if kernel is None:
        return False
    # tuples, not numba's typed List (whose methods compile in every process): one compiled
    # specialisation per payload count, cached on disk like the rest
    cl = tuple(c.view(np.int8) if bits == 8 else c for c in codes)
    try:
        kernel(out, cl, tuple(scales), block, sl, bits)
    except Exception as e:  # noqa: BLE001 - numba refusing to compile (typing happens before any value is added)
        _disable(e)
        return False
    return True


def encode_block_tensor(
    theta: np.ndarray,
    r: np.ndarray,
    codes: np.ndarray,
    scales: np.ndarray,
    scratch: np.ndarray,
    *,
    block: int,
    levels: int,
    bits: int,
    feedback: bool,
) -> bool:
    """One tensor's recording step, compiled: ``d = float32(theta - r)`` block by block, its
    scales and codes as the block codec's ``quantize_into``, then ``r += dequantised d``
    (``feedback``) or ``r = theta``; False (nothing done) where the loop cannot run. ``theta``:
    float32/float64, ``r`` float64, both 1-D C-contiguous and of one length; ``codes``: the
    tensor's code bytes (uint8), ``scales`` float32, ``scratch`` float32 of ``block + 1`` values."""
    if not available():
        return False
    kernel = _encoder
    if kernel is None:
        return False
    try:
        kernel(theta, r, codes, scales, block, levels, bits, feedback, scratch)
    except Exception as e:  # noqa: BLE001 - numba refusing to compile: typing fails before any value is written
        _disable(e)
        return False
    return True


def _disable(e: Exception) -> None:
    global _kernel, _encoder
    with _lock:
        if _kernel is not None:
            _warn(e)
        _kernel = _encoder = None
