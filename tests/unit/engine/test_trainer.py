"""The model's gradient, the threaded step, determinism, learning and exact resume."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from engine import ModelConfig, NonFiniteLoss, TrainConfig, Trainer, init_parameters, load_latest_checkpoint, parameter_table
from engine.adamw import adamw_reference, adamw_update
from engine.kernels.crossentropy import crossentropy_forward_reference, crystalline_cost_table
from engine.model import loss_and_grad
from engine.parallel import reduction_plan
from engine.reference import reference_forward, reference_loss
from engine.schedule import learning_rate

TINY = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4, seed=3)


def perturbed_params(config, scale=0.05, seed=0):
    params = init_parameters(config)
    params += np.random.default_rng(seed).standard_normal(params.size).astype(np.float32) * scale
    return params


def batch(config, B, T, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)
    return x, rng.integers(0, config.vocab_size, (B, T)).astype(np.int32)


@pytest.mark.parametrize("weight", [0.0, 0.2])
def test_model_gradient_matches_finite_differences(weight):
    params = perturbed_params(TINY)
    x, y = batch(TINY, 2, 8)
    cost = crystalline_cost_table(TINY.vocab_size).astype(np.float64)

    def objective(p64):
        logits = reference_forward(TINY, p64, x).reshape(-1, TINY.vocab_size)
        loss, expected, _ = crossentropy_forward_reference(logits, x.reshape(-1), y.reshape(-1), cost, weight)
        return (loss + weight * expected).mean()

    loss, grads = loss_and_grad(TINY, params, x, y, crystalline_weight=weight)
    p64 = params.astype(np.float64)
    assert loss == pytest.approx(objective(p64), rel=1e-5)
    table = parameter_table(TINY)
    rng = np.random.default_rng(1)
    # a few coordinates of every named tensor, so no tensor's gradient goes unchecked
    for name, seg in table.offsets.items():
        for i in rng.choice(seg.size, size=min(4, seg.size), replace=False) + seg.offset:
            e = 1e-5
            up, down = p64.copy(), p64.copy()
            up[i] += e
            down[i] -= e
            fd = (objective(up) - objective(down)) / (2 * e)
            assert grads[i] == pytest.approx(fd, rel=2e-3, abs=2e-6), (name, i)


def test_every_parameter_receives_gradient():
    params = perturbed_params(TINY)
    x, y = batch(TINY, 2, 8)
    _, grads = loss_and_grad(TINY, params, x, y)
    views = parameter_table(TINY).views(grads)
    for name, view in zip(views._fields, views):
        if name == "wpe":
            view = view[:8]
        if view.size:  # an entry the architecture turns off is empty (lm_head when tied)
            assert np.abs(view).sum() > 0, f"{name} got no gradient"


def test_reduction_plan_sums_every_row_for_tree_sizes():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 12, 13, 30, 145):
        size = 1000
        G = rng.standard_normal((n, size)).astype(np.float64)
        expected = G.sum(axis=0)
        for level in reduction_plan(n, size):
            covered = np.zeros(size, int)
            for task in level:
                if task is not None:
                    G[task.rows[0], task.start:task.stop] += G[task.rows[1:], task.start:task.stop].sum(axis=0)
                    covered[task.start:task.stop] += 1
            # within a level no two workers touch the same element of the same destination
            assert covered.max() <= math.ceil(n / 12)
        np.testing.assert_allclose(G[0], expected, rtol=1e-12)
    levels = reduction_plan(145, 100)
    assert len(levels) == 3, "145 workers: groups of 12, then 13 coordinators, then 2"


def train_losses(config, threads, steps, B=6, T=8, **kw):
    tc = TrainConfig(batch_size=B, seq_len=T, threads=threads, warmup_steps=2, total_steps=steps, **kw)
    x, y = batch(config, B, T, seed=5)
    with Trainer(config, tc) as trainer:
        losses = [trainer.step(x, y).loss for _ in range(steps)]
        return np.array(losses), trainer.params.copy()


def test_one_and_two_threads_agree_and_runs_are_deterministic():
    l1, p1 = train_losses(TINY, 1, 12)
    l2, p2 = train_losses(TINY, 2, 12)
    l2b, p2b = train_losses(TINY, 2, 12)
    assert np.array_equal(l2, l2b) and np.array_equal(p2, p2b), "same thread count: bit-identical"
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(p1, p2, rtol=1e-4, atol=1e-5)
    assert l1[-1] < l1[0]


def test_thirteen_threads_use_two_tree_levels_and_agree():
    l1, _ = train_losses(TINY, 1, 4, B=13)
    l13, _ = train_losses(TINY, 13, 4, B=13)
    np.testing.assert_allclose(l1, l13, rtol=1e-5)


def test_micro_batches_accumulate_to_the_same_step():
    l_full, _ = train_losses(TINY, 1, 5, B=4)
    l_micro, _ = train_losses(TINY, 1, 5, B=4, micro_batch_size=1)
    np.testing.assert_allclose(l_full, l_micro, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# where a step's time goes (StepStats' phases)

PHASES = ("forward_seconds", "backward_seconds", "reduce_seconds", "update_seconds", "comm_seconds")


@pytest.mark.parametrize("threads", [1, 2])
def test_a_step_reports_its_phases_and_they_fit_inside_it(threads):
    x, y = batch(TINY, 4, 8)
    tc = TrainConfig(batch_size=4, seq_len=8, threads=threads, micro_batch_size=1)
    with Trainer(TINY, tc) as trainer:
        for _ in range(3):
            stats = trainer.step(x, y)
            phases = [getattr(stats, name) for name in PHASES]
            assert all(seconds >= 0.0 for seconds in phases), phases
            # the phases are separated by barriers: their critical path fits inside the step
            assert sum(phases) <= stats.seconds, (phases, stats.seconds)
            assert stats.forward_seconds > 0 and stats.backward_seconds > 0 and stats.update_seconds > 0
            # one worker has no one to sum with: the reduction tree has no level
            assert (stats.reduce_seconds > 0) == (threads > 1)


def test_each_phase_is_timed_where_it_runs_and_the_slowest_worker_counts(monkeypatch):
    """A delay put into one kernel call shows in its own phase and no other: worker 1's backward
    sleeps 200 ms, the reduction 100 ms a call, so the backward figure is the slow worker's; the
    margins leave room for a busy machine's scheduling."""
    import threading
    import time

    import engine.parallel
    import engine.trainer

    backward, reduce_rows = engine.trainer.backward, engine.parallel.reduce_rows

    def slow_backward(*args):
        if threading.current_thread().name.endswith("worker-1"):
            time.sleep(0.2)
        return backward(*args)

    def slow_reduce_rows(*args):
        time.sleep(0.1)
        return reduce_rows(*args)

    x, y = batch(TINY, 4, 8)
    with Trainer(TINY, TrainConfig(batch_size=4, seq_len=8, threads=2)) as trainer:
        trainer.step(x, y)  # compiled and warm before the delays go in
        monkeypatch.setattr(engine.trainer, "backward", slow_backward)
        monkeypatch.setattr(engine.parallel, "reduce_rows", slow_reduce_rows)
        stats = trainer.step(x, y)
    assert stats.backward_seconds >= 0.2
    assert stats.reduce_seconds >= 0.1  # one tree level: each worker sums one call's segment
    # the delays land in their own phases only: each untouched phase is shorter than the delay
    # next to it (a lower bound a busy machine cannot break by slowing the phases alike)
    assert stats.forward_seconds < stats.backward_seconds and stats.update_seconds < stats.backward_seconds
    assert stats.forward_seconds + stats.backward_seconds + stats.reduce_seconds + stats.update_seconds <= stats.seconds


