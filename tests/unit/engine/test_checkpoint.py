"""Checkpoint round trip, corruption detection, retention and crash leftovers, on tmp_path files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from engine.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointIncompatible,
    _digest,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from engine.config import ModelConfig
from engine.errors import CheckpointError, ShapeMismatch
from engine.layout import init_parameters, parameter_table

CONFIG = ModelConfig(vocab_size=11, context_length=8, d_model=8, n_layer=1, n_head=2).validate()
TRAIN_STATE = {"lr": 0.00125, "tokens_trained": 4096, "rng": [1, 2, 3], "schedule": {"step": 7}}
EXTRA = {"tokenizer": {"kind": "bytes", "vocab_size": 11}, "cursor": {"doc_id": 42}}


def arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = parameter_table(CONFIG).size
    rng = np.random.default_rng(seed)
    params = init_parameters(CONFIG)
    m = rng.standard_normal(size, dtype=np.float32)
    v = rng.random(size, dtype=np.float32)
    return params, m, v


def save(directory: Path, step: int, keep_last: int = 3, **kwargs) -> Path:
    params, m, v = arrays(step)
    return save_checkpoint(
        directory, step=step, model_config=CONFIG, params=params, m=m, v=v,
        train_state=TRAIN_STATE, extra=EXTRA, keep_last=keep_last, **kwargs,
    )


def write_variant(path: Path, data: bytes) -> Path:
    out = path.with_name("variant-" + path.name)
    out.write_bytes(data)
    return out


def header_length(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


# ---------------------------------------------------------------------------------------------
# round trip


def test_round_trip_is_bit_identical(tmp_path):
    params, m, v = arrays(3)
    path = save_checkpoint(
        tmp_path / "ckpts", step=3, model_config=CONFIG, params=params, m=m, v=v,
        train_state=TRAIN_STATE, extra=EXTRA,
    )
    assert path == tmp_path / "ckpts" / "ckpt-000000003.safetensors"
    ckpt = load_checkpoint(path, expect=CONFIG)
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.path == path and ckpt.step == 3
    assert ckpt.model_config == CONFIG
    for got, want in ((ckpt.params, params), (ckpt.m, m), (ckpt.v, v)):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    assert ckpt.train_state == TRAIN_STATE
    assert ckpt.extra == EXTRA


def test_file_layout_is_plain_safetensors_with_metadata(tmp_path):
    path = save(tmp_path, 1)
    data = path.read_bytes()
    tensors = safetensors.numpy.load(data)
    assert sorted(tensors) == ["adam_m", "adam_v", "params"]
    meta = json.loads(data[8 : header_length(data)])["__metadata__"]
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert meta["step"] == "1"
    assert json.loads(meta["model_config"]) == CONFIG.to_dict()
    assert len(meta["sha256"]) == 64


def test_defaults_store_empty_dicts(tmp_path):
    params, m, v = arrays()
    path = save_checkpoint(tmp_path, step=0, model_config=CONFIG, params=params, m=m, v=v)
    ckpt = load_checkpoint(path)
    assert ckpt.train_state == {} and ckpt.extra == {}


def test_save_rejects_bad_arguments(tmp_path):
    params, m, v = arrays()
    kwargs = dict(step=1, model_config=CONFIG, params=params, m=m, v=v)
    for keep_last in (0, -2):
        with pytest.raises(ValueError, match="keep_last"):
            save_checkpoint(tmp_path, keep_last=keep_last, **kwargs)
    with pytest.raises(ShapeMismatch, match="adam_m"):
        save_checkpoint(tmp_path, **{**kwargs, "m": m[:-1]})
    with pytest.raises(ShapeMismatch, match="params"):
        save_checkpoint(tmp_path, **{**kwargs, "params": params.astype(np.float64)})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path, extra={"bad": object()}, **kwargs)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# corruption


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "ckpt-000000009.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "ckpt-000000009.safetensors" in str(info.value)
    assert info.value.path == str(path)


def test_truncation_is_detected(tmp_path):
    data = save(tmp_path, 5).read_bytes()
    header = header_length(data)
    cuts = [0, 3, 8, 9, header // 2, header - 1, header, header + 1, header + 1000,
            len(data) // 2, len(data) - 4, len(data) - 1]
    for cut in cuts:
        bad = write_variant(tmp_path / f"cut{cut}.safetensors", data[:cut])
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert bad.name in str(info.value), cut


def test_flipped_byte_is_detected(tmp_path):
    path = save(tmp_path, 5)
    data = path.read_bytes()
    header = header_length(data)
    meta_start = data.index(b'"__metadata__"')
    step_value = data.index(b'"step":"5"') + len('"step":"')
    offsets = [0, 2, 7, 8, meta_start + 3, step_value, header // 2, header - 1,  # header
               header, header + 17, (header + len(data)) // 2, len(data) - 1]  # tensor data
    for offset in offsets:
        for mask in (0x01, 0x80, 0xFF):
            corrupt = bytearray(data)
            corrupt[offset] ^= mask
            bad = write_variant(path, bytes(corrupt))
            with pytest.raises(CheckpointError) as info:
                load_checkpoint(bad)
            assert bad.name in str(info.value), (offset, mask)
    # the original is still fine
    assert load_checkpoint(path).step == 5


def test_data_flip_reports_checksum(tmp_path):
    path = save(tmp_path, 5)
    corrupt = bytearray(path.read_bytes())
    corrupt[-10] ^= 0x04
    path.write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def resave(path: Path, tensors: dict, metadata: dict) -> Path:
    return write_variant(path, safetensors.numpy.save(tensors, metadata=metadata))


def read_parts(path: Path) -> tuple[dict, dict]:
    data = path.read_bytes()
    return safetensors.numpy.load(data), json.loads(data[8 : header_length(data)])["__metadata__"]


def test_newer_format_version_is_rejected(tmp_path):
    path = save(tmp_path, 5)
    tensors, meta = read_parts(path)
    bad = resave(path, tensors, {**meta, "format_version": str(FORMAT_VERSION + 1)})
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(bad)


def test_an_intact_but_unusable_checkpoint_is_never_called_corrupt(tmp_path):
    path = save(tmp_path, 5)
    tensors, meta = read_parts(path)
    with pytest.raises(CheckpointIncompatible, match="newer than this program reads"):
        load_checkpoint(resave(path, tensors, {**meta, "format_version": str(FORMAT_VERSION + 1)}))
    with pytest.raises(CheckpointIncompatible, match="d_model: checkpoint=8 expected=16"):
        load_checkpoint(path, expect=ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=1, n_head=2))


@pytest.mark.parametrize("key", ["extra", "train_state"])
def test_metadata_that_is_not_an_object_is_rejected(tmp_path, key):
    path = save(tmp_path, 5)
    tensors, meta = read_parts(path)
    bad = {**meta, key: "[1, 2]"}
    bad["sha256"] = _digest([tensors[name] for name in ("params", "adam_m", "adam_v")], bad)  # re-signed
    with pytest.raises(CheckpointError, match="must be JSON objects"):
        load_checkpoint(resave(path, tensors, bad))


def test_missing_tensor_is_rejected(tmp_path):
    path = save(tmp_path, 5)
    tensors, meta = read_parts(path)
    del tensors["adam_v"]
    with pytest.raises(CheckpointError, match="adam_v"):
        load_checkpoint(resave(path, tensors, meta))


def test_tensor_sizes_must_fit_the_config(tmp_path):
    # a well-formed, correctly checksummed file whose tensors are sized for another model
    other = ModelConfig(vocab_size=12, context_length=8, d_model=8, n_layer=1, n_head=2)
    size = parameter_table(other).size
    zeros = np.zeros(size, dtype=np.float32)
    path = save_checkpoint(tmp_path, step=1, model_config=other, params=zeros, m=zeros, v=zeros)
    tensors, meta = read_parts(path)
    # point the metadata at CONFIG and re-sign it, so only the size check can fail
    meta = {**meta, "model_config": json.dumps(CONFIG.to_dict())}
    meta["sha256"] = _digest([tensors[k] for k in ("params", "adam_m", "adam_v")], meta)
    with pytest.raises(CheckpointError, match="sizes"):
        load_checkpoint(resave(path, tensors, meta))


def test_config_mismatch_lists_fields(tmp_path):
    path = save(tmp_path, 5)
    expect = ModelConfig(vocab_size=13, context_length=8, d_model=8, n_layer=2, n_head=2, seed=7)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, expect=expect)
    message = str(info.value)
    assert path.name in message
    assert "vocab_size: checkpoint=11 expected=13" in message
    assert "n_layer: checkpoint=1 expected=2" in message
    assert "seed" not in message  # not a shape field
    assert "d_model" not in message


# ---------------------------------------------------------------------------------------------
# directory: listing, retention, crash leftovers, newest valid


def test_retention_keeps_last_k_by_step(tmp_path):
    for step in (1, 2, 10, 3, 100, 20):
        save(tmp_path, step, keep_last=3)
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "ckpt-latest.safetensors").write_text("not ours")
    save(tmp_path, 200, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt-000000020.safetensors", "ckpt-000000100.safetensors", "ckpt-000000200.safetensors",
    ]
    assert (tmp_path / "notes.txt").exists()
    assert (tmp_path / "ckpt-latest.safetensors").exists()
    save(tmp_path, 300, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000300.safetensors"]


def test_list_orders_by_step_and_handles_missing_directory(tmp_path):
    assert list_checkpoints(tmp_path / "absent") == []
    for step in (1_000_000_000, 7, 30):  # the first overflows the 9-digit padding
        save(tmp_path, step, keep_last=10)
    steps = [load_checkpoint(p).step for p in list_checkpoints(tmp_path)]
    assert steps == [7, 30, 1_000_000_000]


def test_crash_leftover_temp_file(tmp_path):
    good = save(tmp_path, 4)
    stale = tmp_path / ".ckpt-crashed.tmp"
    stale.write_bytes(good.read_bytes()[:100])  # a write interrupted part way
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    assert list_checkpoints(tmp_path) == [good]
    ckpt, skipped = load_latest_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.step == 4 and skipped == []
    save(tmp_path, 5)  # the next save sweeps the stale leftover and leaves no temp of its own
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt-000000004.safetensors", "ckpt-000000005.safetensors",
    ]


def test_load_latest_skips_corrupt_newest(tmp_path):
    for step in (10, 20, 30):
        save(tmp_path, step)
    newest = tmp_path / "ckpt-000000030.safetensors"
    newest.write_bytes(newest.read_bytes()[:-50])
    ckpt, skipped = load_latest_checkpoint(tmp_path, expect=CONFIG)
    assert ckpt is not None and ckpt.step == 20
    assert ckpt.params.tobytes() == arrays(20)[0].tobytes()
    assert [p for p, _ in skipped] == [newest]
    assert skipped[0][1].startswith("truncated")


def test_load_latest_empty_and_all_corrupt(tmp_path):
    assert load_latest_checkpoint(tmp_path / "absent") == (None, [])
    path = save(tmp_path, 1)
    path.write_bytes(b"\0" * 5)
    ckpt, skipped = load_latest_checkpoint(tmp_path)
    assert ckpt is None and [p for p, _ in skipped] == [path]


def test_load_latest_raises_on_config_mismatch(tmp_path):
    # an intact checkpoint of another model is not skipped: resuming from an older one (or
    # from scratch) would silently abandon the run
    save(tmp_path, 1)
    save(tmp_path, 2)
    with pytest.raises(CheckpointError, match="n_head: checkpoint=2 expected=4"):
        load_latest_checkpoint(tmp_path, expect=ModelConfig(
            vocab_size=11, context_length=8, d_model=8, n_layer=1, n_head=4))
