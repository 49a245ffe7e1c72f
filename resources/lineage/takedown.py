"""Takedowns: which documents a request names, how the first stage that drops documents removes
them, which crawl batches that touches, and the proof that nothing of it is left.

- `submit` records a request (resources/lineage/requests.py) after dropping the patterns asked
  for before; with `match="content"` it also resolves the content to take down: the documents of
  the requested URLs (their doc ids: exact copies anywhere), the documents deduplication removed
  as their duplicates, and near duplicates found through the dedup index segments (MinHash LSH
  band keys, verified by estimated Jaccard). The requested documents' signatures are kept, so
  crawl batches that arrive later are checked too. Texts are read, never stored.
- `TakedownFilter` is the filter stage's first step: a document matching a request is removed
  with rule `takedown_url` or `takedown_content` and `detail` "<request id> <how>" (the oldest
  matching request names it, so a later overlapping request changes no bytes).
- `batch_versions` is what Dagster observes per crawl batch: the hash of the requests that hit it
  (found in the catalog), so a request makes exactly the batches holding its documents stale.
- `occurrences` counts, per request, what is left in every current output, and names the
  checkpoints that trained on its documents.
- `withdrawn_versions`: the token shard versions that held taken-down documents, so a retrained
  generation never continues from a checkpoint that saw them.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import fsspec
import numpy as np
import polars as pl

from resources.common.catalog import LineageCatalog
from resources.common.catalog_file import keyed
from resources.common.schemas import removed_rows
from resources.common.storage import ShardStore, sha256_bytes
from resources.dedup.index import INDEX, band_column
from resources.dedup.minhash import SketchSpec, band_keys, similarity, sketch
from resources.lineage.audit import LATEST_CHECKPOINT, rows
from resources.lineage.requests import (
    MATCH_SCHEMA,
    Match,
    ParsedLines,
    Pattern,
    TakedownRequest,
    new_request,
    parse_stream,
    read_requests,
    write_request,
)

STAGE = "takedown"
URL_RULE = "takedown_url"
CONTENT_RULE = "takedown_content"
NO_TAKEDOWN = "no-takedown"  # the data version of a crawl batch no request hits
Splitter = Callable[[pl.DataFrame], tuple[pl.DataFrame, pl.DataFrame]]


@dataclass(frozen=True)
class Assets:
    """The assets a takedown reads: the first document stage (every document of a crawl batch is
    there) and deduplication (its removed rows and index segments know the duplicates)."""

    raw: str = "raw_documents"
    deduplicated: str = "deduplicated_documents"


# -- matching in the catalog ---------------------------------------------------------------
def _pattern_table(con: duckdb.DuckDBPyConnection, patterns: Sequence[tuple[str, str, str]]) -> None:
    """(request_id, kind, value) rows as the temp table `asked`."""
    con.execute("CREATE OR REPLACE TEMP TABLE asked (request_id VARCHAR, kind VARCHAR, value VARCHAR)")
    if patterns:
        con.executemany("INSERT INTO asked VALUES (?, ?, ?)", [list(p) for p in patterns])


_MATCHING = """
SELECT a.request_id, d.doc_id, d.url, d.crawl_batch FROM asked a JOIN {docs} d ON a.kind = 'url' AND d.url = a.value
UNION SELECT a.request_id, d.doc_id, d.url, d.crawl_batch FROM asked a JOIN {docs} d
    ON a.kind = 'prefix' AND starts_with(d.url, a.value)
UNION SELECT a.request_id, d.doc_id, d.url, d.crawl_batch FROM asked a JOIN {docs} d
    ON a.kind = 'domain' AND (d.domain = a.value OR ends_with(d.domain, '.' || a.value))
