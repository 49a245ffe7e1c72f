"""Streaming WARC/WET reading with FastWARC: records in, candidate pages out.

Every record that does not become a page is counted under a reason, and a file that
cannot be read at all is counted as skipped rather than failing the whole batch: one
bad file in a crawl must not stop the other thousands.
"""

from __future__ import annotations

import gzip
import posixpath
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator, WarcRecordType

_RECORD_TYPES = WarcRecordType.response | WarcRecordType.conversion
_GZIP_MAGIC = b"\x1f\x8b"
_MEMBER_HEADER = b"\x1f\x8b\x08"  # gzip magic and the deflate method: where a member starts


@dataclass(slots=True)
class RawPage:
    """One record worth extracting, with its provenance."""

    url: str
    warc_path: str
    warc_record_id: str
    fetch_time: datetime | None
    record_type: str  # "response" (HTML to extract) or "conversion" (WET text)
    content_type: str
    charset: str | None
    payload: bytes
    capped: bool


@dataclass
class ReadStats:
    files: int = 0
    records: int = 0
    payload_bytes: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    file_errors: dict[str, str] = field(default_factory=dict)

    def merge(self, other: ReadStats) -> None:
        self.files += other.files
        self.records += other.records
        self.payload_bytes += other.payload_bytes
        self.skips.update(other.skips)
        self.file_errors.update(other.file_errors)


def iter_pages(
    stream: BinaryIO,
    warc_path: str,
    stats: ReadStats,
    max_record_bytes: int,
    html_content_types: tuple[str, ...],
) -> Iterator[RawPage]:
    """Yield pages from one open WARC/WET file (gzip or plain, detected by FastWARC). A gzip
    member that cannot be decompressed loses its record, not the rest of the file: reading
    resumes at the next member that holds a WARC record, and the damage is counted."""
    stats.files += 1
    seen = lost = 0
    last_start = resume_at = 0
    while True:
        try:
            if resume_at:
                stream.seek(resume_at)
            for record in ArchiveIterator(stream, record_types=_RECORD_TYPES, parse_http=True):
                seen += 1
                last_start = record.stream_pos
                stats.records += 1
                page = _to_page(record, warc_path, stats, max_record_bytes, html_content_types)
                if page is not None:
                    stats.payload_bytes += len(page.payload)
                    yield page
        except OSError as exc:  # FastWARC's only signal for headers or gzip data it cannot read
            damage = _skip_damaged_member(stream, max(last_start, resume_at)) if "gzip" in str(exc).lower() else None
            if damage is not None:
                start, resume_at, members = damage
                lost += members
                stats.skips["corrupt_gzip_member"] += members
                stats.file_errors[warc_path] = (
                    f"{lost} gzip member(s) not decompressible (the last damage at bytes {start}-{resume_at}), "
                    "one record lost each; the records after them were read"
                )
                continue
            reason = "not_warc" if seen == 0 else "malformed_record"
            stats.skips[reason] += 1
            stats.file_errors[warc_path] = f"{reason} after {seen} records: {exc}"
            return
        break
    if seen == 0:
        stats.skips["no_records"] += 1
        stats.file_errors.setdefault(warc_path, "no response or conversion records")
    elif warc_path not in stats.file_errors and _gzip_cut_short(stream, last_start):
        stats.skips["truncated_record"] += 1
        stats.file_errors[warc_path] = "truncated: the file ends inside a gzip member"


def _skip_damaged_member(stream: BinaryIO, good_start: int) -> tuple[int, int, int] | None:
    """Where the damage starts, where the next sound member holding a WARC record starts, and
    how many gzip members the damaged stretch holds (Common Crawl writes one record per member:
    that many records are lost). None: not gzip, not seekable, or nothing readable after the
    damage. Members are walked from `good_start`, the last record read whole, since FastWARC
    skips unwanted record types (warcinfo, request, metadata) without telling where they were."""
    if not stream.seekable():
        return None
    stream.seek(0)
    if stream.read(2) != _GZIP_MAGIC:
        return None
    damaged = good_start
    while (end := _member_end(stream, damaged)) is not None:
        damaged = end
    members, position, carry = 1, damaged + 1, b""
    stream.seek(position)
    while chunk := stream.read(1 << 20):
        window = carry + chunk
        base = position - len(carry)
        found = window.find(_MEMBER_HEADER)
        while found != -1:
            if base + found > damaged and _starts_a_record(stream, base + found):
                return damaged, base + found, members
            members += base + found > damaged
            found = window.find(_MEMBER_HEADER, found + 1)
        position += len(chunk)
        carry = window[-(len(_MEMBER_HEADER) - 1) :]
        stream.seek(position)
    return None


