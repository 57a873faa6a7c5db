"""Disk caps: processed/ and quarantine/ trimmed oldest first by modification time, checkpoints by
step (never the newest committed one, best.safetensors or a file no row names), one event per
sweep, a cap that cannot be met a warning; files made with set mtimes, no clock read."""

import os
from dataclasses import replace
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from crawler.config import Config, DaemonConfig
from crawler.state import disk
from crawler.state.disk import MB, FolderCaps, folder_usage, trim_folder
from crawler.training.checkpoints import BEST_CHECKPOINT, CheckpointStore
from storage import CorpusQueue, StorageConfig, open_database

T0 = 1_700_000_000  # mtimes are set, never read from a clock


def put(path: Path, size: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def caps(**daemon) -> DaemonConfig:
    return replace(DaemonConfig(), **daemon)


# ---------------------------------------------------------------------------------------------
# folders: processed/ and quarantine/


def test_a_folder_is_trimmed_oldest_first_until_it_fits_and_empty_folders_go(tmp_path):
    folder = tmp_path / "processed"
    oldest = put(folder / "inbox" / "deep" / "a.txt", 400, T0)
    middle = put(folder / "inbox" / "b.txt", 300, T0 + 10)
    newest = put(folder / "c.txt", 300, T0 + 20)
    newer = put(folder / "other" / "d.txt", 200, T0 + 5)
    trimmed = trim_folder(folder, 500)
    assert (trimmed.files, trimmed.bytes, trimmed.used_bytes, trimmed.met) == (3, 900, 300, True)
    assert not oldest.exists() and not newer.exists() and not middle.exists() and newest.exists()
    assert not (folder / "inbox").exists() and not (folder / "other").exists(), "emptied folders removed"
    assert folder.is_dir(), "never the capped folder itself"
    assert folder_usage(folder) == disk.Usage(1, 300)


def test_a_folder_within_its_cap_or_without_one_is_left_alone(tmp_path, monkeypatch):
    folder = tmp_path / "quarantine"
    put(folder / "a", 500, T0)
    assert trim_folder(folder, 500).files == 0 and (folder / "a").exists()
    monkeypatch.setattr(disk, "_walk", lambda folder: pytest.fail("a cap of 0 walks nothing"))
    assert trim_folder(folder, 0).files == 0
    with capture_logs() as logs:
        assert FolderCaps(tmp_path, structlog.get_logger()).sweep(caps(), moved=1) == {}
    assert logs == [] and (folder / "a").exists()


def test_a_link_is_deleted_as_itself_never_followed(tmp_path):
    outside = put(tmp_path / "outside" / "big.txt", 5000, T0 + 100)
    folder = tmp_path / "processed"
    link = folder / "link.txt"
    folder.mkdir()
    link.symlink_to(outside)
    os.utime(link, (T0, T0), follow_symlinks=False)
    put(folder / "b.txt", 100, T0 + 50)
    trimmed = trim_folder(folder, 100)
    assert trimmed.files == 1 and not link.is_symlink() and outside.exists()


def test_the_sweep_logs_one_event_per_part_and_walks_processed_only_after_moves(tmp_path, monkeypatch):
    for i in range(5):
        put(tmp_path / "processed" / "inbox" / f"{i}.txt", MB // 2, T0 + i)
    put(tmp_path / "quarantine" / "reset-x" / "ckpt-000000004.safetensors", MB, T0)
    put(tmp_path / "quarantine" / "ckpt-000000009.safetensors", MB, T0 + 1)
    sweeper = FolderCaps(tmp_path, structlog.get_logger())
    config = caps(processed_max_mb=1, quarantine_max_mb=1)
    with capture_logs() as logs:
        done = sweeper.sweep(config, moved=("ingest", 5))
    assert sorted(done) == ["processed", "quarantine"]
    trimmed = sorted((e for e in logs if e["event"] == "disk_trimmed"), key=lambda e: e["part"])
    assert [(e["part"], e["files"], e["bytes"], e["used_bytes"], e["cap_bytes"]) for e in trimmed] == [
        ("processed", 3, 3 * MB // 2, MB, MB), ("quarantine", 1, MB, MB, MB)]
    assert sorted(p.name for p in (tmp_path / "processed" / "inbox").iterdir()) == ["3.txt", "4.txt"]
    assert [p.name for p in (tmp_path / "quarantine").iterdir()] == ["ckpt-000000009.safetensors"]

    walked = []
    real_walk = disk._walk
    monkeypatch.setattr(disk, "_walk", lambda folder: walked.append(folder.name) or real_walk(folder))
    put(tmp_path / "processed" / "inbox" / "old.txt", MB, T0 - 100)  # nothing moved: not looked for
    with capture_logs() as logs:
        sweeper.sweep(config, moved=("ingest", 5))
    assert walked == ["quarantine"] and logs == []
    with capture_logs() as logs:
        sweeper.sweep(config, moved=("ingest", 6))  # the ingest worker stored (and moved) a file
    assert walked == ["quarantine", "processed", "quarantine"]
    assert [(e["part"], e["files"]) for e in logs] == [("processed", 1)]
    assert not (tmp_path / "processed" / "inbox" / "old.txt").exists()
    sweeper.sweep(replace(config, processed_max_mb=2), moved=("ingest", 6))  # a new cap: walked again
    assert walked[-2:] == ["processed", "quarantine"]


def test_a_cap_that_cannot_be_met_is_one_warning_not_a_crash(tmp_path, monkeypatch):
    stuck = put(tmp_path / "quarantine" / "stuck", 2 * MB, T0)
    put(tmp_path / "quarantine" / "newer", MB // 2, T0 + 1)
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    sweeper = FolderCaps(tmp_path, structlog.get_logger())
    config = caps(quarantine_max_mb=1)
    with capture_logs() as logs:
        sweeper.sweep(config)
        sweeper.sweep(config)
    unmet = [e for e in logs if e["event"] == "disk_cap_unmet"]
    assert len(unmet) == 1, "warned when it starts, not at every sweep"
    assert unmet[0]["part"] == "quarantine" and unmet[0]["setting"] == "daemon.quarantine_max_mb"
    assert unmet[0]["used_bytes"] == 2 * MB and unmet[0]["cap_bytes"] == MB
    assert [e["files"] for e in logs if e["event"] == "disk_trimmed"] == [1]
    assert stuck.exists()


# ---------------------------------------------------------------------------------------------
# checkpoints


@pytest.fixture
def queue(tmp_path):
    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    yield CorpusQueue(database)
    database.close()


def committed(state: Path, queue, step: int, size: int) -> Path:
    """A checkpoint file the database names (its bytes are not read by the cap)."""
    path = put(state / "checkpoints" / f"ckpt-{step:09d}.safetensors", size, T0 + step)
    queue.commit_checkpoint(step=step, path=CheckpointStore(state).stored_path(path), stream_position=0,
                            tokens_trained=0)
    return path


def test_the_checkpoint_cap_deletes_the_lowest_steps_never_the_newest_best_or_unknown(tmp_path, queue):
    state = tmp_path / "state"
    files = {step: committed(state, queue, step, MB) for step in (4, 8, 12, 16, 20)}
    best = put(state / "checkpoints" / BEST_CHECKPOINT, MB, T0)
    unknown = put(state / "checkpoints" / "ckpt-000000002.safetensors", MB, T0)  # no row names it
    with capture_logs() as logs:
        deleted = CheckpointStore(state, queue, structlog.get_logger()).prune(
            keep=10, latest=files[20], command="run", max_bytes=4 * MB)
    assert deleted == [files[4], files[8], files[12]]
    assert files[16].exists() and files[20].exists() and best.exists() and unknown.exists()
    assert [r.step for r in queue.checkpoints()] == [20, 16], "the rows went with their files"
    assert logs == [{"event": "disk_trimmed", "log_level": "info", "part": "checkpoints", "files": 3,
                     "bytes": 3 * MB, "used_bytes": 4 * MB, "cap_bytes": 4 * MB, "steps": [4, 8, 12]}]


def test_a_checkpoint_cap_below_what_must_be_kept_is_a_warning(tmp_path, queue):
    state = tmp_path / "state"
    files = {step: committed(state, queue, step, 2 * MB) for step in (4, 8)}
    put(state / "checkpoints" / BEST_CHECKPOINT, 2 * MB, T0)
    with capture_logs() as logs:
        deleted = CheckpointStore(state, queue, structlog.get_logger()).prune(
            keep=10, latest=files[8], command="run", max_bytes=MB)
    assert deleted == [files[4]] and files[8].exists() and (state / "checkpoints" / BEST_CHECKPOINT).exists()
    unmet = next(e for e in logs if e["event"] == "disk_cap_unmet")
    assert (unmet["part"], unmet["used_bytes"], unmet["cap_bytes"]) == ("checkpoints", 4 * MB, MB)
    assert "newest checkpoint" in unmet["kept"] and unmet["setting"] == "daemon.checkpoints_max_mb"


def test_the_database_s_newest_checkpoint_is_kept_even_when_another_file_is_latest(tmp_path, queue):
    state = tmp_path / "state"
    files = {step: committed(state, queue, step, MB) for step in (4, 8)}
    written = put(state / "checkpoints" / "ckpt-000000012.safetensors", MB, T0)  # not committed
    deleted = CheckpointStore(state, queue).prune(keep=10, latest=written, command="run", max_bytes=MB)
    assert deleted == [files[4]] and files[8].exists() and written.exists()


def test_without_a_cap_nothing_beyond_keep_is_deleted(tmp_path, queue):
    state = tmp_path / "state"
    files = [committed(state, queue, step, MB) for step in (4, 8, 12)]
    assert CheckpointStore(state, queue).prune(keep=10, latest=files[-1], command="run") == []
    assert all(f.exists() for f in files)


def test_the_training_loop_keeps_its_checkpoints_within_the_cap(tmp_path):
    from crawler.ingest.pipeline import Ingestor
    from crawler.ingest.tokenizer import ByteTokenizer
    from crawler.training.worker import TrainingWorker
    from engine import ModelConfig, TrainConfig
    from engine.checkpoint import list_checkpoints

    database = open_database(StorageConfig(url=f"sqlite:///{tmp_path / 'corpus.db'}").validate())
    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    assert Ingestor(CorpusQueue(database), ByteTokenizer()).ingest_file(tmp_path / "a.txt").status == "ingested"
    # d_model 64, two layers: each file (weights and both AdamW moments) is about 1.4 MB, so 6 MB
    # holds the best and three rolling files
    config = Config(state_dir=tmp_path / "state",
                    model=ModelConfig(context_length=16, d_model=64, n_layer=2, n_head=2),
                    train=TrainConfig(batch_size=4, seq_len=16, threads=1, warmup_steps=2, schedule="constant"),
                    daemon=replace(DaemonConfig(), checkpoint_every_steps=4, eval_every_steps=4, idle="sleep",
                                   keep_checkpoints=100, checkpoints_max_mb=6))
    worker = TrainingWorker(config, CorpusQueue(database), ByteTokenizer(), structlog.get_logger())
    worker.initialize()
    try:
        with capture_logs() as logs:
            for now in range(24):
                worker.run_once(float(now))
    finally:
        worker.shutdown()
        database.close()
    folder = worker.checkpoints.directory
    size = (folder / "ckpt-000000024.safetensors").stat().st_size
    assert 1.2 * MB < size < 1.8 * MB
    steps = [int(p.name[5:14]) for p in list_checkpoints(folder)]
    assert steps == [16, 20, 24], "the lowest steps went first; the newest and best stayed"
    assert (folder / BEST_CHECKPOINT).exists()
    assert folder_usage(folder).bytes <= 6 * MB
    trimmed = [e for e in logs if e["event"] == "disk_trimmed"]
    assert [s for e in trimmed for s in e["steps"]] == [4, 8, 12]
    assert all(e["part"] == "checkpoints" and e["cap_bytes"] == 6 * MB for e in trimmed)


# ---------------------------------------------------------------------------------------------
# the daemon: one sweep per status interval


def test_the_daemon_sweeps_the_folders_on_its_status_interval(tmp_path):
    from test_daemon import StubWatcher

    from crawler.service.supervisor import Daemon

    class Ingest:  # an ingest worker that has moved nothing yet
        name = "ingest"
        counts = {"ingested": 0, "duplicate": 0}

        def initialize(self):
            pass

        def run_once(self, now):
            return 0.05

        def shutdown(self):
            pass

    class IngestOnly(Daemon):  # no store, no trainer, a watcher that watches nothing
        def open_store(self):
            return None, None

        def make_worker(self, name):
            return Ingest()

        def make_watcher(self):
            return StubWatcher()

    put(tmp_path / "processed" / "inbox" / "old.txt", 2 * MB, T0)
    put(tmp_path / "processed" / "inbox" / "new.txt", MB, T0 + 1)
    config = Config(state_dir=tmp_path, daemon=replace(DaemonConfig(), train=False, after_ingest="move",
                                                        processed_max_mb=1, status_interval_seconds=30.0))
    daemon = IngestOnly(config, {}, clock=lambda: 0.0)  # started at 0: the first status is due at 30
    daemon.start()
    try:
        with capture_logs() as logs:
            assert daemon.tick(10.0)
            assert (tmp_path / "processed" / "inbox" / "old.txt").exists(), "no sweep within the interval"
            assert daemon.tick(30.0)
            assert daemon.tick(40.0)
    finally:
        daemon.stop("signal", 0)
    assert [e["event"] for e in logs].count("status") == 1
    assert [(e["part"], e["files"], e["bytes"]) for e in logs if e["event"] == "disk_trimmed"] == [
        ("processed", 1, 2 * MB)]
    assert not (tmp_path / "processed" / "inbox" / "old.txt").exists()
    assert (tmp_path / "processed" / "inbox" / "new.txt").exists()
