"""Main-text extraction quality against the snippets in evaldata.json.

Each evaluated page names snippets a good extraction contains (`with`) and boilerplate it
must not contain (`without`). Kept apart from bench/ingest.py so that the reference
and our engine are scored by exactly one piece of code, and tests can reuse it.
Scoring follows Trafilatura's own evaluation: a page with no output misses all its
`with` snippets and contains none of its `without` snippets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path


def normalize(text: str) -> str:
    """Whitespace differs between extractors (newlines, nbsp, indentation), content does not."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Quality:
    pages: int  # evaluated pages
    pages_with_output: int
    with_total: int
    with_found: int  # over all evaluated pages
    without_total: int  # over pages with output only
    without_absent: int
    without_present: int  # boilerplate snippets found (over all pages; 0 for pages with no output)

    @property
    def with_share(self) -> float:
        """Recall: share of the wanted snippets that made it into the text."""
        return self.with_found / self.with_total if self.with_total else 0.0

    @property
    def without_share(self) -> float:
        """Cleanliness: share of the boilerplate snippets kept out, on pages that have output."""
        return self.without_absent / self.without_total if self.without_total else 0.0

    @property
    def precision(self) -> float:
        found = self.with_found + self.without_present
        return self.with_found / found if found else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.with_share
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "with_share": self.with_share,
            "without_share": self.without_share,
            "precision": self.precision,
            "f1": self.f1,
        }


def load_evaldata(path: Path) -> dict[str, dict[str, list[str]]]:
    """URL -> {"with": [...], "without": [...]}, snippets already whitespace-normalized.

    Some keys carry a trailing space that the WARC-Target-URI of their record does not."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {
        url.strip(): {key: [normalize(s) for s in entry.get(key, []) if normalize(s)] for key in ("with", "without")}
        for url, entry in raw.items()
    }


def score(texts: Mapping[str, str], evaldata: Mapping[str, Mapping[str, list[str]]]) -> Quality:
    """Score extracted texts (URL -> text) against every page in the evaluation set."""
    pages_with_output = with_total = with_found = without_total = without_absent = without_present = 0
    for url, entry in evaldata.items():
        text = normalize(texts.get(url, ""))
        with_total += len(entry["with"])
        if not text:
            continue
        pages_with_output += 1
        with_found += sum(snippet in text for snippet in entry["with"])
        present = sum(snippet in text for snippet in entry["without"])
        without_total += len(entry["without"])
        without_present += present
        without_absent += len(entry["without"]) - present
    return Quality(
        pages=len(evaldata),
        pages_with_output=pages_with_output,
        with_total=with_total,
        with_found=with_found,
        without_total=without_total,
        without_absent=without_absent,
        without_present=without_present,
    )
