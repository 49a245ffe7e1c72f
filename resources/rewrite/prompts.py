"""Prompts fitted to the model's context by tokens, cutting the source text when it is too long."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from resources.rewrite.recipes import Recipe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ChatTemplateMissing(ValueError):
    """A recipe needs the model's chat template and the model has none."""


@dataclass(frozen=True, slots=True)
class Prompt:
    token_ids: list[int]
    source_tokens_cut: int = 0
    source: str = ""  # the part of the document the prompt holds (all of it unless cut)


class PromptBuilder:
    """Renders recipes and fits them into the context by cutting the source text, by tokens.

    A recipe is chat-formatted with the tokenizer's chat template or sent as a plain prompt (see
    `Recipe.chat_template`). The budget is `max_model_len - max_tokens` (so the answer always
    fits), lowered further by a recipe's `max_prompt_tokens`. Prompts are tokenized here, once,
    and handed to the backend as token ids: what was counted is exactly what the model sees.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_model_len: int, model_name: str = "the model") -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.model_name = model_name
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def uses_chat(self, recipe: Recipe) -> bool:
        if recipe.chat_template == "never":
            return False
        if recipe.chat_template == "required" and not self.has_chat_template:
            raise ChatTemplateMissing(
                f"recipe {recipe.name!r} needs a chat template and {self.model_name} has none (no chat_template.jinja, "
                "chat_template.json or `chat_template` in tokenizer_config.json): use an instruct model, or set "
                f"`chat_template: if_present` (or `never`) on the recipe to send it as a plain prompt"
            )
        return self.has_chat_template

    def render(self, recipe: Recipe, text: str) -> str:
        """The whole prompt as text: the chat with the assistant's turn opened, or the plain
        instruction and its cue."""
        if self.uses_chat(recipe):
            return self.tokenizer.apply_chat_template(recipe.messages(text), tokenize=False, add_generation_prompt=True)
        return recipe.render(text) + recipe.cue

    def encode(self, recipe: Recipe, texts: Sequence[str]) -> list[list[int]]:
        """A chat template writes its own special tokens; a plain prompt gets the tokenizer's (BOS)."""
        rendered = [self.render(recipe, text) for text in texts]
        return self.tokenizer(rendered, add_special_tokens=not self.uses_chat(recipe))["input_ids"]

    def budget(self, recipe: Recipe) -> int:
        budget = self.max_model_len - recipe.sampling.max_tokens
        return min(budget, recipe.max_prompt_tokens) if recipe.max_prompt_tokens else budget

    def overhead(self, recipe: Recipe) -> int:
        """Tokens the template takes with an empty document."""
        return len(self.encode(recipe, [""])[0])

    def check(self, recipe: Recipe, min_source_tokens: int = 16) -> None:
        """Fail before generating if a recipe cannot be rendered for this model, or leaves
        (almost) no room for the document."""
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
        encoded = self.encode(recipe, texts)
        return [
            Prompt(ids, 0, text) if len(ids) <= budget else self._cut(recipe, text, budget)
            for text, ids in zip(texts, encoded, strict=True)
        ]

    def _cut(self, recipe: Recipe, text: str, budget: int) -> Prompt:
        """Keep the longest head of the text that fits. Tokens at the cut may merge differently
        once the template follows, so re-encode and shrink until the whole prompt fits."""
        source = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = budget - self.overhead(recipe)
        while True:
            head = self.tokenizer.decode(source[:keep]).rstrip("\ufffd")  # no half a UTF-8 character
            (ids,) = self.encode(recipe, [head])
            if len(ids) <= budget or keep <= 0:
                return Prompt(ids, len(source) - keep, head)
            keep -= len(ids) - budget
