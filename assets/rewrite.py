"""Synthetic rewriting with vLLM, and the training mixture of natural and synthetic token shards."""

import json
import posixpath

import dagster as dg

from assets.commit import commit, materialized, stage_check_specs, stage_result, target
from assets.dedup import DEDUPED
from assets.partitions import crawl_batches
from resources.common.storage import ShardInfo, ShardStore, sha256_bytes
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, StorageResource
from resources.rewrite.rewriter import LOGIC_VERSION, Rewriter, RewriteSettings, rewrite_partition
from resources.settings import MixtureSettings

SYNTHETIC = "synthetic_documents"
TRAINING_MIXTURE = "training_mixture"
MIXTURE_FILE = "mixture.json"


def build_synthetic_documents(settings: RewriteSettings) -> dg.AssetsDefinition:
    version = OutputVersion(LOGIC_VERSION, settings.output_shaping())

    @dg.asset(
        name=SYNTHETIC,
        partitions_def=crawl_batches,
        deps=[DEDUPED],
        code_version=version.code_version,
        group_name="rewrite",
        kinds={"vllm"},
        pool="gpu",
        check_specs=stage_check_specs(SYNTHETIC),
        description="Documents rewritten by the configured recipes with vLLM; every row names its "
        "source_doc_id, recipe and version, model, sampling and seed. Resumes shard by shard.",
    )
    def synthetic_documents(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store, (_, key) = storage.store(), target(context)
        with Rewriter(settings) as rewriter:  # shuts the engine down: a vLLM step would hang at exit
            output = rewrite_partition(
                store,
                rewriter,
                version,
                asset=SYNTHETIC,
                upstream=DEDUPED,
                partition=key,
                run_id=context.run_id,
                on_shard=lambda i, n, stats: context.log.info(f"shard {i + 1}/{n}: {stats.to_dict()}"),
            )
        # Several recipes write several documents per source: the keep rate may exceed 1.
        return stage_result(
            store,
            catalog.catalog(),
            output,
            (0.0, float(len(settings.recipes)) + 1.0),
            {"output_tokens": output.stats.output_tokens, "model": rewriter.model_name},
            overlap_exempt={"duplicate_output"},
        )

    return synthetic_documents


def mixture_sources(store: ShardStore, assets: dict[str, str]) -> dict[str, dict]:
    """Per source: its token-shard partitions with data versions and train tokens."""
    sources = {}
    for source, asset in assets.items():
        partitions = {m.partition: m for m in store.iter_manifests(asset)}
        sources[source] = {
            "asset": asset,
            "partitions": {key: m.data_version for key, m in sorted(partitions.items())},
            "train_tokens": sum(m.stats["tokens"] - m.stats["validation_tokens"] for m in partitions.values()),
        }
    return sources


def build_training_mixture(settings: MixtureSettings, token_assets: dict[str, str]) -> dg.AssetsDefinition:
    version = OutputVersion("1", {"weights": settings.weights, "sources": token_assets})

    @dg.asset(
        name=TRAINING_MIXTURE,
        deps=list(token_assets.values()),
        code_version=version.code_version,
        group_name="train",
        kinds={"json"},
        description="Natural and synthetic token shards combined by configured weights; records how "
        "much each source is up- or down-sampled and names every input partition and data version.",
    )
    def training_mixture(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
        store = storage.store()
        sources = mixture_sources(store, token_assets)
        weights = {name: settings.weights.get(name, 0.0) for name in sources if sources[name]["train_tokens"]}
        total_weight, total_tokens = sum(weights.values()), sum(s["train_tokens"] for s in sources.values())
        if not total_weight:
            raise ValueError(f"training_mixture: no source with tokens has a positive weight ({settings.weights})")
        for name, source in sources.items():
            share = weights.get(name, 0.0) / total_weight
            source.update(weight=share, sampling_factor=round(share / (source["train_tokens"] / total_tokens), 4)
                          if source["train_tokens"] else 0.0)  # fmt: skip
        body = json.dumps(sources, indent=2, sort_keys=True).encode()
        directory = store.partition_dir(TRAINING_MIXTURE, None)
        store.write_bytes(posixpath.join(directory, MIXTURE_FILE), body)
        files = [ShardInfo(MIXTURE_FILE, 0, len(body), sha256_bytes(body), "mixture")]
        inputs = {f"{s['asset']}[{key}]": dv for s in sources.values() for key, dv in s["partitions"].items()}
        manifest = commit(context, store, version, files, inputs=inputs)
        return materialized(
            store,
            manifest,
            {
                name: dg.MetadataValue.json({k: v for k, v in s.items() if k != "partitions"})
                for name, s in sources.items()
            },
        )

    return training_mixture


def read_mixture(store: ShardStore) -> tuple[dict[str, dict], str]:
    manifest = store.read_manifest(TRAINING_MIXTURE, None)
    if manifest is None:
        raise FileNotFoundError(f"{TRAINING_MIXTURE} is not materialized: materialize it first")
    path = posixpath.join(store.partition_dir(TRAINING_MIXTURE, None), MIXTURE_FILE)
    return json.loads(store.read_bytes(path)), manifest.data_version
