"""Takedown requests: lines of URLs, URL prefixes and domains, checked one by one, and recorded
append-only in storage (`takedowns/<time>-<request id>.json`, never rewritten).

One line is one pattern:

    https://example.com/page?id=3       that URL exactly (as the crawl recorded it; a #fragment is dropped)
    https://example.com/blog/*          every URL starting with https://example.com/blog/
    example.com   or   domain:example.com   the domain and its subdomains (a leading www. is ignored)
    # a comment                         skipped, like blank lines

Anything else is refused and counted by reason (`empty`, `comment`, `not_a_url`, `too_long`,
`undecodable`, `repeated` within the file); a pattern some earlier request already asked for, with
the same matching, is counted as `already_requested` and not recorded again, so sending the same
request twice changes nothing. A request with no new pattern is not recorded at all.

Nothing from a request is ever used as a path, a shell word or SQL text: the file name is made of
the time and a hash, patterns reach SQL only as bound parameters.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, Literal, NamedTuple
from urllib.parse import urlsplit

import polars as pl

from resources.common.storage import ShardStore, stable_hash

TAKEDOWNS = "takedowns"  # the folder of the store that holds the requests
MAX_LINE_CHARS = 4096  # a longer line is refused (browsers and crawlers cap URLs well below this)
EXAMPLES_PER_REASON = 5
EXAMPLE_CHARS = 120
MATCH_MODES = ("url", "content")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{2,63}$")
_CONTROL = re.compile(r"[\x00-\x20\x7f]")

MATCH_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "doc_id": pl.String(),
    "url": pl.String(),
    "crawl_batch": pl.String(),
    "kind": pl.String(),  # source (a requested URL's document), duplicate (dedup removed it as one), near
    "similarity": pl.Float64(),
    "signature": pl.List(pl.UInt32()),  # source documents only: checked against later crawl batches
}
Kind = Literal["url", "prefix", "domain"]
Match = Literal["url", "content"]


@dataclass(frozen=True, order=True)
class Pattern:
    kind: Kind
    value: str

    def matches(self, url: str | None, domain: str | None) -> bool:
        if self.kind == "url":
            return url == self.value
        if self.kind == "prefix":
            return url is not None and url.startswith(self.value)
        return domain is not None and (domain == self.value or domain.endswith("." + self.value))


def normalize_domain(host: str) -> str:
    """As ingest writes the `domain` column: lowercase, without a leading www."""
    return host.lower().rstrip(".").removeprefix("www.")


def parse_line(line: str) -> Pattern | str:
    """A pattern, or the reason the line is refused."""
    text = line.strip()
    if not text:
        return "empty"
    if text.startswith("#"):
        return "comment"
    if len(text) > MAX_LINE_CHARS:
        return "too_long"
    if _CONTROL.search(text):
        return "not_a_url"
    if text.lower().startswith("domain:"):
        host = normalize_domain(text[len("domain:") :])
        return Pattern("domain", host) if _HOST.match(host) else "not_a_url"
    if "://" not in text:
        host = normalize_domain(text)
        return Pattern("domain", host) if _HOST.match(host) else "not_a_url"
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "not_a_url"
    if parts.scheme.lower() not in ("http", "https") or not _HOST.match(host.lower()):
        return "not_a_url"
    url = text.split("#", 1)[0]
    if url.endswith("*"):
        return Pattern("prefix", url[:-1])
    return Pattern("url", url)


class Refused(NamedTuple):
    """A line refused before it is parsed (too long to keep, or not UTF-8), with its start."""

    reason: str
    preview: str


@dataclass
class ParsedLines:
    patterns: list[Pattern] = field(default_factory=list)  # unique, in the order given
    refused: Counter[str] = field(default_factory=Counter)  # reason -> lines
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> the first few, cut short
    _seen: set[Pattern] = field(default_factory=set, repr=False)

    def add(self, line: str | Refused) -> None:
        found = line if isinstance(line, Refused) else parse_line(line)
        if isinstance(found, Refused):
            self.refuse(found.reason, found.preview)
        elif isinstance(found, str):
            self.refuse(found, line.strip())
        elif found in self._seen:
            self.refuse("repeated", found.value)
        else:
            self._seen.add(found)
            self.patterns.append(found)

    def refuse(self, reason: str, line: str) -> None:
        self.refused[reason] += 1
        if reason not in ("empty", "comment") and len(self.examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            self.examples[reason].append(line[:EXAMPLE_CHARS] + ("..." if len(line) > EXAMPLE_CHARS else ""))


def parse_lines(lines: Iterable[str | Refused]) -> ParsedLines:
    parsed = ParsedLines()
    for line in lines:
        parsed.add(line)
    return parsed


def read_lines(stream: BinaryIO) -> Iterator[str | Refused]:
    """The lines of a request file, decoded as UTF-8. A line longer than MAX_LINE_CHARS is refused
    after reading its start only (the rest is skipped in bounded chunks, never held in memory); a
    line that is not UTF-8 is refused as undecodable."""
    limit = MAX_LINE_CHARS * 4 + 8  # bytes: enough for MAX_LINE_CHARS characters of UTF-8
    while chunk := stream.readline(limit):
        preview = chunk[:EXAMPLE_CHARS].decode("utf-8", errors="replace").strip()
        if not chunk.endswith(b"\n") and len(chunk) >= limit:
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield Refused("too_long", preview)
            continue
        try:
            yield chunk.decode("utf-8")
        except UnicodeDecodeError:
            yield Refused("undecodable", preview)


def parse_stream(stream: BinaryIO) -> ParsedLines:
    return parse_lines(read_lines(stream))


@dataclass(frozen=True)
class TakedownRequest:
    """One recorded request: who asked, when, why, which patterns, how to match them."""

    request_id: str
    created_at: str
    requested_by: str
    reason: str
    match: Match
    source: str  # where it came from: "cli:<file name>" or "inbox:<path>"
    source_sha256: str  # of the request file, so a dropped file is never recorded twice
    patterns: list[Pattern]
    refused: dict[str, int]  # lines refused by reason, already-requested patterns included
    examples: dict[str, list[str]]
    sketch: dict[str, object] | None = None  # content matching: the MinHash scheme of `matches`

    @property
    def file_name(self) -> str:
        stamp = self.created_at.replace("-", "").replace(":", "").split(".")[0].split("+")[0]
        return f"{stamp}Z-{self.request_id}.json"

    def to_dict(self) -> dict[str, object]:
        body = asdict(self)
        body["patterns"] = [asdict(p) for p in self.patterns]
        return body

    @classmethod
    def from_dict(cls, body: dict) -> TakedownRequest:
        return cls(**{**body, "patterns": [Pattern(**p) for p in body["patterns"]]})


def new_request(
    parsed: ParsedLines,
    patterns: list[Pattern],
    *,
    reason: str,
    match: Match,
    requested_by: str,
    source: str,
    source_sha256: str,
    sketch: dict[str, object] | None = None,
) -> TakedownRequest:
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, not {match!r}")
    created_at = datetime.now(UTC).isoformat()
    body = [created_at, requested_by, reason, match, source, [asdict(p) for p in patterns]]
    return TakedownRequest(
        request_id=stable_hash(body)[:12],
        created_at=created_at,
        requested_by=requested_by,
        reason=reason,
        match=match,
        source=source,
        source_sha256=source_sha256,
        patterns=patterns,
        refused=dict(parsed.refused),
        examples=parsed.examples,
        sketch=sketch,
    )


# -- storage -----------------------------------------------------------------------------
MATCHES_SUFFIX = ".matches.parquet"


def write_request(store: ShardStore, request: TakedownRequest, matches: pl.DataFrame) -> str:
    """Record a request: its content matches first, then the request itself (the commit point).
    Refuses to replace an existing record."""
    path = store.path(TAKEDOWNS, request.file_name)
    if store.fs.exists(path):
        raise FileExistsError(f"takedown request {request.request_id} is already recorded at {path}")
    if matches.height:
        data = io.BytesIO()
        matches.write_parquet(data, compression="zstd")
        store.write_bytes(path.removesuffix(".json") + MATCHES_SUFFIX, data.getvalue())
    store.write_bytes(path, json.dumps(request.to_dict(), indent=2, sort_keys=True).encode())
    return path


def read_requests(store: ShardStore) -> list[tuple[TakedownRequest, pl.DataFrame]]:
    """Every recorded request, oldest first, with its content matches (empty for URL matching)."""
    found = []
    for path in sorted(store.fs.glob(store.path(TAKEDOWNS, "*.json"))):
        request = TakedownRequest.from_dict(json.loads(store.read_bytes(path)))
        matches_path = path.removesuffix(".json") + MATCHES_SUFFIX
        matches = store.read_shard(matches_path) if store.fs.exists(matches_path) else pl.DataFrame(schema=MATCH_SCHEMA)
        found.append((request, matches))
    return sorted(found, key=lambda pair: (pair[0].created_at, pair[0].request_id))
