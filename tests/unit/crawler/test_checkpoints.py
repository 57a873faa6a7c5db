"""CheckpointStore, the crawler's one owner of checkpoint files and rows: names, a file committed
with its row or not at all, retention that takes the rows with the files, the model a command
loads, and a backup's copy. Real (tiny) checkpoint files on a tmp_path SQLite store; no clock."""

from pathlib import Path

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from crawler.training.checkpoints import BEST_CHECKPOINT, CheckpointStore
from engine import ModelConfig, init_parameters, save_checkpoint
from engine.checkpoint import checkpoint_name
from storage import CorpusQueue, StorageConfig, open_database

TINY = ModelConfig(vocab_size=11, context_length=8, d_model=16, n_layer=1, n_head=2)
PARAMS = init_parameters(TINY)
ZEROS = np.zeros_like(PARAMS)


class Weights:
    """What CheckpointStore.commit asks of a trainer: its step and save_checkpoint."""

    def __init__(self, step: int):
        self.step_count = step

    def save_checkpoint(self, directory, extra=None, keep_last=3, name=None) -> Path:
        return save_checkpoint(directory, step=self.step_count, model_config=TINY, params=PARAMS, m=ZEROS, v=ZEROS,
                               extra=extra, keep_last=keep_last, name=name)


@pytest.fixture
def queue(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    yield CorpusQueue(database)
    database.close()


@pytest.fixture
def store(tmp_path, queue):
    return CheckpointStore(tmp_path / "state", queue, structlog.get_logger())


def commit(store: CheckpointStore, step: int, command: str = "run") -> Path:
    return store.commit(Weights(step), extra={"command": command}, stream_position=0, tokens_trained=0, loss=None)


def test_names_are_the_engine_s_and_rows_name_files_relative_to_the_state_directory(store):
    path = commit(store, 7)
    assert path == store.directory / checkpoint_name(7)
    assert store.stored_path(path) == "checkpoints/ckpt-000000007.safetensors"
    assert store.queue.latest_checkpoint().path == "checkpoints/ckpt-000000007.safetensors"
    assert store.resolve("/srv/old/state/checkpoints/ckpt-000000007.safetensors") == path  # an earlier row
    store.write_best(step=7, model_config=TINY, params=PARAMS, m=ZEROS, v=ZEROS, train_state={}, extra={})
    assert store.rolling() == [path], "best.safetensors is not a rolling file"


def test_a_checkpoint_whose_row_cannot_be_committed_leaves_no_file(store):
    commit(store, 5)
    with pytest.raises(ValueError, match="stream_position"):  # past the stream's end: refused
        store.commit(Weights(10), extra={}, stream_position=99, tokens_trained=0, loss=None)
    assert [p.name for p in store.rolling()] == [checkpoint_name(5)]
    assert store.queue.latest_checkpoint().step == 5


def test_prune_takes_the_rows_with_the_files(store):
    paths = {step: commit(store, step) for step in (1, 2, 3, 4, 5)}
    other = commit(store, 6, command="train")  # another command's: never deleted by keep
    latest = commit(store, 7)
    paths[4].unlink()  # gone by hand: its row names nothing any more
    deleted = store.prune(keep=3, latest=latest, command="run")  # the newest 3 rows, of any command
    assert deleted == [paths[3], paths[2], paths[1]]  # newest row first
    assert [r.step for r in store.queue.checkpoints()] == [7, 6, 5]
    assert [p.name for p in store.rolling()] == [paths[5].name, other.name, latest.name]


def test_a_file_two_rows_name_stays_while_the_newer_row_is_kept(store):
    """`crystalline grow` commits its grown model at the step it grew, in place of that step's
    file: two rows then name one file, and the older row falling out of `keep` must not take it."""
    commit(store, 1)
    regrown = commit(store, 2)
    assert commit(store, 2) == regrown  # the same file name, a second row
    latest = commit(store, 3)
    assert store.prune(keep=2, latest=latest, command="run") == [store.directory / checkpoint_name(1)]
    assert regrown.exists() and [r.step for r in store.queue.checkpoints()] == [3, 2, 2]
    assert store.prune(keep=1, latest=latest, command="run") == [regrown]  # now no kept row names it


def test_the_model_a_file_holds_is_read_from_its_header(store):
    path = commit(store, 4)
    assert store.model_summary(path) == {"step": 4, "n_layer": 1, "d_model": 16, "n_head": 2,
                                         "parameters": PARAMS.size, "growths": []}


def test_the_cap_takes_the_rows_of_the_files_it_deletes(store):
    paths = [commit(store, step) for step in (1, 2, 3)]
    size = paths[0].stat().st_size
    with capture_logs() as logs:
        deleted = store.prune(keep=10, latest=paths[-1], command="run", max_bytes=size)
    assert deleted == paths[:2] and [r.step for r in store.queue.checkpoints()] == [3]
    assert [e["steps"] for e in logs if e["event"] == "disk_trimmed"] == [[1, 2]]


def test_prune_never_drops_the_newest_row_even_when_its_file_is_gone(store):
    first, newest = commit(store, 1), commit(store, 2)
    newest.unlink()
    assert store.prune(keep=2, latest=newest, command="run") == []
    assert [r.step for r in store.queue.checkpoints()] == [2, 1]  # reconcile will rewind to 1
    assert first.exists()


def test_a_command_loads_the_best_unless_latest_and_passes_over_what_does_not_load(store):
    assert store.load_model() is None
    commit(store, 4)
    newest = commit(store, 8)
    store.write_best(step=4, model_config=TINY, params=PARAMS, m=ZEROS, v=ZEROS, train_state={},
                     extra={"val_bits_per_byte": 1.5})
    assert store.load_model().path == store.best_path
    assert store.load_model(latest=True).path == newest
    store.best_path.write_bytes(b"not a checkpoint")
    newest.write_bytes(newest.read_bytes()[:100])
    with capture_logs() as logs:
        loaded = store.load_model()
    assert loaded.step == 4 and loaded.path.name == checkpoint_name(4)
    assert [Path(e["path"]).name for e in logs if e["event"] == "checkpoint_skipped"] == [
        BEST_CHECKPOINT, newest.name]


def test_a_copy_passes_over_pruned_rows_but_not_a_pruned_newest(tmp_path, store):
    old, middle, newest = commit(store, 1), commit(store, 2), commit(store, 3)
    store.write_best(step=2, model_config=TINY, params=PARAMS, m=ZEROS, v=ZEROS, train_state={}, extra={})
    old.unlink()
    named = [r.path for r in store.queue.checkpoints()]  # newest first
    backup = CheckpointStore(tmp_path / "backup")
    copies = store.copy_into(backup, named)
    assert sorted(p.name for p in copies) == sorted([middle.name, newest.name, BEST_CHECKPOINT])
    assert sorted(p.name for p in backup.directory.iterdir()) == sorted(p.name for p in copies)
    newest.unlink()
    assert store.copy_into(CheckpointStore(tmp_path / "again"), named) is None


def test_status_takes_the_best_figure_from_best_safetensors_once_measured_again(store, tmp_path):
    """status's best is the history's best row until the held-out set grows; then the figure
    best.safetensors was given when it was measured again on the grown set."""
    from crawler.config import Config
    from crawler.service.status import best_record

    config = Config(state_dir=tmp_path / "state")
    recorded = {"step": 40, "val_bits_per_byte": 1.9, "holdout_tokens": 512, "created_at": "x"}
    assert best_record(config, recorded) == recorded  # no best file: the row as recorded
    assert best_record(config, None) is None
    write = lambda tokens: store.write_best(step=40, model_config=TINY, params=PARAMS, m=ZEROS, v=ZEROS,  # noqa: E731
                                            train_state={}, extra={"val_bits_per_byte": 2.4, "holdout_tokens": tokens})
    write(512)
    assert best_record(config, recorded) == recorded  # the same set: the row's own figure
    write(1024)
    assert best_record(config, recorded) == recorded | {"val_bits_per_byte": 2.4, "holdout_tokens": 1024,
                                                        "remeasured": True}
