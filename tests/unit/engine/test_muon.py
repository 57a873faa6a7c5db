"""Muon: the Newton-Schulz kernel against the polar factor, the update against its numpy
reference, the matrix-aligned update plan, bit-identical threading, exact resume, AdamW
checkpoints loading into Muon (and back), config validation, and a real learning check."""

import numpy as np
import pytest

from engine import ConfigError, ModelConfig, TrainConfig, Trainer, load_latest_checkpoint, parameter_table
from engine.checkpoint import save_checkpoint
from engine.muon import (NS_COEFFICIENTS, direct_flops, gram_cheaper, gram_flops, muon_matrices, muon_update,
                         muon_update_reference, newton_schulz, newton_schulz_gram, newton_schulz_reference,
                         orthogonalisation_flops, scratch_size)
from engine.parallel import split, update_plan
from engine.trainer import limit_blas_threads

TINY = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=2, n_head=4, seed=3)


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    limit_blas_threads()  # as in the trainer: the kernels' np.dot is single-threaded BLAS


def polynomial(x, steps):
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        x = a * x + b * x**3 + c * x**5
    return x


def orthogonalise(G, steps):
    """The float32 kernel on G (any orientation), as muon_update runs it."""
    X = (G.T if G.shape[0] > G.shape[1] else G) / (np.linalg.norm(G) + 1e-7)
    X = np.ascontiguousarray(X, dtype=np.float32)
    m, n = X.shape
    A, B, Y = np.zeros((m, m), np.float32), np.zeros((m, m), np.float32), np.zeros((m, n), np.float32)
    newton_schulz(X, A, B, Y, steps)
    return X.T if G.shape[0] > G.shape[1] else X


# ---------------------------------------------------------------------------------------------
# Newton-Schulz


@pytest.mark.parametrize("shape", [(64, 64), (128, 512), (96, 32), (37, 23), (5, 41)])
def test_newton_schulz_is_close_to_the_polar_factor(shape):
    # G = U S V^T; the iteration keeps U and V and maps each x = s/||G|| through the quintic, so
    # the result is U p5(x) V^T: the polar factor U V^T with singular values in [0.68, 1.21] for
    # every x >= 0.0016 after 5 steps (square Gaussian matrices have a few smaller ones)
    G = np.random.default_rng(sum(shape)).standard_normal(shape)
    X = orthogonalise(G, 5).astype(np.float64)
    U, S, Vt = np.linalg.svd(G, full_matrices=False)
    x = S / np.linalg.norm(G)
    D = U.T @ X @ Vt.T  # diagonal if the singular vectors are kept
    np.testing.assert_allclose(D, np.diag(polynomial(x, 5)), atol=2e-3)
    in_domain = x >= 0.0016
    assert in_domain.mean() >= 0.9
    sv = np.diag(D)[in_domain]
    assert sv.min() >= 0.675 and sv.max() <= 1.21, (sv.min(), sv.max())
    polar = U @ Vt
    assert np.linalg.norm(X - polar) / np.linalg.norm(polar) < 0.3


def test_newton_schulz_kernel_matches_the_float64_reference():
    rng = np.random.default_rng(1)
    for shape, steps in (((24, 40), 5), ((40, 24), 3), ((17, 17), 1), ((9, 31), 8)):
        G = rng.standard_normal(shape)
        np.testing.assert_allclose(orthogonalise(G, steps), newton_schulz_reference(G, steps), atol=1e-4)


def gram(G, steps):
    """newton_schulz_gram on G (wide or tall), as muon_update runs it for a wide matrix."""
    X = (G.T if G.shape[0] > G.shape[1] else G) / (np.linalg.norm(G) + 1e-7)
    X = np.ascontiguousarray(X, dtype=np.float32)
    m, n = X.shape
    A, B, Q, P = (np.zeros((m, m), np.float32) for _ in range(4))
    newton_schulz_gram(X, A, B, Q, P, np.zeros((m, n), np.float32), steps)
    return X.T if G.shape[0] > G.shape[1] else X


@pytest.mark.parametrize("shape,steps", [((5, 41), 5), ((13, 40), 5), ((40, 13), 3), ((24, 100), 1), ((9, 31), 4),
                                         ((64, 256), 5)])
