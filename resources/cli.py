"""`crawl2ckpt`: lineage audits and catalog upkeep from the shell.

crawl2ckpt audit-url https://example.com/page    where did this URL's documents go?
crawl2ckpt sql "SELECT crawl, count(*) FROM documents GROUP BY 1"
crawl2ckpt rebuild-catalog                       recreate the DuckDB catalog from storage
crawl2ckpt sync-catalog                          apply records queued while the catalog was locked
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

from resources.common.catalog import CatalogLocked, LineageCatalog
from resources.ingest.sources import BatchRegistry
from resources.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crawl2ckpt", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="settings YAML (default: $CRAWL2CKPT_CONFIG or configs/demo.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("audit-url", help="every stage and partition holding a URL").add_argument("url")
    commands.add_parser("sql", help="run SQL against the lineage catalog").add_argument("query")
    commands.add_parser("rebuild-catalog", help="recreate the catalog from manifests and batch specs")
    commands.add_parser("sync-catalog", help="apply the records queued while another process held the catalog")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    catalog = LineageCatalog(settings.catalog.path, settings.catalog.lock_timeout_s)
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
        store = settings.storage.store()
        counts = catalog.rebuild(store, BatchRegistry(store).all_specs())
        print(f"catalog rebuilt at {settings.catalog.path}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
