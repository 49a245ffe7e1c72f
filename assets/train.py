"""Training: a Llama-style checkpoint from every crawl batch's token shards, resumable, kept as a
history of generations, each naming the exact shards (and data versions) it was trained on."""

import dagster as dg

from assets.commit import commit, materialized, record, writing
from assets.tokenize import TOKENIZER
from resources.common.catalog import LineageCatalog
from resources.common.model_store import fetch_model
from resources.common.versioning import OutputVersion
from resources.lineage.audit import checkpoint_lineage, checkpoint_summary
from resources.lineage.checkpoints import checkpoint_record, step_manifests
from resources.lineage.settings import TakedownSettings
from resources.lineage.takedown import withdrawn_versions
from resources.resources import CatalogResource, StorageResource
from resources.train.config import TrainConfig
from resources.train.generations import CHECKPOINT, train_generation
from resources.train.mixture import (
    TRAINING_MIXTURE,
    MixtureSettings,
    crawl_batch_versions,
    mixture_sources,
    weigh,
    write_mixture,
)

TRAIN_LOGIC = "1"
CRAWL_BATCHES = "crawl_batches"  # metadata: crawl batch -> version, in the mixture and what a checkpoint saw


def lineage_table(lineage: LineageCatalog, checkpoint: str) -> dg.MetadataValue:
    """The checkpoint's data per source, as `crawl2ckpt lineage checkpoint` shows it."""
    with lineage.connect(read_only=True) as con:
        rows = checkpoint_summary(checkpoint_lineage(con, checkpoint))
    columns = [("source", "string"), ("crawl_batches", "int"), ("token_files", "int"), ("documents", "int")]
    columns += [("tokens", "int"), ("data_versions", "int"), ("code_versions", "string")]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )


def build_checkpoint(settings: TrainConfig, takedown: TakedownSettings | None = None) -> dg.AssetsDefinition:
    """`takedown.retrain_from`: where a continued generation starts when the latest saw withdrawn data."""
    restart = (takedown or TakedownSettings()).retrain_from
    version = OutputVersion(TRAIN_LOGIC, settings.output_shaping())

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
        from resources.train.checkpoints import loss_curve_markdown  # torch: only where a checkpoint is made

        lineage = catalog.catalog()
        with writing(context, storage) as store:
            tokenizer_dir, tokenizer_manifest = fetch_model(store, TOKENIZER)
            trained = train_generation(
                store,
                settings,
                tokenizer_dir,
                {TOKENIZER: tokenizer_manifest.data_version},
                lambda values: context.log.info(f"step {values}"),
                withdrawn=withdrawn_versions(lineage),
                restart=restart,
            )
            # collect=False: earlier generations stay, audits may ask about any of them
            manifest = commit(
                context, store, version, trained.files, inputs=trained.inputs, stats=trained.stats, collect=False
            )
            record(context, lineage, manifest)
            name = str(trained.stats["checkpoint"])
            for step, step_manifest in step_manifests(store, CHECKPOINT, run=name.split("/")[0]):
                found = checkpoint_record(step, step_manifest)
                lineage.record_checkpoint(found.row, found.inputs, output=step == name)
        final = trained.result.checkpoint
        metadata = {
            "checkpoint": dg.MetadataValue.path(str(final)),
            **trained.summary(),
            CRAWL_BATCHES: dg.MetadataValue.json(trained.crawl_batches),
            "loss_curve": dg.MetadataValue.md(loss_curve_markdown(final)),
            "lineage": lineage_table(lineage, name),
        }
        return materialized(store, manifest, metadata)

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
        with writing(context, storage) as store:
            sources = weigh(mixture_sources(store, token_assets), settings.weights)
            files, inputs = write_mixture(store, sources)
            manifest = commit(context, store, version, files, inputs=inputs)
        return materialized(
            store,
            manifest,
            {
                **{
                    name: dg.MetadataValue.json({k: v for k, v in s.items() if k != "partitions"})
                    for name, s in sources.items()
                },
                CRAWL_BATCHES: dg.MetadataValue.json(crawl_batch_versions(sources)),
            },
        )

    return training_mixture
