"""The package's own promises: its version from the installed metadata, and deprecations from
our code failing the suite (pyproject's filterwarnings)."""

import tomllib
import warnings
from pathlib import Path

import pytest

from crawler.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def test_version_comes_from_the_installed_metadata(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"crystalline {version}"


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning, FutureWarning])
def test_a_deprecation_from_our_code_is_an_error(category):
    with pytest.raises(category):
        warnings.warn_explicit("old call", category, "crawler/x.py", 1, module="crawler.x")
    with pytest.raises(category):
        warnings.warn_explicit("old call", category, "engine/__init__.py", 1, module="engine")


def test_a_deprecation_from_elsewhere_stays_a_warning():
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old call", DeprecationWarning, "lib.py", 1, module="crawlerish.lib")
