"""Tokenization: a BPE tokenizer trained on the corpus (or loaded), then token shards per crawl batch."""

from pathlib import Path

import dagster as dg

from assets.commit import commit, corpus_model, materialized, target
from assets.dedup import DEDUPED
from assets.partitions import crawl_batches
from resources.common.model_store import fetch_model, publish_directory
from resources.common.partition_stage import upstream_manifest
from resources.common.sampling import sample_texts
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, StorageResource
from resources.tokenize.shards import TokenShardSettings, tokenize_partition
from resources.tokenize.tokenizer import TokenizerSettings, load_tokenizer, train_tokenizer

TOKENIZER = "tokenizer"
TOKEN_SHARDS = "token_shards"
TOKENIZE_LOGIC = "1"


def build_tokenizer(settings: TokenizerSettings, retrain_on_new_data: bool = False) -> dg.AssetsDefinition:
    version = OutputVersion(TOKENIZE_LOGIC, settings.model_dump())

    @dg.asset(
        name=TOKENIZER,
        deps=[DEDUPED],
        code_version=version.code_version,
        group_name="tokenize",
        kinds={"huggingface"},
        description="Byte-level BPE trained on a sample of the deduplicated corpus (the documents with the "
        "smallest doc_id in crawl batches picked by key hash), loadable by AutoTokenizer; or an existing "
        "tokenizer (`mode: load`).",
    )
    def tokenizer(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        store = storage.store()

        def build(workdir: Path) -> tuple[Path, dict, dict[str, str]]:
            inputs = {}
            if settings.mode == "load":
                trained = load_tokenizer(settings.path)
            else:
                texts, inputs = sample_texts(store, DEDUPED, settings.sample_documents, settings.sample_partitions)
                trained = train_tokenizer(texts, settings, str(workdir))
            return Path(trained.path), {k: v for k, v in trained.metadata().items() if k != "path"}, inputs

        return corpus_model(context, store, version, build, publish_directory, retrain_on_new_data)

    return tokenizer


def build_token_shards(
    settings: TokenShardSettings, name: str = TOKEN_SHARDS, upstream: str = DEDUPED
) -> dg.AssetsDefinition:
    """Token shards of one document asset per crawl batch (natural documents, or synthetic ones)."""
    version = OutputVersion(TOKENIZE_LOGIC, settings.output_shaping())

    @dg.asset(
        name=name,
        partitions_def=crawl_batches,
        deps=[upstream, TOKENIZER],
        code_version=version.code_version,
        group_name="tokenize",
        kinds={"numpy"},
        description="Flat uint16/uint32 token arrays (EOS after every document) with an index "
        "(doc_id, offset, length, split) tracing every token to its document.",
    )
    def token_shards(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, (_, crawl_batch) = storage.store(), target(context)
        tokenizer_dir, tokenizer_manifest = fetch_model(store, TOKENIZER)
        tokenizer = load_tokenizer(tokenizer_dir)
        source = upstream_manifest(store, upstream, crawl_batch)
        columns = settings.input_columns(store.shard_schema(source))
        result = tokenize_partition(store, name, crawl_batch, store.iter_frames(source, columns), tokenizer, settings)
        inputs = {f"{upstream}[{crawl_batch}]": source.data_version, TOKENIZER: tokenizer_manifest.data_version}
        manifest = commit(context, store, version, result.files, inputs=inputs, stats=result.stats)
        catalog.catalog().record_materialization(manifest)
        return materialized(store, manifest, {**result.stats, "tokens_per_second": round(result.tokens_per_second)})

    return token_shards
