"""Pipeline settings, loaded once when the code location is built.

Settings that shape an asset's output feed its `code_version`, and Dagster only reads
code versions at definition time, so these live in a YAML file chosen by
`CRAWL2CKPT_CONFIG` rather than in per-run config.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import Field, model_validator

from resources.common.catalog import CatalogSettings
from resources.common.config import Section
from resources.common.executor import ExecutorKind, RaySettings
from resources.common.storage import StorageSettings
from resources.dedup.settings import DedupStageSettings
from resources.evaluate.settings import EvaluationSettings
from resources.filter.decontamination import DecontaminationSettings
from resources.filter.engine import FilterSettings, QualityStageSettings
from resources.ingest.engine import IngestSettings
from resources.ingest.sources import SourceSettings
from resources.rewrite.rewriter import RewriteSettings
from resources.tokenize.shards import TokenShardSettings
from resources.tokenize.tokenizer import TokenizerSettings
from resources.train.config import TrainConfig
from resources.train.mixture import MixtureSettings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"


def _default_decontamination() -> DecontaminationSettings:
    return DecontaminationSettings(eval_sets={"wikitext2_valid": "data/eval/wikitext2_valid_small.txt"})


class Settings(Section):
    storage: StorageSettings = Field(default_factory=StorageSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    source: SourceSettings = Field(default_factory=SourceSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    decontamination: DecontaminationSettings = Field(default_factory=_default_decontamination)
    quality: QualityStageSettings = Field(default_factory=QualityStageSettings)
    dedup: DedupStageSettings = Field(default_factory=DedupStageSettings)
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    retrain_tokenizer_on_new_data: bool = Field(
        default=False, description="off: the tokenizer is trained once, new crawl batches do not change it"
    )
    token_shards: TokenShardSettings = Field(default_factory=TokenShardSettings)
    rewrite: RewriteSettings | None = Field(default=None, description="off when unset: no synthetic documents")
    mixture: MixtureSettings = Field(default_factory=MixtureSettings)
    training: TrainConfig = Field(default_factory=TrainConfig)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    executor: ExecutorKind = Field(
        default="local", description="ray: the map stages' per-shard work as Ray tasks (outputs are the same)"
    )
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _ray_needs_an_address(self) -> Settings:
        if self.executor == "ray":
            self.ray.host_port()  # raises for a missing or malformed address
        return self

    def resolved(self, base: Path = PROJECT_ROOT) -> Settings:
        """Relative local paths are taken from the project root, not the current directory."""
        classifier = self.quality.classifier
        language = self.filter.language
        return self.model_copy(
            update={
                "filter": self.filter.model_copy(
                    update={
                        "language": language.model_copy(
                            update={"model_path": language.model_path and _absolute(language.model_path, base)}
                        )
                    }
                ),
                "decontamination": self.decontamination.model_copy(
                    update={"eval_sets": {k: _absolute(v, base) for k, v in self.decontamination.eval_sets.items()}}
                ),
                "quality": self.quality.model_copy(
                    update={
                        "classifier": classifier.model_copy(
                            update={
                                "reference_files": [_absolute(f, base) for f in classifier.reference_files],
                                "model_path": classifier.model_path and _absolute(classifier.model_path, base),
                            }
                        )
                    }
                ),
                "tokenizer": self.tokenizer.model_copy(
                    update={"path": self.tokenizer.path and _absolute(self.tokenizer.path, base)}
                ),
                "rewrite": self.rewrite
                and self.rewrite.model_copy(
                    update={
                        "model": self.rewrite.model.model_copy(
                            update={"path": self.rewrite.model.path and _absolute(self.rewrite.model.path, base)}
                        )
                    }
                ),
                "storage": self.storage.model_copy(update={"root": _absolute(self.storage.root, base)}),
                "catalog": self.catalog.model_copy(update={"path": _absolute(self.catalog.path, base)}),
                "evaluation": self.evaluation.model_copy(
                    update={
                        "eval_sets": {
                            name: spec.model_copy(update={"path": _absolute(spec.path, base)})
                            for name, spec in self.evaluation.specs().items()
                        },
                        "lm_eval": self.evaluation.lm_eval and self.evaluation.lm_eval.resolved(base),
                    }
                ),
                "source": self.source.model_copy(
                    update={
                        "url": _absolute(self.source.url, base),
                        "listing": self.source.listing and _absolute(self.source.listing, base),
                    }
                ),
            }
        )


def _absolute(path: str, base: Path) -> str:
    if "://" in path or Path(path).is_absolute():
        return path
    return str((base / path).resolve())


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the YAML named by the argument, else `$CRAWL2CKPT_CONFIG`, else configs/demo.yaml."""
    config_path = Path(path or os.environ.get("CRAWL2CKPT_CONFIG") or DEFAULT_CONFIG)
    if not config_path.is_file():
        raise FileNotFoundError(f"crawl2ckpt config not found: {config_path}")
    raw = yaml.safe_load(config_path.read_text()) or {}
    return Settings.model_validate(raw).resolved()
