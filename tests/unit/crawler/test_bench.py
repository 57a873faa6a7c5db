"""crawler.bench.throughput: the FLOP count against an independent count of every matmul, the peak and
timing helpers on tiny inputs, `main --json` on the hidden tiny config with each phase's share of
the step, its configs against the one table of named sizes (engine.sizes), and the state
directory's own model (crawler.bench.your_model) on a tiny state with a few stored documents."""

import argparse
import json
import math
import sys

import numpy as np
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
                    "forward_ms_median", "backward_ms_median", "update_ms_median", "compute_ms_median"):
            assert r[key] > 0, key
        # MFU counts the forward, backward and reduction only; the update is the rest of the step
        assert r["compute_ms_median"] < r["step_ms_median"]
        # each phase's share of the step, and the rest: they add up to the whole step
        shares = r["shares"]
        assert list(shares) == ["forward", "backward", "reduce", "update", "rest"]
        assert all(0.0 <= share <= 1.0 for share in shares.values()), shares
        assert sum(shares.values()) == pytest.approx(1.0)
        assert shares["forward"] > 0 and shares["backward"] > 0 and shares["update"] > 0
        assert (shares["reduce"] > 0) == (r["threads"] > 1)  # one thread sums nothing
    assert config["results"][0]["parallel_efficiency"] == 1.0
    assert report["arch"] == config["arch"] == "product"
    assert report["your_model"] is None  # no state directory was given


def test_phase_shares_are_each_phases_time_over_the_steps_time():
    from engine.trainer import StepStats

    def stats(seconds, forward, backward, reduce, update):
        return StepStats(step=1, loss=0.0, crystalline_loss=0.0, objective=0.0, lr=0.0, grad_norm=0.0, tokens=1,
                         seconds=seconds, forward_seconds=forward, backward_seconds=backward,
                         reduce_seconds=reduce, update_seconds=update)

    shares = bench.phase_shares([stats(1.0, 0.3, 0.4, 0.1, 0.1), stats(3.0, 1.0, 1.6, 0.0, 0.3)])
    expected = {"forward": 1.3 / 4, "backward": 2.0 / 4, "reduce": 0.1 / 4, "update": 0.4 / 4, "rest": 0.2 / 4}
    assert shares == pytest.approx(expected)


def test_the_table_shows_each_phases_share_of_the_step(capsys):
    args = parse_bench_args("--configs", "tiny", "--threads", "1", "--steps", "2", "--warmup", "1",
                            "--peak-size", "32", "--skip-start-time")
    assert bench.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("config")).split()
    assert header[header.index("MFU") + 1 : header.index("MB/thread")] == ["fwd", "bwd", "reduce", "update", "rest"]
    (row,) = [line.split() for line in lines if line.lstrip().startswith("tiny")]
    cells = row[header.index("fwd") : header.index("MB/thread")]
    assert all(cell.endswith("%") for cell in cells) and sum(int(cell[:-1]) for cell in cells) in range(97, 104)
    assert not any(line.startswith("your model") for line in lines)


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


def test_crystalline_bench_runs_through_the_command_line(capsys, tmp_path):
    """`crystalline bench` as a user types it: the CLI finds the bench room and hands it its flags,
    and the state directory it resolves; one without a store yet adds no measurement."""
    status, out, _ = run_bench_command(capsys, "--json", "--arch", "gpt2", "--steps", "1", "--warmup", "0",
                                       "--state-dir", tmp_path / "empty")
    assert status == 0
    report = json.loads(out)
    assert report["arch"] == "gpt2" and [c["name"] for c in report["configs"]] == ["tiny"]
    assert report["your_model"] == {"state_dir": str(tmp_path / "empty"), "stored_tokens": 0}
    assert not (tmp_path / "empty").exists()  # nothing created
    status, out, _ = run_bench_command(capsys, "--state-dir", tmp_path / "empty")
    assert out.splitlines()[-1] == (f"your model: no stored text in {tmp_path / 'empty'} yet "
                                    "(crystalline ingest PATH, or --state-dir DIR for another state directory)")


# ---------------------------------------------------------------------------------------------
# your model: the one the state directory trains, and one pass over its stored text

TINY_STATE = ("[model]\nd_model = 16\nn_layer = 1\nn_head = 2\ncontext_length = 16\n"
              "[train]\nbatch_size = 4\nseq_len = 16\nthreads = 1\n")


@pytest.fixture(autouse=True)
def reset_structlog():
    """The CLI's main() points structlog at the captured stderr; leave no stale stream behind."""
    yield
    import structlog

    structlog.reset_defaults()


