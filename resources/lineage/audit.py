"""Lineage audits: SQL over the catalog from a checkpoint down to WARC records, and from a URL or a
document up to every checkpoint that trained on it.

- `checkpoint_lineage`: crawls, crawl batches and WARC files; documents and tokens per source
  (synthetic by recipe); the data and code version of every input partition and of the stages
  behind it; the training config; the generation it continued from; takedowns that withdrew
  documents it trained on.
- `url_lineage` / `doc_lineage`: every stage a document passed or left (rule, detail,
  `duplicate_of`), the documents dropped as duplicates of it, synthetic documents derived from
  it, the token shards holding it (offset, length, split) and every checkpoint that trained on
  them; takedown requests that name it.
- `checkpoint_diff`: what changed between two checkpoints' data.

Imports nothing but DuckDB (see catalog_file.py): an audit from the shell answers in well under
a second on a catalog of 10 M documents (bench/lineage.py). Every lookup of a URL or doc id goes
through an indexed key column; the strings themselves are bound parameters.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import duckdb

from resources.common.catalog_file import keyed, open_catalog

# The order stages are listed in; stages not named here follow, by name.
STAGE_ORDER = (
    "raw_documents",
    "filtered_documents",
    "scored_documents",
    "deduplicated_documents",
    "synthetic_documents",
)
MAX_DOCUMENTS = 100  # documents of one URL audited in full
TAKEDOWN_RULE_PREFIX = "takedown_"


class NotFound(LookupError):
    """An unknown checkpoint, URL or document (or no catalog at all): the CLI prints the message
    and exits with status 1."""


Row = dict[str, Any]


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] = ()) -> list[Row]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]


def connect(path: str) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """The catalog, read-only; NotFound when there is none (never an empty new file)."""
    if not os.path.exists(path):
        raise NotFound(f"no lineage catalog at {path}: run the pipeline, or `crawl2ckpt rebuild-catalog`")
    return open_catalog(path, read_only=True)


def stage_rank(asset: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(asset) if asset in STAGE_ORDER else len(STAGE_ORDER), asset)


# -- checkpoints -------------------------------------------------------------------------
# The checkpoint the asset materialized last (trained last, or an earlier generation made current again).
LATEST_CHECKPOINT = "SELECT checkpoint FROM checkpoint_recency ORDER BY current_at DESC, checkpoint DESC LIMIT 1"


def resolve_checkpoint(con: duckdb.DuckDBPyConnection, ref: str | None) -> str:
    """A checkpoint's name from `run-<hash>/step-NNNNNN`, `run-<hash>/N`, `run-<hash>` (its last
    step) or any path ending in one of those; the latest checkpoint when `ref` is None."""
    if ref is None:
        found = rows(con, LATEST_CHECKPOINT)
        if not found:
            raise NotFound("the catalog knows no checkpoint yet: materialize `checkpoint` first")
        return found[0]["checkpoint"]
    parts = [p for p in ref.strip().replace("\\", "/").split("/") if p]
    last = parts[-1] if parts else ""
    if last.isdigit() and len(parts) >= 2:
        found = rows(con, "SELECT checkpoint FROM checkpoints WHERE run = ? AND step = ?", [parts[-2], int(last)])
    elif last.startswith("step-") and len(parts) >= 2:
        found = rows(con, "SELECT checkpoint FROM checkpoints WHERE checkpoint = ?", [f"{parts[-2]}/{last}"])
    else:
        found = rows(con, "SELECT checkpoint FROM checkpoints WHERE run = ? ORDER BY step DESC LIMIT 1", [last])
    if not found:
        known = [r["checkpoint"] for r in rows(con, "SELECT checkpoint FROM checkpoints ORDER BY created_at DESC")]
        hint = f"; known: {', '.join(known[:5])}{' ...' if len(known) > 5 else ''}" if known else ""
        raise NotFound(f"no checkpoint {ref!r} in the catalog{hint}")
    return found[0]["checkpoint"]


def generations(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Run -> generation number (1 for the oldest run)."""
    found = rows(con, "SELECT run FROM checkpoints GROUP BY run ORDER BY min(created_at), run")
    return {r["run"]: number for number, r in enumerate(found, start=1)}


