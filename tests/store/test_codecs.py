"""Codecs: the quantize/encode/decode contract the Recorder's error feedback relies on."""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
import torch

from mlflow_amnesia.errors import ChunkCorruptedError, InputError
from mlflow_amnesia.recording.store.codecs import CODEC_NAMES, INT8_BLOCK, get_codec

SIZES = [0, 1, 7, INT8_BLOCK - 1, INT8_BLOCK, INT8_BLOCK + 1, 3 * INT8_BLOCK + 5]


def _delta(n: int, seed: int = 0) -> np.ndarray:
    """Dense, delta-like values: mostly small, a few larger (as SGD updates look)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 1e-3 * np.exp(rng.standard_normal(n))
    return x.astype(np.float32)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _int8_tolerance(q: np.ndarray) -> np.ndarray:
    """float32 rounding of the scale, per value: 2 ulp of each block's largest magnitude."""
    n = q.size
    nb = -(-n // INT8_BLOCK)
    pad = np.zeros(nb * INT8_BLOCK, np.float32)
    pad[:n] = np.abs(q)
    blockmax = pad.reshape(nb, INT8_BLOCK).max(axis=1)
    return np.repeat(np.spacing(blockmax) * 2, INT8_BLOCK)[:n]


def test_unknown_codec_name_lists_the_known_ones():
    with pytest.raises(InputError) as e:
        get_codec("fp8")
    for name in CODEC_NAMES:
        assert name in str(e.value)


def test_codec_flags():
    assert {n: get_codec(n).lossless for n in CODEC_NAMES} == {"f32": True, "bf16": False, "int8": False, "int4": False, "zstd": True}


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_decode_encode_quantize_is_quantize(name, n):
    """decode(encode(quantize(x))) == quantize(x): bitwise for f32/bf16/zstd, float32 rounding for int8."""
    codec = get_codec(name)
    x = _delta(n, seed=n)
    q = codec.quantize(torch.from_numpy(x)).numpy()
    assert q.dtype == np.float32 and q.shape == x.shape
    back = codec.decode(codec.encode(q), n)
    assert back.dtype == np.float32 and back.shape == (n,)
    if name == "int8":
        np.testing.assert_array_less(np.abs(back - q), _int8_tolerance(q) + 1e-45)
    else:
        np.testing.assert_array_equal(_bits(back), _bits(q))
    # encode(x) without quantize first yields the same values: quantize predicts the store.
    direct = codec.decode(codec.encode(x), n)
    if name == "int8":
        np.testing.assert_array_less(np.abs(direct - q), _int8_tolerance(q) + 1e-45)
    else:
        np.testing.assert_array_equal(_bits(direct), _bits(q))


def test_int8_reencoding_a_quantized_delta_keeps_its_values():
    codec = get_codec("int8")
    x = _delta(5 * INT8_BLOCK + 123, seed=1)
    q = codec.quantize(torch.from_numpy(x)).numpy()
    once = codec.decode(codec.encode(q), q.size)
    twice = codec.decode(codec.encode(once), q.size)
    np.testing.assert_array_less(np.abs(twice - q), _int8_tolerance(q) + 1e-45)
    np.testing.assert_array_less(np.abs(once - q), _int8_tolerance(q) + 1e-45)
    # at most 255 distinct values per block: it really is int8 + a scale
    assert all(len(np.unique(once[s : s + INT8_BLOCK])) <= 255 for s in range(0, once.size, INT8_BLOCK))


@pytest.mark.parametrize("name", ["f32", "zstd"])
def test_lossless_codecs_keep_every_bit(name):
    x = _delta(10_000)
    x[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, -3.4e38, np.float32(1) / 3]
    codec = get_codec(name)
    np.testing.assert_array_equal(_bits(codec.decode(codec.encode(x), x.size)), _bits(x))
    np.testing.assert_array_equal(_bits(codec.quantize(torch.from_numpy(x)).numpy()), _bits(x))


def test_bf16_rounds_to_nearest_even_like_torch():
    special = np.array(
        [0.0, -0.0, 1.0, 1.00390625, 1.005859375, 1.0078125 + 2**-9, -2.5e-40, 1e-45, 3.3961776e38, 3.4e38, np.inf, -np.inf],
        dtype=np.float32,
    )
    ties = (np.arange(1, 200, dtype=np.uint32) << 16 | 0x8000).view(np.float32)  # exact halfway cases
    x = np.concatenate([special, ties, _delta(50_000)])
    codec = get_codec("bf16")
    expected = torch.from_numpy(x).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(_bits(codec.quantize(torch.from_numpy(x)).numpy()), _bits(expected))
    np.testing.assert_array_equal(_bits(codec.decode(codec.encode(x), x.size)), _bits(expected))
    finite = np.isfinite(expected) & (np.abs(x) > 1e-37)  # 3.4e38 overflows to inf, as in torch
    rel = np.abs(expected[finite] - x[finite]) / np.abs(x[finite])
    assert rel.max() <= 2.0**-8  # half an ulp of an 8-bit significand


def test_bf16_keeps_nan_a_nan():
    codec = get_codec("bf16")
    x = np.array([np.nan, 1.0, -np.nan], dtype=np.float32)
    assert np.isnan(codec.decode(codec.encode(x), 3)).tolist() == [True, False, True]
    assert torch.isnan(codec.quantize(torch.from_numpy(x))).tolist() == [True, False, True]


def test_int8_error_is_at_most_half_a_step_of_its_own_block():
    """Blocks are per tensor and independent: a large value only coarsens its own block."""
    codec = get_codec("int8")
    x = _delta(3 * INT8_BLOCK, seed=3)
    x[INT8_BLOCK + 10] = 5.0  # an outlier in block 1
    back = codec.decode(codec.encode(x), x.size)
    blocks = x.reshape(3, INT8_BLOCK)
    step = np.abs(blocks).max(axis=1) / 127
    err = np.abs(back - x).reshape(3, INT8_BLOCK).max(axis=1)
    assert np.all(err <= step / 2 * (1 + 1e-5))
    assert err[0] < 0.05 * err[1] and err[2] < 0.05 * err[1]


def test_int8_zero_block_and_refuses_non_finite():
    codec = get_codec("int8")
    z = np.zeros(INT8_BLOCK + 3, np.float32)
    assert not codec.decode(codec.encode(z), z.size).any()
    bad = _delta(100)
    bad[5] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        codec.encode(bad)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_quantize_keeps_shape_and_gives_float32(name):
    codec = get_codec(name)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        t = torch.randn(3, 5, 7, dtype=dtype)
        q = codec.quantize(t)
        assert q.dtype == torch.float32 and q.shape == t.shape and q.device == t.device
    t = torch.randn(10)
    assert codec.quantize(t).data_ptr() != t.data_ptr()  # a new tensor: callers may mutate either


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", CODEC_NAMES)
def test_quantize_on_cuda_matches_cpu(name):
    codec = get_codec(name)
    x = _delta(3 * INT8_BLOCK + 77, seed=5)
    cpu = codec.quantize(torch.from_numpy(x))
    gpu = codec.quantize(torch.from_numpy(x).cuda())
    assert gpu.is_cuda and gpu.dtype == torch.float32
    back = codec.decode(codec.encode(gpu.cpu().numpy()), x.size)
    if name == "int8":
        np.testing.assert_array_less(np.abs(gpu.cpu().numpy() - cpu.numpy()), _int8_tolerance(cpu.numpy()) + 1e-45)
        np.testing.assert_array_less(np.abs(back - gpu.cpu().numpy()), _int8_tolerance(cpu.numpy()) + 1e-45)
    else:
        np.testing.assert_array_equal(_bits(gpu.cpu().numpy()), _bits(cpu.numpy()))
        np.testing.assert_array_equal(_bits(back), _bits(gpu.cpu().numpy()))


def test_byte_shuffle_beats_plain_zstd_on_deltas():
    x = _delta(200_000)
    assert len(get_codec("f32").encode(x)) < 0.95 * len(get_codec("zstd").encode(x))
    assert len(get_codec("bf16").encode(x)) < 0.6 * len(get_codec("f32").encode(x))
    assert len(get_codec("int8").encode(x)) < 0.8 * len(get_codec("bf16").encode(x))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_refuses_a_frame_of_another_size(name):
    codec = get_codec(name)
    frame = codec.encode(_delta(1000))
    k = 1 if codec.payload_size(999) != codec.payload_size(1000) else 2  # int4: two values per byte
    with pytest.raises(ChunkCorruptedError, match="declares"):
        codec.decode(frame, 1000 - k)
    with pytest.raises(ChunkCorruptedError, match="declares"):
        codec.decode(frame, 1000 + k)


def test_decode_refuses_a_huge_declared_size_before_allocating():
    # zstd frame header: magic, descriptor (8-byte content size, single segment), size = 1 TiB
    frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00"
    tracemalloc.start()
    try:
        with pytest.raises(ChunkCorruptedError, match="declares"):
            get_codec("f32").decode(frame, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_decode_refuses_truncated_or_padded_frames(name):
    codec = get_codec(name)
    frame = codec.encode(_delta(5000))
    with pytest.raises(ChunkCorruptedError):
        codec.decode(frame[: len(frame) // 2], 5000)
    with pytest.raises(ChunkCorruptedError):
        codec.decode(frame + b"\x00" * 16, 5000)
    with pytest.raises(ChunkCorruptedError):
        codec.decode(b"not zstd at all", 5000)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_add_payload_into_float64_adds_the_decoded_values(name):
    codec = get_codec(name)
    x = _delta(3 * INT8_BLOCK + 9, seed=7)
    frame = codec.encode(x)
    acc = np.full(x.size, 0.25, dtype=np.float64)
    codec.add_payload(codec.decompress(frame, x.size), x.size, acc)
    np.testing.assert_array_equal(acc, 0.25 + codec.decode(frame, x.size).astype(np.float64))


def test_encode_refuses_non_float32_input():
    with pytest.raises(InputError, match="float32"):
        get_codec("f32").encode(np.zeros(4, np.float64))