def _member_end(stream: BinaryIO, start: int) -> int | None:
    """The end of the complete, valid gzip member starting at `start`, or None."""
    stream.seek(start)
    inflater = zlib.decompressobj(31)
    consumed = 0
    try:
        while not inflater.eof and (chunk := stream.read(1 << 16)):
            consumed += len(chunk)
            inflater.decompress(chunk, 1 << 20)
            while inflater.unconsumed_tail and not inflater.eof:
                inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    except zlib.error:
        return None
    return start + consumed - len(inflater.unused_data) if inflater.eof else None


def _starts_a_record(stream: BinaryIO, start: int) -> bool:
    stream.seek(start)
    try:
        return zlib.decompressobj(31).decompress(stream.read(4096), 16).startswith(b"WARC/")
    except zlib.error:
        return False


def _gzip_cut_short(stream: BinaryIO, start: int) -> bool:
    """FastWARC ends quietly at a gzip member cut short (and yields nothing when the cut falls
    in its first bytes), so decompress the members from the last record read to the end: a
    truncated file ends before its last member's end-of-stream marker."""
    try:
        if not stream.seekable():
            return False
        stream.seek(0)
        if stream.read(2) != b"\x1f\x8b":
            return False
        stream.seek(start)
        with gzip.GzipFile(fileobj=stream) as tail:
            while tail.read(1 << 20):
                pass
    except EOFError:
        return True
    except (OSError, zlib.error):  # not gzip from here on: FastWARC has judged the rest already
        return False
    return False


def _to_page(
    record,  # fastwarc.warc.WarcRecord
    warc_path: str,
    stats: ReadStats,
    max_record_bytes: int,
    html_content_types: tuple[str, ...],
) -> RawPage | None:
    headers = record.headers
    if "Content-Length" not in headers:  # the file ends inside this record's header block
        stats.skips["truncated_record"] += 1
        stats.file_errors.setdefault(warc_path, "truncated: the last record's headers end early")
        return None
    url = headers.get("WARC-Target-URI") or ""
    if not url:
        stats.skips["no_target_uri"] += 1
        return None
    expected = record.content_length
    payload = record.reader.read(max_record_bytes)
    capped = expected > max_record_bytes
    if len(payload) < min(expected, max_record_bytes):
        stats.skips["truncated_record"] += 1
        stats.file_errors.setdefault(warc_path, "truncated: the last record ends early")
        return None
    if capped:
        stats.skips["capped_payload"] += 1  # counted, but the capped page is still used
    if record.record_type == WarcRecordType.conversion:  # WET: the text is already extracted
        kind, content_type, charset = "conversion", "text/plain", "utf-8"
    else:
        http = record.http_headers
        if http is None:
            stats.skips["no_http_headers"] += 1
            return None
        if not 200 <= (http.status_code or 0) < 300:
            stats.skips["http_status"] += 1
            return None
        kind, content_type, charset = "response", (record.http_content_type or "").lower(), record.http_charset
        if content_type not in html_content_types:
            stats.skips["non_html_content_type"] += 1
            return None
    return RawPage(
        url=url,
        warc_path=warc_path,
        warc_record_id=headers.get("WARC-Record-ID") or "",
        fetch_time=_record_date(record),
        record_type=kind,
        content_type=content_type,
        charset=charset,
        payload=payload,
        capped=capped,
    )


def _record_date(record) -> datetime | None:
    try:
        return record.record_date
    except (ValueError, TypeError):
        return None


def crawl_of(path: str, fallback: str | None = None) -> str:
    """The crawl a file belongs to: a Common Crawl id in its path (CC-MAIN-2024-22), else the
    configured name, else its parent directory's name."""
    match = re.search(r"CC-[A-Z]+-\d{4}-\d{2}(?!\d)", path)
    if match:
        return match.group(0)
    if fallback:
        return fallback
    return posixpath.basename(posixpath.dirname(path.rstrip("/"))) or "unknown"