def test_the_gram_domain_iteration_matches_the_float64_reference(shape, steps):
    """Gaussian matrices within 1e-5 of the largest entry, as the direct kernel; one whose
    singular values fall from 1 to 1e-4 (as a trained model's momentum's do) within 1e-3 at the
    model's sizes (m >= 64: 1.3e-4 to 2e-4 measured) and 3e-3 for a handful of rows, where the
    float32 sums of A = X X^T average less rounding out (1.4e-3 measured at m = 5, 5 steps, on
    an AMD EPYC's BLAS; below 1e-3 on another machine's). The direct kernel: within 1e-4."""
    rng = np.random.default_rng(sum(shape) + steps)
    G = rng.standard_normal(shape)
    m = min(shape)
    U, _, Vt = np.linalg.svd(rng.standard_normal(shape), full_matrices=False)
    decaying = U @ np.diag(np.geomspace(1.0, 1e-4, m)) @ Vt
    for matrix, bound in ((G, 1e-5), (decaying, 1e-3 if m >= 64 else 3e-3)):
        want = newton_schulz_reference(matrix, steps)
        scale = np.abs(want).max()
        np.testing.assert_allclose(gram(matrix, steps), want, atol=bound * scale)
        np.testing.assert_allclose(orthogonalise(matrix, steps), want, atol=1e-4 * scale)


def test_the_gram_domain_is_chosen_where_it_costs_less():
    assert not gram_cheaper(128, 128, 5) and gram_cheaper(128, 512, 5) and gram_cheaper(64, 128, 5)
    assert not gram_cheaper(128, 512, 6)  # P's rounding grows with the steps: direct beyond 5
    assert orthogonalisation_flops(512, 128, 8) == direct_flops(128, 512, 8)
    assert gram_flops(128, 512, 5) == 50 * 128**3 and direct_flops(128, 512, 5) == 90 * 128**3
    for m, n, steps in ((128, 128, 5), (128, 512, 5), (7, 9, 3), (3, 40, 1)):
        assert orthogonalisation_flops(n, m, steps) == min(direct_flops(m, n, steps), gram_flops(m, n, steps))
        assert gram_cheaper(m, n, steps) == (gram_flops(m, n, steps) < direct_flops(m, n, steps))
    # the reason for the limit: at 8 steps the Gram domain drifts far from the reference
    rng = np.random.default_rng(0)
    U, _, Vt = np.linalg.svd(rng.standard_normal((9, 31)), full_matrices=False)
    G = U @ np.diag(np.geomspace(1.0, 1e-4, 9)) @ Vt  # small singular values: P grows along them
    drift = np.abs(gram(G, 8) - newton_schulz_reference(G, 8)).max()
    assert drift > 1e-2 > np.abs(gram(G, 5) - newton_schulz_reference(G, 5)).max()


def test_fewer_steps_leave_small_singular_values_below_the_band():
    # the documented limits: 3 steps lift x >= 0.018 into the band, not x = 0.005
    assert polynomial(0.005, 3) < 0.68 <= polynomial(0.018, 3)
    assert polynomial(0.005, 5) >= 0.68 and polynomial(0.0014, 5) < 0.68 <= polynomial(0.0016, 5)
    x = np.linspace(0.0016, 1.0, 100_001)
    assert 0.68 <= polynomial(x, 5).min() and polynomial(x, 5).max() <= 1.21


# ---------------------------------------------------------------------------------------------
# the update


