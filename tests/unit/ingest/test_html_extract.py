"""Charset decoding, main-text extraction and doc ids, alone and inside a real ingest."""

from __future__ import annotations

import codecs
import random
import re
from pathlib import Path

import pytest

from resources.common.schemas import doc_id_of
from resources.ingest import extract as html_extract
from resources.ingest.extract import ExtractOptions, decode, extract_batch, extract_one
from tests.warc_factory import html_page, ingest, pages, response_record, warc_record, write_warc

OPTIONS = ExtractOptions()
GERMAN = "Grüße aus Köln: schöne Straße, ein Café am Rhein und Äpfel für alle – auch für Sie."


def extract(payload: bytes, charset: str | None = None, record_type: str = "response", **options: object):
    return extract_one(payload, charset, record_type, "http://x.example.org/", ExtractOptions(**options))


# -- decoding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("utf-8", GERMAN),
        ("iso-8859-1", GERMAN.replace("–", "-")),
        ("windows-1252", GERMAN),
        ("windows-1251", "Привет, мир. Это тестовая страница на русском языке."),
        ("shift_jis", "日本語のテキストです。これはテストページです。"),
        ("gb18030", "这是一个中文测试页面，包含一些普通的文字。"),
    ],
)
def test_declared_charset_is_used(charset: str, text: str) -> None:
    result = extract(html_page(text).encode(charset), charset)
    assert not result.skip
    assert text in result.text


def test_charset_from_meta_tag_when_the_header_has_none() -> None:
    result = extract(html_page(GERMAN, meta_charset="windows-1252").encode("cp1252"), None)
    assert GERMAN in result.text
    assert result.charset == "cp1252"


def test_unknown_charset_label_falls_back_to_detection() -> None:
    result = extract(html_page(GERMAN).encode(), "x-no-such-charset")
    assert not result.skip
    assert GERMAN in result.text
    assert result.charset == "utf-8"


def test_latin1_bytes_labelled_utf8_are_decoded_with_fallback() -> None:
    text = GERMAN.replace("–", "-")
    result = extract(html_page(text).encode("latin-1"), "utf-8")
    assert not result.skip
    assert text in result.text
    assert "\ufffd" not in result.text and "Ã" not in result.text


def test_latin1_bytes_labelled_utf8_in_a_crawl(tmp_path: Path) -> None:
    text = GERMAN.replace("–", "-")
    mislabelled = response_record("http://latin.example.org/", html_page(text).encode("latin-1"), charset="utf-8")
    good = pages("good", 2)
    path = write_warc(tmp_path / "x.warc.gz", [good[0].record(), mislabelled, good[1].record()])
    out = ingest(tmp_path, [path])
    assert out.skips == {}
    assert out.urls == [good[0].url, "http://latin.example.org/", good[1].url]
    assert text in out.text_of("http://latin.example.org/")


def test_latin1_bytes_labelled_utf8_report_the_charset_used() -> None:
    result = extract(html_page(GERMAN.replace("–", "-")).encode("latin-1"), "utf-8")
    assert result.charset in {"cp1252", "windows-1252", "iso-8859-1", "iso8859-1", "latin-1"}


def test_stray_invalid_byte_in_a_utf8_page_stays_local() -> None:
    payload = html_page(GERMAN, "A stray \xff byte follows.").encode().replace(b"\xc3\xbf", b"\xff")
    result = extract(payload, "utf-8")
    assert GERMAN in result.text


def test_page_capped_inside_a_multibyte_character_stays_utf8(tmp_path: Path) -> None:
    cap = 2048
    body = html_page(*[GERMAN] * 40).encode()
    # shift the page so that the cap falls on the second byte of an "ü"
    at = next(i for i in range(cap - 200, cap) if body[i : i + 2] == "ü".encode())
    body = b" " * (cap - at - 1) + body
    assert body[cap - 1 : cap + 1] == "ü".encode()
    path = write_warc(tmp_path / "x.warc.gz", [response_record("http://cut.example.org/", body)])
    out = ingest(tmp_path, [path], max_record_bytes=cap)
    assert out.skips == {"capped_payload": 1}
    assert GERMAN in out.text_of("http://cut.example.org/")


@pytest.mark.parametrize("charset", ["utf-8", None, "windows-1252", "iso-8859-1"])
def test_random_binary_labelled_html_is_undecodable(charset: str | None) -> None:
    assert extract(random.Random(3).randbytes(20_000), charset).skip == "undecodable"


def test_random_binary_in_a_crawl_is_counted(tmp_path: Path) -> None:
    good = pages("good", 2)
    binary = response_record("http://bin.example.org/", random.Random(5).randbytes(30_000))
    path = write_warc(tmp_path / "x.warc.gz", [good[0].record(), binary, good[1].record()])
    out = ingest(tmp_path, [path])
    assert out.skips == {"undecodable": 1}
    assert out.urls == [p.url for p in good]


def test_replacement_characters_are_tolerated_up_to_the_ratio() -> None:
    words = "Ein ganz gewöhnlicher Satz mit vielen Wörtern darin. " * 20  # ~1,000 chars
    few = html_page(words + "\ufffd" * 5)  # about 0.5 %
    many = html_page(words + "\ufffd" * 60)  # about 6 %
    assert not extract(few.encode(), "utf-8").skip
    assert extract(many.encode(), "utf-8").skip == "undecodable"
    assert not extract(many.encode(), "utf-8", max_replacement_ratio=0.2).skip


def test_decode_returns_text_and_encoding() -> None:
    text, encoding = decode(GERMAN.encode("cp1252"), "windows-1252")
    assert text == GERMAN and codecs.lookup(encoding).name == "cp1252"
    text, encoding = decode(GERMAN.encode(), None)
    assert (text, encoding) == (GERMAN, "utf-8")


