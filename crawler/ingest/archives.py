"""Archives of documents: tar and zip files whose members are documents of their own.

A tar archive (plain, or inside a gzip, bzip2 or xz stream: `.tar.gz`, `.tgz`, `.tar.bz2`,
`.tar.xz`) or a zip archive holds documents; it is not one. Each regular member is read as a file
of its own would be, and stored under the name `ARCHIVE!member` (`member_path`), a member of an
archive inside it as `ARCHIVE!inner.tar!member`. This module recognises archives by content
(`archive_format`: tar by the ustar magic of its first header, at offset 257, once any gzip, bzip2
or xz stream around it is inflated; zip by its signature) and lists their members (`Members`),
in memory only: no member is ever written to disk, so no member name can reach outside anything.

A zip is an archive of documents unless it is itself a document or a package: DOCX and EPUB
(their own extractors), ODF and OOXML files (`.odt`, `.xlsx`: unsupported, by name or by their
first member, `mimetype` or `[Content_Types].xml`), and zip-based packages (`.jar`, `.apk`,
`.whl`, ... or a first member `META-INF/...`), which stay what they were: one file, skipped.

One budget for the whole archive, however deeply nested (`ArchiveBudget`), so a bomb costs at
most its limits and then refuses the archive whole, Skipped("decompression_bomb"):
- at most `ExtractLimits.max_archive_members` entries, directories and the members of nested
  archives included (counted as listed, before anything is read);
- at most `max_uncompressed_bytes` inflated in all (the stream around a tar, each zip member, a
  compressed member, the same again inside a nested archive), and past RATIO_FLOOR_BYTES no
  more than `max_compression_ratio` times the archive file's size; a zip member's declared size
  is checked before it is read and what it inflates to while it is read, so a lying header
  costs one member's read past the limit at most.
A member larger than `max_file_bytes` is that member's skip, `too_large`, as for a file.

Members that are not regular files: directories are passed over (a folder is no document);
symbolic and hard links, devices and FIFOs are member skips, `unsupported`, never followed; so is
a member whose name is absolute or has a `..` component (kept under its own name, never read).
Names are normalised (`./a.txt` is `a.txt`); bytes of a name that are not UTF-8 are written
`\\xNN`. A name that occurs twice (a tar appended to) is the last one's, as tar extracts it.

Damage: a tar whose first header is unreadable, or a zip whose central directory is, is
Skipped("corrupt"). A tar cut short or damaged after whole members ends the listing there with
`Members.truncated` saying where: the members before it are whole (each header checksummed, each
member's data all there); the caller decides what to do with them. A zip member that fails its
CRC or inflates wrongly is that member's skip, `corrupt`.

It does not decide kinds, parse members or open nested archives (crawler.ingest.inprocess does,
through crawler.ingest.kinds), and it logs nothing. Relies on the standard library's tarfile and
zipfile, and crawler.ingest.terms.
"""

from __future__ import annotations

import calendar
import io
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from .terms import RATIO_FLOOR_BYTES, CheckTime, ExtractLimits, Skipped

__all__ = ["ARCHIVE_FORMATS", "MAX_ARCHIVE_DEPTH", "MEMBER_SEPARATOR", "ArchiveBudget", "Members", "RawMember",
           "archive_format", "member_path"]

ARCHIVE_FORMATS = ("tar", "zip")
# An archive's members are documents, and so are the members of an archive among them
# (`OUTER!inner.tar!member`); an archive inside that one is a member skip, unsupported. Two
# levels cover a tarball of zips (or a zip of tarballs) without letting nesting multiply the
# work a file costs: each level is read under the same one budget.
MAX_ARCHIVE_DEPTH = 2
MEMBER_SEPARATOR = "!"  # ARCHIVE!member: the archive's path, then the member's name inside it

# zip-based files that are one file, not an archive of documents: packages and formats whose
# members mean nothing one by one (the document formats are decided before: kinds.classify)
_PACKAGE_SUFFIXES = frozenset((".jar", ".war", ".ear", ".aar", ".apk", ".aab", ".xapk", ".ipa", ".xpi", ".crx",
                               ".whl", ".egg", ".nupkg", ".vsix", ".appx", ".msix", ".kmz", ".3mf", ".sketch",
                               ".ora", ".cbz", ".xmind", ".usdz"))
