"""The crawl reader (and ingest around it) on good and bad crawl files.

Every bad input must end as a counted skip under the right reason, or as a clear error, and
the good records offered in the same batch must still come out as documents.
"""

from __future__ import annotations

import gzip
import io
import random
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from fastwarc.warc import ArchiveIterator, WarcRecordType

from resources.ingest.warc import ReadStats, crawl_of, iter_pages
from tests.conftest import SAMPLE_DIR, SHARED_CORPORA
from tests.warc_factory import (
    Page,
    conversion_record,
    gzip_member,
    html_page,
    http_block,
    ingest,
    pages,
    record_id,
    response_record,
    warc_bytes,
    warc_record,
    warcinfo_record,
    write_warc,
)

GOOD = pages("good", 3)
SAMPLE = SAMPLE_DIR / "CC-SAMPLE-2024-22-00002.warc.gz"
WHIRLWIND = SHARED_CORPORA / "commoncrawl-sample"
HTML = ("text/html", "application/xhtml+xml")


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    """A second, healthy file offered in the same batch as each bad one."""
    return write_warc(tmp_path / "good.warc.gz", [warcinfo_record("good.warc.gz"), *(p.record() for p in GOOD)])


def assert_pages_out(out, expected: list[Page]) -> None:
    for page in expected:
        assert page.url in out.urls, f"good page lost: {page.url}"
        assert page.text in out.text_of(page.url)


def needs_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared corpus not available: {path}")
    return path


# -- good input -----------------------------------------------------------------------------------
def test_reads_response_records_with_provenance(tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    path = write_warc(
        crawl / "CC-MAIN-2024-22-00001.warc.gz",
        [
            warcinfo_record(),
            warc_record(b"GET / HTTP/1.1\r\n\r\n", record_type="request", url=GOOD[0].url,
                        content_type="application/http; msgtype=request"),
            GOOD[0].record(),
            warc_record(b"fetchTimeMs: 12\r\n", record_type="metadata", url=GOOD[0].url,
                        content_type="application/warc-fields"),
            GOOD[1].record(),
            GOOD[2].record(),
        ],
    )  # fmt: skip
    out = ingest(tmp_path, [path])
    assert out.skips == {}
    assert out.result.read.files == 1
    assert out.result.read.records == 3  # warcinfo, request and metadata records are not read
    assert out.urls == [p.url for p in GOOD]
    row = out.frame.row(0, named=True)
    assert row["warc_record_id"] == record_id(GOOD[0].url)
    assert row["fetch_time"] == datetime(2024, 5, 18, tzinfo=UTC)
    assert row["warc_path"] == str(path)
    assert row["crawl"] == "CC-MAIN-2024-22"
    assert row["crawl_batch"] == "test-batch"
    assert row["domain"] == "good.example.org"
    assert (row["record_type"], row["content_type"], row["charset"]) == ("response", "text/html", "utf-8")
    assert row["capped"] is False
    assert row["text"].startswith("Page 0") and GOOD[0].text in row["text"]
    assert out.frame["doc_id"].n_unique() == 3


def test_plain_uncompressed_warc_is_read(tmp_path: Path) -> None:
    path = write_warc(tmp_path / "plain.warc", [p.record() for p in GOOD], compress=False)
    out = ingest(tmp_path, [path])
    assert out.skips == {}
    assert_pages_out(out, GOOD)


def test_shipped_sample_ingests() -> None:
    """The sample a fresh clone demos on: three real files, a few hundred pages."""
    files = sorted(SAMPLE_DIR.glob("*.warc.gz"))
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) <= 5_000_000
    stats = ReadStats()
    for path in files:
        with path.open("rb") as stream:
            page_list = list(iter_pages(stream, str(path), stats, 5_000_000, HTML))
        assert 60 <= len(page_list) <= 100
    assert stats.files == 3
    assert stats.skips == {} and stats.file_errors == {}
    assert all(crawl_of(str(f)) == "CC-SAMPLE-2024-22" for f in files)


def test_documents_are_split_into_shards_of_shard_rows(tmp_path: Path) -> None:
    many = pages("many", 5)
    path = write_warc(tmp_path / "many.warc.gz", [p.record() for p in many])
    out = ingest(tmp_path, [path], shard_rows=2)
    assert [s.rows for s in out.result.shards] == [2, 2, 1]
    assert out.urls == [p.url for p in many]


