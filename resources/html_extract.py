"""Charset decoding and main-text extraction, run in worker processes.

Kept free of Dagster and Polars imports so that spawned extraction workers start fast.
A per-document time limit (SIGALRM in the worker's main thread) stops one pathological
page from stalling a worker, a failure peers' users report with Trafilatura.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import unicodedata
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import bytes_to_str, detect_encoding



@dataclass(frozen=True, slots=True)
class ExtractOptions:
    extractor: str = "resiliparse"
    max_replacement_ratio: float = 0.02
    min_text_chars: int = 1
    timeout_s: float = 20.0


@dataclass(frozen=True, slots=True)
class Extracted:
    """Either `text` (with its doc_id and charset) or `skip`, the reason there is none."""

    text: str = ""
    doc_id: str = ""
    charset: str = ""
    skip: str = ""


def doc_id_of(text: str) -> str:
    """Hash of the normalized text: stable across runs, crawls and extractors' whitespace."""
    normalized = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.blake2b(normalized.encode(), digest_size=16).hexdigest()


def decode(payload: bytes, declared: str | None) -> tuple[str, str]:
    """Declared charset first, then the document's own hints, with UTF-8/cp1252 fallbacks."""
    encoding = declared or detect_encoding(payload)
    try:
        return bytes_to_str(payload, encoding, errors="replace"), encoding
    except LookupError:  # an unknown charset label in the HTTP header
        encoding = detect_encoding(payload)
        return bytes_to_str(payload, encoding, errors="replace"), encoding


def _resiliparse(html: str, url: str) -> str:
    return extract_plain_text(html, main_content=True, preserve_formatting=True, alt_texts=False, list_bullets=True)


def _trafilatura(html: str, url: str) -> str:
    import trafilatura

    return trafilatura.extract(html, url=url, favor_precision=True, include_comments=False) or ""


EXTRACTORS: dict[str, Callable[[str, str], str]] = {"resiliparse": _resiliparse, "trafilatura": _trafilatura}


class ExtractTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM works only in a process's main thread; elsewhere the limit is not enforced."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise ExtractTimeout

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def extract_one(payload: bytes, charset: str | None, record_type: str, url: str, options: ExtractOptions) -> Extracted:
    text, encoding = decode(payload, charset)
    # Replacement characters and NULs are what binary content turns into, whatever the charset.
    if text.count("\ufffd") + text.count("\x00") > options.max_replacement_ratio * max(len(text), 1):
        return Extracted(skip="undecodable")
    if record_type == "response":
        try:
            with _time_limit(options.timeout_s):
                text = EXTRACTORS[options.extractor](text, url)
        except ExtractTimeout:
            return Extracted(skip="extract_timeout")
        except Exception:  # a page the extractor cannot parse is that page's problem only
            return Extracted(skip="extract_error")
    text = text.strip()
    if len(text) < options.min_text_chars:
        return Extracted(skip="empty_text")
    return Extracted(text=text, doc_id=doc_id_of(text), charset=encoding)


def extract_batch(batch: list[tuple[bytes, str | None, str, str]], options: ExtractOptions) -> list[Extracted]:
    """Worker entry point: (payload, charset, record_type, url) tuples in, results in order."""
    return [extract_one(payload, charset, kind, url, options) for payload, charset, kind, url in batch]