def _inputs(con: duckdb.DuckDBPyConnection, checkpoint: str) -> list[Row]:
    """The token shard files a checkpoint trained on, with their document and token counts."""
    found = rows(
        con,
        "SELECT i.source, i.asset, i.crawl_batch, i.file, i.data_version, i.inherited, f.documents,"
        " f.train_documents, coalesce(i.train_tokens, f.train_tokens) AS train_tokens"
        " FROM checkpoint_inputs i LEFT JOIN token_files f USING (asset, crawl_batch, file, data_version)"
        " WHERE i.checkpoint = ? ORDER BY i.asset, i.crawl_batch, i.file",
        [checkpoint],
    )
    source_of = {r["asset"]: r["source"] for r in found if r["source"]}
    for r in found:  # an inherited shard's source: what this or its parent generation called the asset
        r["source"] = r["source"] or source_of.get(r["asset"], r["asset"])
    return found


def _version_chains(con: duckdb.DuckDBPyConnection, partitions: set[tuple[str, str, str]]) -> dict[tuple, list[Row]]:
    """For each (asset, crawl batch, data version): that materialization and the ones it was
    built from, following the manifests' inputs within the crawl batch, newest stage first."""
    batches = sorted({batch for _, batch, _ in partitions})
    known: dict[tuple[str, str, str], Row] = {}
    for r in rows(
        con,
        "SELECT asset, crawl_batch, data_version, code_version, inputs FROM materializations"
        " WHERE list_contains(?, crawl_batch) ORDER BY created_at",
        [batches],
    ):
        known[(r["asset"], r["crawl_batch"], r["data_version"])] = r
    chains = {}
    for partition in partitions:
        chain, current = [], known.get(partition)
        while current is not None and len(chain) < 20:
            chain.append({k: current[k] for k in ("asset", "data_version", "code_version")})
            inputs = json.loads(current["inputs"] or "{}")
            suffix = f"[{current['crawl_batch']}]"
            upstream = [(name[: -len(suffix)], v) for name, v in inputs.items() if name.endswith(suffix)]
            current = known.get((upstream[0][0], current["crawl_batch"], upstream[0][1])) if upstream else None
        chains[partition] = chain
    return chains


def _synthetic_by_recipe(con: duckdb.DuckDBPyConnection, checkpoint: str) -> list[Row]:
    return rows(
        con,
        "SELECT s.recipe, s.model, count(*) AS documents, sum(t.length + 1) AS tokens"
        " FROM (SELECT DISTINCT asset, crawl_batch, file, data_version FROM checkpoint_inputs WHERE checkpoint = ?) i"
        " JOIN token_index t USING (asset, crawl_batch, file, data_version)"
        " JOIN synthetic s ON s.doc_id = t.doc_id AND s.crawl_batch = t.crawl_batch"
        " WHERE t.split = 'train' AND t.source_doc_id IS NOT NULL GROUP BY ALL ORDER BY ALL",
        [checkpoint],
    )