# the first member names that mark a zip as a document or a package: ODF and EPUB open with
# `mimetype`, OOXML with `[Content_Types].xml`, Java and Android packages with `META-INF/`
_FORMAT_FIRST_MEMBERS = (b"mimetype", b"[Content_Types].xml", b"META-INF/", b"AndroidManifest.xml")
_ZIP_LOCAL_HEADER = b"PK\x03\x04"
_ZIP_EMPTY = b"PK\x05\x06"  # the end of central directory record alone: an empty zip
_TAR_BLOCK = tarfile.BLOCKSIZE
# what tarfile raises on a damaged archive: its own errors, and a header field it cannot convert
_TAR_ERRORS = (tarfile.TarError, ValueError, OverflowError, EOFError)


def member_path(archive: str, name: str) -> str:
    """The path a member is stored and logged under: `ARCHIVE!member`."""
    return f"{archive}{MEMBER_SEPARATOR}{name}"


def archive_format(name: str, head: bytes) -> str | None:
    """'tar' or 'zip' when `head` (the first bytes, after any compression around them) starts an
    archive of documents, else None. A zip named or shaped as a document format or a package
    (see the module docstring) is not one."""
    if head[257:262] == b"ustar":  # POSIX and GNU tar: the magic of the first member's header
        return "tar"
    if head.startswith(_ZIP_EMPTY):
        return "zip"
    if head.startswith(_ZIP_LOCAL_HEADER):
        suffix = name[name.rfind("."):].lower() if "." in name.rpartition("/")[2] else ""
        if suffix in _PACKAGE_SUFFIXES:
            return None
        name_length = int.from_bytes(head[26:28], "little")
        first = head[30:30 + name_length]
        if any(first.startswith(marker) for marker in _FORMAT_FIRST_MEMBERS):
            return None
        return "zip"
    return None


# ---------------------------------------------------------------------------------------------
# The budget


class ArchiveBudget:
    """What one archive may cost, however deep its nesting: entries listed and bytes inflated.
    Every step raises Skipped("decompression_bomb") once a limit is passed."""

    def __init__(self, limits: ExtractLimits, archive_bytes: int):
        self.limits = limits
        self.archive_bytes = max(archive_bytes, 1)  # the archive file's own size: the ratio's base
        self.entries = 0
        self.inflated = 0

    def count(self, entries: int = 1) -> None:
        """`entries` more entries listed."""
        self.entries += entries
        if self.entries > self.limits.max_archive_members:
            raise Skipped("decompression_bomb", f"more than max_archive_members ({self.limits.max_archive_members}) "
                          f"entries in the archive")

    @property
    def left(self) -> int:
        """Bytes that may still be inflated: under max_uncompressed_bytes, and under the ratio
        limit once past RATIO_FLOOR_BYTES."""
        ratio_cap = max(RATIO_FLOOR_BYTES, int(self.limits.max_compression_ratio * self.archive_bytes))
        return max(0, min(self.limits.max_uncompressed_bytes, ratio_cap) - self.inflated)

    def charge(self, size: int, what: str) -> None:
        """`size` more bytes inflated (`what`: for the message)."""
        self.inflated += size
        if self.inflated > self.limits.max_uncompressed_bytes:
            raise Skipped("decompression_bomb", f"{what}: the archive inflates past max_uncompressed_bytes "
                          f"({self.limits.max_uncompressed_bytes})")
        if self.inflated > RATIO_FLOOR_BYTES and self.inflated > self.limits.max_compression_ratio * self.archive_bytes:
            raise Skipped("decompression_bomb", f"{what}: the archive of {self.archive_bytes} bytes inflates over "
                          f"{self.inflated} bytes, over max_compression_ratio "
                          f"({self.limits.max_compression_ratio:g})")


# ---------------------------------------------------------------------------------------------
# Members


@dataclass(frozen=True)
class RawMember:
    """One entry of an archive that may be a document: its bytes, or why they were not read."""

    name: str  # inside the archive, normalised ("docs/a.txt")
    data: bytes | None  # None when not read (skip says why)
    size: int  # the member's size (declared, when it was not read)
    mtime: float  # seconds since the epoch, from its header
    skip: tuple[str, str] | None = None  # (reason, detail): a member skip, never read


