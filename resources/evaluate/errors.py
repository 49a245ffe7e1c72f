"""The errors of the evaluation engines (scoring, lm-eval tasks, the evaluator and its history): one
family, so an asset, a test or a user catches a bad eval set or checkpoint the same way."""


class EvaluationError(ValueError):
    """An evaluation that cannot run on what it was given."""


class EvalSetError(EvaluationError):
    """An eval set or task file that is missing, empty or unreadable."""


class CheckpointLoadError(EvaluationError):
    """A checkpoint directory that does not load as a model with its tokenizer."""
