"""The Prometheus metrics read off the daemon's events, and the logging hook that feeds them."""

import io
import json

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from crawler.config import parse_listen
from crawler.logging import configure_logging, get_logger
from crawler.service.metrics import EventMetrics


def samples(metrics: EventMetrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_events_become_counters_and_gauges():
    m = EventMetrics(version="9.9")
    for event in [
        {"event": "trainer_ready", "step": 100},
        {"event": "file_ingested", "bytes": 1000, "tokens": 1001, "duplicate": False},
        {"event": "file_ingested", "bytes": 1000, "tokens": 0, "duplicate": True},
        {"event": "file_skipped", "reason": "binary", "path": "/in/x.bin"},
        {"event": "file_failed", "path": "/in/y.pdf"},
        {"event": "train_step", "step": 110, "loss": 2.5, "lr": 0.003, "tokens_per_s": 20000.0, "dt_ms": 30.0},
        {"event": "train_step", "step": 120, "loss": 2.4, "lr": 0.003, "tokens_per_s": 21000.0, "dt_ms": 40.0},
        {"event": "checkpoint_saved", "reason": "schedule", "step": 120},
        {"event": "eval_finished", "val_bits_per_byte": 2.2, "best_val_bits_per_byte": 2.1},
        {"event": "worker_restarted", "worker": "ingest"},
        {"event": "status", "tokens_trained": 5000, "queue_documents": 3, "queue_tokens": 700, "rss_mb": 250.0,
         "threads": 2, "idle": False, "plateaued": True},
        {"event": "status", "tokens_trained": 7048},
    ]:
        m.observe(event)
    found = samples(m)
    assert value(found, "crystalline_build_info", version="9.9") == 1
    assert value(found, "crystalline_files_total", result="ingested", reason="") == 1
    assert value(found, "crystalline_files_total", result="duplicate", reason="") == 1
    assert value(found, "crystalline_files_total", result="skipped", reason="binary") == 1
    assert value(found, "crystalline_files_total", result="failed", reason="") == 1
    assert value(found, "crystalline_ingested_bytes_total") == 1000
    assert value(found, "crystalline_ingested_tokens_total") == 1001
    assert value(found, "crystalline_training_steps_total") == 20  # counted from this process's start (step 100)
    assert value(found, "crystalline_training_step") == 120
    assert value(found, "crystalline_train_loss") == 2.4
    assert value(found, "crystalline_training_tokens_per_second") == 21000.0
    assert value(found, "crystalline_step_seconds_count") == 2
    assert value(found, "crystalline_step_seconds_sum") == pytest.approx(0.07)
    assert value(found, "crystalline_checkpoints_total", reason="schedule") == 1
    assert value(found, "crystalline_last_checkpoint_timestamp_seconds") > 0
    assert value(found, "crystalline_heldout_bits_per_byte") == 2.2
    assert value(found, "crystalline_heldout_best_bits_per_byte") == 2.1
    assert value(found, "crystalline_worker_restarts_total", worker="ingest") == 1
    assert value(found, "crystalline_trained_tokens_total") == 2048  # the running total's growth since start
    assert value(found, "crystalline_queue_documents") == 3 and value(found, "crystalline_queue_tokens") == 700
    assert value(found, "crystalline_resident_memory_bytes") == 250e6
    assert value(found, "crystalline_training_idle") == 0 and value(found, "crystalline_training_plateaued") == 1
    assert not any("/in/" in str(labels) for _, labels in found), "no file path as a label value"


def test_the_observer_sees_info_events_at_level_warning_and_only_warnings_are_written():
    m, stream = EventMetrics(), io.StringIO()
    try:
        configure_logging("warning", json=True, stream=stream, observer=m)
        log = get_logger("test")
        log.info("file_ingested", bytes=10, tokens=11, duplicate=False)
        log.warning("file_failed", path="/x")
        log.debug("file_handed_over", path="/x")
    finally:
        configure_logging("info")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["file_failed"]
    found = samples(m)
    assert value(found, "crystalline_files_total", result="ingested", reason="") == 1
    assert value(found, "crystalline_files_total", result="failed", reason="") == 1


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("0.0.0.0", 9464)),
                                            ("[::1]:80", ("::1", 80))])
def test_listen_addresses(text, expected):
    assert parse_listen(text, "127.0.0.1:9464") == expected


@pytest.mark.parametrize("text", ["9464", "host:", "host:0", "host:70000", "host:http"])
def test_bad_listen_addresses_name_the_form(text):
    with pytest.raises(ValueError, match="must be HOST:PORT"):
        parse_listen(text, "127.0.0.1:9464")


def test_a_bad_listen_setting_is_a_config_error(tmp_path):
    from crawler import ConfigError
    from crawler.config import load_config

    with pytest.raises(ConfigError, match="listen"):
        load_config(state_dir=tmp_path, overrides={"metrics": {"listen": "nowhere"}})
