"""Audit answers as text for people (the CLI's default; `--json` prints the answers as they are).
Plain string formatting: nothing here may slow the CLI's start-up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]
CONFIG_SHOWN = ("preset", "max_steps", "seq_len", "micro_batch_size", "lr", "schedule", "seed", "continue_training")


def table(columns: Sequence[str], records: Sequence[Sequence[object]], indent: str = "  ") -> str:
    cells = [[_cell(v) for v in row] for row in records]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(indent + line for line in lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def as_json(answer: Row) -> str:
    return json.dumps(answer, indent=2, default=str)


def _short(version: str | None) -> str:
    return (version or "-")[:12]


def checkpoint_text(answer: Row) -> str:
    model, config = answer["model"], answer["config"]
    parent = answer["continued_from"]
    lines = [
        f"checkpoint {answer['checkpoint']}  (generation {answer['generation']}, step {answer['step']},"
        f" {answer['created_at']})",
        f"  continued from: {parent}" if parent else "  trained from scratch",
        f"  model: {model.get('architecture', '?')} {model.get('preset', '')}, {_cell(model.get('params'))} parameters,"
        f" vocabulary {_cell(model.get('vocab_size'))}, context {_cell(model.get('seq_len'))}",
        f"  tokens seen: {_cell(answer['tokens_seen'])} (with its parents: {_cell(answer['total_tokens_seen'])}),"
        f" final loss {_cell(answer['final_loss'])}",
        "  config: " + ", ".join(f"{k}={config[k]}" for k in CONFIG_SHOWN if k in config),
        "",
        "sources (train split):",
        table(
            ["source", "asset", "crawl batches", "token files", "documents", "tokens"],
            [
                [s["source"], s["asset"], s["crawl_batches"], s["files"], s["documents"], s["tokens"]]
                for s in answer["sources"]
            ],
        ),
    ]
    if answer["synthetic_by_recipe"]:
        lines += [
            "synthetic documents by recipe:",
            table(
                ["recipe", "model", "documents", "tokens"],
                [[r["recipe"], r["model"], r["documents"], r["tokens"]] for r in answer["synthetic_by_recipe"]],
            ),
        ]
    lines += [
        "crawls:",
        table(
            ["crawl", "crawl batches", "WARC files"],
            [[c["crawl"], c["crawl_batches"], c["warc_files"]] for c in answer["crawls"]],
        ),
        "crawl batches and their WARC files:",
    ]
    for batch in answer["crawl_batches"]:
        lines.append(f"  {batch['crawl_batch']}  ({batch['crawl']})")
        lines += [f"    {path}" for path in batch["warc_files"]]
    lines.append("input partitions: data version / code version, and the stages they were built from:")
    for p in answer["partitions"]:
        chain = " <- ".join(f"{c['asset']} {_short(c['data_version'])}/{c['code_version']}" for c in p["chain"][1:])
        head = p["chain"][0]["code_version"] if p["chain"] else "?"
        lines.append(f"  {p['asset']}[{p['crawl_batch']}] {_short(p['data_version'])}/{head}")
        if chain:
            lines.append(f"    <- {chain}")
    if answer["withdrawn_by"]:
        lines.append("trained on documents taken down since:")
        lines += [
            f"  {r['request_id']} ({r['created_at']}, match {r['match']}): {r['reason']!r}, {r['documents']} documents"
            for r in answer["withdrawn_by"]
        ]
    return "\n".join(lines)


def _document_text(doc: Row) -> list[str]:
    origin = doc["provenance"] or {}
    lines = [f"document {doc['doc_id']}"]
    if origin.get("warc_path"):
        lines += [
            f"  from: {origin.get('url')}  crawl {origin.get('crawl')}, batch {origin.get('crawl_batch')}",
            f"        WARC {origin.get('warc_path')} record {origin.get('warc_record_id')},"
            f" fetched {origin.get('fetch_time')}",
        ]
    elif not doc["derived_from"]:  # a rewrite the post-filter dropped: the catalog keeps its removal only
        lines.append("  generated, not crawled: no WARC record of its own")
    for source in doc["derived_from"]:
        lines.append(f"  a rewrite of {source['source_doc_id']} (recipe {source['recipe']}, model {source['model']})")
    lines += [
        "  stages:",
        table(
            ["stage", "crawl batch", "status", "rule", "detail", "duplicate of"],
            [
                [s["asset"], s["crawl_batch"], s["status"], s.get("rule"), s.get("detail"), s.get("duplicate_of")]
                for s in doc["stages"]
            ],
            indent="    ",
        ),
    ]
    if doc["duplicates_of_it"]:
        lines += [
            "  dropped as duplicates of it:",
            table(
                ["doc id", "url", "crawl batch", "rule", "detail"],
                [[d["doc_id"], d["url"], d["crawl_batch"], d["rule"], d["detail"]] for d in doc["duplicates_of_it"]],
                indent="    ",
            ),
        ]
    if doc["synthetic"]:
        lines += [
            "  synthetic documents derived from it:",
            table(
                ["doc id", "recipe", "model", "crawl batch"],
                [[s["doc_id"], s["recipe"], s["model"], s["crawl_batch"]] for s in doc["synthetic"]],
                indent="    ",
            ),
        ]
    if doc["token_shards"]:
        lines += [
            "  token shards:",
            table(
                ["shard", "doc id", "offset", "length", "split", "data version", "current"],
                [
                    [
                        f"{t['asset']}[{t['crawl_batch']}]/{t['file']}",
                        t["doc_id"][:12],
                        t["offset"],
                        t["length"],
                        t["split"],
                        _short(t["data_version"]),
                        t["current"],
                    ]
                    for t in doc["token_shards"]
                ],
                indent="    ",
            ),
        ]
    lines.append("  trained on by:" if doc["checkpoints"] else "  trained on by: no checkpoint")
    lines += [
        f"    {c['checkpoint']} (generation {c['generation']}, step {c['step']}, {c['created_at']})"
        + (" inherited from its parent generation" if c["inherited"] else "")
        for c in doc["checkpoints"]
    ]
    lines += [
        f"  taken down by {t['request_id']} ({t['created_at']}, by {t['requested_by']}, match {t['match']}):"
        f" {t['reason']!r}"
        for t in doc["takedowns"]
    ]
    return lines


def url_text(answer: Row) -> str:
    lines = [f"{answer['url']}: {len(answer['documents'])} document(s)"]
    for t in answer["takedowns"]:
        lines.append(
            f"  taken down by {t['request_id']} ({t['created_at']}, by {t['requested_by']}, {t['kind']} {t['value']},"
            f" match {t['match']}): {t['reason']!r}"
        )
    for doc in answer["documents"]:
        lines += ["", *_document_text(doc)]
    if answer["documents_not_shown"]:
        lines.append(f"... and {answer['documents_not_shown']} more documents (see --json)")
    return "\n".join(lines)


def doc_text(answer: Row) -> str:
    return "\n".join(_document_text(answer))


def diff_text(answer: Row) -> str:
    a, b = answer["from"], answer["to"]
    lines = [
        f"from {a['checkpoint']} (generation {a['generation']}) to {b['checkpoint']} (generation {b['generation']})",
        table(
            ["source", "+batches", "-batches", "+documents", "-documents", "+tokens", "-tokens"],
            [
                [
                    s["source"],
                    s["batches_added"],
                    s["batches_removed"],
                    s["documents_added"],
                    s["documents_removed"],
                    s["tokens_added"],
                    s["tokens_removed"],
                ]
                for s in answer["sources"]
            ],
        ),
    ]
    if answer["versions_moved"]:
        lines += [
            "data versions that moved:",
            table(
                ["partition", "from", "to", "+documents", "-documents"],
                [
                    [
                        f"{m['asset']}[{m['crawl_batch']}]",
                        ",".join(_short(v) for v in m["from"]),
                        ",".join(_short(v) for v in m["to"]),
                        m["documents_added"],
                        m["documents_removed"],
                    ]
                    for m in answer["versions_moved"]
                ],
            ),
        ]
    return "\n".join(lines)


def submitted_text(answer: Row) -> str:
    lines = []
    if answer["recorded"]:
        lines.append(f"takedown request {answer['request_id']} recorded: {answer['patterns']} pattern(s)")
        lines.append(
            f"  hits {answer['documents']} document(s) in {len(answer['crawl_batches'])} crawl batch(es)"
            + (f": {', '.join(answer['crawl_batches'])}" if answer["crawl_batches"] else "")
        )
        if answer["content_matches"]:
            lines.append(
                "  content matched: " + ", ".join(f"{k} {v}" for k, v in sorted(answer["content_matches"].items()))
            )
    else:
        lines.append("nothing recorded: no new pattern in the request")
    for request_id, values in answer["already_requested"].items():
        lines.append(f"  already requested by {request_id}: {len(values)} pattern(s)")
    if answer["refused"]:
        lines.append("  lines not used: " + ", ".join(f"{k} {v}" for k, v in sorted(answer["refused"].items())))
    return "\n".join(lines)
