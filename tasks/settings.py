"""The base of every typed settings model (a profile section, a recipe, a run config).

    class Recipe(Settings):
        lr: float = 1e-4

Unknown keys and values of the wrong type are errors raised when the settings are built (pydantic, lax mode: YAML's
"5e-4" string is read as a number, "abc" is not); instances are immutable, so a stage cannot change what its cache
key was computed from.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Typed, immutable settings: extra keys forbidden."""

    model_config = ConfigDict(extra="forbid", frozen=True)
