"""Build WARC bytes for tests: records by hand, so that a test can also build broken ones.

Records are plain bytes (`response_record`, `conversion_record`, `warcinfo_record`, or
`warc_record` for anything else); `warc_bytes`/`write_warc` join them into a file, gzipped
per record like Common Crawl unless `compress=False`. Everything is deterministic: record ids
are derived from the URL, dates are fixed, gzip members carry no timestamp.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from resources.common.storage import ShardStore
from resources.ingest.engine import IngestResult, ingest_files
from resources.settings import IngestSettings

DATE = "2024-05-18T00:00:00Z"
HTTP_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 302: "Found", 404: "Not Found",
                500: "Internal Server Error", 503: "Service Unavailable"}  # fmt: skip


def record_id(url: str, salt: str = "") -> str:
    """A stable `<urn:uuid:...>` for a URL (salt it to give one URL several records)."""
    return f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{salt}|{url}')}>"


def html_page(*paragraphs: str, title: str = "Test page", lang: str = "en", meta_charset: str | None = None) -> str:
    """A small article page whose main text is the paragraphs (escaped), one <p> each."""
    meta = f'<meta charset="{meta_charset}">' if meta_charset else ""
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head>{meta}<title>{html.escape(title)}</title></head>\n'
        f"<body><article><h1>{html.escape(title)}</h1>\n{body}\n</article></body></html>\n"
    )


def http_block(
    body: bytes,
    *,
    status: int = 200,
    content_type: str | None = "text/html; charset=utf-8",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An HTTP/1.1 response: status line, headers, blank line, body."""
    lines = [f"HTTP/1.1 {status} {HTTP_REASONS.get(status, 'Whatever')}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body)}")
    lines += [f"{key}: {value}" for key, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def warc_record(
    block: bytes,
    *,
    record_type: str = "response",
    url: str | None = None,
    content_type: str = "application/http; msgtype=response",
    date: str = DATE,
    rid: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    content_length: int | str | None = None,
) -> bytes:
    """One uncompressed WARC/1.0 record around `block`; `content_length` may lie, for tests."""
    lines = ["WARC/1.0", f"WARC-Type: {record_type}", f"WARC-Record-ID: {rid or record_id(url or record_type)}"]
    lines.append(f"WARC-Date: {date}")
    if url is not None:
        lines.append(f"WARC-Target-URI: {url}")
    digest = base64.b32encode(hashlib.sha1(block).digest()).decode()
    lines.append(f"WARC-Block-Digest: sha1:{digest}")
    lines += [f"{key}: {value}" for key, value in headers]
    lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(block) if content_length is None else content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + block + b"\r\n\r\n"


def response_record(
    url: str,
    body: bytes | str,
    *,
    status: int = 200,
    content_type: str | None = "text/html",
    charset: str | None = "utf-8",
    http: bool = True,
    date: str = DATE,
    rid: str | None = None,
) -> bytes:
    """A `response` record. A str body is encoded with `charset` (UTF-8 when None); the HTTP
    Content-Type is `content_type` plus `; charset=...` when a charset is given. With
    `http=False` the block is the bare body, as some broken crawlers write it."""
    if isinstance(body, str):
        body = body.encode(charset or "utf-8")
    if not http:
        return warc_record(body, url=url, content_type=content_type or "text/html", date=date, rid=rid)
    header = content_type if content_type is None or charset is None else f"{content_type}; charset={charset}"
    return warc_record(http_block(body, status=status, content_type=header), url=url, date=date, rid=rid)


def conversion_record(url: str, text: str, *, date: str = DATE, rid: str | None = None) -> bytes:
    """A WET `conversion` record: extracted plain text."""
    return warc_record(text.encode(), record_type="conversion", url=url, content_type="text/plain", date=date, rid=rid)


def warcinfo_record(filename: str = "test.warc.gz") -> bytes:
    body = b"software: tests/warc_factory.py\r\nformat: WARC File Format 1.1\r\n"
    return warc_record(
        body, record_type="warcinfo", content_type="application/warc-fields", rid=record_id(filename, "info"),
        headers=[("WARC-Filename", filename)],
    )  # fmt: skip


def gzip_member(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def warc_bytes(records: Iterable[bytes], *, compress: bool = True, level: int = 6) -> bytes:
    """Records joined into a file, each its own gzip member when `compress`."""
    return b"".join(gzip_member(r, level) if compress else r for r in records)


def write_warc(path: Path, records: Iterable[bytes], *, compress: bool = True, level: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(warc_bytes(records, compress=compress, level=level))
    return path


@dataclass(frozen=True)
class Page:
    """A good page and the text a correct extraction of it must contain."""

    url: str
    text: str

    def record(self, *, status: int = 200, http: bool = True, rid: str | None = None) -> bytes:
        return response_record(self.url, html_page(self.text, title=self.title), status=status, http=http, rid=rid)

    @property
    def title(self) -> str:
        return f"Page {self.url.rsplit('/', 1)[-1]}"


def pages(prefix: str, n: int) -> list[Page]:
    """`n` distinct good pages under `http://<prefix>.example.org/`."""
    return [
        Page(
            f"http://{prefix}.example.org/{i}",
            f"Document {i} of {prefix}: a paragraph of ordinary prose that is long enough to be a page.",
        )
        for i in range(n)
    ]


# -- running the engine ------------------------------------------------------------------------
@dataclass
class Ingested:
    result: IngestResult
    frame: pl.DataFrame

    @property
    def skips(self) -> dict[str, int]:
        return dict(self.result.skips)

    @property
    def urls(self) -> list[str]:
        return self.frame["url"].to_list()

    def text_of(self, url: str) -> str:
        return self.frame.filter(pl.col("url") == url)["text"].item()


def ingest(
    tmp_path: Path,
    files: Iterable[Path | str],
    *,
    batch: str = "test-batch",
    crawl: str | None = None,
    log: Callable[[str], None] = lambda message: None,
    **settings: object,
) -> Ingested:
    """Run `ingest_files` on real files into a real ShardStore under tmp_path (workers=1 unless
    given) and read every written shard back into one frame, in write order."""
    store = ShardStore(str(tmp_path / "store"))
    options = IngestSettings.model_validate({"workers": 1, **settings})
    result = ingest_files(
        [str(f) for f in files],
        crawl_batch=batch,
        settings=options,
        write_shard=lambda index, frame: store.write_parquet_shard("raw_documents", batch, index, frame),
        crawl=crawl,
        log=log,
    )
    frames = [store.read_shard(store.path("raw_documents", batch, shard.path)) for shard in result.shards]
    frame = pl.concat(frames) if frames else pl.DataFrame()
    assert frame.height == result.documents
    return Ingested(result, frame)
