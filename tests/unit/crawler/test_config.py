"""Configuration precedence (defaults < TOML file < environment < flags) and validation."""

from pathlib import Path

import pytest

from crawler import ConfigError
from crawler.config import Config, load_config


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_work_in_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config == Config()
    assert config.database_url == f"sqlite:///{tmp_path / 'crystalline-state' / 'corpus.db'}"
    assert config.storage_config().sqlite_synchronous == "NORMAL"


def test_file_then_environment_then_flags(tmp_path):
    toml = write(tmp_path / "c.toml", """
state_dir = "from-file"
[store]
sqlite_synchronous = "FULL"
chunk_tokens = 1000
[extract]
max_file_bytes = 5000
""")
    config = load_config(toml, env={})
    assert config.state_dir == Path("from-file")
    assert (config.store.sqlite_synchronous, config.store.chunk_tokens) == ("FULL", 1000)
    assert config.extract.max_file_bytes == 5000

    env = {"CRYSTALLINE_STORE_CHUNK_TOKENS": "2000", "CRYSTALLINE_STATE_DIR": "from-env",
           "CRYSTALLINE_EXTRACT_TIME_BUDGET_SECONDS": "2.5"}
    config = load_config(toml, env=env)
    assert config.store.chunk_tokens == 2000 and config.state_dir == Path("from-env")
    assert config.extract.time_budget_seconds == 2.5
    assert config.store.sqlite_synchronous == "FULL", "the file still applies where env is silent"

    config = load_config(toml, env=env, state_dir="from-flag", overrides={"store": {"chunk_tokens": 3000}})
    assert config.state_dir == Path("from-flag") and config.store.chunk_tokens == 3000


