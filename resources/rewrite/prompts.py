"""Prompts fitted to the model's context by tokens, cutting the source text when it is too long."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resources.rewrite.recipes import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: list[int]
    source_tokens_cut: int = 0


class PromptBuilder:
    """Renders recipes and fits them into the context by cutting the source text, by tokens.

    The budget is `max_model_len - max_tokens` (so the answer always fits), lowered further by
    a recipe's `max_prompt_tokens`. Prompts are tokenized here, once, and handed to the backend as
    token ids: what was counted is exactly what the model sees.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def budget(self, recipe: Recipe) -> int:
        budget = self.max_model_len - recipe.sampling.max_tokens
        return min(budget, recipe.max_prompt_tokens) if recipe.max_prompt_tokens else budget

    def overhead(self, recipe: Recipe) -> int:
        """Tokens the template takes with an empty document."""
        return len(self.tokenizer(recipe.render(""))["input_ids"])

    def check(self, recipe: Recipe, min_source_tokens: int = 16) -> None:
        """Fail before generating if a recipe leaves (almost) no room for the document."""
        room = self.budget(recipe) - self.overhead(recipe)
        if room < min_source_tokens:
            raise ValueError(
                f"recipe {recipe.name!r} leaves {room} tokens for the document (max_model_len {self.max_model_len}, "
                f"max_tokens {recipe.sampling.max_tokens}, max_prompt_tokens {recipe.max_prompt_tokens}, "
                f"template {self.overhead(recipe)} tokens): raise max_model_len or lower max_tokens"
            )

    def build(self, recipe: Recipe, texts: Sequence[str]) -> list[Prompt]:
        if not texts:
            return []
        budget = self.budget(recipe)
        encoded = self.tokenizer([recipe.render(text) for text in texts])["input_ids"]
        return [
            Prompt(ids) if len(ids) <= budget else self._cut(recipe, text, budget)
            for text, ids in zip(texts, encoded, strict=True)
        ]

    def _cut(self, recipe: Recipe, text: str, budget: int) -> Prompt:
        """Keep the longest head of the text that fits. Tokens at the cut may merge differently
        once the template follows, so re-encode and shrink until the whole prompt fits."""
        source = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = budget - self.overhead(recipe)
        while True:
            head = self.tokenizer.decode(source[:keep]).rstrip("\ufffd")  # no half a UTF-8 character
            ids = self.tokenizer(recipe.render(head))["input_ids"]
            if len(ids) <= budget or keep <= 0:
                return Prompt(ids, len(source) - keep)
            keep -= len(ids) - budget
