"""Configuration precedence (defaults < TOML file < environment < flags) and validation."""

from pathlib import Path

import pytest

from crawler.config import Config, load_config
from engine import ConfigError


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
    from crawler.service_commands import DEFAULT_CONFIG

    path = write(tmp_path / "default.toml", DEFAULT_CONFIG)
    assert load_config(path, env={}) == load_config(env={})
    config = load_config(env={})
    assert (config.model.d_model, config.model.n_layer, config.train.schedule) == (128, 4, "constant")