"""


def matching_documents(
    con: duckdb.DuckDBPyConnection, patterns: Sequence[tuple[str, str, str]], asset: str
) -> list[dict[str, Any]]:
    """The documents of `asset` whose URL or domain a pattern matches: request_id, doc_id, url,
    crawl_batch. Patterns are bound values in a temp table, never SQL text."""
    _pattern_table(con, patterns)
    docs = "(SELECT doc_id, url, domain, crawl_batch FROM documents WHERE asset = $asset)"
    return rows(con, _MATCHING.format(docs=docs).replace("$asset", "?"), [asset] * 3)


def _recorded_patterns(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str]]:
    return [(r["request_id"], r["kind"], r["value"]) for r in rows(con, "SELECT * FROM takedown_patterns")]


def batch_hits(con: duckdb.DuckDBPyConnection, assets: Assets = Assets()) -> dict[str, set[str]]:
    """Crawl batch -> the recorded requests that hit one of its documents: a URL pattern, or the
    content a content request resolved to."""
    hits: dict[str, set[str]] = {}
    for r in matching_documents(con, _recorded_patterns(con), assets.raw):
        hits.setdefault(r["crawl_batch"], set()).add(r["request_id"])
    for r in rows(
        con,
        "SELECT DISTINCT m.request_id, d.crawl_batch FROM takedown_matches m JOIN documents d"
        " ON d.doc_key = m.doc_key AND d.doc_id = m.doc_id WHERE d.asset = ?",
        [assets.raw],
    ):
        hits.setdefault(r["crawl_batch"], set()).add(r["request_id"])
    return hits


def batch_versions(catalog: LineageCatalog, batches: Sequence[str], assets: Assets = Assets()) -> dict[str, str]:
    """Each crawl batch's takedown data version: the hash of the requests that hit it, or
    NO_TAKEDOWN. A request that hits nothing new changes no version."""
    with catalog.connect(read_only=True) as con:
        none = not rows(con, "SELECT count(*) AS n FROM takedowns")[0]["n"]
        hits = {} if none else batch_hits(con, assets)
    return {
        batch: "takedowns-" + hashlib.sha256(" ".join(sorted(hits[batch])).encode()).hexdigest()[:16]
        if batch in hits
        else NO_TAKEDOWN
        for batch in batches
    }


def catalog_state(catalog: LineageCatalog, assets: Assets = Assets()) -> str:
    """What batch versions depend on, cheaply: the requests recorded and the raw partitions
    materialized. While it stays the same, the versions do too (the sensor skips the matching)."""
    with catalog.connect(read_only=True) as con:
        found = rows(
            con,
            "SELECT (SELECT list(request_id ORDER BY request_id) FROM takedowns) AS requests,"
            " (SELECT list(crawl_batch || '@' || data_version ORDER BY crawl_batch, data_version)"
            " FROM materializations WHERE asset = ?)"
            " AS raw",
            [assets.raw],
        )
    return hashlib.sha256(repr(found).encode()).hexdigest()[:16]


# -- content resolution --------------------------------------------------------------------
def _texts(store: ShardStore, asset: str, docs: pl.DataFrame) -> pl.DataFrame:
    """doc_id and text of the given documents (doc_id, crawl_batch), read from their partitions."""
    frames = []
    for batch, group in docs.group_by("crawl_batch"):
        manifest = store.read_manifest(asset, batch[0])
        if manifest is not None:
            wanted = group.get_column("doc_id").unique().to_list()
            frames.append(
                store.scan(manifest).filter(pl.col("doc_id").is_in(wanted)).select("doc_id", "text").collect()
            )
    texts = pl.concat(frames) if frames else pl.DataFrame(schema={"doc_id": pl.String, "text": pl.String})
    return texts.unique("doc_id", keep="first")


def _near_in_segments(
    store: ShardStore, asset: str, keys: np.ndarray, signatures: np.ndarray, spec: SketchSpec, threshold: float
) -> pl.DataFrame:
    """Kept documents of every dedup index segment sharing an LSH bucket with a signature, verified
    by estimated Jaccard: doc_id, crawl_batch, similarity (to the most similar signature)."""
    found = []
    for manifest in store.iter_manifests(asset):
        if INDEX not in manifest.tables():
            continue
        segment = store.scan(manifest, INDEX)
        shared = pl.any_horizontal(
            pl.col(band_column(b)).is_in(pl.Series(keys[:, b].tolist(), dtype=pl.UInt64)) for b in range(spec.bands)
        )
        candidates = segment.filter(shared).select("doc_id", "signature").collect()
        if not candidates.height:
            continue
        theirs = np.asarray(candidates.get_column("signature").to_list(), dtype=np.uint32)
        best = np.zeros(candidates.height)
        for mine in signatures:
            best = np.maximum(best, similarity(theirs, np.broadcast_to(mine, theirs.shape)))
        near = candidates.select("doc_id").with_columns(
            crawl_batch=pl.lit(manifest.partition), similarity=pl.Series(best)
        )
        found.append(near.filter(pl.col("similarity") >= threshold))
    return pl.concat(found) if found else pl.DataFrame(schema={"doc_id": pl.String, "crawl_batch": pl.String})


def resolve_content(
    store: ShardStore,
    catalog: LineageCatalog,
    request_id: str,
    patterns: Sequence[Pattern],
    spec: SketchSpec,
    threshold: float,
    assets: Assets = Assets(),
) -> pl.DataFrame:
    """The documents a content request takes down (MATCH_SCHEMA): see the module doc."""
    with catalog.connect(read_only=True) as con:
        sources = pl.DataFrame(
            matching_documents(con, [(request_id, p.kind, p.value) for p in patterns], assets.raw),
            schema={"request_id": pl.String, "doc_id": pl.String, "url": pl.String, "crawl_batch": pl.String},
        )
        source_ids = sources.get_column("doc_id").unique().to_list()
        duplicates = []
        for doc_id in source_ids:
            duplicates += rows(
                con,
                "SELECT doc_id, url, crawl_batch, detail FROM removed"
                f" WHERE {keyed(con, 'duplicate_key', doc_id)} AND duplicate_of = ?",
                [doc_id],
            )
    texts = _texts(store, assets.raw, sources)
    sketches = sketch(texts.get_column("text"), spec)
    usable = sketches.has_shingles
    signatures = sketches.signatures[usable]
    signature_of = dict(zip(texts.get_column("doc_id").to_list(), sketches.signatures.tolist(), strict=True))
    frames = [
        sources.with_columns(
            kind=pl.lit("source"),
            similarity=pl.lit(1.0),
            signature=pl.col("doc_id").replace_strict(signature_of, default=None, return_dtype=pl.List(pl.UInt32)),
        )
    ]
    if duplicates:
        frames.append(
            pl.DataFrame(duplicates).select(
                pl.lit(request_id).alias("request_id"),
                "doc_id",
                "url",
                "crawl_batch",
                pl.lit("duplicate").alias("kind"),
                pl.col("detail").cast(pl.Float64, strict=False).fill_null(1.0).alias("similarity"),
            )
        )
    if len(signatures):
        near = _near_in_segments(
            store, assets.deduplicated, band_keys(signatures, spec.bands, spec.rows), signatures, spec, threshold
        )
        if near.height:
            with catalog.connect(read_only=True) as con:
                urls = {
                    doc_id: r["url"]
                    for doc_id in near.get_column("doc_id").unique().to_list()
                    for r in rows(
                        con,
                        f"SELECT url FROM documents WHERE {keyed(con, 'doc_key', doc_id)} AND doc_id = ? LIMIT 1",
                        [doc_id],
                    )
                }
            frames.append(
                near.select(
                    pl.lit(request_id).alias("request_id"),
                    "doc_id",
                    pl.col("doc_id").replace_strict(urls, default=None, return_dtype=pl.String).alias("url"),
                    "crawl_batch",
                    pl.lit("near").alias("kind"),
                    "similarity",
                )
            )
    typed = [f.cast({c: t for c, t in MATCH_SCHEMA.items() if c in f.columns}) for f in frames]
    matches = pl.concat(typed, how="diagonal_relaxed").select(list(MATCH_SCHEMA))
    # One row per document: a requested URL's own document first, then the closest match.
    order = pl.col("kind").replace_strict({"source": 0, "duplicate": 1, "near": 2}, return_dtype=pl.Int8)
    return matches.sort(order, -pl.col("similarity")).unique("doc_id", keep="first", maintain_order=True)


# -- recording -----------------------------------------------------------------------------
@dataclass
class Submitted:
    """What a submission did: the request recorded (None when nothing was new), lines refused by
    reason, and the documents and crawl batches it hits now."""

    request: TakedownRequest | None
    refused: dict[str, int]
    already_requested: dict[str, list[str]] = field(default_factory=dict)  # request id -> patterns
    documents: int = 0
    crawl_batches: list[str] = field(default_factory=list)
    content_matches: dict[str, int] = field(default_factory=dict)  # kind -> documents

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request.request_id if self.request else None,
            "recorded": self.request is not None,
            "patterns": len(self.request.patterns) if self.request else 0,
            "refused": self.refused,
            "already_requested": self.already_requested,
            "documents": self.documents,
            "crawl_batches": self.crawl_batches,
            "content_matches": self.content_matches,
        }


def submit(
    store: ShardStore,
    catalog: LineageCatalog,
    data: bytes,
    *,
    reason: str,
    match: Match,
    requested_by: str,
    source: str,
    spec: SketchSpec,
    threshold: float,
    assets: Assets = Assets(),
) -> Submitted:
    """Record a request file's new patterns (see the module doc); nothing is written when it has none."""
    parsed: ParsedLines = parse_stream(io.BytesIO(data))
    earlier: dict[tuple[Pattern, str], str] = {}
    for request, _ in read_requests(store):
        for pattern in request.patterns:
            earlier.setdefault((pattern, request.match), request.request_id)
    already: dict[str, list[str]] = {}
    new = []
    for pattern in parsed.patterns:
        if (pattern, match) in earlier:
            already.setdefault(earlier[(pattern, match)], []).append(pattern.value)
            parsed.refused["already_requested"] += 1
        else:
            new.append(pattern)
    if not new:
        return Submitted(None, dict(parsed.refused), already)
    sketch_spec = {**_spec_dict(spec), "threshold": threshold} if match == "content" else None
    request = new_request(
        parsed,
        new,
        reason=reason,
        match=match,
        requested_by=requested_by,
        source=source,
        source_sha256=sha256_bytes(data),
        sketch=sketch_spec,
    )
    matches = (
        resolve_content(store, catalog, request.request_id, new, spec, threshold, assets)
        if match == "content"
        else pl.DataFrame(schema=MATCH_SCHEMA)
    )
    write_request(store, request, matches)
    record(catalog, request, matches)
    with catalog.connect(read_only=True) as con:
        hit = matching_documents(con, [(request.request_id, p.kind, p.value) for p in new], assets.raw)
    docs = {r["doc_id"] for r in hit} | set(matches.get_column("doc_id").to_list())
    batches = {r["crawl_batch"] for r in hit} | set(matches.get_column("crawl_batch").drop_nulls().to_list())
    return Submitted(
        request,
        dict(parsed.refused),
        already,
        len(docs),
        sorted(batches),
        dict(matches.group_by("kind").len().iter_rows()) if matches.height else {},
    )


