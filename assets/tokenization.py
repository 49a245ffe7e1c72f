"""Tokenization: a BPE tokenizer trained on the corpus (or loaded), then token shards per crawl batch."""

import tempfile
from pathlib import Path

import dagster as dg

from assets.dedup import DEDUPED
from assets.stage_results import model_manifest, model_result, reuse_trained
from jobs.partitions import crawl_batches
from resources.dagster_resources import CatalogResource, StorageResource
from resources.model_store import fetch_model, publish_directory
from resources.partition_stage import upstream_manifest
from resources.storage import Manifest
from resources.token_shards import TokenShardSettings, tokenize_partition
from resources.tokenizer import TokenizerSettings, load_tokenizer, sample_texts, train_tokenizer
from resources.versioning import code_version, config_hash

TOKENIZER = "tokenizer"
TOKEN_SHARDS = "token_shards"
TOKENIZE_LOGIC = "1"


def build_tokenizer(settings: TokenizerSettings, retrain_on_new_data: bool = False) -> dg.AssetsDefinition:
    shaping = settings.model_dump()
    version = code_version(TOKENIZE_LOGIC, shaping)

    @dg.asset(
        name=TOKENIZER,
        deps=[DEDUPED],
        code_version=version,
        group_name="tokenize",
        kinds={"huggingface"},
        description="Byte-level BPE trained on a sample of the deduplicated corpus (the documents with the "
        "smallest doc_id over all batches), loadable by AutoTokenizer; or an existing tokenizer (`mode: load`).",
    )
    def tokenizer(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        store = storage.store()
        reused = None if retrain_on_new_data else reuse_trained(store, TOKENIZER, version)
        if reused is not None:
            return reused
        manifest = model_manifest(TOKENIZER, shaping, version, context.run_id)
        with tempfile.TemporaryDirectory() as workdir:
            if settings.mode == "load":
                trained = load_tokenizer(settings.path)
            else:
                manifests = list(store.iter_manifests(DEDUPED))
                manifest.inputs = {f"{DEDUPED}[{m.partition}]": m.data_version for m in manifests}
                frames = (f for m in manifests for f in store.iter_frames(m, ["doc_id", "text"]))
                trained = train_tokenizer(sample_texts(frames, settings.sample_documents), settings, workdir)
            manifest.stats = {k: v for k, v in trained.metadata().items() if k != "path"}
            manifest = publish_directory(store, TOKENIZER, Path(trained.path), manifest)
        return model_result(store, manifest)

    return tokenizer


def build_token_shards(
    settings: TokenShardSettings, name: str = TOKEN_SHARDS, upstream: str = DEDUPED
) -> dg.AssetsDefinition:
    """Token shards of one document asset per crawl batch (natural documents, or synthetic ones)."""
    shaping = settings.output_shaping()
    version = code_version(TOKENIZE_LOGIC, shaping)

    @dg.asset(
        name=name,
        partitions_def=crawl_batches,
        deps=[upstream, TOKENIZER],
        code_version=version,
        group_name="tokenize",
        kinds={"numpy"},
        description="Flat uint16/uint32 token arrays (EOS after every document) with an index "
        "(doc_id, offset, length, split) tracing every token to its document.",
    )
    def token_shards(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, key = storage.store(), context.partition_key
        tokenizer_dir, tokenizer_manifest = fetch_model(store, TOKENIZER)
        tokenizer = load_tokenizer(tokenizer_dir)
        source = upstream_manifest(store, upstream, key)
        columns = settings.input_columns(store.shard_schema(source))
        result = tokenize_partition(store, name, key, store.iter_frames(source, columns), tokenizer, settings)
        manifest = store.commit(
            Manifest(
                asset=name,
                partition=key,
                files=result.files,
                config_hash=config_hash(shaping),
                code_version=version,
                inputs={f"{upstream}[{key}]": source.data_version, TOKENIZER: tokenizer_manifest.data_version},
                stats=result.stats,
                run_id=context.run_id,
            )
        )
        catalog.catalog().record_materialization(manifest)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.data_version),
            metadata={
                **result.stats,
                "tokens_per_second": round(result.tokens_per_second),
                "path": dg.MetadataValue.path(store.url(name, key)),
            },
        )

    return token_shards