def _readable(name: str) -> str:
    """A member name made storable: bytes that are not UTF-8 (tarfile's surrogate escapes)
    written \\xNN, NUL as \\x00."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name.replace("\0", "\\x00")


def _clean_name(raw: str) -> tuple[str, str | None]:
    """(name, why it is unsafe or None). A safe name loses its empty and `.` parts; an unsafe
    one (absolute, or with a `..` part) keeps its own, so it cannot pass for another member."""
    name = _readable(raw)
    parts = name.split("/")
    if name.startswith("/"):
        return name, "an absolute name"
    if ".." in parts:
        return name, "a name with a '..' part"
    return "/".join(part for part in parts if part not in ("", ".")), None


class Members:
    """The entries of one archive's bytes (`fmt` 'tar' or 'zip'), as RawMembers in archive order,
    within `budget` and `limits`; directories passed over.

    Iterating raises Skipped("decompression_bomb") past the budget, Skipped("corrupt") when the
    archive cannot be opened at all, and Skipped("timeout") through `check_time`, called before
    each entry. A tar cut short or damaged after some entries ends the iteration with
    `truncated` set (in words); the entries yielded before it are whole.
    """

    def __init__(self, data: bytes, fmt: str, budget: ArchiveBudget, limits: ExtractLimits,
                 check_time: CheckTime = lambda: None):
        if fmt not in ARCHIVE_FORMATS:
            raise ValueError(f"fmt ({fmt!r}) must be one of {ARCHIVE_FORMATS}")
        self.data, self.fmt, self.budget, self.limits, self.check_time = data, fmt, budget, limits, check_time
        self.truncated: str | None = None

    def __iter__(self) -> Iterator[RawMember]:
        return self._tar() if self.fmt == "tar" else self._zip()

    def _skip(self, name: str, size: int, mtime: float, reason: str, detail: str) -> RawMember:
        return RawMember(name, None, size, mtime, (reason, detail))

    def _too_large(self, name: str, size: int) -> str | None:
        if size > self.limits.max_file_bytes:
            return f"{size} bytes, over max_file_bytes ({self.limits.max_file_bytes})"
        return None

    # --- tar ----------------------------------------------------------------------------------

    def _tar(self) -> Iterator[RawMember]:
        try:
            # "r:" reads a plain tar: any compression around it was inflated under the budget before
            archive = tarfile.open(fileobj=io.BytesIO(self.data), mode="r:")  # noqa: SIM115 - closed below
        except _TAR_ERRORS as exc:
            raise Skipped("corrupt", f"tar: {exc}") from None
        with archive:
            yield from self._tar_entries(archive)

    def _tar_entries(self, archive: tarfile.TarFile) -> Iterator[RawMember]:
        whole = 0
        while True:
            self.check_time()
            try:
                info = archive.next()
            except _TAR_ERRORS as exc:  # "unexpected end of data": the data of the last one is cut
                self.truncated = f"tar: {exc} after {whole} whole entries"
                return
            if info is None:
                break
            self.budget.count()
            name, unsafe = _clean_name(info.name)
            mtime = float(info.mtime)
            if info.isdir() or not name:
                whole += 1
                continue
            if unsafe is not None:
                yield self._skip(name, info.size, mtime, "unsupported", f"{unsafe} in the archive: never read")
            elif info.issym() or info.islnk():
                what = "symbolic link" if info.issym() else "hard link"
                yield self._skip(name, 0, mtime, "unsupported", f"a {what} to {_readable(info.linkname)!r} in the "
                                 "archive: links are not followed")
            elif not info.isreg():
                yield self._skip(name, 0, mtime, "unsupported", "a device, FIFO or other special file in the archive")
            elif (why := self._too_large(name, info.size)) is not None:
                yield self._skip(name, info.size, mtime, "too_large", why)
            else:
                try:
                    data = archive.extractfile(info).read()
                except _TAR_ERRORS as exc:
                    self.truncated = f"tar: {exc} in {name!r}, after {whole} whole entries"
                    return
                yield RawMember(name, data, len(data), mtime)
            whole += 1
        # tarfile ends quietly at a header it cannot read past the first: whole archives end
        # with a zero block, so anything else there is a cut or damage
        end = archive.offset
        if self.data[end:end + _TAR_BLOCK] != bytes(_TAR_BLOCK):
            self.truncated = (f"tar: no end-of-archive marker at byte {end} of {len(self.data)} (cut short or "
                              f"damaged) after {whole} whole entries")

    # --- zip ----------------------------------------------------------------------------------

    def _zip(self) -> Iterator[RawMember]:
        try:
            archive = zipfile.ZipFile(io.BytesIO(self.data))
            infos = archive.infolist()
        except (zipfile.BadZipFile, zlib.error, ValueError, EOFError, NotImplementedError) as exc:
            raise Skipped("corrupt", f"zip: {exc}") from None
        self.budget.count(len(infos))  # the central directory lists them all before anything is read
        declared = sum(info.file_size for info in infos)
        if declared > RATIO_FLOOR_BYTES and declared > self.limits.max_compression_ratio * len(self.data):
            raise Skipped("decompression_bomb", f"{declared} bytes declared in a {len(self.data)}-byte zip, "
                          f"over max_compression_ratio ({self.limits.max_compression_ratio:g})")
        for info in infos:
            self.check_time()
            name, unsafe = _clean_name(info.filename)
            mtime = _zip_mtime(info)
            mode = info.external_attr >> 16 if info.create_system == 3 else 0  # Unix: st_mode in the high bits
            if info.is_dir() or stat.S_ISDIR(mode) or not name:
                continue
            if unsafe is not None:
                yield self._skip(name, info.file_size, mtime, "unsupported", f"{unsafe} in the archive: never read")
            elif stat.S_ISLNK(mode):
                yield self._skip(name, 0, mtime, "unsupported",
                                 "a symbolic link in the archive: links are not followed")
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                yield self._skip(name, 0, mtime, "unsupported", "a device, FIFO or other special file in the archive")
            elif info.flag_bits & 0x1:
                yield self._skip(name, info.file_size, mtime, "unsupported", "an encrypted zip member")
            elif (why := self._too_large(name, info.file_size)) is not None:
                yield self._skip(name, info.file_size, mtime, "too_large", why)
            else:
                yield self._read_zip_member(archive, info, name, mtime)

    def _read_zip_member(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, mtime: float) -> RawMember:
        left = self.budget.left
        if info.file_size > left:
            raise Skipped("decompression_bomb", f"{name!r} declares {info.file_size} bytes, over the {left} the "
                          f"archive's limits leave (max_uncompressed_bytes {self.limits.max_uncompressed_bytes}, "
                          f"max_compression_ratio {self.limits.max_compression_ratio:g})")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FLOOR_BYTES and ratio > self.limits.max_compression_ratio:
            raise Skipped("decompression_bomb", f"{name!r} inflates {ratio:.0f}x, over max_compression_ratio "
                          f"({self.limits.max_compression_ratio:g})")
        bound = min(left, self.limits.max_file_bytes)
        try:
            with archive.open(info) as stream:
                data = stream.read(bound + 1)  # bounded even if the header lies
        except NotImplementedError as exc:  # compression methods zipfile lacks (deflate64, ...)
            return self._skip(name, info.file_size, mtime, "unsupported", f"zip member: {exc}")
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
            return self._skip(name, info.file_size, mtime, "corrupt", f"zip member: {exc}")
        self.budget.charge(len(data), f"zip member {name!r}")
        if len(data) > self.limits.max_file_bytes:
            return self._skip(name, info.file_size, mtime, "too_large",
                              f"inflates past max_file_bytes ({self.limits.max_file_bytes})")
        return RawMember(name, data, len(data), mtime)


def _zip_mtime(info: zipfile.ZipInfo) -> float:
    """A zip member's time as seconds since the epoch (zip keeps local time without a zone: read
    as UTC, which only has to be the same every time the archive is read)."""
    try:
        return float(calendar.timegm((*info.date_time, 0, 0, 0)))
    except (ValueError, OverflowError):
        return 0.0
