"""crawler.bench.throughput: the FLOP count against an independent count of every matmul, the peak and
timing helpers on tiny inputs, `main --json` on the hidden tiny config, and its configs against the
one table of named sizes (engine.sizes)."""

import argparse
import json
import math
import sys

import pytest

from crawler.bench import throughput as bench
from engine import ConfigError, ModelConfig
from engine.sizes import SIZES, parse_size


def matmul_flops_by_hand(config: ModelConfig, B: int, T: int) -> float:
    """Training FLOPs of one (B, T) batch, summed over each forward matmul (M x K) @ (K x N),
    2*M*K*N, times 3 for forward plus the backward's two matmuls."""
    V, C, L, NH = config.vocab_size, config.d_model, config.n_layer, config.n_head
    hs, H = C // NH, config.mlp_ratio * C
    BT = B * T

    def mm(M, K, N):
        return 2 * M * K * N

    per_layer = (
        mm(BT, C, 3 * C)  # qkv = ln1 @ qkvw.T
        + B * NH * mm(T, hs, T)  # scores = q @ k.T over the full square
        + B * NH * mm(T, T, hs)  # y = att @ v
        + mm(BT, C, C)  # attention projection
        + mm(BT, C, H)  # fc
        + mm(BT, H, C)  # fcproj
    )
    forward = L * per_layer + mm(BT, C, V)  # + the tied head
    return 3 * forward


def test_flops_per_token_matches_counting_every_matmul():
    config = ModelConfig(vocab_size=257, context_length=16, d_model=16, n_layer=2, n_head=2).validate()
    B, T = 4, 16
    assert bench.flops_per_token(config, T) == matmul_flops_by_hand(config, B, T) / (B * T)


def test_flops_per_token_for_config_s_is_what_the_docstring_formula_gives():
    # S: N = 4 * (12 * 128^2) + 257 * 128 = 819,328 matmul weights; 6N + 12 * 4 * 128 * 128
    config = bench.CONFIGS["S"].model_config()
    assert bench.flops_per_token(config, 128) == 6 * 819_328 + 12 * 4 * 128 * 128


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_peak_is_positive_and_quick_on_tiny_matrices(threads):
    gflops = bench.measure_matmul_peak(threads, size=32, repeats=2, rounds=1)
    assert math.isfinite(gflops) and gflops > 0


def test_time_steps_runs_warmup_untimed_then_times_each_step():
    calls, ticks = [], iter(range(100))
    durations = bench.time_steps(calls.append, steps=3, warmup=2, clock=lambda: next(ticks))
    assert calls == [0, 1, 2, 3, 4]
    assert durations == [1, 1, 1]  # the injected clock advances one tick per reading


def test_random_batches_targets_are_inputs_shifted_by_one():
    (inputs, targets), *_ = bench.random_batches(257, B=2, T=8, count=3)
    assert inputs.shape == targets.shape == (2, 8) and inputs.dtype.name == "int32"
    assert (inputs[:, 1:] == targets[:, :-1]).all()
    assert 0 <= inputs.min() and max(inputs.max(), targets.max()) < 257


def test_parse_list_names_what_is_allowed():
    assert bench.parse_list("S, M", bench.CONFIGS, "config") == ["S", "M"]
    assert bench.parse_list("1,2", what="threads") == [1, 2]
    with pytest.raises(ValueError, match="choose from S, M, L"):
        bench.parse_list("S,XL", {**bench.CONFIGS, **bench.HIDDEN_CONFIGS}, "config")
    with pytest.raises(ValueError, match="positive"):
        bench.parse_list("0", what="threads")


def test_start_time_is_timed_in_a_subprocess_with_the_given_cache_dir(tmp_path):
    snippet = f"import os; assert os.environ['NUMBA_CACHE_DIR'] == {str(tmp_path)!r}"
    assert bench.measure_start_time(str(tmp_path), snippet=snippet) > 0
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        bench.measure_start_time(str(tmp_path), snippet="1 / 0")


def parse_bench_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_add_arguments_registers_the_documented_flags_and_defaults():
    args = parse_bench_args()
    assert (args.json, args.compare_torch, args.configs, args.threads) == (False, False, "S,M,L", "1,2")
    assert args.steps >= 1 and args.warmup >= 0


def test_main_rejects_an_unknown_config(capsys):
    assert bench.main(parse_bench_args("--configs", "XL")) == 2
    assert "unknown config XL" in capsys.readouterr().err


