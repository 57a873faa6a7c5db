"""The one folder walker: os.walk's top-down order when asked, names passed over and not
entered, links never followed (a link to a folder offered or left out), every folder listed or
not reported; and each caller's view of one tree."""

import os
from pathlib import Path

import pytest

from crawler.ingest.data import find_files
from crawler.ingest.pipeline import iter_files
from crawler.state.disk import folder_usage
from crawler.state.walk import walk_files


@pytest.fixture
def tree(tmp_path):
    """root/ with files, nested folders, a hidden folder and file, and links out of it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    for name in ("b.txt", "e.txt", "a/z.txt", "a/c/d.txt", "f/g.txt", ".hidden/x.txt", ".h.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("outside the root")
    (root / "link-folder").symlink_to(outside)
    (root / "a" / "link-file").symlink_to(outside / "secret.txt")
    (root / "broken").symlink_to(tmp_path / "nothing")
    return root


def names(entries, root) -> list[str]:
    return [Path(e.path).relative_to(root).as_posix() for e in entries]


def os_walk_order(root, hidden) -> list[str]:
    found = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not hidden(d))
        found += [(Path(directory) / n).relative_to(root).as_posix() for n in sorted(filenames) if not hidden(n)]
    return found


def test_ordered_is_os_walks_top_down_order_without_links_to_folders(tree):
    hidden = lambda name: name.startswith(".")  # noqa: E731
    walked = names(walk_files(tree, skip=hidden, ordered=True, linked_folders=False), tree)
    assert walked == os_walk_order(tree, hidden)
    assert walked == ["b.txt", "broken", "e.txt", "a/link-file", "a/z.txt", "a/c/d.txt", "f/g.txt"]


def test_links_are_yielded_as_themselves_and_never_followed(tree):
    walked = set(names(walk_files(tree), tree))
    assert {"link-folder", "a/link-file", "broken", ".h.txt", ".hidden/x.txt"} <= walked
    assert not any(n.startswith("link-folder/") for n in walked), "a link to a folder is not entered"
    assert "link-folder" not in names(walk_files(tree, linked_folders=False), tree)


def test_a_skipped_name_is_neither_yielded_nor_entered(tree):
    walked = names(walk_files(tree, skip=lambda name: name in ("a", "e.txt")), tree)
    assert not [n for n in walked if n == "e.txt" or n.startswith("a/")]
    assert "b.txt" in walked and "f/g.txt" in walked


def test_every_folder_is_reported_listed_or_not(tree, tmp_path):
    told = []
    list(walk_files(tree, skip=lambda name: name.startswith("."), on_folder=lambda f, e: told.append((f, e))))
    assert sorted(f.relative_to(tree).as_posix() for f, e in told) == [".", "a", "a/c", "f"]
    assert all(e is None for _, e in told)
    told.clear()
    assert list(walk_files(tmp_path / "missing", on_folder=lambda f, e: told.append((f, e)))) == []
    assert [(f, type(e)) for f, e in told] == [(tmp_path / "missing", FileNotFoundError)]


def test_a_folder_that_cannot_be_listed_is_passed_over(tree, monkeypatch):
    real = os.scandir

    def scandir(path):
        if Path(path).name == "a":
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    told = {}
    walked = names(walk_files(tree, on_folder=lambda f, e: told.update({f.name: e})), tree)
    assert not [n for n in walked if n.startswith("a/")] and "f/g.txt" in walked
    assert isinstance(told["a"], PermissionError) and told["f"] is None
    files, skipped = find_files([tree])  # the offline reader reports it
    assert [(s.path.name, s.reason) for s in skipped] == [("a", "unreadable")]


def test_each_caller_keeps_its_view_of_one_tree(tree):
    # crystalline ingest: hidden and temporary names out, links to folders out, sorted
    assert [p.relative_to(tree).as_posix() for p, _ in iter_files([tree])] == [
        "b.txt", "broken", "e.txt", "a/link-file", "a/z.txt", "a/c/d.txt", "f/g.txt"]
    # train and eval: dotfiles out, one sorted list of every path
    files, skipped = find_files([tree])
    assert [p.relative_to(tree).as_posix() for p in files] == [
        "a/c/d.txt", "a/link-file", "a/z.txt", "b.txt", "broken", "e.txt", "f/g.txt"]
    assert skipped == []
    # disk use: every file, hidden ones too, links by their own size
    usage = folder_usage(tree)
    assert usage.files == 10
    assert usage.bytes == sum(os.lstat(e.path).st_size for e in walk_files(tree))


def test_ingest_names_a_folder_it_cannot_list_instead_of_passing_over_it(tmp_path, monkeypatch, capsys):
    """`crystalline ingest DIR` with a subfolder it may not list (root lists anything, so the
    refusal is injected at os.scandir): one folder_unreadable event naming it, the rest stored."""
    import json
    import os

    import structlog

    from crawler.cli.main import main

    tree = tmp_path / "tree"
    (tree / "closed").mkdir(parents=True)
    (tree / "closed" / "hidden.txt").write_text("never seen\n")
    (tree / "open.txt").write_text("seen and stored\n")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("closed"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        status = main(["ingest", str(tree), "--state-dir", str(tmp_path / "state"), "--json"])
    finally:
        structlog.reset_defaults()
    out, err = capsys.readouterr()
    assert status == 0, err
    assert json.loads(out)["files"] == {"ingested": 1}
    logged = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [folder] = [e for e in logged if e["event"] == "folder_unreadable"]
    assert folder["path"] == str(tree / "closed") and folder["error"] == "Permission denied"
