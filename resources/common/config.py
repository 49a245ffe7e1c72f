"""The base of every settings section: a key that is not a setting is an error naming it when the code
location loads, never silently ignored."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
