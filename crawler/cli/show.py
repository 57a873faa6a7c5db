"""`crystalline show PATH|DOC_ID`: the text the corpus holds for a file, exactly as the model reads it.

The text is decoded from the document's stored tokens with the corpus tokenizer (the one the
store records, which must be the state directory's), so it is what training reads: a PDF's
extracted text, an HTML page without its markup. PATH is taken as `forget` takes it (the file as
ingested, or its copy under STATE_DIR/processed: corpus.forget_forms); a file with several
versions shows its newest (`--version N` another); a number that names no file is a document
id. A file that only grew is stored as versions that each hold the text appended, so a version's
text is its own joined to those it continues (docs/STORAGE.md, "What a changed file means"). A
version that holds no text says so in one line: skipped or failed (with the reason), a
duplicate (with the document that holds the text), or forgotten; text a rewrite withdrew from
training is shown, with a note saying so.

Opens the store without a lock and writes nothing, so it works beside a running daemon. Exit
status: 0 when text is shown, 1 when the version holds none (the line says why) or nothing has
that name. Wired into the parser by crawler/cli/main.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..ingest.pipeline import display_path
from ..ingest.tokenizer import tokenizer_from_identity
from ..service.opening import open_queue
from .corpus import forget_forms
from .opener import add_state_flags, command_config
from .parsing import CliError, integer, write_stdout

STORED = ("queued", "trained")  # the statuses whose text is in the stream


def add_commands(commands: Any) -> None:
    """Register `show` on the CLI's subparsers."""
    show = commands.add_parser("show", help="print the text the corpus holds for a file, as the model reads it")
    show.add_argument("target", metavar="PATH|DOC_ID",
                      help="a file as it was ingested (or its copy under STATE_DIR/processed), or a document id")
    show.add_argument("--version", type=integer(1), default=None, metavar="N",
                      help="this version of the file (default: the newest)")
    show.add_argument("--json", action="store_true",
                      help="print one JSON object: doc_id, path, version, status, tokens, bytes, text")
    add_state_flags(show)
    show.set_defaults(handler=command_show)


def command_show(args: argparse.Namespace) -> int:
    config = command_config(args)
    paths, prefixes, ids = forget_forms(args.target, config)
    if prefixes:
        raise CliError(f"{args.target}: a folder; show takes one file or a document id")
    if ids and args.version is not None:
        raise CliError("--version picks a version of a PATH; a document id already names one")
    database, queue = open_queue(config)
    try:
        rows = queue.document_versions(paths=paths, document_ids=ids)
        row = _pick(rows, args.target, paths, ids, args.version)
        by_id = {r.id: r for r in rows}
        if row.duplicate_of is not None and row.duplicate_of not in by_id:
            by_id |= {r.id: r for r in queue.document_versions(document_ids=[row.duplicate_of])}
        parts = _parts(row, by_id) if _holds_text(row) else []
        data, tokens = b"", 0
        if parts:
            tokenizer = tokenizer_from_identity(json.loads(queue.tokenizer()), config.state_dir)
            stored = [queue.read_tokens(p.stream_start, p.stream_end) for p in parts if p.status in STORED]
            data = b"".join(tokenizer.decode(ids) for ids in stored)  # each part's EOD dropped
            tokens = sum(int(ids.size) for ids in stored)
    finally:
        database.close()
    withdrawn = [{"document": p.id, "reason": reason, "tokens": end - start}
                 for p in parts for start, end, reason in p.withdrawn]
    if args.json:
        print(json.dumps({"doc_id": row.id, "path": display_path(row.source_path), "version": row.version,
                          "status": row.status, "reason": row.reason, "detail": row.detail,
                          "duplicate_of": row.duplicate_of, "parts": [p.id for p in parts], "tokens": tokens,
                          "bytes": len(data), "text": data.decode("utf-8", "replace") if parts else None,
                          "withdrawn": withdrawn}, sort_keys=True))
    elif parts:
        if withdrawn:
            print(f"note: {sum(w['tokens'] for w in withdrawn):,} tokens of this text were withdrawn from "
                  "training (superseded by a newer version of the file)", file=sys.stderr)
        write_stdout(data + b"\n")
    else:
        holding = [r.version for r in rows if r.source_path == row.source_path and _holds_text(r) and r is not row]
        hint = f" (version {holding[-1]} holds text: --version {holding[-1]})" if holding and not ids else ""
        print(_one_line(row, by_id) + hint)
    return 0 if parts else 1


def _pick(rows: list, target: str, paths: list[str], ids: list[int], version: int | None):
    """The row `target` names: the id itself, or the newest (or `version`) of the first path with rows."""
    if ids:
        found = [r for r in rows if r.id == ids[0]]
    else:
        path = next((p for p in paths if any(r.source_path == p for r in rows)), None)
        found = [r for r in rows if r.source_path == path]
        if found and version is not None:
            found = [r for r in found if r.version == version] or _no_version(target, found, version)
    if not found:
        raise CliError(f"{target}: no document of that name or id (see `crystalline status`, or the "
                       "file_ingested events for paths and doc_id)")
    return found[-1]  # rows come sorted by (path, version)


def _no_version(target: str, found: list, version: int):
    versions = ", ".join(str(r.version) for r in found)
    raise CliError(f"{target}: no version {version}; its versions are {versions}")


def _holds_text(row) -> bool:
    """A version whose text is in the stream, or a growth by whitespace only (its text is the
    versions' it continues)."""
    return row.status in STORED or (row.status == "skipped" and row.reason == "empty" and row.byte_offset is not None)


def _parts(row, by_id: dict) -> list:
    """The versions whose texts joined are `row`'s text: the whole version it grew from, then
    each growth up to `row` (only `row`, for a whole version); [] when one of them holds no text."""
    parts = [row]
    while parts[0].continues is not None:
        earlier = by_id.get(parts[0].continues)
        if earlier is None or not _holds_text(earlier):
            return []
        parts.insert(0, earlier)
    return parts if any(p.status in STORED for p in parts) else []


def _one_line(row, by_id: dict) -> str:
    """Why this version holds no text, in one line."""
    name = f"{display_path(row.source_path)}, version {row.version} (document {row.id})"
    if row.status == "duplicate":
        held = by_id.get(row.duplicate_of)
        where = f" ({display_path(held.source_path)}, version {held.version})" if held is not None else ""
        return (f"{name}: a duplicate: the same content as document {row.duplicate_of}{where}, which holds "
                f"the text (crystalline show {row.duplicate_of})")
    if row.reason == "forgotten":
        return f"{name}: forgotten: its text was removed by `crystalline forget`"
    if _holds_text(row):  # a growth whose earlier text is gone
        return f"{name}: the text it continues is no longer stored (forgotten)"
    detail = f": {' '.join(str(row.detail).split())}" if row.detail else ""
    return f"{name}: {row.status} ({row.reason}{detail}); nothing of it is stored"
