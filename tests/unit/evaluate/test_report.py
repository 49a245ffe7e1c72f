"""The pipeline report: Markdown and standalone HTML renderings of the same sections, and the
matplotlib plots (real PNGs from small polars frames)."""

from __future__ import annotations

import base64
import io
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from resources.common.storage import ShardStore
from resources.common.versioning import OutputVersion
from resources.evaluate.report import (
    Plot,
    Section,
    funnel_plot,
    loss_plot,
    markdown_table,
    metrics_plot,
    removed_plot,
    render_html,
    render_markdown,
    tokens_plot,
)
from resources.evaluate.report_sections import rewriting_sections
from resources.rewrite.metrics import RecipeMetrics, RewriteMetrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = ["raw_documents", "filtered_documents", "deduped_documents"]


def png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
    with Image.open(io.BytesIO(png)) as image:
        return image.size


def assert_png(plot: Plot, name: str) -> None:
    assert isinstance(plot, Plot) and plot.name == name
    assert plot.png.startswith(PNG_SIGNATURE)
    width, height = png_size(plot.png)
    assert width > 100 and height > 100


# --------------------------------------------------------------------------- frames


def funnel_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "crawl_batch": ["2024-01", "2024-01", "2024-01", "2024-02", "2024-02"],
            "stage": [
                "raw_documents",
                "filtered_documents",
                "deduped_documents",
                "raw_documents",
                "filtered_documents",
            ],
            "documents": [1000, 600, 550, 800, 500],
        }
    )


def removed_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "stage": ["filtered_documents", "filtered_documents", "filtered_documents", "deduped_documents"],
            "rule": ["too_short", "language", "too_short", "minhash"],
            "crawl_batch": ["2024-01", "2024-01", "2024-02", "2024-02"],
            "removed": [300, 100, 250, 50],
        }
    )


def metrics_frame() -> pl.DataFrame:
    rows = []
    evaluations = [
        ("e1", "2024-05-01T10:00:00", "gen-0/step-000100"),
        ("e2", "2024-05-02T10:00:00", "gen-0/step-000200"),
        ("e3", "2024-05-03T10:00:00", "gen-1/step-000100"),
    ]
    for i, (evaluation_id, evaluated_at, checkpoint) in enumerate(evaluations):
        sets = ["held_out", "wikitext2_valid"] + (["new_set"] if i == 2 else [])
        for j, eval_set in enumerate(sets):
            rows.append(
                {
                    "evaluation_id": evaluation_id,
                    "evaluated_at": evaluated_at,
                    "checkpoint": checkpoint,
                    "eval_set": eval_set,
                    "bits_per_byte": 2.0 - 0.3 * i + 0.1 * j,
                    "unigram_bits_per_byte": 4.5 + 0.1 * j,
                }
            )
    # Newest first, as a history read back from storage need not be sorted.
    return pl.DataFrame(rows).reverse()


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def plot() -> Plot:
    return loss_plot({"gen-0": [5.0, 4.0, 3.5, 3.2], "gen-1": [3.4, 3.1, 3.0]})


def sections(plot: Plot) -> list[Section]:
    return [
        Section("Overview", text="Two crawl batches, *one* checkpoint.\n\nA sample: <script>alert('x')</script> & co."),
        Section("Training loss", plot=plot),
        Section(
            "Evaluation <latest>",
            columns=["eval set", "bits/byte", "note"],
            rows=[
                ["held_out", 1.23456789, "a|b"],
                ["wiki|text", 2, "first line\nsecond line"],
                ["<b>bold</b>", None, "x & y"],
            ],
        ),
    ]


def unescaped_pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


def test_markdown_references_png_files_next_to_it(plot: Plot) -> None:
    text = render_markdown("Pipeline report", sections(plot), inline_images=False)
    assert text.startswith("# Pipeline report\n\n## Overview\n\n")
    assert text.endswith("\n")
    assert "![loss_curves](loss_curves.png)" in text
    assert "data:image/png;base64," not in text
    assert text.index("## Overview") < text.index("## Training loss") < text.index("## Evaluation <latest>")


