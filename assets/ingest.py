"""Crawl ingest: registered crawl batches become extracted documents with provenance."""

from functools import partial

import dagster as dg

from assets.commit import blocking_check_specs, commit, materialized, record, target, writing
from assets.partitions import crawl_batches
from resources.common.versioning import OutputVersion
from resources.ingest.engine import IngestSettings, ingest_files
from resources.ingest.sources import BatchRegistry, SourceSettings
from resources.resources import CatalogResource, ExecutorResource, StorageResource

RAW_DOCUMENTS = "raw_documents"
# Bump when a change to the ingest code changes the documents it writes.
RAW_DOCUMENTS_LOGIC = "1"
DOCUMENT_CHECKS = ("unique_doc_id", "no_empty_text", "provenance_complete")


def build_raw_documents(settings: IngestSettings, source: SourceSettings) -> dg.AssetsDefinition:
    """`source` says how to open crawl files (its fsspec options and credentials, not the store's)."""
    version = OutputVersion(RAW_DOCUMENTS_LOGIC, settings.output_shaping())

    @dg.asset(
        name=RAW_DOCUMENTS,
        partitions_def=crawl_batches,
        code_version=version.code_version,
        group_name="ingest",
        kinds={"parquet"},
        # documents without provenance, empty or with clashing ids stop here, before any stage uses them
        check_specs=blocking_check_specs(RAW_DOCUMENTS, DOCUMENT_CHECKS),
        description=f"Main text of every HTML page and WET record of a crawl batch ({settings.extractor}).",
    )
    def raw_documents(
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        catalog: CatalogResource,
        executor: ExecutorResource,
    ) -> dg.MaterializeResult:
        mapper = executor.mapper()  # first: a Ray cluster that does not answer fails before any work
        _, crawl_batch = target(context)
        with writing(context, storage) as store:
            spec = BatchRegistry(store).spec(crawl_batch)
            result = ingest_files(
                spec["files"],
                crawl_batch=crawl_batch,
                settings=settings,
                write_shard=partial(store.write_parquet_shard, RAW_DOCUMENTS, crawl_batch),
                crawl=spec["crawl"],
                storage_options=source.fs_options(),
                log=context.log.info,
                mapper=mapper,
            )
            for path, error in result.read.file_errors.items():
                context.log.warning(f"{path}: {error}")
            stats = {"records": result.read.records, "skips": dict(result.skips)}
            manifest = commit(context, store, version, result.shards, stats=stats)
            record(context, catalog.catalog(), manifest, result.provenance)
        return materialized(
            store,
            manifest,
            {
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
            [
                dg.AssetCheckResult(check_name=check.name, passed=check.passed, metadata=check.metadata)
                for check in result.checks.outcomes()
            ],
        )

    return raw_documents