def run_tiny_main(capsys, *extra: str) -> dict:
    args = parse_bench_args(
        "--json", "--configs", "tiny", "--threads", "1,2", "--steps", "2", "--warmup", "1",
        "--peak-size", "32", "--skip-start-time", *extra,
    )
    assert bench.main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_main_json_on_the_tiny_config_has_every_measurement(capsys):
    report = run_tiny_main(capsys)
    assert {"machine", "peak_gflops", "start_time", "configs", "compare_torch"} <= set(report)
    assert [p["threads"] for p in report["peak_gflops"]] == [1, 2]
    (config,) = report["configs"]
    assert config["name"] == "tiny" and config["flops_per_token"] > 0
    assert [r["threads"] for r in config["results"]] == [1, 2]
    for r in config["results"]:
        for key in ("tokens_per_s", "parallel_efficiency", "gflops", "mfu", "memory_per_thread_mb",
                    "update_ms_median", "compute_ms_median"):
            assert r[key] > 0, key
        # MFU counts the forward, backward and reduction only; the update is the rest of the step
        assert r["compute_ms_median"] < r["step_ms_median"]
        assert r["update_share"] == pytest.approx(r["update_ms_median"] / r["step_ms_median"])
    assert config["results"][0]["parallel_efficiency"] == 1.0
    assert report["arch"] == config["arch"] == "product"


@pytest.mark.parametrize("arch", ["product", "gpt2"])
def test_arch_chooses_the_products_defaults_or_gpt2(arch):
    from crawler.config import DAEMON_DEFAULTS

    model, train = bench.CONFIGS["S"].model_config(arch), bench.CONFIGS["S"].train_config(2, arch)
    if arch == "product":
        assert model.positions == DAEMON_DEFAULTS["model"]["positions"] == "rope"
        assert (train.optimizer, train.muon_lr) == (DAEMON_DEFAULTS["train"]["optimizer"], DAEMON_DEFAULTS["train"]["muon_lr"])
    else:
        assert (model.positions, train.optimizer) == ("learned", "adamw")
    assert (model.d_model, train.batch_size, train.schedule) == (128, 16, "constant")


@pytest.mark.torch
def test_main_json_compares_with_torch(capsys):
    # `make test` installs torch; CRYSTALLINE_REQUIRE=torch (.ci/run) makes its absence stop the run
    pytest.importorskip("torch", reason="needs PyTorch: `make test` installs it (pip install -e '.[dev,bench]')")
    report = run_tiny_main(capsys, "--compare-torch")
    for r in report["configs"][0]["results"]:
        assert r["torch_tokens_per_s"] > 0
        assert r["engine_vs_torch"] == pytest.approx(r["tokens_per_s"] / r["torch_tokens_per_s"])


def test_main_explains_how_to_install_torch_when_it_is_missing(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    assert bench.main(parse_bench_args("--compare-torch", "--configs", "tiny")) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


def test_crystalline_bench_runs_through_the_command_line(capsys):
    """`crystalline bench` as a user types it: the CLI finds the bench room and hands it its flags."""
    from crawler.cli.main import main

    status = main(["bench", "--json", "--configs", "tiny", "--threads", "1", "--steps", "1", "--warmup", "0",
                   "--peak-size", "32", "--skip-start-time", "--arch", "gpt2"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["arch"] == "gpt2" and [c["name"] for c in report["configs"]] == ["tiny"]


# ---------------------------------------------------------------------------------------------
# the named sizes


def test_bench_configs_are_the_named_sizes_s_m_and_l():
    assert list(bench.CONFIGS) == ["S", "M", "L"]
    for name, config in bench.CONFIGS.items():
        assert (config.d_model, config.n_layer, config.n_head) == tuple(SIZES[name].shape().values())
    assert [(SIZES[n].d_model, SIZES[n].n_layer) for n in "SML"] == [(128, 4), (256, 6), (512, 8)]


def test_size_s_is_the_daemons_default_shape():
    from crawler.config import DAEMON_DEFAULTS

    model = DAEMON_DEFAULTS["model"]
    assert SIZES["S"].shape() == {k: model[k] for k in ("d_model", "n_layer", "n_head")}


def test_every_size_not_in_the_s_m_l_family_is_named_after_its_shape():
    for name, size in SIZES.items():
        if name not in ("XS", "S", "M", "L"):
            assert name == f"d{size.d_model}x{size.n_layer}"
        assert size.model_config().d_model == size.d_model  # a valid shape


def test_parse_size_takes_a_name_or_a_shape_and_names_the_choices():
    assert parse_size("M") is SIZES["M"]
    assert parse_size("256:6:8") is SIZES["M"]  # a shape in the table is the table's size
    assert parse_size("192:6:3").name == "d192x6h3"  # the same name, other heads
    assert parse_size("96:3:3").shape() == {"d_model": 96, "n_layer": 3, "n_head": 3}
    with pytest.raises(ConfigError, match="XS, S, d192x4, d192x6, M, L"):
        parse_size("XL")
    with pytest.raises(ConfigError, match="must divide"):
        parse_size("100:2:3")