def checkpoint_lineage(con: duckdb.DuckDBPyConnection, ref: str | None = None) -> Row:
    name = resolve_checkpoint(con, ref)
    (row,) = rows(con, "SELECT * FROM checkpoints WHERE checkpoint = ?", [name])
    inputs = _inputs(con, name)
    batches = sorted({r["crawl_batch"] for r in inputs})
    crawl_rows = rows(
        con,
        "SELECT b.crawl, b.crawl_batch, f.path FROM crawl_batches b LEFT JOIN crawl_files f USING (crawl_batch)"
        " WHERE list_contains(?, b.crawl_batch) ORDER BY b.crawl, b.crawl_batch, f.path",
        [batches],
    )
    files_by_batch: dict[str, list[str]] = defaultdict(list)
    crawl_of: dict[str, str] = {}
    for r in crawl_rows:
        crawl_of[r["crawl_batch"]] = r["crawl"]
        if r["path"]:
            files_by_batch[r["crawl_batch"]].append(r["path"])
    sources: dict[str, Row] = {}
    for r in inputs:
        s = sources.setdefault(
            r["source"],
            {"source": r["source"], "asset": r["asset"], "batches": set(), "files": 0, "documents": 0, "tokens": 0},
        )
        s["batches"].add(r["crawl_batch"])
        s["files"] += 1
        s["documents"] += r["train_documents"] or 0
        s["tokens"] += r["train_tokens"] or 0
    crawls: dict[str, Row] = {}
    for batch in batches:
        c = crawls.setdefault(crawl_of.get(batch, "?"), {"crawl": crawl_of.get(batch, "?"), "crawl_batches": 0})
        c["crawl_batches"] += 1
        c["warc_files"] = c.get("warc_files", 0) + len(files_by_batch[batch])
    partitions = {(r["asset"], r["crawl_batch"], r["data_version"]) for r in inputs}
    chains = _version_chains(con, partitions)
    parent = row["continued_from"]
    return {
        "checkpoint": name,
        "generation": generations(con).get(row["run"]),
        "run": row["run"],
        "step": row["step"],
        "created_at": row["created_at"],
        "continued_from": parent,
        "tokens_seen": row["tokens_seen"],
        "total_tokens_seen": row["total_tokens_seen"],
        "final_loss": row["final_loss"],
        "model": json.loads(row["model"] or "{}"),
        "config": json.loads(row["config"] or "{}"),
        "sources": [{**s, "crawl_batches": len(s.pop("batches"))} for s in sources.values()],
        "synthetic_by_recipe": _synthetic_by_recipe(con, name),
        "crawls": list(crawls.values()),
        "crawl_batches": [
            {"crawl_batch": b, "crawl": crawl_of.get(b), "warc_files": files_by_batch[b]} for b in batches
        ],
        "partitions": [
            {"asset": a, "crawl_batch": b, "data_version": v, "chain": chains[(a, b, v)]}
            for a, b, v in sorted(partitions)
        ],
        "withdrawn_by": _takedowns_hitting_checkpoint(con, name),
    }


def _takedowns_hitting_checkpoint(con: duckdb.DuckDBPyConnection, checkpoint: str) -> list[Row]:
    """Takedown requests that removed documents (or the sources of rewrites) this checkpoint trained
    on. Only the token index row groups of the crawl batches holding such documents are read."""
    taken = rows(
        con,
        "SELECT DISTINCT doc_id, batch_no, split_part(detail, ' ', 1) AS request_id FROM removed"
        " WHERE starts_with(rule, ?)",
        [TAKEDOWN_RULE_PREFIX],
    )
    if not taken:
        return []
    con.execute("CREATE OR REPLACE TEMP TABLE taken_docs (doc_id VARCHAR, request_id VARCHAR)")
    con.executemany("INSERT INTO taken_docs VALUES (?, ?)", [[r["doc_id"], r["request_id"]] for r in taken])
    batches = ", ".join(str(int(b)) for b in sorted({r["batch_no"] for r in taken}))
    trained = (
        "SELECT doc_id, source_doc_id, asset, crawl_batch, file, data_version FROM token_index"
        f" WHERE batch_no IN ({batches}) AND split = 'train'"
    )
    found = rows(
        con,
        f"WITH t AS ({trained}), hits AS (SELECT k.request_id, k.doc_id, t.* EXCLUDE (doc_id) FROM t JOIN taken_docs k"
        " USING (doc_id) UNION ALL SELECT k.request_id, k.doc_id, t.* EXCLUDE (doc_id) FROM t JOIN taken_docs k"
        " ON k.doc_id = t.source_doc_id)"
        " SELECT h.request_id, count(DISTINCT h.doc_id) AS documents FROM hits h JOIN checkpoint_inputs i"
        " USING (asset, crawl_batch, file, data_version) WHERE i.checkpoint = ? GROUP BY ALL",
        [checkpoint],
    )
    hits = {r["request_id"]: r["documents"] for r in found}
    if not hits:
        return []
    requests = rows(
        con,
        "SELECT request_id, created_at, reason, match FROM takedowns WHERE list_contains(?, request_id)"
        " ORDER BY created_at",
        [sorted(hits)],
    )
    return [{**r, "documents": hits[r["request_id"]]} for r in requests]


