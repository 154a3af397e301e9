"""Delta codecs: how one tensor's float32 delta becomes bytes, and back.

Three codecs run a byte-shuffle (byte ``k`` of every element together, so the slowly varying
sign/exponent bytes compress) and then one zstd frame per tensor; ``zstd`` skips the shuffle
and is the baseline the benchmark compares against:

========  ========  ==========================================================
name      lossless  payload
========  ========  ==========================================================
``f32``   yes       the float32 values, 4 byte planes
``bf16``  no        float32 rounded to bfloat16 (nearest, ties to even), 2 planes
``int8``  no        per block of 4096 values of one tensor: a float32 scale
                    (absmax / 127, 4 planes) and round(x / scale) as int8
``int4``  no        per block of 1024 values: a float32 scale (absmax / 7, 4 planes)
                    and round(x / scale) + 8 as a nibble, two values per byte
``zstd``  yes       the float32 values unshuffled: the baseline the others beat
========  ========  ==========================================================

The block codecs (``int8``, ``int4``) also quantise *into their payload* on the model's device
(``quantize_into``: codes, block scales and the reconstructed values in one pass), so the
Recorder hands the store an :class:`Encoded` payload instead of float32 and the store only
shuffles the scales, compresses, hashes and writes (``DeltaStore.append``). Both paths store the
same bytes: ``quantize_into`` runs the arithmetic of ``quantize`` and of the numpy ``encode``.

``quantize`` (torch, CPU or CUDA) returns exactly what ``decode(encode(.))`` yields, so the
Recorder can feed the quantisation error back into the next step (docs/ARCHITECTURE.md,
"Error feedback"): rolling back every step then costs one step's quantisation error, not the
sum of all of them. ``decode`` checks the frame's declared size before it allocates anything.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import zstandard

from mlflow_amnesia.errors import ChunkCorruptedError, InputError
from mlflow_amnesia.names import Registry
from mlflow_amnesia.recording.store import fused

__all__ = [
    "CODECS",
    "Codec",
    "CODEC_NAMES",
    "DEFAULT_CODEC",
    "DEFAULT_LEVEL",
    "Encoded",
    "INT4_BLOCK",
    "INT8_BLOCK",
    "codec_from_spec",
    "get_codec",
]

#: zstd level for every codec. On real deltas level 1 compresses as well as level 3 (the
#: shuffled planes are near-random or highly redundant; little for a deeper search to find)
#: at 1.5-2x the speed (bench/store.py, "levels"), and compression must keep up with training.
DEFAULT_LEVEL = 1
#: Values per int8 scale; blocks never span two tensors.
INT8_BLOCK = 4096
#: Values per int4 scale (15 levels need finer blocks than int8's 255; bench/store.py measured it).
INT4_BLOCK = 1024
#: The codec ``DeltaStore.create`` uses when none is given (docs/BENCHMARKS.md says why).
DEFAULT_CODEC = "int8"

# Decode and accumulate in slices of this many values (a multiple of INT8_BLOCK) so the
# temporaries and the accumulator's slice stay in a core's L2 cache (the rollback's hot loop).
_SLICE = 1 << 15
_F32 = np.dtype("<f4")
_F32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32

_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """A per-thread compressor (zstd contexts must not be shared across threads)."""
    cache = getattr(_tls, "compressors", None)
    if cache is None:
        cache = _tls.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "decompressor", None)
    if d is None:
        d = _tls.decompressor = zstandard.ZstdDecompressor()
    return d


def _shuffle(a: np.ndarray) -> np.ndarray:
    """Byte planes of ``a`` (1-D, little-endian): all first bytes, then all second bytes..."""
    k = a.dtype.itemsize
    u = np.ascontiguousarray(a).view(np.uint8)
    if k == 1:
        return u
    return np.ascontiguousarray(u.reshape(-1, k).T).reshape(-1)


def _as_f32_vector(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != _F32:
        raise InputError(f"codec input must be float32, got {x.dtype}; convert the delta with .astype(np.float32)")
    return np.ascontiguousarray(x.reshape(-1))


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative int (number of values), got {n!r}")
    return int(n)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One tensor's payload before compression, as a block codec's ``quantize_into`` wrote it.

    ``codes``: the code bytes (int8 codes for ``int8``, packed nibbles for ``int4``), 1-D;
    ``scales``: one float32 scale per block, 1-D. Numpy arrays (host memory); the store copies
    them in ``append``, so the caller may reuse its buffers.
    """

    codes: np.ndarray
    scales: np.ndarray


