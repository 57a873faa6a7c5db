"""The forecast of the checkpoints' disk use as the model grows (crawler/training/forecast.py): the
depths the growth rule reaches, what retention keeps at each, the file size checked against files
the engine writes, and `crystalline status` (text and JSON) on a state directory holding a real
small checkpoint, with the cap's warning when the largest shape would not fit."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import structlog

from crawler.cli.main import main
from crawler.config import Config, GrowthConfig
from crawler.training.checkpoints import CheckpointStore
from crawler.training.forecast import (
    HEADER_BYTES,
    forecast_checkpoints,
    header_allowance,
)
from crawler.training.growth import grown_depth, reachable_depths
from engine import ModelConfig, TrainConfig, count_parameters, init_parameters, save_checkpoint
from engine.checkpoint import tensor_bytes
from storage import CorpusQueue, StorageConfig, open_database

ON = GrowthConfig(enabled=True)  # max_layers 12, factor 2
MODEL = ModelConfig(vocab_size=257, context_length=16, d_model=32, n_layer=1, n_head=2)


@pytest.fixture(autouse=True)
def reset_structlog():
    """main() points structlog at the captured stderr; leave no stale stream to later tests."""
    yield
    structlog.reset_defaults()


def run(capture, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    out, err = capture.readouterr()
    return status, out, err


def write(directory: Path, model: ModelConfig, step: int, name: str | None = None, **metadata) -> Path:
    """A checkpoint as the engine writes it, with a header of the daemon's kind."""
    params = init_parameters(model)
    moments = np.full_like(params, 0.5)
    train_state = {"tokens_seen": 1_234_567, "train_config": TrainConfig().to_dict(), "growth": []}
    extra = {"command": "run", "stream_position": 987_654, "tokens_trained": 876_543, "val_bits_per_byte": 2.4567,
             "tokenizer": {"kind": "byte", "version": 1, "vocab_size": 257}, "stream_digest": "f" * 64} | metadata
    return save_checkpoint(directory, step=step, model_config=model, params=params, m=moments, v=moments,
                           train_state=train_state, extra=extra, keep_last=None, name=name)


# ---------------------------------------------------------------------------------------------
# the depths the rule reaches


@pytest.mark.parametrize("n_layer, config, depth_set_in, depths", [
    (4, GrowthConfig(), "", [4]),  # off by default
    (4, ON, "", [4, 8, 12]),  # doubled, then capped at max_layers
    (1, ON, "", [1, 2, 4, 8, 12]),
    (4, replace(ON, factor=1.5), "", [4, 6, 9, 12]),  # round(13.5) = 14, capped
    (4, replace(ON, factor=1.1), "", list(range(4, 13))),  # at least one block a growth
    (4, ON, "crystalline.toml", [4]),  # a depth set by hand stays
    (12, ON, "", [12]),  # at the ceiling
    (16, ON, "", [16]),  # grown by hand past it
])
def test_the_depths_growth_reaches(n_layer, config, depth_set_in, depths):
    assert reachable_depths(n_layer, config, depth_set_in) == depths
    assert all(grown_depth(a, config) == b for a, b in zip(depths, depths[1:]))  # the policy's own step


# ---------------------------------------------------------------------------------------------
# the forecast, pure


def test_growth_off_forecasts_the_present_shape_kept_keep_plus_best():
    forecast = forecast_checkpoints(replace(MODEL, n_layer=4), keep=3, growth=GrowthConfig(), header_bytes=3_000)
    file_bytes = 12 * count_parameters(replace(MODEL, n_layer=4)) + 3_000  # 3 float32 tensors
    assert (forecast.growth, forecast.depths, forecast.files) == ("off", (4,), 4)
    assert forecast.now == forecast.largest
    assert (forecast.largest.n_layer, forecast.largest.file_bytes, forecast.largest.bytes) == (4, file_bytes,
                                                                                               4 * file_bytes)
    assert forecast.peak_bytes == 5 * file_bytes  # the new checkpoint before prune deletes the oldest
    assert forecast.fits is None and forecast.to_dict()["fits"] is None  # no cap


