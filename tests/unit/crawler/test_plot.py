"""`crystalline plot`: the learning curve from the store's evaluation history."""

import builtins

import pytest

from crawler.cli.main import main

pytest.importorskip("matplotlib", reason="plot is an optional extra: pip install 'crystalline[plot]'")


def stored_history(state, values, models=None):
    from crawler.config import load_config
    from storage import CorpusQueue, open_database

    state.mkdir(parents=True, exist_ok=True)
    database = open_database(load_config(state_dir=state).storage_config())
    try:
        queue = CorpusQueue(database)
        for i, value in enumerate(values, start=1):
            queue.record_evaluation(step=100 * i, epoch=0.1 * i, tokens_trained=1000 * i, val_bits_per_byte=value,
                                    train_bits_per_byte=value - 0.1 if i % 2 else None, holdout_tokens=512,
                                    seconds=0.1, best=value == min(values[:i]),
                                    model=None if models is None else models[i - 1])
    finally:
        database.close()


def shape(n_layer, grown_at_step=None, grown_from_layers=None):
    return {"d_model": 16, "n_head": 2, "n_layer": n_layer, "parameters": 1000 * n_layer,
            "grown_at_step": grown_at_step, "grown_from_layers": grown_from_layers}


def drawn_lines(monkeypatch) -> list:
    from matplotlib.axes import Axes

    lines = []
    real = Axes.axvline
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **kw: lines.append(x) or real(self, x, **kw))
    return lines


def test_plot_draws_the_stored_history(tmp_path, capsys):
    state, out = tmp_path / "state", tmp_path / "curve.png"
    stored_history(state, [3.0, 2.5, 2.2, 2.3])
    assert main(["plot", "--state-dir", str(state), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    line = capsys.readouterr().out.strip()
    assert line == f"plot: {out}: 4 evaluations, held-out 2.3000 bits per byte at step 400 (best 2.2000 at step 300)"


def test_plot_without_evaluations_says_when_there_will_be_some(tmp_path, capsys):
    stored_history(tmp_path / "state", [])
    assert main(["plot", "--state-dir", str(tmp_path / "state"), "--output", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err
    assert "no evaluation in" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    real = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert main(["plot", "--state-dir", str(tmp_path), "--output", str(tmp_path / "x.png")]) != 0
    assert "pip install 'crystalline[plot]'" in capsys.readouterr().err


def test_plot_marks_each_growth_of_the_model_at_its_step(tmp_path, capsys, monkeypatch):
    """The growths come from the history and from the newest checkpoint's records, each a vertical
    line at its step: one line for a growth both show (step 200), and one for a growth no
    evaluation followed yet, which only the checkpoint records (step 400)."""
    import numpy as np

    from crawler.config import load_config
    from engine import ModelConfig, count_parameters, save_checkpoint

    state, out = tmp_path / "state", tmp_path / "curve.png"
    stored_history(state, [3.0, 2.5, 2.2, 2.3], [shape(1), shape(1), shape(2, 200, 1), shape(2, 200, 1)])
    model = ModelConfig(context_length=16, d_model=16, n_layer=3, n_head=2)
    size = count_parameters(model)
    growth = [{"kind": "depth", "step": step, "tokens_seen": 0, "reason": "test",
               "old": {"n_layer": depth, "d_model": 16, "n_head": 2, "parameters": 1},
               "new": {"n_layer": depth + 1, "d_model": 16, "n_head": 2, "parameters": size}}
              for step, depth in ((200, 1), (400, 2))]
    zeros = np.zeros(size, np.float32)
    save_checkpoint(state / "checkpoints", step=400, model_config=model, params=zeros, m=zeros, v=zeros,
                    train_state={"growth": growth})
    lines = drawn_lines(monkeypatch)
    assert main(["plot", "--state-dir", str(state), "--output", str(out)]) == 0
    train = load_config(state_dir=state).train
    assert lines == [step * train.batch_size * train.seq_len / 1e6 for step in (200, 400)]
    assert capsys.readouterr().out.strip().endswith("; 2 growth(s) of the model marked")


def test_plot_marks_the_growths_the_history_shows_without_a_checkpoint(tmp_path, capsys, monkeypatch):
    """Each row holds the shape it measured and the step that shape began at: the history alone
    marks both growths, each once, at its step (not at the first evaluation after it)."""
    from crawler.config import load_config

    state, out = tmp_path / "state", tmp_path / "curve.png"
    stored_history(state, [3.0, 2.5, 2.2, 2.3, 2.1],
                   [None, shape(1), shape(2, 250, 1), shape(2, 250, 1), shape(4, 420, 2)])
    lines = drawn_lines(monkeypatch)
    assert main(["plot", "--state-dir", str(state), "--output", str(out)]) == 0
    train = load_config(state_dir=state).train
    assert lines == [step * train.batch_size * train.seq_len / 1e6 for step in (250, 420)]
    assert capsys.readouterr().out.strip().endswith("; 2 growth(s) of the model marked")
