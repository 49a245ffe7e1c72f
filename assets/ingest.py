"""Crawl ingest: registered crawl batches become extracted documents with provenance."""

from functools import partial

import dagster as dg
import polars as pl

from jobs.partitions import crawl_batches
from resources.catalog import DOCUMENT_COLUMNS
from resources.dagster_resources import CatalogResource, StorageResource
from resources.document_checks import check_documents
from resources.ingest import ingest_files
from resources.settings import IngestSettings
from resources.storage import Manifest
from resources.versioning import code_version, config_hash

RAW_DOCUMENTS = "raw_documents"
# Bump when a change to the ingest code changes the documents it writes.
RAW_DOCUMENTS_LOGIC = "1"
DOCUMENT_CHECKS = ("unique_doc_id", "no_empty_text", "provenance_complete")


def build_raw_documents(settings: IngestSettings, source_options: dict | None = None) -> dg.AssetsDefinition:
    """`source_options` are the fsspec options for opening crawl files (the source's, not the store's)."""
    shaping = settings.output_shaping()

    @dg.asset(
        name=RAW_DOCUMENTS,
        partitions_def=crawl_batches,
        code_version=code_version(RAW_DOCUMENTS_LOGIC, shaping),
        group_name="ingest",
        kinds={"parquet"},
        check_specs=[dg.AssetCheckSpec(name, asset=RAW_DOCUMENTS) for name in DOCUMENT_CHECKS],
        description=f"Main text of every HTML page and WET record of a crawl batch ({settings.extractor}).",
    )
    def raw_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, key = storage.store(), context.partition_key
        spec = storage.batches().spec(key)
        result = ingest_files(
            spec["files"],
            crawl_batch=key,
            settings=settings,
            write_shard=partial(store.write_parquet_shard, RAW_DOCUMENTS, key),
            crawl=spec["crawl"],
            storage_options=source_options,
            log=context.log.info,
        )
        for path, error in result.read.file_errors.items():
            context.log.warning(f"{path}: {error}")
        manifest = store.commit(
            Manifest(
                asset=RAW_DOCUMENTS,
                partition=key,
                files=result.shards,
                config_hash=config_hash(shaping),
                code_version=code_version(RAW_DOCUMENTS_LOGIC, shaping),
                stats={"records": result.read.records, "skips": dict(result.skips)},
                run_id=context.run_id,
            )
        )
        outcomes = check_documents(store.iter_frames(manifest, [*DOCUMENT_COLUMNS, "text"]))
        frames = list(store.iter_frames(manifest, DOCUMENT_COLUMNS))
        provenance = pl.concat(frames) if frames else None
        catalog.catalog().record_materialization(manifest, provenance)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.data_version),
            metadata={
                "path": dg.MetadataValue.path(store.url(RAW_DOCUMENTS, key)),
                "files": len(spec["files"]),
                "records_read": result.read.records,
                "documents": result.documents,
                "skipped": dg.MetadataValue.json(dict(sorted(result.skips.items()))),
                "bad_files": dg.MetadataValue.json(result.read.file_errors),
                "payload_bytes": result.read.payload_bytes,
                "output_bytes": manifest.bytes,
                "shards": len(manifest.files),
                "seconds": round(result.seconds, 2),
                "docs_per_second": round(result.docs_per_second, 1),
                "extractor": settings.extractor,
                "data_version": manifest.data_version,
            },
            check_results=[
                dg.AssetCheckResult(check_name=name, passed=outcome.passed, metadata=outcome.metadata)
                for name, outcome in outcomes.items()
            ],
        )

    return raw_documents