def test_growth_on_forecasts_the_deepest_shape_with_growth_s_history_in_the_header():
    forecast = forecast_checkpoints(MODEL, keep=2, growth=ON, header_bytes=3_000, cap_bytes=5_000_000)
    deepest = replace(MODEL, n_layer=12)
    assert (forecast.growth, forecast.depths) == ("on", (1, 2, 4, 8, 12))
    assert forecast.now.file_bytes == tensor_bytes(MODEL) + 3_000  # the present file's header as measured
    assert forecast.largest.parameters == count_parameters(deepest)
    assert forecast.largest.file_bytes == tensor_bytes(deepest) + header_allowance(ON)
    assert header_allowance(ON) > HEADER_BYTES == header_allowance(GrowthConfig())
    assert forecast.largest.bytes == 3 * forecast.largest.file_bytes
    assert forecast.largest.bytes > 5_000_000 and forecast.fits is False
    roomy = forecast_checkpoints(MODEL, keep=2, growth=ON, header_bytes=3_000, cap_bytes=50_000_000)
    assert roomy.fits is True
    # a lower ceiling or fewer checkpoints kept: what the warning tells the user to change
    assert forecast_checkpoints(MODEL, keep=2, growth=replace(ON, max_layers=4), header_bytes=3_000,
                                cap_bytes=5_000_000).fits is True
    assert forecast_checkpoints(MODEL, keep=1, growth=replace(ON, max_layers=8), header_bytes=3_000,
                                cap_bytes=5_000_000).largest.bytes < forecast.largest.bytes


def test_a_depth_set_by_hand_or_at_the_ceiling_forecasts_no_growth():
    fixed = forecast_checkpoints(replace(MODEL, n_layer=6), keep=3, growth=ON, depth_set_in="--layers")
    assert (fixed.growth, fixed.depths, fixed.largest.n_layer) == ("depth_set", (6,), 6)
    assert fixed.now.file_bytes == tensor_bytes(replace(MODEL, n_layer=6)) + header_allowance(ON)  # no file yet
    ceiling = forecast_checkpoints(replace(MODEL, n_layer=12), keep=3, growth=ON)
    assert (ceiling.growth, ceiling.depths) == ("max_layers", (12,))


# ---------------------------------------------------------------------------------------------
# the estimate against the engine's files


@pytest.mark.parametrize("architecture", [{}, {"norm": "rmsnorm", "positions": "rope", "tie_head": False}])
def test_the_file_size_estimate_matches_the_engine_s_files(tmp_path, architecture):
    small = replace(MODEL, **architecture)
    path = write(tmp_path, small, 4)
    header = path.stat().st_size - tensor_bytes(small)
    assert 0 < header < HEADER_BYTES  # a daemon's header is within the allowance of a file without a header
    # the forecast from the small file's header, against the file of the grown model
    forecast = forecast_checkpoints(small, keep=3, growth=replace(ON, max_layers=4), header_bytes=header)
    grown = write(tmp_path, replace(small, n_layer=4), 8)
    assert forecast.now.file_bytes == path.stat().st_size
    assert forecast.largest.n_layer == 4
    estimate_grown_header = forecast.largest.file_bytes - header_allowance(ON) + header
    assert abs(estimate_grown_header - grown.stat().st_size) <= 64  # the shapes' digits, the padding
    # the allowance errs high, never low, and by a small share of a file
    assert 0 <= forecast.largest.file_bytes - grown.stat().st_size <= header_allowance(ON)
    unknown = forecast_checkpoints(small, keep=3, growth=GrowthConfig())  # no file to measure yet
    assert 0 <= unknown.now.file_bytes - path.stat().st_size <= HEADER_BYTES


# ---------------------------------------------------------------------------------------------
# `crystalline status`


def state_with_a_checkpoint(state: Path) -> list[Path]:
    """A state directory whose store names one real checkpoint (d_model 32, 1 layer), with
    best.safetensors beside it."""
    (state / "checkpoints").mkdir(parents=True)
    database = open_database(StorageConfig(url=f"sqlite:///{state / 'corpus.db'}").validate())
    try:
        store = CheckpointStore(state, CorpusQueue(database))
        path = write(store.directory, MODEL, 4)
        store.queue.commit_checkpoint(step=4, path=store.stored_path(path), stream_position=0, tokens_trained=0)
        best = write(store.directory, MODEL, 4, name="best.safetensors")
    finally:
        database.close()
    return [path, best]


def status(capsys, state: Path, settings: str) -> tuple[dict, list[str]]:
    (state / "crystalline.toml").write_text(settings)
    code, out, err = run(capsys, "status", "--json", "--state-dir", state)
    assert code == 0, err
    report = json.loads(out)
    code, out, err = run(capsys, "status", "--state-dir", state)
    assert code == 0, err
    return report, out.splitlines()


