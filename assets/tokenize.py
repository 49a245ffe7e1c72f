"""Tokenization: a BPE tokenizer trained on the corpus (or loaded), then token shards per crawl batch."""

from functools import partial
from pathlib import Path

import dagster as dg

from assets.commit import commit, corpus_model, materialized, record, target, writing
from assets.dedup import DEDUPED
from assets.partitions import crawl_batches
from resources.common.catalog import token_index_frame
from resources.common.model_store import fetch_model, publish_directory
from resources.common.partition_stage import upstream_manifest
from resources.common.sampling import sample_texts
from resources.common.storage import ShardStore
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, ExecutorResource, StorageResource
from resources.tokenize.shards import TokenShardSettings, token_encoder, tokenize_partition, tokenize_partition_on
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
        def build(store: ShardStore, workdir: Path) -> tuple[Path, dict, dict[str, str]]:
            inputs = {}
            if settings.mode == "load":
                trained = load_tokenizer(settings.path)
            else:
                texts, inputs = sample_texts(store, DEDUPED, settings.sample_documents, settings.sample_partitions)
                trained = train_tokenizer(texts, settings, str(workdir))
            return Path(trained.path), {k: v for k, v in trained.metadata().items() if k != "path"}, inputs

        return corpus_model(context, storage, version, build, publish_directory, retrain_on_new_data)

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
        context: dg.AssetExecutionContext,
        storage: StorageResource,
        catalog: CatalogResource,
        executor: ExecutorResource,
    ) -> dg.MaterializeResult:
        mapper = executor.mapper()  # first: a Ray cluster that does not answer fails before any work
        _, crawl_batch = target(context)
        with writing(context, storage) as store:
            tokenizer_dir, tokenizer_manifest = fetch_model(store, TOKENIZER)
            tokenizer = load_tokenizer(tokenizer_dir)
            source = upstream_manifest(store, upstream, crawl_batch)
            columns = settings.input_columns(store.shard_schema(source))
            if mapper is None:
                frames = store.iter_frames(source, columns)
                result = tokenize_partition(store, name, crawl_batch, frames, tokenizer, settings)
            else:
                encoder = partial(token_encoder, store, TOKENIZER, settings)
                paths = store.shard_paths(source)
                result = tokenize_partition_on(
                    mapper, store, name, crawl_batch, paths, columns, encoder, tokenizer, settings
                )
            inputs = {f"{upstream}[{crawl_batch}]": source.data_version, TOKENIZER: tokenizer_manifest.data_version}
            manifest = commit(context, store, version, result.files, inputs=inputs, stats=result.stats)
            record(context, catalog.catalog(), manifest, token_index=token_index_frame(store, manifest))
        return materialized(store, manifest, {**result.stats, "tokens_per_second": round(result.tokens_per_second)})

    return token_shards