class Codec(abc.ABC):
    """One way of storing a float32 delta tensor; stateless and thread-safe.

    Public contract (docs/ARCHITECTURE.md): ``quantize``, ``encode``, ``decode``. The store's
    rollback path uses ``decompress`` + ``add_payloads``: several steps' payloads of one tensor
    are added slice by slice, so the (float64) accumulator is streamed through the cache once
    per group of steps instead of once per step. Every path extracts values with the same
    ``_slice``, so ``decode`` and the sums agree bitwise.
    """

    name: str = ""
    lossless: bool = True

    def __init__(self, level: int = DEFAULT_LEVEL) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not -7 <= level <= 22:
            raise InputError(f"zstd level must be an int in [-7, 22], got {level!r}")
        self.level = level

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level})"

    def spec(self) -> dict[str, Any]:
        """What the manifest records to rebuild this codec."""
        return {"name": self.name, "level": self.level}

    # --- the contract -------------------------------------------------------------------

    @abc.abstractmethod
    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        """Float32 tensor, same shape and device: exactly what ``decode(encode(t))`` returns."""

    def encode(self, x: np.ndarray) -> bytes:
        """Compress one tensor's float32 values (flattened) into one zstd frame."""
        payload = self._pack(_as_f32_vector(x))
        return _compressor(self.level).compress(payload)  # type: ignore[arg-type]  # an ndarray is a buffer: no copy

    def decode(self, b: bytes, n: int) -> np.ndarray:
        """The ``n`` float32 values of frame ``b`` (1-D)."""
        n = _check_n(n)
        prep = self._prepare(self.decompress(b, n), n)
        out = np.empty(n, dtype=_F32)
        tmp = np.empty(min(n, _SLICE), dtype=_F32)
        for s in range(0, n, _SLICE):
            e = min(n, s + _SLICE)
            out[s:e] = self._slice(prep, s, e, tmp[: e - s])  # a copy keeps every bit (-0.0, NaN)
        return out

    # --- encoded payloads (block codecs) --------------------------------------------------

    #: Whether ``quantize_into`` exists: the Recorder then hands the store :class:`Encoded` payloads.
    encodes_on_device: bool = False

    def encoded_sizes(self, n: int) -> tuple[int, int]:
        """(code bytes, scales) of an :class:`Encoded` payload of ``n`` values."""
        raise NotImplementedError(f"codec {self.name!r} has no encoded payload; append float32 deltas")

    def quantize_into(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, dq: torch.Tensor) -> None:
        """Quantise float32 ``x`` (1-D, contiguous, any device) into ``codes``/``scales`` and write
        ``quantize(x)`` into ``dq``; ``x`` must start on a block boundary of its tensor."""
        raise NotImplementedError(f"codec {self.name!r} has no encoded payload; use quantize()")

    def write_encoded(self, enc: Encoded, n: int, out: np.ndarray) -> None:
        """Write the uncompressed payload of ``enc`` (``n`` values) into ``out`` (uint8, payload_size(n))."""
        raise NotImplementedError(f"codec {self.name!r} has no encoded payload; append float32 deltas")

    # --- the store's fast path ----------------------------------------------------------

    @abc.abstractmethod
    def payload_size(self, n: int) -> int:
        """Bytes of the uncompressed payload of ``n`` values."""

    def decompress(self, b: bytes | memoryview, n: int) -> bytes:
        """The payload of frame ``b``; refuses a frame declaring another size, before allocating.

        Raises :class:`ChunkCorruptedError` (without a file name: the caller adds it).
        """
        expected = self.payload_size(_check_n(n))
        try:
            declared = zstandard.frame_content_size(b)
        except zstandard.ZstdError as e:
            raise ChunkCorruptedError(f"not a zstd frame ({e})") from e
        if declared != expected:
            what = "no content size" if declared < 0 else f"{declared} bytes"
            raise ChunkCorruptedError(
                f"zstd frame declares {what} but {n} values of codec {self.name!r} take {expected} bytes"
            )
        try:
            payload = _decompressor().decompress(b, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as e:
            raise ChunkCorruptedError(f"zstd frame does not decode ({e})") from e
        if len(payload) != expected:
            raise ChunkCorruptedError(f"zstd frame decoded to {len(payload)} bytes, expected {expected}")
        return payload

    def add_payloads(self, payloads: Sequence[bytes], n: int, out: np.ndarray, *, compiled: bool = False) -> None:
        """``out += values`` of each payload in turn (``out``: float32 or float64, 1-D, length n).

        Each element receives the payloads' values in list order: the same bits as adding the
        decoded arrays one after another. ``compiled``: the block codecs add with :mod:`.fused`'s
        loop where numba is importable (the same bits); the others ignore it.
        """
        n = _check_n(n)
        preps = [self._prepare(p, n) for p in payloads]
        tmp = np.empty(min(n, _SLICE), dtype=_F32)
        for s in range(0, n, _SLICE):
            e = min(n, s + _SLICE)
            o = out[s:e]
            for prep in preps:
                np.add(o, self._slice(prep, s, e, tmp[: e - s]), out=o)

    def add_payload(self, payload: bytes, n: int, out: np.ndarray) -> None:
        """``out += values`` of one payload."""
        self.add_payloads([payload], n, out)

    @abc.abstractmethod
    def _pack(self, x: np.ndarray) -> bytes | np.ndarray:
        """The uncompressed payload of ``x`` (1-D float32)."""

    @abc.abstractmethod
    def _prepare(self, payload: bytes, n: int) -> Any:
        """Cheap views of a payload for ``_slice`` (no copy of the values)."""

    @abc.abstractmethod
    def _slice(self, prep: Any, s: int, e: int, tmp: np.ndarray) -> np.ndarray:
        """Float32 values [s, e) (``s`` a multiple of the slice size); may be written into ``tmp``."""


def _planes(payload: bytes, k: int, n: int, offset: int = 0) -> np.ndarray:
    """View ``payload[offset:]`` as ``k`` byte planes of ``n`` elements: shape (k, n)."""
    return np.frombuffer(payload, dtype=np.uint8, count=k * n, offset=offset).reshape(k, n)


class F32Codec(Codec):
    """Lossless: float32 byte planes + zstd (beats plain zstd on dense deltas)."""

    name = "f32"
    lossless = True

    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype=torch.float32, copy=True)

    def payload_size(self, n: int) -> int:
        return 4 * n

    def _pack(self, x: np.ndarray) -> np.ndarray:
        return _shuffle(x.astype(_F32, copy=False))

    def _prepare(self, payload: bytes, n: int) -> np.ndarray:
        return _planes(payload, 4, n)

    def _slice(self, prep: np.ndarray, s: int, e: int, tmp: np.ndarray) -> np.ndarray:
        t = tmp.view(np.uint8).reshape(e - s, 4)
        t[...] = prep[:, s:e].T
        return tmp


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest, ties to even; NaN -> 0x7FC0."""
    u = x.view(np.uint32)
    bias = ((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF)
    hi = ((u + bias) >> np.uint32(16)).astype(np.uint16)  # wraps only for NaNs, fixed below
    nan = np.isnan(x)
    if nan.any():
        hi[nan] = 0x7FC0
    return hi


class BF16Codec(Codec):
    """bfloat16 (8-bit significand, float32 range): relative error <= 2^-8 per value."""

    name = "bf16"
    lossless = False

    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float32).to(torch.bfloat16).to(torch.float32)

    def payload_size(self, n: int) -> int:
        return 2 * n

    def _pack(self, x: np.ndarray) -> np.ndarray:
        return _shuffle(_bf16_bits(x))

    def _prepare(self, payload: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
        return _planes(payload, 2, n), np.empty(min(n, _SLICE), dtype=np.uint16)

    def _slice(self, prep: tuple[np.ndarray, np.ndarray], s: int, e: int, tmp: np.ndarray) -> np.ndarray:
        planes, scratch = prep
        w = scratch[: e - s]
        np.left_shift(planes[1, s:e], 8, out=w, dtype=np.uint16)  # high byte, then
        np.bitwise_or(w, planes[0, s:e], out=w)  # the low byte: the bfloat16 bits
        np.left_shift(w, 16, out=tmp.view(np.uint32), dtype=np.uint32)  # float32 = bf16 << 16
        return tmp


def _check_finite(name: str, scales: np.ndarray, n: int) -> None:
    """A block codec's scales are finite exactly when its values are (absmax propagates NaN/inf)."""
    if not np.isfinite(scales).all():
        bad = int(scales.size - np.count_nonzero(np.isfinite(scales)))
        raise InputError(
            f"{name} codec cannot store non-finite values ({bad} block(s) with NaN/inf of {n} values): "
            "training diverged at this step; fix the run or record it with codec 'f32'"
        )


