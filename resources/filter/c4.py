"""C4's line filters (Raffel et al. 2020), as datatrove's C4QualityFilter applies them in line mode.

Removal keys (datatrove's names): `c4_lorem_ipsum`, `c4_curly_bracket`, `c4_too_few_sentences`.
"""

from __future__ import annotations

import re

from resources.filter.rules import Finding, Rule, RuleSettings
from resources.filter.text_units import DocView, count_sentences, split_words


class C4Settings(RuleSettings):
    """datatrove's defaults; None turns a check off."""

    remove_citations: bool = True
    filter_no_terminal_punct: bool = True
    min_num_sentences: int | None = 5
    min_words_per_line: int | None = 3
    max_word_length: int | None = 1000
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_C4_LINE_ENDS = (".", "?", "!", '"', "'")
_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")


class C4Lines(Rule):
    """Keeps only the lines that look like prose (this rule edits the text), then drops documents
    left with too few sentences, counted only until there are enough."""

    name = "c4"
    family = "c4"

    def __init__(self, settings: C4Settings | None = None) -> None:
        self.settings = settings or C4Settings()

    def check(self, doc: DocView) -> Finding | None:
        s = self.settings
        kept: list[str] = []
        needed = s.min_num_sentences or 0
        sentences = 0
        for raw in doc.text.splitlines():
            line = raw.strip()
            words = line.split()
            if (
                s.max_word_length is not None
                and len(line) > s.max_word_length
                and any(len(word) > s.max_word_length for word in words)
            ):
                continue
            if s.remove_citations:
                line = _CITATION.sub("", line)
            if s.filter_no_terminal_punct and (not line.endswith(_C4_LINE_ENDS) or line.endswith("...")):
                continue
            if s.min_words_per_line is not None and len(words) < s.min_words_per_line:
                continue
            lower = line.lower()
            if s.filter_lorem_ipsum and "lorem ipsum" in lower:
                return "lorem_ipsum", "lorem_ipsum"
            if s.filter_javascript and "javascript" in lower:
                continue
            if s.filter_curly_bracket and "{" in line:
                return "curly_bracket", "curly_bracket"
            if s.filter_policy and any(phrase in lower for phrase in _POLICY_PHRASES):
                continue
            if sentences < needed:
                sentences += count_sentences(split_words(line), stop_at=needed - sentences)
            kept.append(line)
        if sentences < needed:
            return "too_few_sentences", f"sentences={sentences}<{needed}"
        doc.replace_text("\n".join(kept).strip())
        return None