def _spec_dict(spec: SketchSpec) -> dict[str, object]:
    return {"ngram": spec.ngram, "bands": spec.bands, "rows": spec.rows, "seed": spec.seed, "id": spec.sketch_id}


def record(catalog: LineageCatalog, request: TakedownRequest, matches: pl.DataFrame) -> None:
    """Index a stored request in the catalog (also how `rebuild` restores it)."""
    catalog.record_takedown(
        request.to_dict(),
        [(p.kind, p.value) for p in request.patterns],
        matches.select("request_id", "doc_id", "url", "kind", "similarity"),
    )


# -- the filter step -----------------------------------------------------------------------
def _url_masks(frame: pl.DataFrame, patterns: Sequence[Pattern]) -> list[tuple[str, np.ndarray]]:
    """(how, rows matched) per kind of pattern: exact URLs in one set lookup, prefixes and domains
    one by one (they are few)."""
    exact = [p.value for p in patterns if p.kind == "url"]
    found = [("url", frame.get_column("url").is_in(exact).fill_null(False).to_numpy())] if exact else []
    for pattern in patterns:
        if pattern.kind == "prefix":
            hit = frame.get_column("url").str.starts_with(pattern.value)
        elif pattern.kind == "domain":
            domain = frame.get_column("domain")
            hit = (domain == pattern.value) | domain.str.ends_with("." + pattern.value)
        else:
            continue
        found.append((pattern.kind, hit.fill_null(False).to_numpy()))
    return found