# -- documents ---------------------------------------------------------------------------
def _by_key(con: duckdb.DuckDBPyConnection, table: str, column: str, value: str, select: str) -> list[Row]:
    """Rows of `table` whose `column` equals `value`, through the column's key index."""
    key = {"url": "url_key", "doc_id": "doc_key", "duplicate_of": "duplicate_key", "source_doc_id": "source_key"}
    return rows(con, f"SELECT {select} FROM {table} WHERE {keyed(con, key[column], value)} AND {column} = ?", [value])


def _stages(con: duckdb.DuckDBPyConnection, doc_id: str) -> list[Row]:
    kept = _by_key(con, "documents", "doc_id", doc_id, "asset, crawl_batch, url, data_version")
    gone = _by_key(
        con, "removed", "doc_id", doc_id, "asset, crawl_batch, url, stage, rule, detail, duplicate_of, data_version"
    )
    stages = [{"status": "kept", **r} for r in kept] + [{"status": "removed", **r} for r in gone]
    return sorted(stages, key=lambda s: (s["crawl_batch"], stage_rank(s["asset"]), s["status"]))


def _checkpoints_of(con: duckdb.DuckDBPyConnection, shards: Iterable[Row]) -> list[Row]:
    """Every checkpoint whose data named one of these token shard files (train split only)."""
    fields = ("asset", "crawl_batch", "file", "data_version")
    trained = sorted({"/".join(s[f] for f in fields) for s in shards if s["split"] == "train"})
    if not trained:
        return []
    found = rows(
        con,
        "SELECT c.checkpoint, c.run, c.step, c.created_at, bool_and(i.inherited) AS inherited,"
        " list(DISTINCT i.asset || '[' || i.crawl_batch || ']/' || i.file) AS shards"
        " FROM checkpoint_inputs i JOIN checkpoints c USING (checkpoint)"
        " WHERE list_contains(?, concat_ws('/', i.asset, i.crawl_batch, i.file, i.data_version))"
        " GROUP BY ALL ORDER BY c.created_at, c.checkpoint",
        [trained],
    )
    number = generations(con)
    return [{**r, "generation": number.get(r["run"])} for r in found]


def document_lineage(con: duckdb.DuckDBPyConnection, doc_id: str) -> Row | None:
    """Everything the catalog knows about one document; None when it knows nothing."""
    stages = _stages(con, doc_id)
    if not stages:
        return None
    origin = _by_key(
        con,
        "documents",
        "doc_id",
        doc_id,
        "url, domain, crawl, crawl_batch, warc_path, warc_record_id, fetch_time",
    )
    duplicates = _by_key(con, "removed", "duplicate_of", doc_id, "doc_id, url, crawl_batch, stage, rule, detail")
    synthetic = _by_key(con, "synthetic", "source_doc_id", doc_id, "doc_id, recipe, model, crawl_batch, asset")
    derived_from = _by_key(con, "synthetic", "doc_id", doc_id, "source_doc_id, recipe, model")
    select = 'doc_id, source_doc_id, asset, crawl_batch, file, "offset", length, split, data_version'
    shards = _by_key(con, "token_index", "doc_id", doc_id, select) + _by_key(
        con, "token_index", "source_doc_id", doc_id, select
    )
    current = {
        (r["asset"], r["crawl_batch"], r["data_version"])
        for r in rows(
            con,
            "SELECT asset, crawl_batch, data_version FROM shards WHERE list_contains(?, crawl_batch)",
            [sorted({s["crawl_batch"] for s in shards})],
        )
    }
    for s in shards:
        s["current"] = (s["asset"], s["crawl_batch"], s["data_version"]) in current
    return {
        "doc_id": doc_id,
        "provenance": origin[:1][0] if origin else None,
        "stages": stages,
        "duplicates_of_it": duplicates,
        "synthetic": synthetic,
        "derived_from": derived_from,
        "token_shards": sorted(shards, key=lambda s: (s["asset"], s["crawl_batch"], not s["current"])),
        "checkpoints": _checkpoints_of(con, shards),
        "takedowns": _takedowns_of_document(con, doc_id, stages),
    }


