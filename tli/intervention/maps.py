"""The closed-form maps and the update they make to a hidden state.

Word vectors are rows: X (N, D) source-language words, Y (N, D) their English translations, each the probe's pooled,
L2-normalised vector at one hidden-state index (`tli.model.embed.embed_words`). A linear map is stored in row form,
M (D, D) with `x -> x @ M` (W = M^T acting on column vectors).

- `ridge_map`: M = argmin ||X M - Y||^2 + lambda ||M||^2 = (X^T X + lambda I)^-1 X^T Y; lambda = 0 is least squares
  with numpy's `lstsq` (the minimum-norm solution when N < D), what INCLINE fits (Wang et al., ACL 2025,
  arXiv 2410.12462: `np.linalg.lstsq(src, tgt)` per layer, on sentence representations mean-pooled over tokens; here
  on word vectors pooled by the probe, and on the residual stream rather than the MLP outputs).
- `procrustes_map`: the orthogonal M minimising ||X M - Y|| (`scipy.linalg.orthogonal_procrustes`).
- `mean_difference`: v = mean(Y) - mean(X), the DiffMean / language-vector direction of ReCoVeR (Sterz et al.,
  arXiv 2509.14814: the target language's mean representation minus the source language's).

The update at a chosen position (`Intervention.apply`, h (n, D) in float32):
- linear_map, `add` (INCLINE's equation): h' = h + a h M; `towards`: h' = h + a (h M - h), so a = 1 puts the
  mapped vector in place of h. INCLINE sweeps a over [-1, 1] (its LLaMA script negates the direction).
- mean_shift: h' = h + a ||h|| v / ||v||, then h' <- h' ||h|| / ||h'||: ReCoVeR's `relative_norm` scaling with its
  `restore_norm` option (the steered state keeps the norm of the original).
a = 0 returns h exactly (h + 0 = h in floating point; the norm ratio is exactly 1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

KINDS = ("linear_map", "mean_shift")


def ridge_map(X: np.ndarray, Y: np.ndarray, lam: float) -> np.ndarray:
    """(N, D), (N, D) -> M (D, D) in float64; lam = 0: least squares (minimum-norm when underdetermined)."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if lam == 0:
        return np.linalg.lstsq(X, Y, rcond=None)[0]  # (D, D)
    gram = X.T @ X + lam * np.eye(X.shape[1])  # (D, D)
    return np.linalg.solve(gram, X.T @ Y)  # (D, D)


def procrustes_map(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(N, D), (N, D) -> the orthogonal M (D, D) minimising ||X M - Y||_F."""
    from scipy.linalg import orthogonal_procrustes

    return orthogonal_procrustes(np.asarray(X, np.float64), np.asarray(Y, np.float64))[0]  # (D, D)


def mean_difference(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(N, D), (M, D) -> v (D,) = mean(Y) - mean(X)."""
    return np.asarray(Y, np.float64).mean(0) - np.asarray(X, np.float64).mean(0)


@dataclass(frozen=True)
class Intervention:
    """A fitted intervention: its kind, the hidden-state indices it acts at, one tensor per index (M (D, D) for a
    linear map, v (D,) for a mean shift), the scale alpha and the linear map's update form."""

    kind: str
    tensors: dict[int, torch.Tensor]  # hidden-state index -> float32 tensor
    alpha: float = 0.0
    update: str = "add"
    position: str = "query"

    @property
    def layers(self) -> list[int]:
        return sorted(self.tensors)

    def with_alpha(self, alpha: float) -> Intervention:
        return replace(self, alpha=float(alpha))

    def apply(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """(n, D) float32 hidden states at index `layer` -> their updated values (n, D)."""
        t = self.tensors[layer].to(h.device)
        if self.kind == "linear_map":
            mapped = h @ t  # (n, D)
            return h + self.alpha * (mapped if self.update == "add" else mapped - h)
        norm = h.norm(dim=-1, keepdim=True)  # (n, 1)
        shifted = h + self.alpha * norm * (t / t.norm())  # (n, D)
        return shifted * (norm / shifted.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny))


def fit_tensors(kind: str, solver: str, lam: float, src: torch.Tensor, tgt: torch.Tensor,
                layers: list[int]) -> dict[int, torch.Tensor]:
    """One tensor per index from paired word vectors src, tgt (N, n_layers, D), slot j holding index layers[j]."""
    out = {}
    for j, layer in enumerate(layers):
        X, Y = src[:, j].double().numpy(), tgt[:, j].double().numpy()  # (N, D), (N, D)
        if kind == "mean_shift":
            t = mean_difference(X, Y)
        elif solver == "procrustes":
            t = procrustes_map(X, Y)
        else:
            t = ridge_map(X, Y, lam)
        out[layer] = torch.from_numpy(np.ascontiguousarray(t)).float()
    return out