def test_muon_update_matches_the_reference_and_touches_only_its_matrices():
    rng = np.random.default_rng(2)
    # a flat buffer: a tall (12, 5) matrix at 3, a wide (4, 9) one at 70, loose elements around
    matrices = np.array([[3, 12, 5], [70, 4, 9]], np.int64)
    n = 120
    p, g = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    mom = (rng.standard_normal(n) * 0.1).astype(np.float32)
    params, grads, momentum = p.copy(), g.copy(), mom.copy()
    scratch = np.zeros(scratch_size(matrices), np.float32)
    muon_update(params, grads, momentum, matrices, scratch, 0.02, 0.95, 0.1, 0.5, 5)
    inside = np.zeros(n, bool)
    for offset, rows, cols in matrices:
        s = slice(offset, offset + rows * cols)
        inside[s] = True
        want_p, want_m = muon_update_reference(p[s].astype(np.float64).reshape(rows, cols),
                                               0.5 * g[s].astype(np.float64).reshape(rows, cols),
                                               mom[s].astype(np.float64).reshape(rows, cols), 0.02, 0.95, 0.1, 5)
        np.testing.assert_allclose(params[s].reshape(rows, cols), want_p, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(momentum[s].reshape(rows, cols), want_m, rtol=1e-5, atol=1e-7)
    assert not grads[inside].any(), "the matrices' gradient is zeroed after the update"
    for got, before in ((params, p), (grads, g), (momentum, mom)):
        np.testing.assert_array_equal(got[~inside], before[~inside])


def test_update_scale_follows_the_shape():
    # a zero momentum, beta 0 and no decay: the step is lr * sqrt(max(1, rows/cols)) * O, and O's
    # singular values lie in the band, so the tall matrix moves twice as far per singular value
    rng = np.random.default_rng(3)
    for rows, cols, scale in ((32, 8, 2.0), (8, 32, 1.0), (16, 16, 1.0)):
        params, grads = np.zeros(rows * cols, np.float32), rng.standard_normal(rows * cols).astype(np.float32)
        matrices = np.array([[0, rows, cols]], np.int64)
        muon_update(params, grads, np.zeros_like(params), matrices, np.zeros(scratch_size(matrices), np.float32),
                    1.0, 0.0, 0.0, 1.0, 5)
        sv = np.linalg.svd(-params.reshape(rows, cols), compute_uv=False) / scale
        assert 0.675 <= sv.min() and sv.max() <= 1.21, (rows, cols, sv.min(), sv.max())


def test_muon_matrices_are_q_k_v_and_the_projections_of_every_layer():
    table = parameter_table(TINY)
    matrices = muon_matrices(table)
    C, H, L = 16, 64, 2
    assert matrices.shape == (6 * L, 3)
    shapes = sorted(map(tuple, matrices[:, 1:].tolist()))
    assert shapes == sorted([(C, C)] * 4 * L + [(H, C)] * L + [(C, H)] * L)
    # the key block of layer 1 is rows C:2C of qkvw[1]
    params = np.arange(table.size, dtype=np.float32)
    views = table.views(params)
    offset, rows, cols = matrices[4]
    np.testing.assert_array_equal(params[offset : offset + rows * cols].reshape(rows, cols), views.qkvw[1][C : 2 * C])
    # embeddings, gains and biases are not Muon's
    owned = np.zeros(table.size, bool)
    for offset, rows, cols in matrices:
        owned[offset : offset + rows * cols] = True
    for name in ("wte", "wpe", "ln1w", "qkvb", "fcb", "lnfw"):
        seg = table.offsets[name]
        assert not owned[seg.offset : seg.stop].any(), name


# ---------------------------------------------------------------------------------------------
# the matrix-aligned plan


def owners(tasks, matrices, size):
    count = np.zeros(size, int)
    for task in tasks:
        for a, b in task.ranges:
            count[a:b] += 1
        for offset, rows, cols in matrices[task.matrices]:
            count[offset : offset + rows * cols] += 1
    return count


@pytest.mark.parametrize("n_workers", [1, 2, 3, 7, 30])
def test_update_plan_owns_every_element_once_and_matrices_whole(n_workers):
    table = parameter_table(TINY)
    matrices = muon_matrices(table)
    costs = [orthogonalisation_flops(r, c, 5) for _, r, c in matrices]
    tasks = update_plan(n_workers, table.size, matrices, costs)
    assert len(tasks) == n_workers
    assert (owners(tasks, matrices, table.size) == 1).all()
    assert sorted(k for task in tasks for k in task.matrices) == list(range(len(matrices)))
    again = update_plan(n_workers, table.size, matrices, costs)
    assert all(np.array_equal(a.matrices, b.matrices) and a.ranges == b.ranges for a, b in zip(tasks, again))


def test_update_plan_balances_orthogonalisation_cost():
    # per layer: four (C, C) matrices of 6 C^3 a step, directly (30 C^3 for 5 steps), and two
    # (4C, C) ones in the Gram domain: 16 C^3 at the ends and 34 C^3 for 5 steps (not 90 directly)
    table = parameter_table(ModelConfig(d_model=128, n_layer=4, n_head=4))
    matrices = muon_matrices(table)
    costs = [orthogonalisation_flops(r, c, 5) for _, r, c in matrices]
    assert sorted(set(costs)) == [30 * 128**3, 50 * 128**3]
    for n in (2, 3, 4):
        loads = [sum(costs[k] for k in task.matrices) for task in update_plan(n, table.size, matrices, costs)]
        assert max(loads) / (sum(costs) / n) <= 1.1, (n, loads)
    # the elementwise rest is split evenly
    tasks = update_plan(2, table.size, matrices, costs)
    rest = [sum(b - a for a, b in task.ranges) for task in tasks]
    assert abs(rest[0] - rest[1]) <= 16


def test_update_plan_without_matrices_is_the_flat_split():
    for n, size in ((1, 100), (2, 26496), (5, 1003), (12, 40)):
        tasks = update_plan(n, size)
        assert [task.ranges for task in tasks] == [((a, b),) if a < b else () for a, b in split(size, n)]
        assert all(len(task.matrices) == 0 for task in tasks)


# ---------------------------------------------------------------------------------------------
# the trainer


def muon_config(**kw):
    base = dict(batch_size=4, seq_len=8, threads=2, warmup_steps=2, total_steps=10, optimizer="muon")
    return TrainConfig(**(base | kw))


def batches(steps, B=4, T=8, V=11):
    for step in range(steps):
        rng = np.random.default_rng([7, step])
        x = rng.integers(0, V, (B, T)).astype(np.int32)
        yield x, (x * 3 + 1) % V


def test_threaded_update_equals_the_single_thread_update_bit_for_bit():
    # one row in the batch: exactly one worker computes a gradient and the others add zeros, so
    # the gradient is the same bits for every thread count, and clip 0 leaves the norm unused;
    # whatever differs then is the update, whose matrices land on different workers
    results = []
    for threads in (1, 2, 3, 5):
        tc = muon_config(batch_size=1, threads=threads, grad_clip=0.0, muon_weight_decay=0.1)
        with Trainer(TINY, tc) as trainer:
            losses = [trainer.step(x, y).loss for x, y in batches(6, B=1)]
            assert len({tuple(t.matrices) for t in trainer.tasks}) == min(threads, 12)
            results.append((losses, trainer.params.copy(), trainer.m.copy(), trainer.v.copy()))
    for losses, params, m, v in results[1:]:
        assert losses == results[0][0]
        for got, want in zip((params, m, v), results[0][1:]):
            np.testing.assert_array_equal(got, want)


def test_muon_checkpoint_resumes_on_the_exact_trajectory(tmp_path):
    tc = muon_config(grad_clip=0.5)
    with Trainer(TINY, tc) as straight:
        expected = [straight.step(x, y).loss for x, y in batches(10)]
        final = straight.params.copy(), straight.m.copy(), straight.v.copy()
    data = list(batches(10))
    with Trainer(TINY, tc) as first:
        losses = [first.step(x, y).loss for x, y in data[:5]]
        first.save_checkpoint(tmp_path)
    checkpoint, _ = load_latest_checkpoint(tmp_path)
    assert checkpoint.train_state["train_config"]["optimizer"] == "muon"
    with Trainer.from_checkpoint(checkpoint, tc) as second:
        assert second.step_count == 5
        losses += [second.step(x, y).loss for x, y in data[5:]]
        resumed = second.params, second.m, second.v
    assert losses == expected, "bit-identical losses after resume"
    for got, want in zip(resumed, final):
        np.testing.assert_array_equal(got, want)


def matrix_mask(size):
    mask = np.zeros(size, bool)
    for offset, rows, cols in muon_matrices(parameter_table(TINY)):
        mask[offset : offset + rows * cols] = True
    return mask


@pytest.mark.parametrize("recorded", [True, False])
def test_an_adamw_checkpoint_loads_into_muon_with_the_matrices_moments_restarted(tmp_path, recorded):
    adamw = muon_config(optimizer="adamw")
    with Trainer(TINY, adamw) as trainer:
        for x, y in batches(3):
            trainer.step(x, y)
        state = trainer.train_state()
        if not recorded:  # as a checkpoint written before the optimizer setting existed
            del state["train_config"]["optimizer"]
        save_checkpoint(tmp_path, step=3, model_config=TINY, params=trainer.params, m=trainer.m, v=trainer.v,
                        train_state=state)
    checkpoint, _ = load_latest_checkpoint(tmp_path)
    mask = matrix_mask(checkpoint.params.size)
    with Trainer.from_checkpoint(checkpoint, muon_config()) as trainer:
        np.testing.assert_array_equal(trainer.params, checkpoint.params)
        for got, saved in ((trainer.m, checkpoint.m), (trainer.v, checkpoint.v)):
            assert not got[mask].any() and saved[mask].any()
            np.testing.assert_array_equal(got[~mask], saved[~mask])
        stats = [trainer.step(x, y) for x, y in batches(3)]
        assert trainer.step_count == 6 and np.isfinite([s.loss for s in stats]).all()
        assert not trainer.v[mask].any(), "Muon keeps no second moment for its matrices"


def test_a_muon_checkpoint_resumed_with_adamw_restarts_the_matrices_moments(tmp_path):
    with Trainer(TINY, muon_config()) as trainer:
        for x, y in batches(3):
            trainer.step(x, y)
        trainer.save_checkpoint(tmp_path)
    checkpoint, _ = load_latest_checkpoint(tmp_path)
    mask = matrix_mask(checkpoint.params.size)
    with Trainer.from_checkpoint(checkpoint, muon_config(optimizer="adamw")) as trainer:
        assert checkpoint.m[mask].any() and not trainer.m[mask].any() and not trainer.v[mask].any()
        np.testing.assert_array_equal(trainer.m[~mask], checkpoint.m[~mask])


def test_adamw_stays_the_default_and_its_plan_is_the_flat_split():
    assert TrainConfig().optimizer == "adamw"
    with Trainer(TINY, TrainConfig(batch_size=2, seq_len=8, threads=2)) as trainer:
        assert len(trainer.matrices) == 0
        assert [t.ranges for t in trainer.tasks] == [(s,) for s in trainer.pool.segments]


def test_muon_learns_a_tiny_corpus():
    # a repeating text: uniform unigram over 8 symbols (3 bits), perfectly predictable in context
    config = ModelConfig(vocab_size=16, context_length=16, d_model=32, n_layer=2, n_head=4)
    text = np.tile(np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3], np.int32), 64)
    counts = np.bincount(text, minlength=16) / text.size
    unigram = -(counts[counts > 0] * np.log(counts[counts > 0])).sum()
    tc = TrainConfig(batch_size=8, seq_len=16, threads=2, learning_rate=3e-3, warmup_steps=10, total_steps=200,
                     optimizer="muon")
    rng = np.random.default_rng(0)
    with Trainer(config, tc) as trainer:
        first = None
        for _ in range(200):
            starts = rng.integers(0, text.size - 17, 8)
            x = np.stack([text[s : s + 16] for s in starts])
            y = np.stack([text[s + 1 : s + 17] for s in starts])
            stats = trainer.step(x, y)
            first = stats.loss if first is None else first
    assert first > unigram and stats.loss < 0.1 * unigram, (first, stats.loss, unigram)


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "sgd", "optimizer .'sgd'. must be one of adamw, muon"),
    ("muon_lr", 0.0, "muon_lr"),
    ("muon_momentum", 1.0, r"muon_momentum \(1.0\) must be in \[0, 1\)"),
    ("muon_weight_decay", -0.1, "muon_weight_decay"),
    ("ns_steps", 0, r"ns_steps \(0\) must be between 1 and 20"),
])
def test_bad_muon_settings_are_config_errors(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{field: value}).validate()


def test_the_daemon_config_passes_muon_settings_through(tmp_path):
    from crawler.config import load_config

    path = tmp_path / "crystalline.toml"
    path.write_text('[train]\noptimizer = "muon"\nmuon_lr = 0.03\nns_steps = 4\n')
    config = load_config(path, env={"CRYSTALLINE_TRAIN_MUON_MOMENTUM": "0.9"})
    assert (config.train.optimizer, config.train.muon_lr, config.train.ns_steps) == ("muon", 0.03, 4)
    assert config.train.muon_momentum == 0.9
    path.write_text('[train]\noptimizer = "lion"\n')
    from crawler import ConfigError as SettingError

    with pytest.raises(SettingError, match="adamw, muon"):
        load_config(path, env={})
