"""Which entries under the watched roots are the watcher's candidates, and the version of each.

`Roots` holds the roots, innermost first (a file in nested roots belongs to the inner one), and
the config's include and exclude globs: `root_of(path)` is the root a path belongs to, unless a
part below the root is hidden or temporary, and `wanted(path, root)` applies the globs.
`version_of(path)` is lstat's (size, mtime_ns), UNREADABLE when lstat may not look at it (the
ingestor skips such a file as `unreadable`). `FolderWalk.walk(folder)` yields every entry but a
folder with its version, and logs a folder that cannot be listed once (`folder_unreadable`),
until it can be.

Not the debounce, the events or the observers (crawler.ingest.watcher and
crawler.ingest.observers); it reads no file's contents. Relies on crawler.state.walk for the walk
and on pipeline's `is_ignored_name` for hidden and temporary names.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..state.walk import walk_files
from .pipeline import display_path, is_ignored_name

UNREADABLE = (-1, -1)  # the (size, mtime_ns) of a file lstat may not look at


def version_of(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) from lstat; UNREADABLE when it may not look (EACCES and the like); None
    when the path is gone or is a folder."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return UNREADABLE
    return None if stat.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Roots:
    """The watched roots (absolute, innermost first) and the name filters."""

    paths: tuple[Path, ...]
    include: tuple[str, ...] = ()  # fnmatch globs on the file name; empty = everything
    exclude: tuple[str, ...] = ()  # fnmatch globs on the name or the path relative to its root

    @classmethod
    def build(cls, roots: Sequence[str], include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Roots:
        """Roots from the config's folder names, made absolute and ordered innermost first."""
        paths = sorted((Path(os.path.abspath(r)) for r in roots), key=lambda r: len(r.parts), reverse=True)
        return cls(tuple(paths), tuple(include), tuple(exclude))

    def root_of(self, path: Path) -> Path | None:
        """The innermost root holding path, unless a part below the root is hidden or temporary,
        or a folder on the way is a symlink: a linked folder is never entered, and inotify's
        events (watchdog watches what a created link points to) must not enter it either."""
        for root in self.paths:
            if path == root or root in path.parents:
                rel = path.relative_to(root).parts
                if any(is_ignored_name(part) for part in rel):
                    return None
                folders = path.parents[:max(len(rel) - 1, 0)]  # the folders between the root and the path
                return None if any(folder.is_symlink() for folder in folders) else root
        return None

    def wanted(self, path: Path, root: Path) -> bool:
        """Whether the include and exclude globs let this file of `root` through."""
        name, rel = path.name, path.relative_to(root).as_posix()
        if self.include and not any(fnmatch(name, glob) for glob in self.include):
            return False
        return not any(fnmatch(name, glob) or fnmatch(rel, glob) for glob in self.exclude)


class FolderWalk:
    """Walks folders for candidates, remembering which folders could not be listed (thread-safe)."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._unreadable: set[Path] = set()  # logged once each, until they can be listed

    def walk(self, folder: Path) -> Iterator[tuple[Path, tuple[int, int]]]:
        """Every entry but a folder under folder, with its version (UNREADABLE when lstat may not
        look at it); hidden and temporary folders not entered, symlinked folders not followed. A
        folder that cannot be listed is logged once, until it can be."""
        for entry in walk_files(folder, skip=is_ignored_name, on_folder=self._listed):
            path = Path(entry.path)
            if (found := version_of(path)) is not None:
                yield path, found

    def _listed(self, folder: Path, error: OSError | None) -> None:
        if isinstance(error, FileNotFoundError):
            return  # vanished mid-walk
        with self._lock:
            first = error is not None and folder not in self._unreadable
            if error is None:
                self._unreadable.discard(folder)
            else:
                self._unreadable.add(folder)
        if first:
            self._log.warning("folder_unreadable", path=display_path(folder),
                              error=error.strerror or type(error).__name__,
                              action="give the daemon's user read and execute permission on it")
