"""Apply an intervention inside every forward pass of a block: `with intervened(model, intervention, targets): ...`.

Three kinds of hooks on the decoder stack (`tli.model.embed.decoder_of`: a plain or PEFT-wrapped causal LM alike):
- a forward pre-hook on the decoder works out, per call, which (row, column) positions get the update: it rebuilds
  each row's full token sequence (the tokens cached by earlier calls, tracked per KV cache object, then this call's),
  drops the padding (attention mask), asks `targets` (`tli.intervention.positions.Targets`) for the row's positions
  and marks the ones this call computes;
- a forward hook on the decoder records the tokens a returned KV cache holds, for the next call that continues it
  (a prefix run once and repeated over a batch, `generate`'s prefill and decoding steps);
- a forward hook (run before any other, and in place, so that `output_hidden_states` sees the update) on the module
  whose output is hidden-state index i: the token embeddings for 0, block i for 1..L-1, and for L the final norm
  (index L of `output_hidden_states` carries it, unless the config unties it) updates the marked positions with
  `Intervention.apply` in float32.

So the same generation, scoring, loss and embedding code paths run unchanged with an intervention on. Nothing is
left behind on exit: hooks removed, tracking dropped.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch

from tli.errors import ModelError
from tli.intervention.maps import Intervention
from tli.intervention.positions import Targets
from tli.model.embed import decoder_of
from tli.model.loading import num_layers


def state_module(decoder, index: int):
    """The module whose output is hidden-state index `index` of `decoder`'s `output_hidden_states`."""
    n = num_layers(decoder.config)
    if index == 0:
        return decoder.get_input_embeddings()
    if index == n and getattr(decoder.config, "tie_last_hidden_states", True) is not False:
        return decoder.norm
    return decoder.layers[index - 1]


class _Tracker:
    """Per call: the positions to update (B, T) from the rows' full token sequences."""

    def __init__(self, targets: Targets):
        self.targets, self.here, self.full = targets, None, None
        self.seen: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # id(cache) -> (cache, its tokens (B, P))

    def before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)  # (B, T)
        if ids is None:
            raise ModelError("an intervention needs input_ids (it places itself by token), not inputs_embeds")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        if past:
            ref, prev = self.seen.get(id(cache), (None, None))
            if ref is None or ref() is not cache or prev.shape[1] != past:
                raise ModelError(f"intervention: a forward pass continues a KV cache of {past} tokens this hook did "
                                 "not see being filled; run the prefix inside the same `intervened` block")
            if prev.shape[0] != ids.shape[0]:
                if prev.shape[0] != 1:
                    raise ModelError(f"intervention: a cache of {prev.shape[0]} rows continued by {ids.shape[0]}")
                prev = prev.expand(ids.shape[0], -1)
            full = torch.cat([prev, ids.to(prev.device)], 1)  # (B, P + T)
        else:
            full = ids
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(full)
        if mask.dim() != 2 or mask.shape != full.shape:
            raise ModelError(f"intervention: attention mask of shape {tuple(mask.shape)} for {tuple(full.shape)} "
                             "tokens (a 2-D mask over the cached and new tokens is needed)")
        self.full = full.detach().cpu()
        self.here = self._mark(self.full, mask.detach().cpu().bool(), past).to(ids.device)  # (B, T)

    def _mark(self, full: torch.Tensor, mask: torch.Tensor, past: int) -> torch.Tensor:
        B, T = full.shape[0], full.shape[1] - past
        here = torch.zeros(B, T, dtype=torch.bool)
        real = mask.long().cumsum(1) - 1  # (B, P + T): position of each column in its row's real sequence
        for b in range(B):
            want = self.targets.positions(full[b][mask[b]].tolist())
            if want:
                cols = mask[b, past:] & torch.isin(real[b, past:], torch.tensor(sorted(want)))  # (T,)
                here[b] = cols
        return here

    def after(self, module, args, kwargs, output):
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is not None and self.full is not None:
            self.seen = {k: v for k, v in self.seen.items() if v[0]() is not None}
            self.seen[id(cache)] = (weakref.ref(cache), self.full)
        self.here, self.full = None, None


@contextmanager
def intervened(model, intervention: Intervention, targets: Targets):
    """Within the block, `model`'s forward passes apply `intervention` at the positions `targets` assigns."""
    decoder = decoder_of(model)
    tracker = _Tracker(targets)
    handles = [decoder.register_forward_pre_hook(tracker.before, with_kwargs=True),
               decoder.register_forward_hook(tracker.after, with_kwargs=True)]

    def update(layer):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output  # (B, T, D)
            here = tracker.here
            if here is None or not bool(here.any()):
                return None
            if here.shape != h.shape[:2]:
                raise ModelError(f"intervention: positions {tuple(here.shape)} for hidden states {tuple(h.shape)}")
            h[here] = intervention.apply(layer, h[here].float()).to(h.dtype)  # (n, D), in place
            return None
        return hook

    try:
        for layer in intervention.layers:
            handles.append(state_module(decoder, layer).register_forward_hook(update(layer), prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