def test_markdown_inline_images_are_data_uris(plot: Plot) -> None:
    text = render_markdown("Pipeline report", sections(plot), inline_images=True)
    assert "loss_curves.png" not in text
    match = re.search(r"!\[loss_curves\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match is not None
    assert base64.b64decode(match.group(1), validate=True) == plot.png


def test_markdown_tables_escape_pipes_and_newlines(plot: Plot) -> None:
    text = render_markdown("Pipeline report", sections(plot), inline_images=False)
    table = text[text.index("| eval set") :].strip().splitlines()
    assert table[0] == "| eval set | bits/byte | note |"
    assert table[1] == "|---|---|---|"
    assert table[2] == "| held_out | 1.235 | a\\|b |"
    assert table[3] == "| wiki\\|text | 2 | first line second line |"
    assert table[4] == "| <b>bold</b> | None | x & y |"
    assert len(table) == 5, "a newline inside a cell must not start a new row"
    assert {unescaped_pipes(line) for line in table} == {4}, "every row has exactly the table's 3 columns"


def test_markdown_table_alone() -> None:
    assert markdown_table([], ["a", "b"]) == "| a | b |\n|---|---|"
    assert markdown_table([[0.000012345, 1e10, "x"]], ["f", "g", "s"]).splitlines()[2] == "| 1.234e-05 | 1e+10 | x |"


def test_markdown_table_headers_escape_pipes_too() -> None:
    """Column names come from frames (`funnel.columns`): a pipe in one must not add a column."""
    lines = markdown_table([[1, 2]], ["a|b", "c"]).splitlines()
    assert lines[0] == "| a\\|b | c |"
    assert {unescaped_pipes(line) for line in lines} == {3}


def test_markdown_sections_without_content() -> None:
    text = render_markdown("T", [Section("Empty"), Section("Only text", text="hello")], inline_images=True)
    assert text == "# T\n\n## Empty\n\n## Only text\n\nhello\n"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_a_standalone_escaped_document(plot: Plot) -> None:
    page = render_html("Report <2024> & more", sections(plot))
    assert page.lower().startswith("<!doctype html>")
    assert page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page
    assert "<title>Report &lt;2024&gt; &amp; more</title>" in page
    assert "<h1>Report &lt;2024&gt; &amp; more</h1>" in page

    # Nothing the report shows may become markup: no script, no bold tag from a table cell.
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co." in page
    assert "<b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<h2>Evaluation &lt;latest&gt;</h2>" in page

    parsed = _Collector()
    parsed.feed(page)
    assert "script" not in parsed.tags and "b" not in parsed.tags
    assert parsed.tags.count("p") == 2, "text paragraphs split on blank lines"
    assert parsed.tags.count("tr") == 4 and parsed.tags.count("th") == 3 and parsed.tags.count("td") == 9
    assert "link" not in parsed.tags, "standalone: no external stylesheet"
    (image,) = parsed.images
    assert image["alt"] == "loss_curves"
    source = image["src"] or ""
    assert source.startswith("data:image/png;base64,")
    assert base64.b64decode(source.removeprefix("data:image/png;base64,")) == plot.png
    assert "loss_curves.png" not in page
    text = "".join(parsed.text)
    assert "<script>alert('x')</script> & co." in text and "1.235" in text


def test_html_table_cells_show_the_value_not_markdown_escapes(plot: Plot) -> None:
    """A pipe is plain text in HTML: escaping it for Markdown shows a stray backslash."""
    page = render_html("Report", sections(plot))
    assert "<td>a|b</td>" in page and "<td>wiki|text</td>" in page
    assert "\\|" not in page


# --------------------------------------------------------------------------- plots


def test_funnel_plot() -> None:
    assert_png(funnel_plot(funnel_frame(), STAGES), "filter_funnel")
    # A stage no batch reached, and a batch missing a stage, still draw.
    assert_png(funnel_plot(funnel_frame(), [*STAGES, "never_documents"]), "filter_funnel")


def test_removed_plot() -> None:
    assert_png(removed_plot(removed_frame()), "removed_by_rule")
    one = removed_frame().head(1)
    assert_png(removed_plot(one), "removed_by_rule")


def test_removed_plot_grows_with_the_rules() -> None:
    few = png_size(removed_plot(removed_frame().head(1)).png)
    many = png_size(removed_plot(removed_frame()).png)
    assert many[1] > few[1], "one bar per (stage, rule): the figure gets taller"


def test_tokens_plot() -> None:
    sources = {
        "web": {"train_tokens": 120_000, "weight": 0.7},
        "rewritten": {"train_tokens": 30_000, "weight": 0.3},
        "empty": {},
    }
    assert_png(tokens_plot(sources), "tokens_by_source")


def test_loss_plot(plot: Plot) -> None:
    assert_png(plot, "loss_curves")
    assert_png(loss_plot({"only": [2.5]}), "loss_curves")


def test_metrics_plot_over_several_evaluations() -> None:
    frame = metrics_frame()
    assert set(frame.columns) == {
        "evaluation_id",
        "evaluated_at",
        "checkpoint",
        "eval_set",
        "bits_per_byte",
        "unigram_bits_per_byte",
    }
    assert_png(metrics_plot(frame), "eval_over_checkpoints")
    first = frame.filter(pl.col("evaluation_id") == "e1")
    assert_png(metrics_plot(first), "eval_over_checkpoints")


def test_metrics_plot_draws_the_reference_model_across() -> None:
    frame = metrics_frame()
    eval_set = frame.get_column("eval_set")[0]
    reference = pl.DataFrame({"eval_set": [eval_set], "bits_per_byte": [0.9], "model": ["SmolLM2-135M-Instruct"]})
    with_reference = metrics_plot(frame, reference)
    assert_png(with_reference, "eval_over_checkpoints")
    assert with_reference.png != metrics_plot(frame).png


def test_rewriting_sections_sum_every_crawl_batch(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path))
    batch = RecipeMetrics(generated=4, kept=3, removed=Counter({"rewrite_truncated": 1}), scored=3)
    batch.quality_sum, batch.source_quality_sum, batch.length_ratio_sum, batch.overlap_sum = 2.4, 1.5, 1.5, 0.9
    example = {"source_doc_id": "a", "source": "src | text", "rewrite": "new", "source_overlap": 0.3}
    example |= {"quality_score": 0.8, "source_quality_score": 0.5}
    for key in ("b1", "b2"):
        metrics = RewriteMetrics({"encyclopedic": batch}, {"encyclopedic": [{**example, "source_doc_id": key}]})
        manifest = OutputVersion("1").manifest("synthetic_documents", key, "run", stats={"model": "smol"})
        store.commit(replace(manifest, stats={"model": "smol", "metrics": metrics.to_dict()}))
    summary, examples = rewriting_sections(store, "synthetic_documents")
    assert "Rewritten by smol over 2 crawl batch(es)" in summary.text
    ((recipe, generated, kept, rate, removed, quality, source, ratio, overlap, copies),) = summary.rows
    assert (recipe, generated, kept, rate, removed) == ("encyclopedic", 8, 6, "0.75", "rewrite_truncated 2")
    assert (quality, source, ratio, overlap, copies) == ("0.800", "0.500", "0.50", "0.300", 0)
    assert [row[1] for row in examples.rows] == ["src | text", "src | text"]
    assert "src \\| text" in render_markdown("r", [summary, examples], inline_images=False)
    assert rewriting_sections(store, "nothing_here") == []


def test_plots_are_deterministic_and_thread_safe() -> None:
    """Bare Figures, no pyplot state: plots drawn in parallel threads equal those drawn alone."""
    draws = [
        lambda: funnel_plot(funnel_frame(), STAGES),
        lambda: removed_plot(removed_frame()),
        lambda: metrics_plot(metrics_frame()),
        lambda: loss_plot({"a": [3.0, 2.0, 1.5]}),
    ]
    alone = [draw().png for draw in draws]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda draw: draw().png, draws * 2))
    assert parallel == alone * 2
