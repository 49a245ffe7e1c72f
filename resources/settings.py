"""Pipeline settings, loaded once when the code location is built.

Settings that shape an asset's output feed its `code_version`, and Dagster only reads
code versions at definition time, so these live in a YAML file chosen by
`CRAWL2CKPT_CONFIG` rather than in per-run config.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from resources.common.automation import AutomationSettings
from resources.common.catalog import CatalogSettings
from resources.common.config import Section
from resources.common.executor import ExecutorKind, RaySettings
from resources.common.paths import PROJECT_ROOT, config_file
from resources.common.paths import absolute as _absolute
from resources.common.storage import StorageSettings
from resources.dedup.settings import DedupStageSettings
from resources.evaluate.settings import EvaluationSettings
from resources.filter.decontamination import DecontaminationSettings
from resources.filter.engine import FilterSettings, QualityStageSettings
from resources.ingest.engine import IngestSettings
from resources.ingest.sources import SourceSettings
from resources.lineage.settings import TakedownSettings
from resources.rewrite.rewriter import RewriteSettings
from resources.tokenize.shards import TokenShardSettings
from resources.tokenize.tokenizer import TokenizerSettings
from resources.train.config import TrainConfig
from resources.train.mixture import MixtureSettings


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
    automation: AutomationSettings = Field(default_factory=AutomationSettings)
    executor: Literal["in_process", "multiprocess"] = Field(
        default="in_process",
        description="how a run executes its steps: one after another in the run's process (the code is loaded "
        "once per run), or a process per step (isolates GPU memory between steps; loads the code per step)",
    )
    takedown: TakedownSettings = Field(default_factory=TakedownSettings)
    shard_executor: ExecutorKind = Field(
        default="local", description="ray: the map stages' per-shard work as Ray tasks (outputs are the same)"
    )
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _ray_needs_an_address(self) -> Settings:
        if self.shard_executor == "ray":
            self.ray.host_port()  # raises for a missing or malformed address
        return self

    def resolved(self, base: Path = PROJECT_ROOT) -> Settings:
        """Relative local paths are taken from the project root, not the current directory."""
        classifier = self.quality.classifier
        language = self.filter.language
        reference = self.evaluation.reference
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
                        "reference": reference
                        and reference.model_copy(update={"path": reference.path and _absolute(reference.path, base)}),
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


class SettingsError(ValueError):
    """A settings file that does not parse or validate: every problem, each naming its key."""


class _SettingsLoader(yaml.SafeLoader):
    """`yaml.safe_load` (no Python objects from YAML tags) with YAML 1.2 scalars: `1e-3` is a
    float (YAML 1.1 reads it as a string) and only true/false are booleans (YAML 1.1 reads
    `no`, `off`, `y` as booleans: Norway's language code `no` would become `false`)."""


_SettingsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SettingsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_settings(text: str, origin: str = "settings") -> Settings:
    """Strict: a value of the wrong type is an error, never coerced (the string "no" is not a
    boolean, "1e-3" in quotes is not a number), and an unknown key is an error naming it."""
    try:
        raw = yaml.load(text, Loader=_SettingsLoader) or {}  # a SafeLoader: no Python tags
    except yaml.YAMLError as exc:
        raise SettingsError(f"{origin}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{origin}: the top level must be a mapping of sections, not {type(raw).__name__}")
    try:
        # JSON mode: strict, yet a string is still a path and a list a tuple, as in YAML.
        return Settings.model_validate_json(json.dumps(raw, default=str), strict=True)
    except ValidationError as exc:
        problems = [_problem(error) for error in exc.errors()]
        raise SettingsError(f"{origin}: {len(problems)} invalid setting(s):\n  " + "\n  ".join(problems)) from None


def _problem(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {error['msg']} (got {error['input']!r})"


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read the YAML named by the argument, else `$CRAWL2CKPT_CONFIG`, else configs/demo.yaml."""
    config_path = config_file(path)
    return parse_settings(config_path.read_text(), str(config_path)).resolved()