def test_state_dir_config_file_is_found(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    write(state / "crystalline.toml", "[store]\nchunk_tokens = 77\n")
    assert load_config(env={}, state_dir=state).store.chunk_tokens == 77


@pytest.mark.parametrize("text, env, message", [
    ("[store]\nsqlite_synchronous = 'SOMETIMES'\n", {}, "must be one of OFF, NORMAL, FULL, EXTRA"),
    ("[store]\nchunk_size = 1\n", {}, "unknown setting [store] chunk_size; allowed: busy_timeout_ms"),
    ("[nonsense]\na = 1\n", {}, "unknown section [nonsense]"),
    ("[store]\nchunk_tokens = 'many'\n", {}, "chunk_tokens: expected int, got 'many'"),
    ("[daemon]\nprocessed_max_mb = -5\n", {},
     "[daemon] processed_max_mb (-5) must be 0 (no cap) or more megabytes (set in "),
    ("", {"CRYSTALLINE_DAEMON_CHECKPOINTS_MAX_MB": "-1"},
     "checkpoints_max_mb (-1) must be 0 (no cap) or more megabytes (set in environment"),
    ("[daemon]\nquarantine_max_mb = 1.5\n", {}, "quarantine_max_mb: expected int, got 1.5"),
    ("", {"CRYSTALLINE_STORE_BUSY_TIMEOUT_MS": "soon"}, "environment CRYSTALLINE_STORE_BUSY_TIMEOUT_MS: expected int"),
    ("[store\n", {}, "c.toml"),
])
def test_bad_values_name_the_setting_and_what_is_allowed(tmp_path, text, env, message):
    toml = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(toml, env=env)
    assert message in str(info.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_the_commented_default_file_is_the_defaults(tmp_path):
    from crawler.config import default_config_text

    text = default_config_text()
    path = write(tmp_path / "default.toml", text)
    assert load_config(path, env={}) == load_config(env={})
    config = load_config(env={})
    assert (config.model.d_model, config.model.n_layer, config.train.schedule) == (128, 4, "constant")
    for name in ("checkpoints_max_mb", "processed_max_mb", "quarantine_max_mb"):  # shown, with the default
        assert f"\n{name} = {getattr(config.daemon, name)} " in text


def test_the_default_file_lists_every_setting_once_with_its_default(tmp_path):
    import dataclasses
    import tomllib

    from crawler.config import COMMENTED_OUT, NOT_IN_FILE, SECTIONS, Config, default_config_text

    text = default_config_text()
    data = tomllib.loads(text)
    assert set(data) == set(SECTIONS)
    for section, cls in SECTIONS.items():
        commented = COMMENTED_OUT.get(section, set())
        expected = {f.name for f in dataclasses.fields(cls)} - NOT_IN_FILE.get(section, set()) - commented
        assert set(data[section]) == expected, section
        for key in commented:  # shown with its default, as a comment: uncommented, it is set by hand
            assert f"\n# {key} = {getattr(getattr(Config(), section), key)} " in text, key
    # a changed default shows in the file without anyone editing the template
    changed = dataclasses.replace(Config(), train=dataclasses.replace(Config().train, learning_rate=0.0042))
    assert tomllib.loads(default_config_text(changed))["train"]["learning_rate"] == 0.0042


def test_settings_that_join_two_sections_are_checked_at_load(tmp_path):
    toml = write(tmp_path / "c.toml", "[model]\ncontext_length = 64\n")
    with pytest.raises(ConfigError, match=r"seq_len \(128\) must not exceed context_length \(64\).*c.toml \[model\] "
                                          r"context_length"):
        load_config(toml, env={})
    assert load_config(toml, env={"CRYSTALLINE_TRAIN_SEQ_LEN": "64"}).train.seq_len == 64
    with pytest.raises(ConfigError, match="same port"):
        load_config(env={"CRYSTALLINE_METRICS_LISTEN": "127.0.0.1:8484"})
    assert load_config(env={"CRYSTALLINE_METRICS_LISTEN": "127.0.0.1:9464"}).metrics.listen == "127.0.0.1:9464"


def test_a_store_url_is_checked_at_load_and_an_empty_one_is_the_state_directory(tmp_path):
    config = load_config(env={}, state_dir=tmp_path)
    assert config.store.url == "" and config.storage_config().url == f"sqlite:///{(tmp_path / 'corpus.db').resolve()}"
    with pytest.raises(ConfigError, match=r"\[store\] url \('mysql://x'\)|\[store\] url scheme"):
        load_config(env={"CRYSTALLINE_STORE_URL": "mysql://x"})


def test_disk_caps_are_read_from_the_file_and_the_environment(tmp_path):
    toml = write(tmp_path / "c.toml", "[daemon]\ncheckpoints_max_mb = 2000\nprocessed_max_mb = 500\n")
    config = load_config(toml, env={"CRYSTALLINE_DAEMON_QUARANTINE_MAX_MB": "100"})
    assert (config.daemon.checkpoints_max_mb, config.daemon.processed_max_mb,
            config.daemon.quarantine_max_mb) == (2000, 500, 100)


REPO = Path(__file__).resolve().parents[3]


def test_the_stop_timeout_fits_inside_the_service_managers_limit():
    """A stop must end before systemd's TimeoutStopSec (then SIGKILL), with a margin for closing
    the store and the process's exit; the unit, Docker's documented --stop-timeout and the
    default agree."""
    import re

    unit = (REPO / "systemd" / "crystalline.service").read_text(encoding="utf-8")
    limit = float(re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M).group(1))
    default = Config().daemon.stop_timeout_seconds
    assert default <= limit - 15
    deploy = (REPO / "docs" / "DEPLOY.md").read_text(encoding="utf-8")
    assert f"TimeoutStopSec={limit:.0f}" in deploy and f"--stop-timeout {limit:.0f}" in deploy
    assert f"stop_timeout_seconds` ({default:.0f} s" in deploy


def test_a_value_out_of_range_names_where_it_was_set(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(env={"CRYSTALLINE_DAEMON_STOP_TIMEOUT_SECONDS": "0"}, state_dir=tmp_path)
    assert str(info.value) == ("[daemon] stop_timeout_seconds (0.0) must be positive "
                               "(set in environment CRYSTALLINE_DAEMON_STOP_TIMEOUT_SECONDS)")
    toml = write(tmp_path / "c.toml", "[model]\nn_head = 5\n")
    with pytest.raises(ConfigError) as info:  # d_model is the built-in default: only n_head was set
        load_config(toml, env={})
    assert str(info.value) == f"[model] d_model (128) must be divisible by n_head (5) (set in {toml} [model] n_head)"


# ---------------------------------------------------------------------------------------------
# a setting error that reaches the command line is one line, never a traceback


def test_a_bad_setting_for_run_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    from crawler.cli.main import main

    monkeypatch.setenv("CRYSTALLINE_DAEMON_STOP_TIMEOUT_SECONDS", "soon")
    assert main(["run", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == ("crystalline: error: environment CRYSTALLINE_DAEMON_STOP_TIMEOUT_SECONDS: "
                   "expected float, got 'soon'\n")


@pytest.mark.parametrize("status, reason", [(3, "worker_failed"), (4, "storage_failed"), (1, "internal_error")])
def test_a_daemon_that_cannot_run_is_one_line_with_its_exit_status(monkeypatch, capsys, status, reason):
    from crawler.cli.main import main
    from crawler.service.exits import DaemonError

    def run_daemon(**kwargs):
        raise DaemonError("the trainer worker could not start: d_model: checkpoint=32 expected=64", status, reason)

    monkeypatch.setattr("crawler.service.daemon.run_daemon", run_daemon)
    assert main(["run"]) == status
    assert capsys.readouterr().err == ("crystalline: error: the trainer worker could not start: "
                                       "d_model: checkpoint=32 expected=64\n")
