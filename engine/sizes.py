"""Named model sizes: the one table of the shapes that `crystalline bench`, the bench/ scripts and
docs/BENCHMARKS.md call by name.

A size is a shape only (d_model, n_layer, n_head); the context length, the batch, the
vocabulary and the architecture options belong to whoever trains it. Two families of names:

- XS, S, M and L, each larger than the last. S, M and L are `crystalline bench`'s sizes, and S
  is the daemon's default (crawler.config.DAEMON_DEFAULTS; a test holds the two together).
- every other shape is named after itself, `d<d_model>x<n_layer>` (d192x6: d_model 192, 6
  layers), so that no reader takes it for S, M or L.

Results recorded before this table existed use older names: there "M" is d192x6, "L" is M, and
"S+" is d192x4 (docs/BENCHMARKS.md says where). Knows nothing but engine.config.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, ModelConfig


@dataclass(frozen=True)
class ModelSize:
    """One named shape; `model_config(**settings)` adds the rest of a ModelConfig."""

    name: str
    d_model: int
    n_layer: int
    n_head: int

    def shape(self) -> dict[str, int]:
        """The three ModelConfig fields this size sets."""
        return {"d_model": self.d_model, "n_layer": self.n_layer, "n_head": self.n_head}

    def model_config(self, **settings) -> ModelConfig:
        """A validated ModelConfig of this shape; `settings` are its other fields."""
        return ModelConfig(**self.shape(), **settings).validate()

    def describe(self) -> str:
        """"S (d=128, L=4, H=4)", as the docs write a size."""
        return f"{self.name} (d={self.d_model}, L={self.n_layer}, H={self.n_head})"


SIZES = {size.name: size for size in (
    ModelSize("XS", d_model=64, n_layer=2, n_head=2),  # the daemon's default of issue 4
    ModelSize("S", d_model=128, n_layer=4, n_head=4),  # the daemon's default
    ModelSize("d192x4", d_model=192, n_layer=4, n_head=6),  # bench/model_size.py's candidate
    ModelSize("d192x6", d_model=192, n_layer=6, n_head=6),  # bench/daemon_learning.py's size check
    ModelSize("M", d_model=256, n_layer=6, n_head=8),
    ModelSize("L", d_model=512, n_layer=8, n_head=8),
)}


def parse_size(text: str) -> ModelSize:
    """A size by its name in SIZES, or any shape written d_model:n_layer:n_head: the table's
    size of that shape, else one named after itself (with `h<n_head>` where the name alone is
    the table's). ConfigError naming the choices otherwise."""
    if text in SIZES:
        return SIZES[text]
    try:
        d_model, n_layer, n_head = (int(value) for value in text.split(":"))
    except ValueError:
        raise ConfigError(f"size {text!r} is neither a name ({', '.join(SIZES)}) "
                          "nor d_model:n_layer:n_head") from None
    if min(d_model, n_layer, n_head) < 1 or d_model % n_head:
        raise ConfigError(f"size {text!r}: each of d_model:n_layer:n_head must be positive, "
                          "and n_head must divide d_model")
    shape = (d_model, n_layer, n_head)
    named = next((size for size in SIZES.values() if (size.d_model, size.n_layer, size.n_head) == shape), None)
    if named is not None:
        return named
    name = f"d{d_model}x{n_layer}"
    return ModelSize(name if name not in SIZES else f"{name}h{n_head}", *shape)