def run_bench_command(capsys, *argv) -> tuple[int, str, str]:
    """`crystalline bench` on the tiny config, one thread, through the command line."""
    from crawler.cli.main import main

    status = main(["bench", "--configs", "tiny", "--threads", "1", "--steps", "2", "--warmup", "1",
                   "--peak-size", "32", "--skip-start-time", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return status, out, err


def tiny_state(tmp_path, texts: dict[str, str], settings: str = TINY_STATE):
    """A state directory with a tiny model's settings and `texts` ingested (byte tokens); returns
    it, the store's figures and its configuration."""
    from crawler.config import load_config
    from crawler.ingest.pipeline import Ingestor
    from crawler.ingest.tokenizer import ByteTokenizer
    from crawler.service.opening import open_queue

    state, files = tmp_path / "state", tmp_path / "files"
    state.mkdir()
    files.mkdir()
    (state / "crystalline.toml").write_text(settings)
    config = load_config(None, state_dir=state)
    database, queue = open_queue(config)
    try:
        for name, text in texts.items():
            (files / name).write_text(text)
            assert Ingestor(queue, ByteTokenizer()).ingest_file(files / name).status == "ingested"
        return state, queue.stats(), config
    finally:
        database.close()


WORDS = "crystal lattice grows slowly in the cold dark cave and".split()


def generated_texts(count: int = 3, words: int = 200) -> dict[str, str]:
    rng = np.random.default_rng(0)
    return {f"{i}.txt": " ".join(rng.choice(WORDS, size=words)) + "\n" for i in range(count)}


def test_your_model_is_timed_on_the_state_directorys_settings_with_its_stored_text(capsys, tmp_path):
    from dataclasses import replace

    from crawler.service.status import count_text, duration_text
    from engine import count_parameters

    texts = generated_texts()
    state, stats, config = tiny_state(tmp_path, texts)
    stored = stats.tokens_total
    assert stored >= sum(len(text.encode()) for text in texts.values())

    status, out, err = run_bench_command(capsys, "--json", "--state-dir", state)
    assert status == 0, err
    yours = json.loads(out)["your_model"]
    assert yours["state_dir"] == str(state)
    assert yours["stored_tokens"] == yours["untrained_tokens"] == stored  # nothing trained yet
    parameters = count_parameters(replace(config.model, vocab_size=257))  # the settings, byte vocabulary
    assert yours["model"] == {"n_layer": 1, "d_model": 16, "n_head": 2, "vocab_size": 257, "from": "configuration",
                              "parameters": parameters}
    assert (yours["threads"], yours["batch_size"], yours["seq_len"]) == (1, 4, 16)
    assert yours["tokens_per_s"] > 0 and 0 < yours["mfu"] and yours["trainer_running"] is False
    assert sum(yours["shares"].values()) == pytest.approx(1.0)
    rate = yours["tokens_per_s"]
    assert yours["pass_seconds"] == pytest.approx(stored / rate)
    # the part not yet trained shares each batch with replay, as `crystalline status` reckons it
    assert yours["replay_fraction"] == 0.05
    assert yours["untrained_seconds"] == pytest.approx(stored / (rate * 0.95))

    status, out, _ = run_bench_command(capsys, "--state-dir", state)
    line = next(line for line in out.splitlines() if line.startswith("your model: "))
    assert line.startswith("your model: ") and " tokens/s; one pass over your " in line
    assert f"one pass over your {count_text(stored)} stored tokens takes " in line
    assert f", the {count_text(stored)} not yet trained " in line
    assert duration_text(10_000) == "2 h 46 min"  # the words status uses for the durations

    status, out, _ = run_bench_command(capsys, "--json", "--skip-your-model", "--state-dir", state)
    assert status == 0 and json.loads(out)["your_model"] is None


def test_your_model_is_the_checkpoints_when_there_is_one(capsys, tmp_path):
    """After training, the checkpoint's model is timed, not a setting changed since, and the part
    not yet trained is what the checkpoint has not reached."""
    from crawler.cli.main import main

    state, _, _ = tiny_state(tmp_path, generated_texts())
    tiny = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4",
            "--threads", "1"]
    assert main(["train", str(tmp_path / "files"), *tiny, "--steps", "3", "--state-dir", str(state)]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    (state / "crystalline.toml").write_text(TINY_STATE.replace("n_layer = 1", "n_layer = 2"))

    status, out, err = run_bench_command(capsys, "--json", "--state-dir", state)
    assert status == 0, err
    yours = json.loads(out)["your_model"]
    assert (yours["model"]["n_layer"], yours["model"]["from"]) == (1, "checkpoint")
    assert 0 < yours["untrained_tokens"] < yours["stored_tokens"]
    assert yours["untrained_seconds"] < yours["pass_seconds"] / 0.95


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

