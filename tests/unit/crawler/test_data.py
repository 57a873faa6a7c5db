"""Offline data: reading files, the corpus layout, stateless window sampling and eval windows."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.ingest.data import (
    CorpusTooShort,
    DataError,
    WindowSampler,
    eval_windows,
    find_files,
    load_corpus,
)
from crawler.ingest.tokenizer import EOD


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 257, size=n).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# reading files


def test_corpus_reads_folders_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_bytes(b"zz")
    (tmp_path / "b" / "a.txt").write_bytes(b"a")
    (tmp_path / "c.txt").write_bytes(b"ccc")
    (tmp_path / ".hidden").write_bytes(b"secret")
    corpus = load_corpus([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in corpus.files] == ["b/a.txt", "b/z.txt", "c.txt"]
    assert corpus.tokens.dtype == np.uint16
    assert corpus.tokens.tolist() == [EOD, 97, EOD, 122, 122, EOD, 99, 99, 99]
    assert corpus.n_bytes == 6


def test_binary_and_empty_files_are_skipped_with_a_reason(tmp_path):
    (tmp_path / "text.txt").write_bytes(b"hello")
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\x00\x01")
    (tmp_path / "empty.txt").write_bytes(b"")
    corpus = load_corpus([tmp_path])
    assert [p.name for p in corpus.files] == ["text.txt"]
    reasons = {s.path.name: s.reason for s in corpus.skipped}
    assert reasons == {"image.bin": "binary", "empty.txt": "empty"}
    assert all(str(s.path) in s.message for s in corpus.skipped)


def test_files_are_read_as_the_daemon_reads_them(tmp_path):
    (tmp_path / "photo.txt").write_bytes(b"\xff\xd8\xff\xe0JFIF" + b"text" * 100)  # no NUL
    (tmp_path / "blob").write_bytes(b"abc\0def")
    (tmp_path / "wide.txt").write_bytes("hello".encode("utf-16"))  # decoded, as the daemon does
    (tmp_path / "ok.txt").write_bytes(b"ok  \r\n\n")  # normalised: line ends, trailing space
    (tmp_path / "notes.txt~").write_bytes(b"an editor's backup")  # a name the daemon passes over
    corpus = load_corpus([tmp_path])
    assert [p.name for p in corpus.files] == ["ok.txt", "wide.txt"]
    assert corpus.tokens.tolist() == [EOD, *b"ok", EOD, *b"hello"]
    assert corpus.n_bytes == len("okhello")
    assert {s.path.name: s.reason for s in corpus.skipped} == {"photo.txt": "binary", "blob": "binary"}
    assert all(s.status == "skipped" and s.message.startswith(f"{s.path}: ") for s in corpus.skipped)


def test_unreadable_files_are_skipped(tmp_path, monkeypatch):
    from crawler.ingest import reading
    from crawler.ingest.extract import Skipped

    (tmp_path / "ok.txt").write_bytes(b"ok")
    (tmp_path / "locked.txt").write_bytes(b"no")
    real_extract = reading.extract_file

    def extract_file(path, limits):  # chmod 0 does not stop root, so refuse the read here
        if Path(path).name == "locked.txt":
            raise Skipped("unreadable", "Permission denied")
        return real_extract(path, limits)

    monkeypatch.setattr(reading, "extract_file", extract_file)
    corpus = load_corpus([tmp_path])
    assert [p.name for p in corpus.files] == ["ok.txt"]
    assert [(s.path.name, s.reason) for s in corpus.skipped] == [("locked.txt", "unreadable")]
    assert "Permission denied" in corpus.skipped[0].message


def test_a_file_named_twice_is_read_once(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"abc")
    files, _ = find_files([path, tmp_path])
    assert files == [path]


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_corpus([tmp_path / "nope.txt"])


def test_no_text_at_all_is_an_error(tmp_path):
    (tmp_path / "blob").write_bytes(b"\0\0\0")
    with pytest.raises(DataError, match="no readable text files"):
        load_corpus([tmp_path])


# ---------------------------------------------------------------------------------------------
# training windows


def test_batches_are_reproducible_per_step_without_state():
    tokens = _tokens(1000)
    a = WindowSampler(tokens, seq_len=16, batch_size=4, seed=7)
    b = WindowSampler(tokens, seq_len=16, batch_size=4, seed=7)
    for step in (0, 1, 5, 123):
        x1, y1 = a.batch(step)
        x2, y2 = b.batch(step)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # reading step 5 first does not change what step 1 gives (no hidden state)
    b.batch(5)
    np.testing.assert_array_equal(a.batch(1)[0], b.batch(1)[0])
    assert not np.array_equal(a.batch(0)[0], a.batch(1)[0])
    other_seed = WindowSampler(tokens, seq_len=16, batch_size=4, seed=8)
    assert not np.array_equal(a.batch(0)[0], other_seed.batch(0)[0])


def test_targets_are_inputs_shifted_by_one_from_the_corpus():
    tokens = np.arange(500, dtype=np.uint16) % 257
    sampler = WindowSampler(tokens, seq_len=8, batch_size=5, seed=1)
    inputs, targets = sampler.batch(3)
    assert inputs.dtype == targets.dtype == np.int32
    assert inputs.shape == targets.shape == (5, 8)
    assert inputs.flags.c_contiguous and targets.flags.c_contiguous
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    for row_in, row_out in zip(inputs, targets):
        start = int(row_in[0])  # tokens[i] == i here (below 257)
        np.testing.assert_array_equal(row_in, tokens[start : start + 8])
        np.testing.assert_array_equal(row_out, tokens[start + 1 : start + 9])


def test_every_window_start_is_reachable_including_the_last():
    tokens = np.arange(12, dtype=np.uint16)
    sampler = WindowSampler(tokens, seq_len=10, batch_size=8, seed=0)
    starts = {int(x) for step in range(20) for x in sampler.batch(step)[0][:, 0]}
    assert starts == {0, 1}  # 12 tokens leave room for windows of 11 at 0 and 1


def test_short_corpus_is_a_clear_error():
    WindowSampler(_tokens(17), seq_len=16, batch_size=2, seed=0)  # exactly T + 1 is enough
    with pytest.raises(CorpusTooShort, match="corpus has 16 tokens.*at least 17"):
        WindowSampler(_tokens(16), seq_len=16, batch_size=2, seed=0)


# ---------------------------------------------------------------------------------------------
# eval windows


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seq_len=st.integers(1, 40), batch_size=st.integers(1, 6))
def test_eval_windows_cover_every_target_exactly_once(n, seq_len, batch_size):
    tokens = np.arange(n, dtype=np.uint16)  # token value == position, so targets name themselves
    seen = []
    for inputs, targets in eval_windows(tokens, seq_len, batch_size):
        assert inputs.dtype == targets.dtype == np.int32
        assert inputs.shape == targets.shape
        assert inputs.shape[0] <= batch_size and 1 <= inputs.shape[1] <= seq_len
        np.testing.assert_array_equal(targets, inputs + 1)  # next-token targets
        seen.extend(targets.reshape(-1).tolist())
    assert sorted(seen) == list(range(1, n))


def test_eval_windows_tail_comes_last_as_one_short_row():
    batches = list(eval_windows(np.arange(12, dtype=np.uint16), seq_len=4, batch_size=2))
    assert [x.shape for x, _ in batches] == [(2, 4), (1, 3)]
    np.testing.assert_array_equal(batches[-1][1], [[9, 10, 11]])


def test_eval_needs_two_tokens():
    with pytest.raises(CorpusTooShort):
        list(eval_windows(np.zeros(1, dtype=np.uint16), seq_len=4, batch_size=2))
