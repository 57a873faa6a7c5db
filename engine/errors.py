"""Typed exceptions the engine raises; callers decide what to log."""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class ShapeMismatch(EngineError):
    """An array or a checkpoint does not have the shape the model config requires."""


class CheckpointError(EngineError):
    """A checkpoint file is missing, truncated, corrupt or incompatible; the message names the file."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class NonFiniteLoss(EngineError):
    """The loss or the gradient norm became NaN or infinite; the step was not applied."""