def _spec(sketch_settings: dict[str, Any]) -> SketchSpec:
    return SketchSpec(*(int(sketch_settings[k]) for k in ("ngram", "bands", "rows", "seed")))


@dataclass(frozen=True)
class TakedownFilter:
    """Removes the documents recorded requests name, oldest request first (see the module doc)."""

    requests: list[TakedownRequest]
    matches: dict[str, pl.DataFrame]  # request id -> its content matches

    @classmethod
    def load(cls, store: ShardStore) -> TakedownFilter:
        found = read_requests(store)
        return cls([r for r, _ in found], {r.request_id: m for r, m in found if m.height})

    @property
    def version(self) -> str:
        """The requests applied, for the manifest's inputs."""
        ids = " ".join(r.request_id for r in self.requests)
        return hashlib.sha256(ids.encode()).hexdigest()[:16] if ids else NO_TAKEDOWN

    def process(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        rule = np.full(frame.height, None, dtype=object)
        detail = np.full(frame.height, None, dtype=object)
        for request in self.requests if frame.height else []:
            for how, hit in _url_masks(frame, request.patterns):
                hit &= rule == None  # noqa: E711 - elementwise on an object array
                rule[hit], detail[hit] = URL_RULE, f"{request.request_id} {how}"
            if request.match == "content":
                for row, how in self._content(frame, request, rule == None).items():  # noqa: E711
                    rule[row], detail[row] = CONTENT_RULE, f"{request.request_id} {how}"
        judged = frame.with_columns(
            _rule=pl.Series(rule.tolist(), dtype=pl.String), _detail=pl.Series(detail.tolist(), dtype=pl.String)
        )
        return (
            judged.filter(pl.col("_rule").is_null()).drop("_rule", "_detail"),
            removed_rows(judged.filter(pl.col("_rule").is_not_null()), STAGE, pl.col("_rule"), pl.col("_detail")),
        )

    def _content(self, frame: pl.DataFrame, request: TakedownRequest, open_rows: np.ndarray) -> dict[int, str]:
        """Rows (among `open_rows`) holding content the request resolved to: the same doc id, or
        a near duplicate of a requested document's signature."""
        matches = self.matches.get(request.request_id)
        if matches is None or not open_rows.any():
            return {}
        how = {
            doc_id: "exact" if kind == "source" else f"{kind}:{similarity_value:.3f}"
            for doc_id, kind, similarity_value in matches.select("doc_id", "kind", "similarity").iter_rows()
        }
        found = {
            int(row): how[doc_id]
            for row, doc_id in enumerate(frame.get_column("doc_id").to_list())
            if open_rows[row] and doc_id in how
        }
        signatures = matches.filter(pl.col("signature").is_not_null()).get_column("signature").to_list()
        candidates = np.flatnonzero(open_rows & ~np.isin(np.arange(frame.height), list(found)))
        if not signatures or not request.sketch or not len(candidates):
            return found
        spec, threshold = _spec(request.sketch), float(request.sketch["threshold"])
        theirs = np.asarray(signatures, dtype=np.uint32)
        their_keys = band_keys(theirs, spec.bands, spec.rows)
        mine = sketch(frame.get_column("text").gather(candidates), spec)
        shares = np.zeros(len(candidates), bool)
        for band in range(spec.bands):
            shares |= np.isin(mine.band_keys[:, band], their_keys[:, band])
        for position in np.flatnonzero(shares & mine.has_shingles):
            best = float(similarity(theirs, np.broadcast_to(mine.signatures[position], theirs.shape)).max())
            if best >= threshold:
                found[int(candidates[position])] = f"near:{best:.3f}"
        return found

    def then(self, process: Splitter) -> Splitter:
        """This step, then `process` on what it keeps."""

        def both(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
            kept, taken_down = self.process(frame)
            kept, removed = process(kept)
            return kept, pl.concat([taken_down, removed], how="vertical_relaxed")

        return both


# -- proof and consequences ----------------------------------------------------------------
def _taken(con: duckdb.DuckDBPyConnection, request_ids: Sequence[str] | None = None) -> int:
    """The temp table `taken` (doc_id, doc_key): every document the requests (all when None)
    name, in any stage: URL pattern matches and resolved content. Returns its size."""
    patterns = [p for p in _recorded_patterns(con) if request_ids is None or p[0] in request_ids]
    _pattern_table(con, patterns)
    docs = "(SELECT DISTINCT doc_id, url, domain, crawl_batch FROM documents)"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE taken AS SELECT DISTINCT doc_id, md5_number_upper(doc_id) AS doc_key FROM ("
        f"SELECT doc_id FROM ({_MATCHING.format(docs=docs)}) UNION"
        " SELECT doc_id FROM takedown_matches WHERE ? OR list_contains(?, request_id))",
        [request_ids is None, list(request_ids or [])],
    )
    return rows(con, "SELECT count(*) AS n FROM taken")[0]["n"]


_TOKEN_ROWS = (
    "SELECT t.* FROM token_index t JOIN taken k ON t.doc_key = k.doc_key AND t.doc_id = k.doc_id"
    " UNION ALL SELECT t.* FROM token_index t JOIN taken k ON t.source_key = k.doc_key AND t.source_doc_id = k.doc_id"
)


def withdrawn_versions(catalog: LineageCatalog) -> set[str]:
    """Data versions of token shard partitions that held a document some request took down (or a
    rewrite of one): a checkpoint trained on one of them must not be continued."""
    with catalog.connect(read_only=True) as con:
        if not rows(con, "SELECT count(*) AS n FROM takedowns")[0]["n"] or not _taken(con):
            return set()
        return {r["data_version"] for r in rows(con, f"SELECT DISTINCT data_version FROM ({_TOKEN_ROWS})")}


def occurrences(catalog: LineageCatalog, assets: Assets = Assets()) -> list[dict[str, Any]]:
    """Per recorded request: its documents, what of them (and of their rewrites) every current
    output still holds, the checkpoints that trained on them, and those trained since without them.
    The raw documents stay (they are the crawl as fetched) and are counted apart."""
    with catalog.connect(read_only=True) as con:
        requests = rows(con, "SELECT request_id, created_at, reason, match, requested_by FROM takedowns ORDER BY ALL")
        latest = rows(con, LATEST_CHECKPOINT)
        report = []
        for request in requests:
            documents = _taken(con, [request["request_id"]])
            con.execute(
                "CREATE OR REPLACE TEMP TABLE derived AS SELECT s.doc_id FROM synthetic s JOIN taken k"
                " ON s.source_key = k.doc_key AND s.source_doc_id = k.doc_id"
            )
            stages = rows(
                con,
                "SELECT asset, count(*) AS n FROM documents WHERE doc_id IN (SELECT doc_id FROM taken UNION"
                " SELECT doc_id FROM derived) GROUP BY asset ORDER BY asset",
            )
            current = "SELECT DISTINCT asset, crawl_batch, data_version FROM shards"
            tokens = rows(
                con,
                f"SELECT asset, count(*) AS n FROM ({_TOKEN_ROWS}) JOIN ({current}) USING (asset, crawl_batch,"
                " data_version) GROUP BY asset ORDER BY asset",
            )
            trained = rows(
                con,
                "SELECT i.checkpoint, count(DISTINCT t.doc_id) AS documents FROM"
                f" ({_TOKEN_ROWS}) t JOIN checkpoint_inputs i USING (asset, crawl_batch, file, data_version)"
                " WHERE t.split = 'train' GROUP BY ALL ORDER BY ALL",
            )
            saw = {r["checkpoint"]: r["documents"] for r in trained}
            since = rows(
                con,
                "SELECT checkpoint FROM checkpoint_recency WHERE current_at > ? ORDER BY current_at",
                [request["created_at"]],
            )
            raw = next((r["n"] for r in stages if r["asset"] == assets.raw), 0)
            latest_name = latest[0]["checkpoint"] if latest else None
            report.append(
                {
                    **request,
                    "documents": documents,
                    "raw_records": raw,
                    "stages": {r["asset"]: r["n"] for r in stages if r["asset"] != assets.raw},
                    "token_shards": {r["asset"]: r["n"] for r in tokens},
                    "latest_checkpoint": latest_name,
                    "latest_checkpoint_documents": saw.get(latest_name, 0) if latest_name else 0,
                    "trained_on_by": sorted(saw),
                    "retrained_without": [r["checkpoint"] for r in since if r["checkpoint"] not in saw],
                }
            )
    return report


def left_over(entry: dict[str, Any]) -> int:
    """Occurrences of a request's documents still in outputs (0 once the takedown is done)."""
    return sum(entry["stages"].values()) + sum(entry["token_shards"].values()) + entry["latest_checkpoint_documents"]


# -- the inbox -----------------------------------------------------------------------------
HEADER_FIELDS = ("reason", "match", "requested_by")


def header(data: bytes) -> dict[str, str]:
    """`# reason: ...`, `# match: url|content`, `# requested_by: ...` lines at the top of a request
    file (the first 20 lines); other lines are left to the parser."""
    found = {}
    for line in data[:65536].decode("utf-8", errors="replace").splitlines()[:20]:
        name, _, value = line.lstrip("# ").partition(":")
        if line.startswith("#") and name.strip().lower() in HEADER_FIELDS and value.strip():
            found.setdefault(name.strip().lower(), value.strip()[:1000])
    return found


def inbox_files(inbox: str, storage_options: dict[str, object] | None = None) -> list[tuple[str, str, int]]:
    """(path, name, size) of the files directly in the inbox, by name."""
    fs, root = fsspec.core.url_to_fs(inbox, **(storage_options or {}))
    if not fs.exists(root):
        return []
    entries = fs.ls(root, detail=True)
    files = [(e["name"], posixpath.basename(e["name"].rstrip("/")), int(e.get("size") or 0)) for e in entries]
    return sorted((f for f, e in zip(files, entries, strict=True) if e["type"] == "file"), key=lambda f: f[1])


def record_inbox(
    store: ShardStore,
    catalog: LineageCatalog,
    inbox: str,
    *,
    storage_options: dict[str, object] | None = None,
    spec: SketchSpec,
    threshold: float,
    assets: Assets = Assets(),
) -> list[tuple[str, Submitted]]:
    """Submit every inbox file not recorded before (by content: a file copied under another name is
    the same request), with the match mode, reason and requester its header names; returns (file
    name, what happened) for each file read. A file whose patterns were all requested before is
    read again on later ticks but never recorded."""
    fs, _ = fsspec.core.url_to_fs(inbox, **(storage_options or {}))
    recorded = {request.source_sha256 for request, _ in read_requests(store)}
    done = []
    for path, name, _ in inbox_files(inbox, storage_options):
        data = fs.cat_file(path)
        if sha256_bytes(data) in recorded:
            continue
        fields = header(data)
        match = fields.get("match", "url").lower()
        if match not in ("url", "content"):
            done.append((name, Submitted(None, {"unknown_match_header": 1})))
            continue
        submitted = submit(
            store,
            catalog,
            data,
            reason=fields.get("reason", ""),
            match=match,
            requested_by=fields.get("requested_by", "inbox"),
            source=f"inbox:{name}",
            spec=spec,
            threshold=threshold,
            assets=assets,
        )
        done.append((name, submitted))
    return done
