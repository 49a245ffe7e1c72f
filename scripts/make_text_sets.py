"""Write the small text sets shipped for the demo, from ../shared/corpora/wikitext-2/valid.txt:
disjoint article sets, so the quality classifier's reference text is never the evaluation text.

    data/reference/wikitext2_reference.txt   articles 0, 2, 4, ... (positives for the quality classifier)
    data/eval/wikitext2_valid_small.txt      articles 1, 3, 5, ... (decontamination and evaluation)

Each is capped at about 200 KB; same bytes every run.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT.parent / "shared" / "corpora" / "wikitext-2" / "valid.txt"
CAP_BYTES = 200_000
_ARTICLE = re.compile(r"^ = [^=].* = $", re.M)


def articles(text: str) -> list[str]:
    starts = [m.start() for m in _ARTICLE.finditer(text)]
    return [text[a:b].strip("\n") + "\n" for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]


def write(path: Path, chosen: list[str]) -> None:
    out, size = [], 0
    for article in chosen:
        if size + len(article.encode()) > CAP_BYTES and out:
            break
        out.append(article)
        size += len(article.encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out))
    print(f"{path.relative_to(ROOT)}: {len(out)} articles, {size} bytes")


def main() -> None:
    all_articles = articles(SOURCE.read_text(encoding="utf-8"))
    write(ROOT / "data" / "reference" / "wikitext2_reference.txt", all_articles[0::2])
    write(ROOT / "data" / "eval" / "wikitext2_valid_small.txt", all_articles[1::2])


if __name__ == "__main__":
    main()
