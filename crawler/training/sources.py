"""Which source a stored document belongs to, for the held-out blocks per source and their figures.

A source is what a person dropped in as one body of text: the top-level folder of a watched
folder (`[watch] roots`) that the file came from. `inbox/plays/hamlet.txt` and
`inbox/plays/act1/scene2.txt` are "plays", `inbox/python3.11-doc/library/os.html` is
"python3.11-doc"; an archive at the top level is a source of its own
(`inbox/docs.tar.gz!guide/intro.md` is "docs.tar.gz"); a file directly in a watched folder
belongs to that folder ("inbox"). A path under no watched folder (stored by `crystalline ingest`
or `train` from elsewhere, or under a root since removed) belongs to the folder holding it (or,
for an archive's member, the archive). The innermost watched folder holding a path is its root,
as the watcher takes it.

The store decides the per-source blocks with this grouping (storage/holdout_blocks.py) and the
evaluation reports its figures with it (crawler/training/evaluation.py). The roots are those of
the loop's start; a grouping that changes later (roots changed, a folder renamed) changes only
which source the next blocks count for, never a block already held out. Pure string work on the
stored path: no file is looked at.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePath

MEMBER = "!"  # an archive's member is stored as ARCHIVE!member (crawler/ingest/archives.py)


class SourceNames:
    """`source_names(path) -> name`: the source a stored path belongs to, by the watched roots."""

    def __init__(self, roots: Sequence[str] = ()):
        # absolute, innermost first: a path belongs to the deepest root holding it
        self.roots = sorted((PurePath(os.path.abspath(r)) for r in roots), key=lambda r: len(r.parts), reverse=True)

    def __call__(self, path: str) -> str:
        file = PurePath(path.split(MEMBER, 1)[0])  # the file on disk: an archive for its members
        member = MEMBER in path
        for root in self.roots:
            if root in file.parents:
                rel = file.relative_to(root).parts
                # a folder under the root, or an archive at its top: a source of its own
                return rel[0] if len(rel) > 1 or member else root.name or str(root)
        if member:
            return file.name
        return file.parent.name or str(file.parent)