# -- truncated and broken files -----------------------------------------------------------------
def test_truncated_gzip_keeps_the_records_before_the_cut(tmp_path: Path, good_file: Path) -> None:
    whole = ingest(tmp_path / "whole", [SAMPLE])
    data = SAMPLE.read_bytes()
    cut = write_warc(tmp_path / "cut.warc.gz", [])
    cut.write_bytes(data[: len(data) // 2])

    out = ingest(tmp_path / "cut", [cut, good_file])

    assert out.skips == {"truncated_record": 1}
    assert "truncated" in out.result.read.file_errors[str(cut)]
    from_cut = out.frame.filter(pl.col("warc_path") == str(cut))["warc_record_id"].to_list()
    kept = whole.frame["warc_record_id"].to_list()
    assert 10 < len(from_cut) < len(kept)
    assert from_cut == kept[: len(from_cut)]  # every record before the cut, in order
    assert_pages_out(out, GOOD)


def test_truncated_plain_warc_is_counted(tmp_path: Path, good_file: Path) -> None:
    data = warc_bytes([p.record() for p in pages("cut", 3)], compress=False)
    cut = tmp_path / "cut.warc"
    cut.write_bytes(data[: len(data) - 100])  # inside the last record's HTML
    out = ingest(tmp_path, [cut, good_file])
    assert out.skips == {"truncated_record": 1}
    assert out.urls == [p.url for p in pages("cut", 2)] + [p.url for p in GOOD]


def cut_inside_headers(tmp_path: Path, kind: str) -> tuple[Path, int]:
    """A file that ends inside a record's WARC headers, and how many pages come before that."""
    if kind == "plain":
        data = warc_bytes([p.record() for p in pages("cut", 3)], compress=False)
        last = data.rindex(b"WARC/1.0")
        cut = tmp_path / "cut.warc"
        cut.write_bytes(data[: data.index(b"WARC-Date", last)])  # before its Content-Length
        return cut, 2
    with SAMPLE.open("rb") as stream:  # a real file cut 150 bytes into a record's gzip member
        starts = [r.stream_pos for r in ArchiveIterator(stream, record_types=WarcRecordType.response)]
    cut = tmp_path / "cut.warc.gz"
    cut.write_bytes(SAMPLE.read_bytes()[: starts[20] + 150])
    return cut, 20


@pytest.mark.parametrize("kind", ["plain", "gzip"])
def test_file_cut_inside_record_headers_is_counted_as_truncated(tmp_path: Path, good_file: Path, kind: str) -> None:
    cut, before = cut_inside_headers(tmp_path, kind)
    out = ingest(tmp_path, [cut, good_file])
    assert out.frame.filter(pl.col("warc_path") == str(cut)).height == before
    assert_pages_out(out, GOOD)
    assert str(cut) in out.result.read.file_errors
    assert out.skips == {"truncated_record": 1}


NOT_WARC = {
    "html": html_page("I am a web page, not an archive.").encode(),
    "text": b"just some notes\nabout nothing\n" * 50,
    "binary": random.Random(7).randbytes(10_000),
    "gzipped_text": gzip.compress(b"a gzip file, but of plain text\n" * 100, mtime=0),
    "pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n",
    "wet_header_typo": b"WARC/1.0\r\nWARC-Type conversion\r\n\r\nhello\r\n\r\n",
}


@pytest.mark.parametrize("kind", NOT_WARC)
def test_file_that_is_not_warc_is_counted(tmp_path: Path, good_file: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.warc.gz"
    bad.write_bytes(NOT_WARC[kind])
    out = ingest(tmp_path, [bad, good_file])
    assert out.skips == {"not_warc": 1}
    assert out.result.read.file_errors[str(bad)].startswith("not_warc")
    assert out.result.read.files == 2
    assert out.urls == [p.url for p in GOOD]


MALFORMED = {
    "missing_colon": b"WARC/1.0\r\nWARC-Type response\r\nthis is no header\r\n\r\n<html>x</html>\r\n\r\n",
    "bad_version_line": b"NOTWARC/9.9\r\nWARC-Type: response\r\nContent-Length: 4\r\n\r\nabcd\r\n\r\n",
    "content_length_not_a_number": re.sub(
        rb"Content-Length: \d+", b"Content-Length: twelve", response_record("http://bad.example.org/", "x"), count=1
    ),
    "binary_garbage": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_headers_midway_keep_the_records_before(
    tmp_path: Path, good_file: Path, kind: str, compress: bool
) -> None:
    before, after = pages("before", 2), pages("after", 1)
    path = write_warc(
        tmp_path / "broken.warc.gz",
        [warcinfo_record(), *(p.record() for p in before), MALFORMED[kind], *(p.record() for p in after)],
        compress=compress,
    )
    out = ingest(tmp_path, [path, good_file])
    assert out.skips["malformed_record"] == 1
    # FastWARC may hand over the half-parsed record before it gives up: counted once more, as not a page
    assert sum(out.skips.values()) <= 2
    assert out.result.read.file_errors[str(path)].startswith("malformed_record after ")
    assert out.urls == [p.url for p in before] + [p.url for p in GOOD]  # reading stops at the damage


def test_garbage_between_gzip_members_is_counted(tmp_path: Path, good_file: Path) -> None:
    before = pages("before", 2)
    path = tmp_path / "garbage.warc.gz"
    path.write_bytes(warc_bytes(p.record() for p in before) + b"not gzip at all " * 20 + GOOD[0].record())
    out = ingest(tmp_path, [path, good_file])
    assert out.skips == {"malformed_record": 1}
    assert "after 2 records" in out.result.read.file_errors[str(path)]
    assert out.urls == [p.url for p in before] + [p.url for p in GOOD]


def corrupt(member: bytes) -> bytes:
    """A gzip member whose deflate data is damaged (header intact, as a flipped disk block would leave it)."""
    damaged = bytearray(member)
    for i in range(20, 40):
        damaged[i] ^= 0x5A
    return bytes(damaged)


@pytest.mark.parametrize("where", ["first", "middle", "two_in_a_row", "two_apart"])
def test_corrupt_gzip_member_loses_its_record_only(tmp_path: Path, good_file: Path, where: str) -> None:
    """The records after a damaged member are read, and each damaged member counts once (one
    record per member, as Common Crawl writes them), instead of the rest of the file counted as
    one malformed record."""
    good = pages("around", 8)
    members = [gzip_member(p.record()) for p in good]
    broken = corrupt(gzip_member(pages("lost", 1)[0].record()))
    at = {"first": [0], "middle": [3], "two_in_a_row": [3, 3], "two_apart": [2, 6]}[where]
    for offset, index in enumerate(at):
        members.insert(index + offset, broken)
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(gzip_member(warcinfo_record()) + b"".join(members))
    out = ingest(tmp_path, [path, good_file])
    assert out.skips == {"corrupt_gzip_member": len(at)}
    assert out.urls == [p.url for p in good] + [p.url for p in GOOD]
    assert out.result.read.file_errors[str(path)].startswith(f"{len(at)} gzip member(s) not decompressible")


def test_corrupt_last_gzip_member_is_counted(tmp_path: Path, good_file: Path) -> None:
    good = pages("before", 3)
    path = tmp_path / "tail.warc.gz"
    path.write_bytes(warc_bytes(p.record() for p in good) + corrupt(gzip_member(pages("lost", 1)[0].record())))
    out = ingest(tmp_path, [path, good_file])
    assert sum(out.skips.values()) == 1
    assert out.urls == [p.url for p in good] + [p.url for p in GOOD]


# -- records that are not pages ---------------------------------------------------------------
def batch_with(tmp_path: Path, *bad: bytes) -> tuple[Path, list[Page]]:
    """A file with bad records interleaved between good ones."""
    good = pages("mixed", len(bad) + 1)
    records = [good[0].record()]
    for record, page in zip(bad, good[1:], strict=True):
        records += [record, page.record()]
    return write_warc(tmp_path / "mixed.warc.gz", records), good


def test_records_without_http_headers_are_counted(tmp_path: Path) -> None:
    bare = response_record("http://bare.example.org/", html_page("No HTTP headers here."), http=False)
    path, good = batch_with(tmp_path, bare, bare.replace(b"bare.example", b"bare2.example"))
    out = ingest(tmp_path, [path])
    assert out.skips == {"no_http_headers": 2}
    assert out.urls == [p.url for p in good]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("image/png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8),
        ("application/pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << >> endobj\n%%EOF\n"),
        ("application/json", b'{"text": "not a page"}'),
        ("text/plain", b"plain text is not HTML"),
        (None, b"<html><body><p>no content type at all</p></body></html>"),
    ],
)
def test_non_html_content_types_are_counted(tmp_path: Path, content_type: str | None, body: bytes) -> None:
    record = response_record("http://file.example.org/x", body, content_type=content_type, charset=None)
    path, good = batch_with(tmp_path, record)
    out = ingest(tmp_path, [path])
    assert out.skips == {"non_html_content_type": 1}
    assert out.urls == [p.url for p in good]


@pytest.mark.parametrize(
    "header", ["text/html", "TEXT/HTML; Charset=UTF-8", "application/xhtml+xml; charset=utf-8", "text/html;"]
)
def test_html_content_type_variants_are_read(tmp_path: Path, header: str) -> None:
    body = html_page("An XHTML or oddly spelled HTML page.").encode()
    record = warc_record(http_block(body, content_type=header), url="http://x.example.org/")
    out = ingest(tmp_path, [write_warc(tmp_path / "x.warc.gz", [record])])
    assert out.skips == {}
    assert "oddly spelled" in out.text_of("http://x.example.org/")


@pytest.mark.parametrize("status", [301, 302, 404, 500, 503])
def test_http_non_2xx_is_counted(tmp_path: Path, status: int) -> None:
    record = response_record(f"http://status.example.org/{status}", html_page(f"Error page {status}"), status=status)
    path, good = batch_with(tmp_path, record)
    out = ingest(tmp_path, [path])
    assert out.skips == {"http_status": 1}
    assert out.urls == [p.url for p in good]


def test_record_without_target_uri_is_counted(tmp_path: Path) -> None:
    record = warc_record(http_block(html_page("Where am I from?").encode()), url=None)
    path, good = batch_with(tmp_path, record)
    out = ingest(tmp_path, [path])
    assert out.skips == {"no_target_uri": 1}
    assert out.urls == [p.url for p in good]


def test_unparseable_warc_date_keeps_the_document(tmp_path: Path) -> None:
    odd = Page("http://date.example.org/", "A page fetched on a day nobody wrote down properly.")
    record = odd.record().replace(b"WARC-Date: 2024-05-18T00:00:00Z", b"WARC-Date: last tuesday")
    path, good = batch_with(tmp_path, record)
    out = ingest(tmp_path, [path])
    assert out.skips == {}
    assert out.urls == [good[0].url, odd.url, good[1].url]
    assert out.frame.filter(pl.col("url") == odd.url)["fetch_time"].item() is None


def test_50mb_page_is_capped_counted_and_still_extracted(tmp_path: Path) -> None:
    paragraph = "<p>Ein sehr langer Abschnitt über nichts Besonderes, immer wieder derselbe Satz.</p>\n"
    body = ("<html><body><article>" + paragraph * (50_000_000 // len(paragraph.encode()) + 1)).encode()
    assert len(body) > 50_000_000
    huge = response_record("http://huge.example.org/", body)
    path = write_warc(tmp_path / "huge.warc.gz", [GOOD[0].record(), huge, GOOD[1].record()], level=1)
    del body, huge

    out = ingest(tmp_path, [path], max_record_bytes=5_000_000)

    assert out.skips == {"capped_payload": 1}
    assert out.urls == [GOOD[0].url, "http://huge.example.org/", GOOD[1].url]
    row = out.frame.filter(pl.col("url") == "http://huge.example.org/").row(0, named=True)
    assert row["capped"] is True
    assert row["source_bytes"] == 5_000_000
    assert row["text"].startswith("Ein sehr langer Abschnitt über nichts Besonderes")
    assert len(row["text"]) > 4_000_000
    assert out.frame.filter(pl.col("url") != "http://huge.example.org/")["capped"].to_list() == [False, False]


# -- files and batches ---------------------------------------------------------------------------
def test_empty_file_is_counted(tmp_path: Path, good_file: Path) -> None:
    empty = tmp_path / "empty.warc.gz"
    empty.touch()
    out = ingest(tmp_path, [empty, good_file])
    assert out.skips == {"empty_file": 1}
    assert out.result.read.file_errors[str(empty)] == "empty file"
    assert out.result.read.files == 2
    assert_pages_out(out, GOOD)


@pytest.mark.parametrize(
    "content",
    [gzip.compress(b"", mtime=0), b"\r\n\r\n", warc_bytes([warcinfo_record()])],
    ids=["empty_gzip", "blank_lines", "warcinfo_only"],
)
def test_file_without_pages_is_counted(tmp_path: Path, good_file: Path, content: bytes) -> None:
    bare = tmp_path / "bare.warc.gz"
    bare.write_bytes(content)
    out = ingest(tmp_path, [bare, good_file])
    assert out.skips == {"no_records": 1}
    assert str(bare) in out.result.read.file_errors
    assert_pages_out(out, GOOD)


def test_empty_batch_writes_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.warc.gz"
    empty.touch()
    out = ingest(tmp_path, [empty])
    assert out.result.documents == 0 and out.result.shards == []
    out = ingest(tmp_path, [])
    assert out.result.documents == 0 and out.skips == {}


def test_same_file_twice_in_one_batch(tmp_path: Path, good_file: Path) -> None:
    out = ingest(tmp_path, [good_file, good_file])
    assert out.result.documents == len(GOOD)
    assert out.skips == {"duplicate_text": len(GOOD)}
    assert out.frame["doc_id"].is_unique().all()
    assert out.result.read.files == 2 and out.result.read.records == 2 * len(GOOD)

    copy = shutil.copy(good_file, tmp_path / "copy.warc.gz")
    out = ingest(tmp_path / "again", [good_file, copy])
    assert out.skips == {"duplicate_text": len(GOOD)}
    assert out.frame["doc_id"].is_unique().all()
    assert out.frame["warc_path"].unique().to_list() == [str(good_file)]  # the first copy wins


def test_missing_file_is_a_clear_error(tmp_path: Path, good_file: Path) -> None:
    missing = tmp_path / "gone" / "CC-MAIN-2024-22-00009.warc.gz"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        ingest(tmp_path, [good_file, missing])


def test_workers_2_gives_the_same_output_as_workers_1(tmp_path: Path, good_file: Path) -> None:
    """A mixed batch (a real file, a good one, broken ones) through 1 and 2 extraction workers:
    same skips and byte-identical shards."""
    broken = tmp_path / "broken.warc.gz"
    broken.write_bytes(SAMPLE.read_bytes()[:400_000])
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(NOT_WARC["binary"])
    mixed, _ = batch_with(
        tmp_path,
        response_record("http://png.example.org/", b"\x89PNG", content_type="image/png", charset=None),
        response_record("http://bin.example.org/", random.Random(1).randbytes(5000)),
    )
    files = [SAMPLE, broken, junk, good_file, mixed, good_file]
    one = ingest(tmp_path / "one", files, workers=1, shard_rows=40)
    two = ingest(tmp_path / "two", files, workers=2, shard_rows=40)
    assert one.result.documents > 60
    assert {"truncated_record", "not_warc", "non_html_content_type", "undecodable", "duplicate_text"} <= set(one.skips)
    assert two.skips == one.skips
    assert two.result.read == one.result.read
    assert two.frame.equals(one.frame)
    assert [s.sha256 for s in two.result.shards] == [s.sha256 for s in one.result.shards]


# -- Common Crawl's own files ----------------------------------------------------------------
def test_common_crawl_warc_response_is_read() -> None:
    path = needs_shared(WHIRLWIND / "whirlwind.warc.gz")
    stats = ReadStats()
    with path.open("rb") as stream:
        (page,) = iter_pages(stream, str(path), stats, 5_000_000, HTML)
    assert stats.records == 1 and stats.skips == {}  # warcinfo, request and metadata are not pages
    assert page.url == "https://an.wikipedia.org/wiki/Escopete"
    assert page.warc_record_id == "<urn:uuid:2aabeff2-67f5-4608-8466-e87c6296e2b6>"
    assert page.fetch_time == datetime(2024, 5, 18, 1, 58, 10, tzinfo=UTC)
    assert (page.record_type, page.content_type, page.charset) == ("response", "text/html", "utf-8")
    assert page.payload.lstrip().lower().startswith(b"<!doctype html")
    assert len(page.payload) == 72848 and not page.capped


def test_common_crawl_wet_conversion_is_read() -> None:
    path = needs_shared(WHIRLWIND / "whirlwind.warc.wet.gz")
    stats = ReadStats()
    with path.open("rb") as stream:
        (page,) = iter_pages(stream, str(path), stats, 5_000_000, HTML)
    assert page.record_type == "conversion"
    assert page.url == "https://an.wikipedia.org/wiki/Escopete"
    assert page.warc_record_id == "<urn:uuid:ba729a40-ff84-4085-8d48-0a5b2ee0c42d>"
    assert page.payload.decode().startswith("Escopete - Biquipedia, a enciclopedia libre\n")
    assert (page.content_type, page.charset) == ("text/plain", "utf-8")


def test_common_crawl_triple_in_one_batch(tmp_path: Path) -> None:
    files = [needs_shared(WHIRLWIND / name) for name in ("whirlwind.warc.gz", "whirlwind.warc.wet.gz",
                                                        "whirlwind.warc.wat.gz")]  # fmt: skip
    out = ingest(tmp_path, files, crawl="CC-MAIN-2024-22")
    assert out.skips == {"no_records": 1}  # the WAT holds metadata records only
    assert list(out.result.read.file_errors) == [str(files[2])]
    assert out.result.read.files == 3
    assert out.frame["record_type"].to_list() == ["response", "conversion"]
    assert out.frame["warc_record_id"].to_list() == [
        "<urn:uuid:2aabeff2-67f5-4608-8466-e87c6296e2b6>",
        "<urn:uuid:ba729a40-ff84-4085-8d48-0a5b2ee0c42d>",
    ]
    assert out.frame["url"].unique().to_list() == ["https://an.wikipedia.org/wiki/Escopete"]
    assert out.frame["domain"].unique().to_list() == ["an.wikipedia.org"]
    assert out.frame["crawl"].unique().to_list() == ["CC-MAIN-2024-22"]
    html_text, wet_text = out.frame["text"].to_list()
    assert "Escopete" in html_text and "Escopete" in wet_text
    assert wet_text.startswith("Escopete - Biquipedia")


def test_common_crawl_wat_gives_no_documents(tmp_path: Path) -> None:
    path = needs_shared(WHIRLWIND / "whirlwind.warc.wat.gz")
    out = ingest(tmp_path, [path])
    assert out.result.documents == 0
    assert out.skips == {"no_records": 1}
    assert out.result.read.records == 0 and out.result.read.files == 1


# -- small parts ---------------------------------------------------------------------------------
def test_iter_pages_counts_into_shared_stats() -> None:
    stats = ReadStats()
    data = warc_bytes([GOOD[0].record(), conversion_record("http://wet.example.org/", "plain words")])
    found = list(iter_pages(io.BytesIO(data), "mem.warc.gz", stats, 1024, HTML))
    assert [p.record_type for p in found] == ["response", "conversion"]
    assert found[1].payload == b"plain words"
    assert stats.records == 2 and stats.payload_bytes == sum(len(p.payload) for p in found)

    other = ReadStats()
    list(iter_pages(io.BytesIO(b"junk"), "junk.warc", other, 1024, HTML))
    stats.merge(other)
    assert stats.files == 2
    assert stats.skips == {"not_warc": 1}
    assert list(stats.file_errors) == ["junk.warc"]


def test_read_cap_applies_to_wet_records_too() -> None:
    stats = ReadStats()
    data = warc_bytes([conversion_record("http://wet.example.org/", "word " * 1000)])
    (page,) = iter_pages(io.BytesIO(data), "mem.wet.gz", stats, 1024, HTML)
    assert page.capped and len(page.payload) == 1024
    assert stats.skips == {"capped_payload": 1}


@pytest.mark.parametrize(
    ("path", "fallback", "crawl"),
    [
        ("s3://commoncrawl/crawl-data/CC-MAIN-2024-22/segments/1/warc/CC-MAIN-2024-x.warc.gz", None,
         "CC-MAIN-2024-22"),
        ("data/sample/CC-SAMPLE-2024-22-00000.warc.gz", "ignored", "CC-SAMPLE-2024-22"),
        ("/crawls/CC-MAIN-2024-221.warc.gz", None, "crawls"),  # not a crawl id: one digit too many
        ("/crawls/my-crawl/x.warc.gz", "configured", "configured"),
        ("/crawls/my-crawl/x.warc.gz", None, "my-crawl"),
        ("x.warc.gz", None, "unknown"),
    ],
)  # fmt: skip
def test_crawl_of(path: str, fallback: str | None, crawl: str) -> None:
    assert crawl_of(path, fallback) == crawl
