"""How much STATE_DIR/checkpoints will hold as the model grows: `forecast_checkpoints`, a pure
estimate that `crystalline status` sets beside what the folder holds now and its cap
(`[daemon] checkpoints_max_mb`). A growing model's checkpoints grow with it (issue 25): a cap
that fits 4 layers may not fit 12, and the cap would then delete checkpoints retention keeps.

What is counted is what retention keeps (CheckpointStore.prune, crawler/training/checkpoints.py):
- the newest `keep_checkpoints` rolling files. prune counts rows, whatever shape their files
  hold, so a checkpoint of a depth outgrown stays one of the `keep` until newer ones push it out:
  the folder never holds more than `keep` rolling files, so `keep` files of the largest shape
  bound it;
- best.safetensors beside them, outside the count (the cooled copy of the model, its shape);
- for a moment, one rolling file more: a checkpoint is committed before prune deletes the oldest
  (`peak_bytes`; the cap is enforced after that, so it is never held to this figure).
Not counted: quarantine/ (its own folder, under `quarantine_max_mb`), the rolling files of another
command (`train` beside `run`: retention by count leaves them, only the cap deletes them), files
no row names, and the temporary file of a write under way.

A file is the engine's tensors (engine.checkpoint.tensor_bytes: the parameters and both moments,
AdamW's or Muon's) and its header, the JSON of the model, the recipe and the loop's state. The
header does not grow with the model; growth's history of evaluations rides in it (up to
growth.HISTORY_LIMIT of them) while [growth] is enabled. The caller passes the present file's
header when there is one; the largest shape takes the larger of it and `header_allowance`.

The depths are the growth rule's (growth.reachable_depths): the largest shape is an upper bound,
as the data, the step time or the memory may stop growth earlier. Pure: figures in, figures out;
crawler/service/status.py reads the files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from engine import ModelConfig, count_parameters
from engine.checkpoint import tensor_bytes

from ..config import GrowthConfig
from .growth import HISTORY_LIMIT, reachable_depths

# a daemon checkpoint's header without growth's history: 2.6 to 3.5 kB measured (the model, the
# recipe, the loop's state), with room for the growth records train_state gathers
HEADER_BYTES = 8_000
# one evaluation of growth's history as the header holds it (points_state's dict, JSON in JSON):
# about 400 bytes measured with full-length figures
HISTORY_POINT_BYTES = 420


@dataclass(frozen=True)
class Shape:
    """Retention's files at one depth."""

    n_layer: int
    parameters: int
    file_bytes: int  # one checkpoint file: tensors and header
    bytes: int  # what retention keeps: `keep` rolling files and best.safetensors


@dataclass(frozen=True)
class CheckpointForecast:
    """The checkpoints' disk use at the present depth and at the deepest growth can reach."""

    growth: str  # "on"; "off" ([growth] enabled = false); "depth_set" (by hand); "max_layers" (reached)
    depths: tuple[int, ...]  # the present depth first, then each growth's
    keep: int  # keep_checkpoints
    files: int  # what retention keeps: keep rolling files and best.safetensors
    now: Shape
    largest: Shape
    peak_bytes: int  # the largest shape's files and one rolling file more, between a commit and its prune
    cap_bytes: int  # checkpoints_max_mb in bytes; 0: no cap

    @property
    def fits(self) -> bool | None:
        """Whether what retention keeps at the largest shape stays within the cap (the cap deletes
        while the folder holds more); None without a cap."""
        return None if self.cap_bytes <= 0 else self.largest.bytes <= self.cap_bytes

    def to_dict(self) -> dict:
        return asdict(self) | {"depths": list(self.depths), "fits": self.fits}


def header_allowance(growth: GrowthConfig) -> int:
    """The header bytes a checkpoint file is allowed: HEADER_BYTES, and growth's full history of
    evaluations when [growth] is enabled (it is kept then, even for a depth set by hand)."""
    return HEADER_BYTES + (HISTORY_LIMIT * HISTORY_POINT_BYTES if growth.enabled else 0)


def forecast_checkpoints(model: ModelConfig, keep: int, growth: GrowthConfig, depth_set_in: str = "",
                         header_bytes: int | None = None, cap_bytes: int = 0) -> CheckpointForecast:
    """The checkpoints retention keeps for `model` (the present one: its shape, vocabulary and
    architecture) with `keep` = keep_checkpoints, now and at the deepest of
    `growth.reachable_depths`. `header_bytes`: the present file's header (its size less
    engine.checkpoint.tensor_bytes), or None for `header_allowance`. `cap_bytes`:
    checkpoints_max_mb in bytes (0: none)."""
    depths = tuple(reachable_depths(model.n_layer, growth, depth_set_in))
    allowance = header_allowance(growth)
    header_now = allowance if header_bytes is None else max(0, int(header_bytes))
    files = keep + 1  # best.safetensors beside the rolling files

    def shape(n_layer: int, header: int) -> Shape:
        config = replace(model, n_layer=n_layer)
        file_bytes = tensor_bytes(config) + header
        return Shape(n_layer, count_parameters(config), file_bytes, files * file_bytes)

    now = shape(depths[0], header_now)
    largest = now if len(depths) == 1 else shape(depths[-1], max(header_now, allowance))
    if not growth.enabled:
        state = "off"
    elif depth_set_in:
        state = "depth_set"
    elif len(depths) == 1:
        state = "max_layers"
    else:
        state = "on"
    return CheckpointForecast(state, depths, keep, files, now, largest, largest.bytes + largest.file_bytes,
                              max(0, int(cap_bytes)))
