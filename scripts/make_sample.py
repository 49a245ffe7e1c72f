"""Build the small crawl sample shipped in `data/sample/` from the shared corpus.

    .venv/bin/python scripts/make_sample.py [--source ../shared/corpora/web-warc] [--out data/sample]

A fresh clone has no `../shared`, so the demo reads this sample instead: three gzipped WARC
files named like their sources, each a warcinfo record followed by a selection of `response`
records from the source file of the same name, in source order. Records are copied byte for
byte (the source is gzipped per record, like Common Crawl, so each record is one gzip member):
WARC-Record-ID, WARC-Date, WARC-Target-URI and digests are the shared corpus's, and a document
in the sample can be traced to the same record in `../shared/corpora/web-warc`.

The selection is a language mix (mostly German and English, some Spanish and French; the
language is read from the page's `<html lang>` attribute, else its country TLD), of pages whose
main text is long enough to be worth a document and whose URL has a real host name, the
smallest first, within a byte budget.
The output is deterministic: the same source gives the same bytes on every run.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastwarc.warc import ArchiveIterator, WarcRecordType
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = PROJECT_ROOT.parent / "shared" / "corpora" / "web-warc"
DEFAULT_OUT = PROJECT_ROOT / "data" / "sample"
FILES = [f"CC-SAMPLE-2024-22-0000{i}.warc.gz" for i in range(3)]

# Records per output file and language: mostly de and en, some es and fr.
QUOTAS = {"de": 38, "en": 30, "es": 10, "fr": 6}
MAX_FILE_BYTES = 1_500_000  # per output file, compressed; three files stay under 4.5 MB
MIN_TEXT_CHARS = 800  # main text a page needs to be worth shipping

_HTML_LANG = re.compile(rb"<html\b[^>]*?\blang\s*=\s*[\"']?([a-zA-Z]{2,3})\b", re.IGNORECASE)
_TLD_LANG = {
    "de": "de", "at": "de", "ch": "de",
    "fr": "fr", "be": "fr",
    "es": "es", "mx": "es", "ar": "es", "cl": "es", "co": "es", "pe": "es",
    "uk": "en", "us": "en", "ie": "en", "au": "en", "nz": "en", "ca": "en",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Candidate:
    record_id: str
    url: str
    language: str
    start: int  # offset of the record's gzip member in the source file
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def language_of(url: str, html: bytes) -> str:
    match = _HTML_LANG.search(html[:20_000])
    if match:
        return match.group(1).decode("ascii").lower()
    tld = (urlsplit(url).hostname or "").rsplit(".", 1)[-1]
    return _TLD_LANG.get(tld, "?")


def main_text_chars(html: bytes, charset: str | None) -> int:
    try:
        text = bytes_to_str(html, charset or detect_encoding(html), errors="replace")
    except LookupError:
        text = bytes_to_str(html, detect_encoding(html), errors="replace")
    return len(extract_plain_text(text, main_content=True).strip())


def candidates(path: Path) -> tuple[bytes, list[Candidate]]:
    """The source's warcinfo date and every response record worth shipping, with its offsets."""
    size = path.stat().st_size
    found: list[tuple[int, str, str, str, bool]] = []  # start, id, url, language, eligible
    info_date = b""
    with path.open("rb") as stream:
        for record in ArchiveIterator(stream, parse_http=True):
            if record.record_type == WarcRecordType.warcinfo:
                info_date = (record.headers.get("WARC-Date") or "").encode()
                found.append((record.stream_pos, "", "", "", False))
                continue
            http = record.http_headers
            body = record.reader.read()
            url = record.headers.get("WARC-Target-URI") or ""
            eligible = (
                record.record_type == WarcRecordType.response
                and "." in (urlsplit(url).hostname or "")  # some test-set URLs have no real host
                and http is not None
                and http.status_code == 200
                and (record.http_content_type or "").lower() == "text/html"
                and main_text_chars(body, record.http_charset) >= MIN_TEXT_CHARS
            )
            record_id = record.headers.get("WARC-Record-ID") or ""
            found.append((record.stream_pos, record_id, url, language_of(url, body), eligible))
    ends = [start for start, *_ in found[1:]] + [size]
    return info_date, [
        Candidate(record_id, url, language, start, end)
        for (start, record_id, url, language, eligible), end in zip(found, ends, strict=True)
        if eligible
    ]