@pytest.mark.parametrize("activation", ["gelu", "relu2"])
def test_recomputing_the_activation_trains_the_same_bits_in_less_memory(activation):
    config = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4, seed=3,
                         positions="rope", activation=activation)
    kept, p_kept = train_losses(config, 2, 6, micro_batch_size=2)
    again, p_again = train_losses(config, 2, 6, micro_batch_size=2, recompute_activation=True)
    assert np.array_equal(kept, again) and np.array_equal(p_kept, p_again)
    B, T, C, L = 6, 8, 16, 2
    sizes = []
    for recompute in (False, True):
        tc = TrainConfig(batch_size=B, seq_len=T, threads=2, recompute_activation=recompute)
        with Trainer(config, tc) as trainer:
            sizes.append(trainer.workspaces[0].nbytes)
    # one worker's 3 rows of the MLP's hidden (4C) in every layer, in float32
    assert sizes[0] - sizes[1] == L * 3 * T * 4 * C * 4


def test_step_gradient_matches_single_threaded_loss_and_grad():
    params = perturbed_params(TINY)
    x, y = batch(TINY, 4, 8)
    loss, grads = loss_and_grad(TINY, params, x, y)
    tc = TrainConfig(batch_size=4, seq_len=8, threads=2, grad_clip=0.0, weight_decay=0.0,
                     warmup_steps=0, schedule="constant", learning_rate=1e-3)
    with Trainer(TINY, tc, params=params) as trainer:
        stats = trainer.step(x, y)
        assert stats.loss == pytest.approx(loss, rel=1e-6)
        assert stats.grad_norm == pytest.approx(float(np.linalg.norm(grads.astype(np.float64))), rel=1e-5)
        expected, _, _ = adamw_reference(params.astype(np.float64), grads.astype(np.float64), 0, 0, 0, 1e-3, 0.9, 0.95, 1e-8, 0.0, 1)
        # Adam's first step is about lr * sign(g): where |g| is near eps the float32 rounding of
        # g moves the update by a fraction of lr, hence an absolute tolerance of 2 % of lr
        np.testing.assert_allclose(trainer.params, expected, rtol=1e-5, atol=2e-5)
        total, n = trainer.evaluate(x, y)
        assert n == x.size


