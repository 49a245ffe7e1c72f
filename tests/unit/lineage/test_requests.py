"""Takedown request files: every line becomes a pattern or a counted refusal, whatever the bytes."""

from __future__ import annotations

import io

import pytest

from resources.lineage.requests import MAX_LINE_CHARS, Pattern, parse_line, parse_stream
from resources.lineage.takedown import header


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("https://a.example/page?id=3", Pattern("url", "https://a.example/page?id=3")),
        ("  https://a.example/page#section  ", Pattern("url", "https://a.example/page")),
        ("https://a.example/blog/*", Pattern("prefix", "https://a.example/blog/")),
        ("example.com", Pattern("domain", "example.com")),
        ("domain:WWW.Example.COM", Pattern("domain", "example.com")),
        ("", "empty"),
        ("   ", "empty"),
        ("# a comment", "comment"),
        ("not a url", "not_a_url"),
        ("ftp://a.example/file", "not_a_url"),
        ("https://exa mple.com/", "not_a_url"),
        ("http://[::1/", "not_a_url"),
        ("https://a.example:99999/", "not_a_url"),
        ("../../etc/passwd", "not_a_url"),
        ("localhost", "not_a_url"),
        ("https://a.example/" + "x" * MAX_LINE_CHARS, "too_long"),
        ("https://a.example/\x00", "not_a_url"),
    ],
)
def test_each_line_is_a_pattern_or_a_reason(line: str, expected: Pattern | str) -> None:
    assert parse_line(line) == expected


def test_a_file_with_bad_lines_keeps_the_good_ones_and_counts_the_rest() -> None:
    data = b"\n".join(
        [
            b"https://a.example/x",
            b"",
            b"# reason: owner asked",
            b"not a url",
            b"https://a.example/x",  # repeated in the file
            b"h" * (10 * 1024 * 1024),  # a 10 MB line
            b"\xff\xfe\xfd",
            b"https://a.example/quote'or'1'='1",  # kept as text: it only ever reaches SQL as a bound value
            b"b.example",
        ]
    )
    parsed = parse_stream(io.BytesIO(data))
    assert parsed.patterns == [
        Pattern("url", "https://a.example/x"),
        Pattern("url", "https://a.example/quote'or'1'='1"),
        Pattern("domain", "b.example"),
    ]
    assert dict(parsed.refused) == {
        "empty": 1,
        "comment": 1,
        "not_a_url": 1,
        "repeated": 1,
        "too_long": 1,
        "undecodable": 1,
    }
    assert all(len(example) < 200 for examples in parsed.examples.values() for example in examples)


def test_header_lines_name_reason_match_and_requester() -> None:
    data = b"# reason: site owner: asked twice\n# match: content\n# requested_by: legal\nhttps://a.example/\n"
    assert header(data) == {"reason": "site owner: asked twice", "match": "content", "requested_by": "legal"}
    assert header(b"https://a.example/\n") == {}