class _BlockCodec(Codec):
    """Blockwise absmax: per ``block`` values one float32 scale = absmax/levels, q = round(x/scale).

    Error per value <= scale/2 of its block. Non-finite values cannot be represented: ``encode``
    refuses them (a diverged step; use ``f32`` to keep it). Payload: the scales' 4 byte planes,
    then the codes (``_code_bytes``).
    """

    lossless = False
    block: int = INT8_BLOCK
    levels: int = 127
    encodes_on_device = True
    #: dtype of the codes tensor ``quantize_into`` fills (its bytes are the payload's code bytes)
    code_dtype: torch.dtype = torch.int8
    #: bits per code (8: one int8 a byte; 4: two nibbles a byte, the first in the low one)
    code_bits: int = 8

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "block": self.block}

    def _code_bytes(self, n: int) -> int:
        raise NotImplementedError

    def encoded_sizes(self, n: int) -> tuple[int, int]:
        return self._code_bytes(n), math.ceil(n / self.block)

    def payload_size(self, n: int) -> int:
        return 4 * math.ceil(n / self.block) + self._code_bytes(n)

    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        x = t.detach().to(torch.float32).reshape(-1)
        n = x.numel()
        if n == 0:
            return x.reshape(t.shape).clone()
        nb = math.ceil(n / self.block)
        xp = torch.nn.functional.pad(x, (0, nb * self.block - n)).view(nb, self.block)
        scale = xp.abs().amax(dim=1, keepdim=True) / float(self.levels)
        q = torch.where(scale > 0, torch.round(xp / scale), torch.zeros_like(xp)).clamp_(-self.levels, self.levels)
        q = q.add_(0.0)  # -0.0 -> +0.0: the codes have one zero, so decode yields +0.0 too
        return (q * scale).reshape(-1)[:n].reshape(t.shape)

    # quantize_into: the arithmetic of quantize, block by block into caller-owned buffers --------

    def quantize_into(self, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, dq: torch.Tensor) -> None:
        n, B = x.numel(), self.block
        full = n // B
        if full:
            self._q_blocks(x[: full * B].view(full, B), codes, scales[:full], dq[: full * B].view(full, B), full * B)
        if full * B < n:  # the tensor's last, partial block: zero-padded, as quantize pads
            m = n - full * B
            xp = torch.zeros(1, B, dtype=torch.float32, device=x.device)
            xp[0, :m] = x[full * B :]
            dp = torch.empty_like(xp)
            cp = torch.empty(self._code_bytes(B), dtype=codes.dtype, device=x.device)
            self._q_blocks(xp, cp, scales[full:], dp, B)
            dq[full * B :] = dp[0, :m]
            c0 = self._code_bytes(full * B)
            codes[c0:] = cp[: codes.numel() - c0]

    def _q_blocks(self, xb: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, dqb: torch.Tensor, m: int) -> None:
        """``xb``: (k, block) float32; ``codes`` from byte 0 for these ``m`` values; ``dqb`` like ``xb``."""
        torch.abs(xb, out=dqb)
        torch.div(dqb.amax(dim=1), float(self.levels), out=scales)
        s = scales.view(-1, 1)
        torch.div(xb, s, out=dqb)
        dqb.round_()
        # With every scale normal and finite, |x| / scale <= levels (1 + 2^-22) < levels + 1/2: the
        # clamp changes nothing and no block is masked. Else (CPU checks; devices always) apply both.
        lo_hi = torch.aminmax(scales) if xb.device.type == "cpu" and scales.numel() else None
        if lo_hi is None or not (float(lo_hi.min) >= _F32_TINY and float(lo_hi.max) < math.inf):
            dqb.masked_fill_(~(s > 0), 0.0)  # a zero (or NaN) scale: its block's codes are 0
            dqb.clamp_(-self.levels, self.levels)
        dqb.add_(0.0)  # -0.0 -> +0.0, as quantize
        self._put_codes(dqb.view(-1), codes)
        dqb.mul_(s)

    def _put_codes(self, q: torch.Tensor, codes: torch.Tensor) -> None:
        """Integral float codes ``q`` (in [-levels, levels]) into code bytes."""
        raise NotImplementedError

    # numpy path: the same arithmetic -----------------------------------------------------------

    def _scales_q(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same arithmetic as ``quantize``, in numpy: float32 scales and int8 codes."""
        n = x.size
        nb = math.ceil(n / self.block)
        xp: np.ndarray = np.zeros(nb * self.block, dtype=_F32)
        xp[:n] = x
        xp = xp.reshape(nb, self.block)
        scale = (np.abs(xp).max(axis=1, keepdims=True) / np.float32(self.levels)).astype(_F32)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(scale > 0, np.rint(xp / scale), np.float32(0))
        np.clip(q, -self.levels, self.levels, out=q)
        return scale.reshape(-1), q.astype(np.int8).reshape(-1)[:n]

    def _codes_np(self, q: np.ndarray) -> np.ndarray:
        """int8 codes -> code bytes (uint8)."""
        raise NotImplementedError

    def _pack(self, x: np.ndarray) -> bytes:
        if x.size == 0:
            return b""
        if not np.isfinite(x).all():
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise InputError(
                f"{self.name} codec cannot store non-finite values ({bad} NaN/inf of {x.size}): "
                "training diverged at this step; fix the run or record it with codec 'f32'"
            )
        scale, q = self._scales_q(x)
        return _shuffle(scale).tobytes() + self._codes_np(q).tobytes()

    def write_encoded(self, enc: Encoded, n: int, out: np.ndarray) -> None:
        code_bytes, nb = self.encoded_sizes(n)
        codes, scales = np.asarray(enc.codes), np.asarray(enc.scales)
        if codes.dtype.itemsize != 1 or codes.dtype.kind not in "iu" or codes.size != code_bytes:
            raise InputError(
                f"{self.name} payload of {n} values needs {code_bytes} code bytes (int8/uint8), got "
                f"{codes.size} of {codes.dtype}"
            )
        if scales.dtype != _F32 or scales.size != nb:
            raise InputError(
                f"{self.name} payload of {n} values needs {nb} float32 scales, got {scales.size} of {scales.dtype}"
            )
        _check_finite(self.name, scales, n)
        if nb:
            out[: 4 * nb].reshape(4, nb)[...] = scales.reshape(-1).view(np.uint8).reshape(nb, 4).T
        src, dst = codes.reshape(-1).view(np.uint8), out[4 * nb :]
        if src.size and src.ctypes.data != dst.ctypes.data:  # else quantised in place (DeltaStore.reserve_payload)
            dst[...] = src

    def add_payloads(self, payloads: Sequence[bytes], n: int, out: np.ndarray, *, compiled: bool = False) -> None:
        n = _check_n(n)
        if compiled and n and out.dtype in (np.float32, np.float64) and out.flags.c_contiguous:
            preps = [self._prepare(p, n) for p in payloads]
            codes, scales = [c for _, c in preps], [s for s, _ in preps]
            if fused.add_block_payloads(out, codes, scales, bits=self.code_bits, block=self.block, sl=_SLICE):
                return
        super().add_payloads(payloads, n, out)

    def _prepare(self, payload: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
        nb = math.ceil(n / self.block)
        scales = np.ascontiguousarray(_planes(payload, 4, nb).T).reshape(-1).view(_F32)
        return scales, np.frombuffer(payload, dtype=np.uint8, count=self._code_bytes(n), offset=4 * nb)

    def _codes_slice(self, codes: np.ndarray, s: int, e: int) -> np.ndarray:
        """int8 codes of values [s, e) (``s`` a multiple of the slice size)."""
        raise NotImplementedError

    def _slice(self, prep: tuple[np.ndarray, np.ndarray], s: int, e: int, tmp: np.ndarray) -> np.ndarray:
        scales, codes = prep
        B = self.block
        b0, full = s // B, (e - s) // B  # s is a multiple of the slice size, hence of B
        # int8 -> float32 (exact), then float32 x float32: the bits of numpy's mixed int8 x float32
        # multiply, in two same-dtype loops instead of one casting loop (~15% of a rollback's CPU)
        tmp[...] = self._codes_slice(codes, s, e)
        if full:
            blocks = tmp[: full * B].reshape(full, B)
            blocks *= scales[b0 : b0 + full, None]
        if full * B < e - s:  # the tensor's last, partial block
            tmp[full * B :] *= scales[b0 + full]
        return tmp


class Int8Codec(_BlockCodec):
    """Blockwise absmax int8: per 4096 values one float32 scale = absmax/127, q = round(x/scale).

    Error per value <= scale/2 = 0.4% of its block's largest magnitude.
    """

    name = "int8"
    block = INT8_BLOCK
    levels = 127
    code_dtype = torch.int8

    def _code_bytes(self, n: int) -> int:
        return n

    def _put_codes(self, q: torch.Tensor, codes: torch.Tensor) -> None:
        codes[: q.numel()].copy_(q)

    def _codes_np(self, q: np.ndarray) -> np.ndarray:
        return q.view(np.uint8)

    def _codes_slice(self, codes: np.ndarray, s: int, e: int) -> np.ndarray:
        return codes[s:e].view(np.int8)


class Int4Codec(_BlockCodec):
    """Blockwise absmax int4: per 1024 values one float32 scale = absmax/7, q = round(x/scale) in
    [-7, 7], stored as the nibble q + 8, two values per byte (the first in the low nibble).

    Error per value <= scale/2 = 7% of its block's largest magnitude: meant for error feedback
    (the Recorder carries each step's error into the next stored delta), which keeps a full
    rollback at one step's error. docs/BENCHMARKS.md measures what it does to forgetting.
    """

    name = "int4"
    block = INT4_BLOCK
    levels = 7
    code_dtype = torch.uint8
    code_bits = 4

    def _code_bytes(self, n: int) -> int:
        return (n + 1) // 2

    def _put_codes(self, q: torch.Tensor, codes: torch.Tensor) -> None:
        m = q.numel()
        if m % 2:  # the odd value's partner is a zero code
            q = torch.cat([q, torch.zeros(1, dtype=q.dtype, device=q.device)])
        q2 = q.view(-1, 2)
        packed = torch.add(q2[:, 0], q2[:, 1], alpha=16.0).add_(136.0)  # (lo + 8) + 16 (hi + 8), exact in float32
        codes[: (m + 1) // 2].copy_(packed)

    def _codes_np(self, q: np.ndarray) -> np.ndarray:
        u = (q.astype(np.int16) + 8).astype(np.uint8)
        if u.size % 2:
            u = np.concatenate([u, np.array([8], dtype=np.uint8)])
        return u[0::2] | (u[1::2] << np.uint8(4))

    def _codes_slice(self, codes: np.ndarray, s: int, e: int) -> np.ndarray:
        p = codes[s // 2 : (e + 1) // 2]
        q = np.empty(2 * p.size, dtype=np.int8)
        np.bitwise_and(p, 15, out=q[0::2].view(np.uint8))
        np.right_shift(p, 4, out=q[1::2].view(np.uint8))
        q -= 8
        return q[: e - s]


class ZstdCodec(Codec):
    """Lossless plain zstd over the raw float32 bytes: the baseline (no byte-shuffle)."""

    name = "zstd"
    lossless = True

    def quantize(self, t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype=torch.float32, copy=True)

    def payload_size(self, n: int) -> int:
        return 4 * n

    def _pack(self, x: np.ndarray) -> np.ndarray:
        return x.astype(_F32, copy=False).view(np.uint8)

    def _prepare(self, payload: bytes, n: int) -> np.ndarray:
        return np.frombuffer(payload, dtype=_F32, count=n)

    def _slice(self, prep: np.ndarray, s: int, e: int, tmp: np.ndarray) -> np.ndarray:
        return prep[s:e]


#: Every codec by name (``DeltaStore.create(codec=...)``, ``train --codec``); names are case-insensitive.
CODECS: Registry[type[Codec]] = Registry("codec", normalize=lambda n: n.strip().lower())
for _cls in (F32Codec, BF16Codec, Int8Codec, Int4Codec, ZstdCodec):
    CODECS.register(_cls.name, _cls)
CODEC_NAMES: tuple[str, ...] = CODECS.names()


def get_codec(name: str | Codec, *, level: int | None = None) -> Codec:
    """The codec called ``name`` (``f32``, ``bf16``, ``int8``, ``int4``, ``zstd``); a Codec passes through."""
    if isinstance(name, Codec):
        return name
    cls = CODECS.get(name)
    return cls(DEFAULT_LEVEL if level is None else level)


def codec_from_spec(spec: Mapping[str, Any]) -> Codec:
    """Rebuild a codec from the ``spec()`` a manifest recorded; InputError if it is not known."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise InputError(f"codec spec must be an object with a 'name', got {spec!r}")
    codec = get_codec(spec["name"], level=spec.get("level", DEFAULT_LEVEL))
    block = spec.get("block")
    if block is not None and block != getattr(codec, "block", None):
        raise InputError(
            f"codec {codec.name!r} with block {block!r} is not supported (this version uses {getattr(codec, 'block', None)})"
        )
    return codec
