"""Charset decoding and main-text extraction, run in worker processes.

Kept free of Dagster imports so that spawned extraction workers start fast.
A per-document time limit (SIGALRM in the worker's main thread) stops one pathological
page from stalling a worker, a failure peers' users report with Trafilatura.
"""

from __future__ import annotations

import codecs
import re
import signal
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.encoding import detect_encoding

from resources.common.schemas import doc_id_of


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


def _codec(label: str | None) -> str | None:
    try:
        return codecs.lookup(label).name if label else None
    except LookupError:  # an unknown charset label in the HTTP header
        return None


# Where "nearly every byte decodes" is evidence for the charset (unlike single-byte charsets).
_MULTI_BYTE = {"utf-8", "shift_jis", "cp932", "euc_jp", "gb18030", "gbk", "gb2312", "big5", "euc_kr", "cp949"}


def decode(payload: bytes, declared: str | None) -> tuple[str, str]:
    """The declared charset, the document's own hints, then UTF-8, else cp1252; returns the codec
    that actually decoded the page.

    A charset that decodes the page exactly wins. Failing that, a multi-byte charset that is right
    but for a few bytes (a stray byte, a character cut by the record cap) is kept, with U+FFFD for
    those bytes, rather than turning the whole page into cp1252 mojibake."""
    names: list[str] = []
    for label in (declared, "", "utf-8"):  # "": what the document says of itself, looked up lazily
        name = _codec(label if label else detect_encoding(payload))
        if not name or name in names:
            continue
        names.append(name)
        try:
            return payload.decode(name).removeprefix("\ufeff"), name
        except UnicodeDecodeError:
            continue
    for name in names:
        if name in _MULTI_BYTE:
            text = payload.decode(name, errors="replace")
            bad = text.count("\ufffd")
            good_non_ascii = len(text) - len(text.encode("ascii", "ignore")) - bad
            if bad <= max(1, len(text) // 1000) and bad < good_non_ascii:
                return text.removeprefix("\ufeff"), name
    return payload.decode("cp1252", errors="replace"), "cp1252"


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


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_SAMPLE = 8_192


def _undecodable(text: str, ratio: float) -> bool:
    """Binary content becomes U+FFFD under a multi-byte charset and C0 control characters under a
    single-byte one (where every byte decodes). U+FFFD is counted in the whole text (str.count is
    cheap), control characters in a bounded sample (a regex over megabytes is not)."""
    if text.count("\ufffd") > ratio * max(len(text), 1):
        return True
    sample = text[:_CONTROL_SAMPLE]
    return len(_CONTROL.findall(sample)) > ratio * max(len(sample), 1)


def extract_one(payload: bytes, charset: str | None, record_type: str, url: str, options: ExtractOptions) -> Extracted:
    text, encoding = decode(payload, charset)
    if _undecodable(text, options.max_replacement_ratio):
        return Extracted(skip="undecodable")
    if record_type == "response":
        try:
            with _time_limit(options.timeout_s):
                text = EXTRACTORS[options.extractor](text, url)
        except ExtractTimeout:
            return Extracted(skip="extract_timeout")
        except ImportError:  # a broken install is everyone's problem: fail loudly, not page by page
            raise
        except Exception:  # a page the extractor cannot parse is that page's problem only
            return Extracted(skip="extract_error")
    text = text.strip()
    if len(text) < options.min_text_chars:
        return Extracted(skip="empty_text")
    return Extracted(text=text, doc_id=doc_id_of(text), charset=encoding)


def extract_batch(batch: list[tuple[bytes, str | None, str, str]], options: ExtractOptions) -> list[Extracted]:
    """Worker entry point: (payload, charset, record_type, url) tuples in, results in order."""
    return [extract_one(payload, charset, kind, url, options) for payload, charset, kind, url in batch]