def _takedowns_of_document(con: duckdb.DuckDBPyConnection, doc_id: str, stages: list[Row]) -> list[Row]:
    """Requests whose removal rows name this document, or whose content matching resolved to it."""
    ids = {s["detail"].split(" ", 1)[0] for s in stages if (s.get("rule") or "").startswith(TAKEDOWN_RULE_PREFIX)}
    ids |= {r["request_id"] for r in rows(con, "SELECT request_id FROM takedown_matches WHERE doc_id = ?", [doc_id])}
    if not ids:
        return []
    return rows(
        con,
        "SELECT request_id, created_at, requested_by, reason, match FROM takedowns"
        " WHERE list_contains(?, request_id) ORDER BY created_at",
        [sorted(ids)],
    )


def _takedowns_of_url(con: duckdb.DuckDBPyConnection, url: str, domain: str | None) -> list[Row]:
    """Requests with a pattern that matches the URL: exact, prefix, or its domain or a parent domain."""
    return rows(
        con,
        "SELECT t.request_id, t.created_at, t.requested_by, t.reason, t.match, p.kind, p.value"
        " FROM takedown_patterns p JOIN takedowns t USING (request_id)"
        " WHERE (p.kind = 'url' AND p.value = ?) OR (p.kind = 'prefix' AND starts_with(?, p.value))"
        " OR (p.kind = 'domain' AND (? = p.value OR ends_with(?, '.' || p.value)))"
        " ORDER BY t.created_at",
        [url, url, domain or "", domain or ""],
    )


def url_lineage(con: duckdb.DuckDBPyConnection, url: str) -> Row:
    seen = _by_key(con, "documents", "url", url, "doc_id, domain") + _by_key(con, "removed", "url", url, "doc_id")
    doc_ids = sorted({r["doc_id"] for r in seen})
    takedowns = _takedowns_of_url(con, url, next((r["domain"] for r in seen if r.get("domain")), None))
    if not doc_ids:
        raise NotFound(f"{url}: in no crawl batch the catalog knows" + (" (taken down before)" if takedowns else ""))
    found = [d for d in (document_lineage(con, d) for d in doc_ids[:MAX_DOCUMENTS]) if d is not None]
    # A rewrite carries its source's URL: it is listed under its source, not beside it.
    documents = [d for d in found if not {s["source_doc_id"] for s in d["derived_from"]} & set(doc_ids)]
    return {
        "url": url,
        "documents": documents,
        "documents_not_shown": max(0, len(doc_ids) - MAX_DOCUMENTS),
        "takedowns": takedowns,
    }


def doc_lineage(con: duckdb.DuckDBPyConnection, doc_id: str) -> Row:
    found = document_lineage(con, doc_id.strip().lower())
    if found is None:
        raise NotFound(f"document {doc_id!r} is in no stage the catalog knows")
    return found


