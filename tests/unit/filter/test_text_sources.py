"""Reading reference and evaluation text files: WikiText sections without their markup, plain
text, jsonl (compressed too), odd encodings, and the errors that name a bad file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from resources.filter.text_sources import TextSourceError, read_documents
from tests.conftest import SHARED_CORPORA


def test_wikitext_is_read_as_sections_without_its_markup() -> None:
    wiki_docs = read_documents(str(SHARED_CORPORA / "wikitext-2" / "valid.txt"))
    assert len(wiki_docs) > 500
    assert wiki_docs[0].startswith("Homarus gammarus\nHomarus gammarus , known as the European lobster")
    text = "\n".join(wiki_docs)
    assert "<unk>" not in text
    assert " @-@ " not in text and " @,@ " not in text
    assert not any(line.startswith(" = ") for doc in wiki_docs for line in doc.splitlines())


def test_plain_text_is_split_at_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "ref.txt"
    path.write_text("First line\nsame paragraph\n\n \t\n\nSecond paragraph\n\n")
    assert read_documents(str(path)) == ["First line\nsame paragraph", "Second paragraph"]


def test_jsonl_text_field_and_compression(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl.gz"
    records = [{"text": "one document", "id": 1}, {"text": "another\ndocument"}]
    path.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n\n").encode()))
    assert read_documents(str(path)) == ["one document", "another\ndocument"]


def test_jsonl_without_text_field_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ref.jsonl"
    path.write_text('{"text": "fine"}\n{"question": "no text here"}\n')
    with pytest.raises(TextSourceError, match=r"ref\.jsonl line 2: no string field 'text'"):
        read_documents(str(path))
    path.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(TextSourceError, match=r"ref\.jsonl line 2: not JSON"):
        read_documents(str(path))


def test_latin1_reference_file_is_decoded(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Crème brûlée à la française\n\nÜber Bäume".encode("latin-1"))
    assert read_documents(str(path)) == ["Crème brûlée à la française", "Über Bäume"]


def test_missing_or_empty_reference_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(TextSourceError, match=rf"reference file not found: {missing}"):
        read_documents(str(missing))
    empty = tmp_path / "empty.txt"
    for content in (b"", b"\n \n\t\n"):
        empty.write_bytes(content)
        with pytest.raises(TextSourceError, match=rf"reference file is empty \(no documents\): {empty}"):
            read_documents(str(empty))
