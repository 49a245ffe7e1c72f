"""Reading reference and evaluation text files into documents: the quality classifier's positives,
the decontamination sets, the evaluation sets.

Files come in whatever encoding a person exported them with (a BOM, UTF-16 from Windows tools,
cp1252), as jsonl, as WikiText (whose headings and escapes must not reach a model as "text"),
or as plain text; and a missing, empty or malformed file is a `TextSourceError` that names the
file's role ("eval set 'wikitext'"), not a silent empty set.
"""

from __future__ import annotations

import codecs
import json
import re

import fsspec
from fsspec.utils import infer_compression


class TextSourceError(ValueError):
    """A reference or evaluation text file is missing, empty or malformed."""


# WikiText headings: " = Title = ", " = = Section = = ", ...
_WIKITEXT_HEADING = re.compile(r"^ *(=(?: =)*) (.+?) \1 *$")
# WikiText's escapes inside numbers and compounds ("1 @,@ 000", "state @-@ of"), and its OOV marker.
_WIKITEXT_ESCAPE = re.compile(r" @([-,.])@ ")
_WIKITEXT_UNK = re.compile(r"<unk> ?")
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


_BOMS = (  # UTF-32 first: its little-endian BOM begins with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def detect_encoding(data: bytes) -> str:
    """A byte-order mark decides; else UTF-16 without one when every other byte is NUL (text
    exported from Windows tools); else UTF-8 when it decodes; else cp1252, else latin-1, which
    decodes any byte, so an odd single-byte encoding costs accents, never a crash."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return encoding
    sample = data[:4096]
    if len(sample) >= 4 and len(sample) % 2 == 0:
        if sample[1::2].count(0) > 0.9 * len(sample) / 2:
            return "utf-16-le"
        if sample[0::2].count(0) > 0.9 * len(sample) / 2:
            return "utf-16-be"
    for encoding in ("utf-8", "cp1252"):
        try:
            data.decode(encoding)
            return encoding
        except UnicodeDecodeError:
            continue
    return "latin-1"


def load_text(path: str, *, what: str = "reference file", encoding: str | None = None) -> tuple[str, str]:
    """A text file's content and the encoding it was read with (`encoding`, or detected).
    Local path or fsspec URL; .gz, .bz2, .xz are read decompressed."""
    try:
        with fsspec.open(path, "rb", compression="infer") as stream:
            data = stream.read()
    except FileNotFoundError as exc:
        raise TextSourceError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise TextSourceError(f"{what} cannot be read: {path}: {exc}") from exc
    encoding = encoding or detect_encoding(data)
    try:
        return data.decode(encoding), encoding
    except (UnicodeDecodeError, LookupError) as exc:
        raise TextSourceError(f"{what} {path} cannot be decoded as {encoding}: {exc}") from exc


def read_documents(path: str, *, what: str = "reference file") -> list[str]:
    """The documents of a text or jsonl file (see `load_text`).

    - `*.jsonl` / `*.ndjson`: one JSON object per line, its `text` field a document.
    - WikiText (lines like ` = Title = `): one document per section, its heading as the first
      line; `@-@`-style escapes are undone and `<unk>` markers dropped, so the model does not
      learn WikiText's markup as "quality".
    - any other text: documents separated by blank lines.

    Files are read whole: reference and evaluation sets are small.
    """
    text, _ = load_text(path, what=what)
    return split_documents(text, path, what=what)


def split_documents(text: str, path: str, *, what: str = "reference file") -> list[str]:
    name = path.rsplit(".", 1)[0] if infer_compression(path) else path
    documents = _jsonl_documents(text, path, what) if name.endswith(_JSONL_SUFFIXES) else _text_documents(text)
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise TextSourceError(f"{what} is empty (no documents): {path}")
    return documents


def _jsonl_documents(text: str, path: str, what: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{what} {path} line {number}: not JSON ({exc})") from exc
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise TextSourceError(f"{what} {path} line {number}: no string field 'text'")
        documents.append(value)
    return documents


def _text_documents(text: str) -> list[str]:
    lines = text.splitlines()
    if any(_WIKITEXT_HEADING.match(line) for line in lines):
        return _wikitext_sections(lines)
    return [block.strip() for block in re.split(r"\n[ \t]*\n", "\n".join(lines))]


def _wikitext_sections(lines: list[str]) -> list[str]:
    """One document per section; a heading directly followed by a subheading has no body
    and yields none."""
    documents: list[str] = []
    heading: list[str] = []  # empty before the first heading
    body: list[str] = []
    for line in lines:
        match = _WIKITEXT_HEADING.match(line)
        if match:
            if body:
                documents.append("\n".join(heading + body))
            heading, body = [_unescape_wikitext(match.group(2))], []
        elif line.strip():
            body.append(_unescape_wikitext(line))
    if body:
        documents.append("\n".join(heading + body))
    return documents


def _unescape_wikitext(line: str) -> str:
    return _WIKITEXT_UNK.sub("", _WIKITEXT_ESCAPE.sub(r"\1", line)).strip()
