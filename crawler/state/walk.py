"""The crawler's one folder walker: every entry under a folder that is not a folder itself.

Its callers each ask for what they need, and no more: the state directory's disk use and caps
(`crawler.state.disk`: every file, links as themselves), the watcher's scans (hidden and
temporary names passed over, and word of every folder that cannot be listed), `crystalline
ingest`'s file list (`crawler.ingest.pipeline.iter_files`: sorted, links to folders left out) and
the offline reader's (`crawler.ingest.data.find_files`: dotfiles passed over, folders that cannot
be listed reported). The walk never follows a link, so it cannot leave the folder it was given
or loop. Relies on os.scandir only; reads, deletes and logs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path


def walk_files(folder: str | os.PathLike[str], *, skip: Callable[[str], bool] | None = None,
               ordered: bool = False, linked_folders: bool = True,
               on_folder: Callable[[Path, OSError | None], None] | None = None) -> Iterator[os.DirEntry[str]]:
    """Every entry under `folder` that is not a folder (files, links, FIFOs, sockets, devices),
    depth first. A folder is entered by its own name, never through a link; a link is yielded as
    itself, and a link to a folder too unless `linked_folders` is False (os.walk's view: it is
    neither a file nor entered). An entry whose type cannot be read counts as a file.

    skip(name): a name neither yielded nor entered (hidden and temporary names, say).
    ordered: each folder's entries by name, its files before its subfolders (os.walk's top-down
      order); otherwise the order of the directory's listing.
    on_folder(folder, error): told of every folder the walk tries to list, `error` None when it
      could, else the OSError (a folder that vanished mid-walk included). A folder that cannot
      be listed is passed over; nothing is raised.
    Lazy: a folder is listed when the walk reaches it.
    """
    pending = [os.fspath(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = list(listing)
        except OSError as exc:
            if on_folder is not None:
                on_folder(Path(current), exc)
            continue
        if on_folder is not None:
            on_folder(Path(current), None)
        if ordered:
            entries.sort(key=lambda entry: entry.name)
        folders = []
        for entry in entries:
            if skip is not None and skip(entry.name):
                continue
            try:
                is_folder = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_folder = False
            if is_folder:
                folders.append(entry.path)
            elif linked_folders or not _links_to_folder(entry):
                yield entry
        pending.extend(reversed(folders))  # the first by name is listed next


def _links_to_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_symlink() and entry.is_dir()
    except OSError:
        return False