# -- extraction -------------------------------------------------------------------------------------
def test_main_text_is_extracted_without_markup() -> None:
    page = (
        "<html><head><title>T</title><style>p{color:red}</style><script>var x = 1;</script></head>"
        "<body><article><h1>Headline</h1><p>First &amp; <b>bold</b> paragraph.</p><p>Second one.</p>"
        "</article></body></html>"
    )
    result = extract(page.encode(), "utf-8")
    assert "First & bold paragraph." in result.text and "Second one." in result.text
    assert "<" not in result.text and "var x" not in result.text and "color:red" not in result.text
    assert result.doc_id == doc_id_of(result.text)


@pytest.mark.parametrize(
    "payload", [b"", b"   \n\t ", b"<html><body></body></html>", b"<html><script>only();</script></html>"]
)
def test_page_without_text_is_empty_text(payload: bytes) -> None:
    assert extract(payload, "utf-8").skip == "empty_text"


def test_min_text_chars() -> None:
    payload = html_page("Short.", title="T").encode()
    assert not extract(payload, "utf-8", min_text_chars=5).skip
    assert extract(payload, "utf-8", min_text_chars=500).skip == "empty_text"


def test_conversion_records_are_not_run_through_the_html_extractor() -> None:
    text = "WET text with <b>literal</b> angle brackets\nand a second line."
    result = extract(f"\n  {text}  \n".encode(), "utf-8", record_type="conversion")
    assert result.text == text
    assert result.doc_id == doc_id_of(text)


def test_extraction_over_its_time_limit_is_skipped() -> None:
    page = html_page(*[GERMAN] * 20_000).encode()  # ~2 MB of HTML
    assert extract(page, "utf-8", timeout_s=0.001).skip == "extract_timeout"
    assert not extract(page, "utf-8", timeout_s=30).skip  # and the alarm is gone afterwards


def test_extractor_error_is_that_pages_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = html_extract.EXTRACTORS["resiliparse"]

    def fragile(html: str, url: str) -> str:
        if "poison" in url:
            raise RuntimeError("extractor crashed")
        return real(html, url)

    monkeypatch.setitem(html_extract.EXTRACTORS, "resiliparse", fragile)
    good = pages("good", 2)
    poison = response_record("http://poison.example.org/", html_page("Anything at all."))
    path = write_warc(tmp_path / "x.warc.gz", [good[0].record(), poison, good[1].record()])
    out = ingest(tmp_path, [path])  # workers=1: the patched extractor runs in this process
    assert out.skips == {"extract_error": 1}
    assert out.urls == [p.url for p in good]


def test_trafilatura_extractor() -> None:
    text = "A paragraph of ordinary prose, long enough for a precise extractor to keep it as main text. " * 3
    result = extract(html_page(text.strip()).encode(), "utf-8", extractor="trafilatura")
    assert not result.skip
    assert text.strip() in result.text


def test_extract_batch_keeps_the_order() -> None:
    batch = [
        (html_page("one").encode(), "utf-8", "response", "http://a/1"),
        (b"", None, "response", "http://a/2"),
        (b"two", "utf-8", "conversion", "http://a/3"),
    ]
    results = extract_batch(batch, OPTIONS)
    assert [r.skip for r in results] == ["", "empty_text", ""]
    assert "one" in results[0].text and results[2].text == "two"


# -- doc ids ---------------------------------------------------------------------------------------
def test_doc_id_is_stable_across_runs_and_versions() -> None:
    assert doc_id_of("Hello World") == "e9a804b2e527fd3601d2ffc0bb023cd6"
    assert re.fullmatch(r"[0-9a-f]{32}", doc_id_of(GERMAN))


@pytest.mark.parametrize(
    "variant",
    ["Hello World", "hello world", "HELLO   WORLD", "  hello\n\n\tworld\r\n", "Ｈｅｌｌｏ\u00a0Ｗｏｒｌｄ"],
)
def test_doc_id_ignores_whitespace_case_and_width(variant: str) -> None:
    assert doc_id_of(variant) == doc_id_of("Hello World")


@pytest.mark.parametrize("other", ["Hello, World", "Hello Worlds", "HelloWorld", "Hallo Welt", ""])
def test_doc_id_differs_for_different_text(other: str) -> None:
    assert doc_id_of(other) != doc_id_of("Hello World")


def test_same_text_in_different_markup_gets_the_same_doc_id(tmp_path: Path) -> None:
    words = "Exactly the same words on two differently written pages."
    compact = f"<html><body><article><p>{words}</p></article></body></html>"
    airy = f"<html>\n<body>\n  <article>\n    <p>\n      {words.upper()}\n    </p>\n  </article>\n</body></html>"
    first, second = extract(compact.encode(), "utf-8"), extract(airy.encode(), "utf-8")
    assert first.doc_id == second.doc_id

    records = [response_record(f"http://{n}.example.org/", p) for n, p in (("a", compact), ("b", airy))]
    out = ingest(tmp_path, [write_warc(tmp_path / "x.warc.gz", records)])
    assert out.urls == ["http://a.example.org/"]
    assert out.skips == {"duplicate_text": 1}


def test_doc_id_is_the_same_for_a_page_read_twice(tmp_path: Path) -> None:
    record = warc_record(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + html_page(GERMAN).encode(),
                         url="http://twice.example.org/")  # fmt: skip
    one = ingest(tmp_path / "1", [write_warc(tmp_path / "a.warc.gz", [record])])
    two = ingest(tmp_path / "2", [write_warc(tmp_path / "b.warc.gz", [record])])
    assert one.frame["doc_id"].to_list() == two.frame["doc_id"].to_list()
    assert one.frame["doc_id"].item() == doc_id_of(one.frame["text"].item())
