"""Crawl listings from outside: lines that would leave the listing's base, and folders holding
links that are no crawl files, are left out with their reason."""

from __future__ import annotations

import gzip
from pathlib import Path

from resources.ingest.sources import SourceSettings, list_crawl_files


def test_listing_lines_leaving_their_base_are_skipped(tmp_path: Path) -> None:
    listing = tmp_path / "warc.paths.gz"
    lines = [
        "crawl-data/CC-MAIN-2024-22/segments/1/warc/CC-MAIN-20240518-00000.warc.gz",
        "crawl-data/../../../etc/passwd",
        "..\\windows\\system32",
        "s3://other-bucket/secret.warc.gz",
        "crawl-data/CC-MAIN-2024-22/x\x00.warc.gz",
        "",
    ]
    listing.write_bytes(gzip.compress("\n".join(lines).encode()))
    skipped: dict[str, str] = {}
    source = SourceSettings(listing=str(listing), listing_base_url="s3://commoncrawl/")
    files = list_crawl_files(source, skipped)
    assert files == ["s3://commoncrawl/crawl-data/CC-MAIN-2024-22/segments/1/warc/CC-MAIN-20240518-00000.warc.gz"]
    assert skipped == {
        "crawl-data/../../../etc/passwd": "a '..' segment would leave the listing's base",
        "..\\windows\\system32": "a '..' segment would leave the listing's base",
        "s3://other-bucket/secret.warc.gz": "a full URL where the listing's base URL is prepended",
        "crawl-data/CC-MAIN-2024-22/x\x00.warc.gz": "control characters in a listing line",
    }


def test_links_that_are_no_crawl_files_are_skipped(tmp_path: Path) -> None:
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "real file..x.warc.gz").write_bytes(b"WARC")
    (crawl / "loop.warc.gz").symlink_to(crawl / "loop.warc.gz")
    (crawl / "dangling.warc.gz").symlink_to(tmp_path / "nowhere.warc.gz")
    (crawl / "linked.warc.gz").symlink_to(crawl / "real file..x.warc.gz")
    (crawl / "folder.warc.gz").mkdir()
    skipped: dict[str, str] = {}
    files = list_crawl_files(SourceSettings(url=str(crawl)), skipped)
    assert [Path(f).name for f in files] == ["linked.warc.gz", "real file..x.warc.gz"]
    assert skipped == {
        str(crawl / "loop.warc.gz"): "unreadable (symbolic link loop)",
        str(crawl / "dangling.warc.gz"): "unreadable (No such file or directory)",
    }
