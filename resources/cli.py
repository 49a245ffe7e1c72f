"""`crawl2ckpt`: lineage audits, takedowns and catalog upkeep from the shell.

crawl2ckpt lineage checkpoint [RUN/STEP]         crawls, batches, WARC files, documents and tokens per
                                                 source, versions and config of a checkpoint (default: latest)
crawl2ckpt lineage url https://example.com/page  every stage, rewrite, token shard and checkpoint of a URL
crawl2ckpt lineage doc DOC_ID                    the same for one document
crawl2ckpt lineage diff RUN/STEP RUN/STEP        what changed between two checkpoints' data
crawl2ckpt takedown --urls FILE [--reason TEXT] [--match url|content]
                                                 record a takedown request (URLs, URL prefixes*, domains)
crawl2ckpt audit-url https://example.com/page    where did this URL's documents go?
crawl2ckpt sql "SELECT crawl, count(*) FROM documents GROUP BY 1"
crawl2ckpt rebuild-catalog                       recreate the DuckDB catalog from storage
crawl2ckpt sync-catalog                          apply records queued while the catalog was locked

Audits take `--json` for machines; an unknown checkpoint, URL or document exits with status 1.
Only what a command needs is imported: an audit loads DuckDB and nothing heavier.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING

from resources.common.catalog_file import DEFAULT_PATH, CatalogLocked
from resources.common.paths import absolute, read_config
from resources.lineage import audit, render

if TYPE_CHECKING:
    from resources.common.catalog import LineageCatalog
    from resources.common.storage import ShardStore
    from resources.settings import Settings


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="crawl2ckpt", description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    main_parser.add_argument("--config", help="settings YAML (default: $CRAWL2CKPT_CONFIG or configs/demo.yaml)")
    commands = main_parser.add_subparsers(dest="command", required=True)

    lineage = commands.add_parser("lineage", help="audit a checkpoint, a URL or a document").add_subparsers(
        dest="audit", required=True
    )
    for name, argument, text in (
        ("checkpoint", "checkpoint", "a checkpoint's data, down to WARC files (default: the latest)"),
        ("url", "url", "a URL's documents through every stage up to the checkpoints"),
        ("doc", "doc_id", "one document through every stage up to the checkpoints"),
    ):
        sub = lineage.add_parser(name, help=text)
        sub.add_argument(argument, nargs="?" if name == "checkpoint" else None)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
    diff = lineage.add_parser("diff", help="what changed between two checkpoints' data")
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--json", action="store_true", help="machine-readable output")

    takedown = commands.add_parser("takedown", help="record a takedown request")
    takedown.add_argument(
        "--urls", required=True, help="file of URLs, URL prefixes (ending in *) or domains, one a line; - for stdin"
    )
    takedown.add_argument("--reason", default="", help="why (kept with the request)")
    takedown.add_argument(
        "--match", choices=("url", "content"), default="url", help="content: also exact and near copies elsewhere"
    )
    takedown.add_argument("--by", default=None, help="who asks (default: the user running the command)")
    takedown.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("audit-url", help="every stage and partition holding a URL").add_argument("url")
    commands.add_parser("sql", help="run SQL against the lineage catalog").add_argument("query")
    commands.add_parser("rebuild-catalog", help="recreate the catalog from manifests, checkpoints and takedowns")
    commands.add_parser("sync-catalog", help="apply the records queued while another process held the catalog")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "lineage":
            return lineage(args)
        if args.command == "takedown":
            return takedown(args)
        return catalog_command(args)
    except audit.NotFound as exc:
        print(f"crawl2ckpt: {exc}", file=sys.stderr)
        return 1


def catalog_path(config: str | None) -> str:
    """The catalog's path from the settings file, without loading (and importing) every setting."""
    return absolute((read_config(config).get("catalog") or {}).get("path") or DEFAULT_PATH)


def lineage(args: argparse.Namespace) -> int:
    with audit.connect(catalog_path(args.config)) as con:
        if args.audit == "checkpoint":
            answer, text = audit.checkpoint_lineage(con, args.checkpoint), render.checkpoint_text
        elif args.audit == "url":
            answer, text = audit.url_lineage(con, args.url), render.url_text
        elif args.audit == "doc":
            answer, text = audit.doc_lineage(con, args.doc_id), render.doc_text
        else:
            answer, text = audit.checkpoint_diff(con, args.a, args.b), render.diff_text
    print(render.as_json(answer) if args.json else text(answer))
    return 0


def takedown(args: argparse.Namespace) -> int:
    from resources.lineage.takedown import submit

    settings, store, catalog = _settings(args.config)
    if args.urls == "-":
        data, source = sys.stdin.buffer.read(), "cli:stdin"
    else:
        with open(args.urls, "rb") as handle:
            data, source = handle.read(), f"cli:{args.urls}"
    result = submit(
        store,
        catalog,
        data,
        reason=args.reason,
        match=args.match,
        requested_by=args.by or getpass.getuser(),
        source=source,
        spec=settings.dedup.near.spec,
        threshold=settings.dedup.near.min_similarity,
    )
    answer = result.to_dict()
    print(render.as_json(answer) if args.json else render.submitted_text(answer))
    return 0


def _settings(config: str | None) -> tuple[Settings, ShardStore, LineageCatalog]:
    from resources.common.catalog import LineageCatalog
    from resources.settings import load_settings

    settings = load_settings(config)
    return settings, settings.storage.store(), LineageCatalog(settings.catalog.path, settings.catalog.lock_timeout_s)


def catalog_command(args: argparse.Namespace) -> int:
    import polars as pl

    from resources.ingest.sources import BatchRegistry
    from resources.lineage.rebuild import rebuild_catalog

    settings, store, catalog = _settings(args.config)
    if catalog.pending() and args.command != "rebuild-catalog":
        try:
            print(f"applied {catalog.sync()} queued catalog records", file=sys.stderr)
        except CatalogLocked as exc:
            if args.command == "sync-catalog":
                raise
            print(f"warning: {len(catalog.pending())} queued records are not in the answer: {exc}", file=sys.stderr)
    if args.command == "sync-catalog":
        return 0
    with pl.Config(tbl_rows=200, tbl_cols=30, fmt_str_lengths=100, tbl_width_chars=400, tbl_hide_dataframe_shape=True):
        if args.command == "audit-url":
            hits = catalog.find_url(args.url)
            for hit in hits.iter_rows(named=True):
                print("\n".join(f"{column:>15}: {value}" for column, value in hit.items()), end="\n\n")
            if not hits.height:
                print(f"{args.url}: not in any stage")
            return 0 if hits.height else 1
        if args.command == "sql":
            print(catalog.query(args.query))
            return 0
        counts = rebuild_catalog(store, catalog, BatchRegistry(store).all_specs())
        print(f"catalog rebuilt at {settings.catalog.path}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