def test_clipping_scales_the_update():
    params = perturbed_params(TINY)
    x, y = batch(TINY, 2, 8)
    tc = TrainConfig(batch_size=2, seq_len=8, threads=1, grad_clip=1e-3, warmup_steps=0, schedule="constant")
    with Trainer(TINY, tc, params=params) as trainer:
        stats = trainer.step(x, y)
    assert stats.grad_norm > 1e-3
    # with clipping the first AdamW moment is (1 - beta1) * clipped gradient, norm 1e-4
    assert np.linalg.norm(trainer.m.astype(np.float64)) == pytest.approx(0.1 * 1e-3, rel=1e-3)


def test_adamw_kernel_matches_reference():
    rng = np.random.default_rng(2)
    n = 100
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    m, v = rng.standard_normal(n).astype(np.float32) * 0.1, rng.random(n).astype(np.float32) * 0.1
    decay = (rng.random(n) > 0.5).astype(np.float32)
    ref = adamw_reference(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64), v.astype(np.float64), decay, 0.01, 0.9, 0.95, 1e-8, 0.1, 7)
    grads = g.copy()
    adamw_update(p, grads, m, v, decay, 0, n, 0.01, 0.9, 0.95, 1e-8, 0.1, 7, 1.0)
    for got, want in zip((p, m, v), ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not grads.any(), "the gradient segment is zeroed after the update"


def test_schedules():
    cos = TrainConfig(learning_rate=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert learning_rate(cos, 0) == pytest.approx(0.1)
    assert learning_rate(cos, 9) == pytest.approx(1.0)
    assert learning_rate(cos, 60) == pytest.approx(0.55)
    assert learning_rate(cos, 110) == pytest.approx(0.1)
    assert learning_rate(cos, 500) == pytest.approx(0.1)
    const = TrainConfig(learning_rate=1.0, warmup_steps=10, schedule="constant")
    assert learning_rate(const, 5) == pytest.approx(0.6)
    assert learning_rate(const, 10_000) == 1.0


def test_non_finite_loss_is_raised_and_the_update_skipped():
    params = perturbed_params(TINY)
    params[5] = np.nan  # inside wte
    x, y = batch(TINY, 2, 8)
    tc = TrainConfig(batch_size=2, seq_len=8, threads=2)
    with Trainer(TINY, tc, params=params) as trainer:
        before = trainer.params.copy()
        with pytest.raises(NonFiniteLoss):
            trainer.step(x, y)
        np.testing.assert_array_equal(before[6:], trainer.params[6:])
        assert trainer.step_count == 0


def test_tokens_seen_counts_every_step_and_resumes_from_old_and_new_files(tmp_path):
    from engine import load_checkpoint, save_checkpoint

    x, y = batch(TINY, 2, 8)
    tc = TrainConfig(batch_size=2, seq_len=8, threads=1)
    with Trainer(TINY, tc) as trainer:
        for _ in range(3):
            trainer.step(x, y)
        assert trainer.tokens_seen == 3 * 2 * 8
        path = trainer.save_checkpoint(tmp_path, keep_last=None)
    saved = load_checkpoint(path)
    assert saved.train_state["tokens_seen"] == 48 and "tokens_trained" not in saved.train_state
    with Trainer.from_checkpoint(saved, tc) as resumed:
        assert resumed.tokens_seen == 48
    # a file of an earlier version names the same count "tokens_trained"
    old = save_checkpoint(tmp_path, step=3, model_config=TINY, params=saved.params, m=saved.m, v=saved.v,
                          train_state={"tokens_trained": 48, "train_config": tc.to_dict()}, keep_last=None,
                          name="old.safetensors")
    with Trainer.from_checkpoint(load_checkpoint(old), tc) as resumed:
        assert resumed.tokens_seen == 48


def test_blas_is_held_to_one_thread_once_the_trainer_exists():
    from threadpoolctl import threadpool_info

    with Trainer(TINY, TrainConfig(batch_size=2, seq_len=8, threads=1)):
        blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
    assert any("scipy" in info["filepath"] for info in blas), "SciPy's BLAS (numba's np.dot) is loaded"
    assert all(info["num_threads"] == 1 for info in blas), blas


def test_tiny_model_learns_well_below_the_unigram_entropy():
    # a repeating text: uniform unigram over 8 symbols (3 bits), perfectly predictable in context
    config = ModelConfig(vocab_size=16, context_length=16, d_model=32, n_layer=2, n_head=4)
    text = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], np.int32), 64)
    counts = np.bincount(text, minlength=16) / text.size
    unigram = -(counts[counts > 0] * np.log(counts[counts > 0])).sum()
    tc = TrainConfig(batch_size=8, seq_len=16, threads=2, learning_rate=3e-3, warmup_steps=10, total_steps=150)
    rng = np.random.default_rng(0)
    with Trainer(config, tc) as trainer:
        for _ in range(150):
            starts = rng.integers(0, text.size - 17, 8)
            x = np.stack([text[s : s + 16] for s in starts])
            y = np.stack([text[s + 1 : s + 17] for s in starts])
            stats = trainer.step(x, y)
    assert stats.loss < 0.25 * unigram, (stats.loss, unigram)


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from engine import ModelConfig, TrainConfig, Trainer, load_latest_checkpoint
    state_dir, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4, seed=3)
    tc = TrainConfig(batch_size=4, seq_len=8, threads=2, warmup_steps=3, total_steps=10)
    ckpt, _ = load_latest_checkpoint(state_dir)
    trainer = Trainer.from_checkpoint(ckpt, tc) if ckpt else Trainer(config, tc)
    assert trainer.step_count == start
    losses = []
    for step in range(start, stop):
        rng = np.random.default_rng([7, step])
        x = rng.integers(0, 11, (4, 8)).astype(np.int32)
        losses.append(trainer.step(x, (x * 3 + 1) % 11).loss)
    trainer.save_checkpoint(state_dir)
    trainer.close()
    print(json.dumps(losses))
""")


def run_script(tmp_path, *args):
    out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_resume_in_a_new_process_continues_the_exact_trajectory(tmp_path):
    straight = run_script(tmp_path / "a", 0, 10)
    first = run_script(tmp_path / "b", 0, 5)
    second = run_script(tmp_path / "b", 5, 10)
    assert first + second == straight, "bit-identical losses after resume"
    a, _ = load_latest_checkpoint(tmp_path / "a")
    b, _ = load_latest_checkpoint(tmp_path / "b")
    assert a.step == b.step == 10
    assert np.array_equal(a.params, b.params) and np.array_equal(a.v, b.v)


def test_crystalline_weight_with_a_large_vocabulary_is_a_config_error():
    from engine import ConfigError

    with pytest.raises(ConfigError, match="vocab_size <= 4096"):
        TrainConfig(crystalline_weight=0.1).validate(ModelConfig(vocab_size=8192))