# -- diff --------------------------------------------------------------------------------
def checkpoint_diff(con: duckdb.DuckDBPyConnection, ref_a: str, ref_b: str) -> Row:
    """What changed from checkpoint A's data to checkpoint B's: per source, crawl batches and
    documents and tokens added and removed, and the partitions whose data version moved.
    Documents of a partition in both with different versions are compared document by document
    where the catalog still holds both versions' token index."""
    a, b = resolve_checkpoint(con, ref_a), resolve_checkpoint(con, ref_b)
    left, right = _inputs(con, a), _inputs(con, b)
    by_partition: dict[str, dict[tuple[str, str], dict[str, Any]]] = {"a": {}, "b": {}}
    for side, found in (("a", left), ("b", right)):
        for r in found:
            p = by_partition[side].setdefault(
                (r["asset"], r["crawl_batch"]),
                {"source": r["source"], "versions": set(), "documents": 0, "tokens": 0},
            )
            p["versions"].add(r["data_version"])
            p["documents"] += r["train_documents"] or 0
            p["tokens"] += r["train_tokens"] or 0
    sources: dict[str, Row] = {}

    def tally(source: str) -> Row:
        return sources.setdefault(
            source,
            {
                "source": source,
                "batches_added": 0,
                "batches_removed": 0,
                "documents_added": 0,
                "documents_removed": 0,
                "tokens_added": 0,
                "tokens_removed": 0,
            },
        )

    moved = []
    for key in sorted(set(by_partition["a"]) | set(by_partition["b"])):
        old, new = by_partition["a"].get(key), by_partition["b"].get(key)
        s = tally((new or old)["source"])
        if old is None:
            s["batches_added"] += 1
            s["documents_added"] += new["documents"]
            s["tokens_added"] += new["tokens"]
        elif new is None:
            s["batches_removed"] += 1
            s["documents_removed"] += old["documents"]
            s["tokens_removed"] += old["tokens"]
        elif old["versions"] != new["versions"]:
            change = _document_changes(con, key, old["versions"], new["versions"])
            for field in ("documents_added", "documents_removed", "tokens_added", "tokens_removed"):
                s[field] += change[field] or 0
            moved.append(
                {
                    "asset": key[0],
                    "crawl_batch": key[1],
                    "from": sorted(old["versions"]),
                    "to": sorted(new["versions"]),
                    **change,
                }
            )
    generation = generations(con)
    return {
        "from": {"checkpoint": a, "generation": generation.get(a.split("/")[0])},
        "to": {"checkpoint": b, "generation": generation.get(b.split("/")[0])},
        "sources": list(sources.values()),
        "versions_moved": moved,
    }


def _document_changes(con: duckdb.DuckDBPyConnection, partition: tuple[str, str], old: set, new: set) -> Row:
    """Train documents only in the old versions (removed) or only in the new ones (added)."""
    asset, batch = partition
    both = rows(
        con,
        "SELECT count(DISTINCT data_version) AS n FROM token_files WHERE asset = ? AND crawl_batch = ?"
        " AND list_contains(?, data_version)",
        [asset, batch, sorted(old | new)],
    )[0]["n"]
    if both < len(old | new):  # an earlier version's index is no longer in the catalog
        return {"documents_added": None, "documents_removed": None, "tokens_added": None, "tokens_removed": None}
    (batch_no,) = con.execute("SELECT batch_no FROM partition_numbers WHERE crawl_batch = ?", [batch]).fetchone()
    side = (
        f"SELECT doc_id, length + 1 AS tokens FROM token_index WHERE batch_no = {int(batch_no)} AND asset = ?"
        " AND crawl_batch = ? AND split = 'train' AND list_contains(?, data_version)"
    )
    found = rows(
        con,
        f"WITH o AS ({side}), n AS ({side}) SELECT"
        " (SELECT count(*) FROM n ANTI JOIN o USING (doc_id)) AS documents_added,"
        " (SELECT coalesce(sum(tokens), 0) FROM n ANTI JOIN o USING (doc_id)) AS tokens_added,"
        " (SELECT count(*) FROM o ANTI JOIN n USING (doc_id)) AS documents_removed,"
        " (SELECT coalesce(sum(tokens), 0) FROM o ANTI JOIN n USING (doc_id)) AS tokens_removed",
        [asset, batch, sorted(old), asset, batch, sorted(new)],
    )
    return found[0]


def checkpoint_summary(answer: Row) -> list[Row]:
    """One row per source of a `checkpoint_lineage` answer: crawl batches, token files, train
    documents and tokens, and how many data and code versions its partitions have (the checkpoint
    asset's lineage table in the UI)."""
    summary = []
    for source in answer["sources"]:
        partitions = [p for p in answer["partitions"] if p["asset"] == source["asset"]]
        code_versions = sorted({p["chain"][0]["code_version"] for p in partitions if p["chain"]})
        summary.append(
            {
                "source": source["source"],
                "crawl_batches": source["crawl_batches"],
                "token_files": source["files"],
                "documents": source["documents"],
                "tokens": source["tokens"],
                "data_versions": len({p["data_version"] for p in partitions}),
                "code_versions": ", ".join(code_versions),
            }
        )
    return summary