def select(pool: list[Candidate]) -> list[Candidate]:
    """Per language, the smallest pages up to its quota; then drop the largest until in budget.
    Ties break on the record id, so the choice never depends on dict or set order."""
    chosen: list[Candidate] = []
    for language, quota in QUOTAS.items():
        ranked = sorted((c for c in pool if c.language == language), key=lambda c: (c.size, c.record_id))
        chosen.extend(ranked[:quota])
    chosen.sort(key=lambda c: (c.size, c.record_id))
    while chosen and sum(c.size for c in chosen) > MAX_FILE_BYTES:
        chosen.pop()
    return sorted(chosen, key=lambda c: c.start)  # source order


def warcinfo(filename: str, date: bytes, source: str, chosen: list[Candidate]) -> bytes:
    """A warcinfo record for the sample file, gzipped on its own; fixed id, date and gzip mtime."""
    languages = {lang: sum(c.language == lang for c in chosen) for lang in QUOTAS}
    body = (
        "software: crawl2ckpt scripts/make_sample.py\r\n"
        "format: WARC File Format 1.1\r\n"
        "isPartOf: CC-SAMPLE-2024-22\r\n"
        f"description: {len(chosen)} response records copied byte for byte from {source}"
        " (real web pages from trafilatura's test set), languages "
        + ", ".join(f"{lang} {n}" for lang, n in languages.items())
        + "\r\n"
    ).encode()
    digest = base64.b32encode(hashlib.sha1(body).digest()).decode()
    selection = hashlib.sha256("\n".join(c.record_id for c in chosen).encode()).hexdigest()
    record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"crawl2ckpt:data/sample/{filename}:{selection}")
    head = (
        "WARC/1.0\r\n"
        "WARC-Type: warcinfo\r\n"
        f"WARC-Record-ID: <urn:uuid:{record_id}>\r\n"
        f"WARC-Filename: {filename}\r\n"
        f"WARC-Date: {(date or b'2024-05-18T00:00:00Z').decode()}\r\n"
        f"WARC-Block-Digest: sha1:{digest}\r\n"
        "Content-Type: application/warc-fields\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode()
    return gzip.compress(head + body + b"\r\n\r\n", compresslevel=9, mtime=0)


def build(source: Path, out: Path) -> list[tuple[Path, int, dict[str, int]]]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename in FILES:
        path = source / filename
        if not path.is_file():
            raise SystemExit(f"source WARC not found: {path} (the shared corpus lives in ../shared/corpora)")
        date, pool = candidates(path)
        chosen = select(pool)
        data = path.read_bytes()
        parts = [warcinfo(filename, date, f"shared/corpora/web-warc/{filename}", chosen)]
        parts += [data[c.start : c.end] for c in chosen]
        target = out / filename
        tmp = target.with_name(f".{filename}.tmp")
        tmp.write_bytes(b"".join(parts))
        tmp.replace(target)
        check(target, chosen)
        languages = {k: sum(c.language == k for c in chosen) for k in QUOTAS}
        written.append((target, target.stat().st_size, languages))
    return written


def check(path: Path, chosen: list[Candidate]) -> None:
    """Read the file back: a warcinfo first, then exactly the chosen records, in order."""
    with path.open("rb") as stream:
        records = [(r.record_type, r.headers.get("WARC-Record-ID")) for r in ArchiveIterator(stream)]
    assert records[0][0] == WarcRecordType.warcinfo, path
    assert [rid for _, rid in records[1:]] == [c.record_id for c in chosen], path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="shared web-warc directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the sample is written")
    args = parser.parse_args(argv)
    total = 0
    for path, size, languages in build(args.source, args.out):
        total += size
        mix = ", ".join(f"{k} {v}" for k, v in languages.items())
        print(f"{path}: {size:,} bytes, {sum(languages.values())} records ({mix})")
    print(f"total {total:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