def test_status_forecasts_the_checkpoints_at_the_deepest_shape_and_warns_over_the_cap(capsys, tmp_path):
    state = tmp_path / "state"
    files = state_with_a_checkpoint(state)
    growing = "[daemon]\nkeep_checkpoints = 2\ncheckpoints_max_mb = 5\n[growth]\nenabled = true\nmax_layers = 16\n"
    report, lines = status(capsys, state, growing)
    forecast = report["checkpoint_forecast"]
    used = sum(p.stat().st_size for p in files)
    deepest = replace(MODEL, n_layer=16)
    assert forecast["used_bytes"] == used == report["disk"]["checkpoints"]["bytes"]  # measured
    assert (forecast["growth"], forecast["depths"]) == ("on", [1, 2, 4, 8, 16])
    assert (forecast["keep"], forecast["files"]) == (2, 3)  # 2 rolling files and best.safetensors
    assert forecast["now"]["file_bytes"] == files[0].stat().st_size  # its own header
    assert forecast["largest"]["n_layer"] == 16 and forecast["largest"]["parameters"] == count_parameters(deepest)
    assert forecast["largest"]["file_bytes"] == tensor_bytes(deepest) + header_allowance(ON)
    assert forecast["largest"]["bytes"] == 3 * forecast["largest"]["file_bytes"] > 5_000_000
    assert (forecast["cap_bytes"], forecast["fits"]) == (5_000_000, False)
    mb = lambda size: f"{size / 1e6:.1f} MB"  # noqa: E731
    line = next(line for line in lines if line.startswith("forecast "))
    assert line == (f"forecast   checkpoints {mb(used)} now, about {mb(forecast['largest']['bytes'])} at 16 layers "
                    f"(after 4 growths; 2 kept and best.safetensors, {mb(forecast['largest']['file_bytes'])} each); "
                    "over the cap of 5.0 MB")
    assert lines[lines.index(line) - 1].startswith("disk       ")  # beside the disk use
    assert lines[lines.index(line) + 1] == (
        f"warning    at 16 layers the checkpoints kept would take about {mb(forecast['largest']['bytes'])}, over "
        "checkpoints_max_mb (5.0 MB): the cap would delete some that keep_checkpoints keeps; raise [daemon] "
        "checkpoints_max_mb, or lower [daemon] keep_checkpoints or [growth] max_layers")

    # a cap with room: it fits, and no warning
    report, lines = status(capsys, state, growing.replace("checkpoints_max_mb = 5", "checkpoints_max_mb = 50"))
    assert report["checkpoint_forecast"]["fits"] is True
    assert next(line for line in lines if line.startswith("forecast ")).endswith("; within the cap of 50.0 MB")
    assert not any(line.startswith("warning ") for line in lines)

    # growth off (the default): the present shape, measured, and no cap named
    report, lines = status(capsys, state, "[daemon]\nkeep_checkpoints = 2\n")
    forecast = report["checkpoint_forecast"]
    assert (forecast["growth"], forecast["depths"], forecast["fits"]) == ("off", [1], None)
    assert forecast["largest"] == forecast["now"] and forecast["now"]["bytes"] == 3 * files[0].stat().st_size
    assert next(line for line in lines if line.startswith("forecast ")) == (
        f"forecast   checkpoints {mb(used)} now, about {mb(forecast['largest']['bytes'])} at 1 layers (growth off; "
        f"2 kept and best.safetensors, {mb(files[0].stat().st_size)} each)")

    # growth off, more kept than the cap holds: the warning names only what changes it
    report, lines = status(capsys, state, "[daemon]\nkeep_checkpoints = 4\ncheckpoints_max_mb = 1\n")
    assert report["checkpoint_forecast"]["fits"] is False
    warning = next(line for line in lines if line.startswith("warning "))
    assert warning.startswith("warning    at 1 layers the checkpoints kept would take about 1.3 MB, over "
                              "checkpoints_max_mb (1.0 MB)")
    assert warning.endswith("raise [daemon] checkpoints_max_mb, or lower [daemon] keep_checkpoints")

    # the depth set by hand: no growth, so the cap that a growing model would outgrow fits
    report, lines = status(capsys, state, growing + "[model]\nn_layer = 1\n")
    assert (report["checkpoint_forecast"]["growth"], report["checkpoint_forecast"]["fits"]) == ("depth_set", True)
    assert "(growth off: the depth was set by hand; 2 kept" in next(line for line in lines
                                                                   if line.startswith("forecast "))


def test_status_forecasts_a_fresh_state_directory_from_the_configuration(capsys, tmp_path):
    """No store and no checkpoint yet: the model the daemon would build, and the cap checked before
    the first checkpoint is written."""
    state = tmp_path / "fresh"
    state.mkdir()
    report, lines = status(capsys, state, "[daemon]\ncheckpoints_max_mb = 1\n[growth]\nenabled = true\n")
    forecast = report["checkpoint_forecast"]
    assert report["exists"] is False and forecast["used_bytes"] == 0
    assert forecast["depths"] == [4, 8, 12]  # the product's default depth, grown to max_layers
    assert forecast["now"]["parameters"] == count_parameters(Config().model)  # the byte vocabulary
    assert forecast["fits"] is False
    warning = next(line for line in lines if line.startswith("warning "))
    assert warning.startswith("warning    at 12 layers the checkpoints kept would take about ")
    assert "over checkpoints_max_mb (1.0 MB)" in warning and warning.endswith("or [growth] max_layers")
