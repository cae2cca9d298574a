"""`eval_mode(model)`: evaluate a model that may be training, and leave it as it was."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def eval_mode(model) -> Iterator:
    """Inside: `model.eval()` (dropout off); afterwards, even on error, the model's training mode as it was before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
