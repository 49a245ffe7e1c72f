"""Training: a Llama-style checkpoint from every crawl batch's token shards, resumable, kept as a
history of generations, each naming the exact shards (and data versions) it was trained on."""

from pathlib import Path

import dagster as dg

from assets.commit import commit, materialized
from assets.tokenize import TOKENIZER
from resources.common.model_store import MODEL, fetch_model
from resources.common.partition_stage import upstream_manifest
from resources.common.storage import ShardStore, stable_hash
from resources.common.versioning import OutputVersion
from resources.resources import CatalogResource, StorageResource
from resources.tokenize.shards import TOKEN_INDEX, TOKENS
from resources.tokenize.tokenizer import load_tokenizer
from resources.train.checkpoints import PLOT_FILE
from resources.train.config import RunSpec, TrainConfig
from resources.train.data import TokenFile, TokenSource, with_replay
from resources.train.loss_curve import loss_curve_markdown
from resources.train.mixture import (
    TRAINING_MIXTURE,
    MixtureSettings,
    mixture_sources,
    read_mixture,
    weigh,
    write_mixture,
)
from resources.train.trainer import train

CHECKPOINT = "checkpoint"
TRAIN_LOGIC = "1"


def token_files(
    store: ShardStore, asset: str, partitions: dict[str, str], drop_prefix: bool = False
) -> list[TokenFile]:
    """The train split of the named token-shard partitions, in order, memory-mapped (from a local
    mirror when the store is remote); `drop_prefix` leaves out the MeCo metadata prefixes (the
    cool-down's view of the same shards)."""
    files = []
    for key in partitions:
        manifest = upstream_manifest(store, asset, key)
        root = store.local_partition(manifest)
        tokens = sorted(f.path for f in manifest.files if f.table == TOKENS)
        indexes = sorted(f.path for f in manifest.files if f.table == TOKEN_INDEX)
        for path, index in zip(tokens, indexes, strict=True):
            files.append(
                TokenFile.from_index(
                    str(root / path),
                    str(root / index),
                    dtype=manifest.stats["dtype"],
                    data_version=manifest.data_version,
                    drop_prefix=drop_prefix,
                )
            )
    return files


def mixture_token_sources(store: ShardStore, mixture: dict[str, dict], drop_prefix: bool = False) -> list[TokenSource]:
    return [
        TokenSource(name, token_files(store, spec["asset"], spec["partitions"], drop_prefix), spec["weight"])
        for name, spec in mixture.items()
        if spec.get("weight", 0) > 0
    ]


def build_checkpoint(settings: TrainConfig) -> dg.AssetsDefinition:
    shaping = settings.output_shaping()
    version = OutputVersion(TRAIN_LOGIC, shaping)

    @dg.asset(
        name=CHECKPOINT,
        deps=[TRAINING_MIXTURE, TOKENIZER],
        code_version=version.code_version,
        group_name="train",
        kinds={"pytorch"},
        pool="gpu",
        description="A transformers Llama checkpoint (loads with AutoModelForCausalLM and vLLM) trained on "
        "the token shards of every crawl batch; killed runs resume from their last checkpoint.",
    )
    def checkpoint(
        context: dg.AssetExecutionContext, storage: StorageResource, catalog: CatalogResource
    ) -> dg.MaterializeResult:
        store = storage.store()
        tokenizer_dir, tokenizer_manifest = fetch_model(store, TOKENIZER)
        tokenizer = load_tokenizer(tokenizer_dir)
        mixture, mixture_version = read_mixture(store)
        sources = mixture_token_sources(store, mixture)
        files = [f for source in sources for f in source.files]
        previous = store.read_manifest(CHECKPOINT, None)
        continue_from = None
        if settings.continue_training and previous is not None:
            # Continual pre-training: new shards, plus a replay fraction of what the last generation saw.
            seen = set(previous.inputs.values())
            new = [TokenSource(s.name, [f for f in s.files if f.data_version not in seen], s.weight) for s in sources]
            new = [s for s in new if s.files]
            old = [f for f in files if f.data_version in seen]
            if new:
                sources = with_replay(new, old, settings.replay_fraction if old else 0.0)
                continue_from = str(store.local_partition(previous) / previous.stats["checkpoint"])
        inputs = {f"{Path(f.path).parent.parent.name}/{Path(f.path).name}": f.data_version for f in files}
        inputs[TOKENIZER] = tokenizer_manifest.data_version
        inputs[TRAINING_MIXTURE] = mixture_version
        # One run directory per (settings, data): rerunning after a kill resumes it; new data or
        # settings start a new generation beside the old ones.
        run_name = f"run-{stable_hash([shaping, inputs, continue_from])[:12]}"
        run_dir = store.local_dir(CHECKPOINT, None) / run_name  # remote stores: trained locally, final step uploaded
        spec = RunSpec(
            out_dir=str(run_dir),
            vocab_size=tokenizer.vocab_size,
            tokenizer_path=str(tokenizer_dir),
            eos_token_id=tokenizer.eos_id,
            continue_from=continue_from,
        )
        prefixed = any(
            m.stats.get("metadata_prefix", "none") != "none"
            for spec in mixture.values()
            for m in store.iter_manifests(spec["asset"])
        )
        # A continued run trains on new shards plus replay, which the plain view of the whole mixture
        # does not match: MeCo's cool-down applies to runs from scratch.
        cooldown = mixture_token_sources(store, mixture, drop_prefix=True) if prefixed and not continue_from else None
        result = train(settings, spec, sources, lambda values: context.log.info(f"step {values}"), cooldown)
        final = result.checkpoint
        shards = store.publish_files(
            CHECKPOINT, None, run_dir.parent, sorted(p for p in final.iterdir() if p.is_file()), MODEL
        )
        stats = {"checkpoint": str(final.relative_to(run_dir.parent)), "step": result.step}
        # collect=False: earlier generations stay, audits may ask about any of them
        manifest = commit(context, store, version, shards, inputs=inputs, stats=stats, collect=False)
        catalog.catalog().record_materialization(manifest)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(manifest.data_version),
            metadata={
                "checkpoint": dg.MetadataValue.path(str(final)),
                "step": result.step,
                "final_loss": round(result.final_loss, 4),
                "tokens_seen": result.tokens_seen,
                "tokens_per_second": round(result.tokens_per_s, 1),
                "mfu": round(result.mfu, 4) if result.mfu is not None else None,
                "parameters": result.params,
                "resumed_from": str(result.resumed_from or ""),
                "continued_from": continue_from or "",
                "loss_curve": dg.MetadataValue.md(loss_curve_markdown(final / PLOT_FILE)),
                "token_shards": len(files),
            },
        )

    return checkpoint


def build_training_mixture(settings: MixtureSettings, token_assets: dict[str, str]) -> dg.AssetsDefinition:
    version = OutputVersion("1", settings.output_shaping(token_assets))

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
        sources = weigh(mixture_sources(store, token_assets), settings.weights)
        files, inputs = write_mixture(store, sources)
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
