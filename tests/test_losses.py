"""Loss values against hand computation: plain Python loops with math.exp / math.log over tiny batches."""

import math

import pytest
import torch
from torch import nn

from tli.training.losses import BatchHardTriplet, InfoNCE, build_loss, false_negative_mask

# ---- independent reference: no torch, explicit loops ------------------------------------------------------------


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _ce(logits, excluded):
    """Mean over rows of -log softmax(row)[i], leaving out the columns marked in `excluded`."""
    total = 0.0
    for i, row in enumerate(logits):
        denom = sum(math.exp(v) for j, v in enumerate(row) if not excluded[i][j])
        total += -(row[i] - math.log(denom))
    return total / len(logits)


def _none(n):
    return [[False] * n for _ in range(n)]


def hand_infonce(src, tgt, temperature, symmetric=True, excluded=None):
    n = len(src)
    excluded = excluded or _none(n)
    s2t = [[_cos(src[i], tgt[j]) / temperature for j in range(n)] for i in range(n)]
    loss = _ce(s2t, excluded)
    if symmetric:
        t2s = [[_cos(tgt[i], src[j]) / temperature for j in range(n)] for i in range(n)]
        loss = (loss + _ce(t2s, excluded)) / 2
    return loss


def hand_triplet(src, tgt, margin, excluded=None):
    n = len(src)
    excluded = excluded or _none(n)
    losses = []
    for i in range(n):
        negs = [_cos(src[i], tgt[j]) for j in range(n) if j != i and not excluded[i][j]]
        if negs:
            losses.append(max(0.0, margin - _cos(src[i], tgt[i]) + max(negs)))
    return sum(losses) / len(losses) if losses else 0.0


SRC = [[1.0, 0.0], [0.6, 0.8], [-0.5, 1.0]]  # B = 3, D = 2 (not all unit norm: the losses normalise)
TGT = [[0.9, 0.3], [0.2, 1.0], [-1.0, 0.4]]


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def ids(*xs):
    return torch.tensor(xs)


DISTINCT = (ids(0, 1, 2), ids(0, 1, 2))


# ---- InfoNCE ----------------------------------------------------------------------------------------------------


def test_infonce_worked_example():
    # src = tgt = [e1, e2], T = 1: logits [[1, 0], [0, 1]] both ways; every row's loss is
    # -log(e / (e + 1)) = log(1 + e^-1) = 0.313261687518...
    e = torch.eye(2)
    loss = InfoNCE(temperature=1.0, min_temperature=1.0)(e, e, ids(0, 1), ids(0, 1))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert loss.item() == pytest.approx(0.3132616875, rel=1e-6)


def test_infonce_symmetric_fixed_temperature():
    loss = InfoNCE(temperature=0.5)(t(SRC), t(TGT), *DISTINCT)
    assert loss.item() == pytest.approx(hand_infonce(SRC, TGT, 0.5), rel=1e-5)


def test_infonce_one_directional():
    loss = InfoNCE(temperature=0.5, symmetric=False)(t(SRC), t(TGT), *DISTINCT)
    expected = hand_infonce(SRC, TGT, 0.5, symmetric=False)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the reverse direction alone differs here (the similarity matrix is not symmetric), so the mean is not it
    assert expected != pytest.approx(hand_infonce(SRC, TGT, 0.5), rel=1e-3)


@pytest.mark.parametrize("temperature", [1.0, 0.2, 0.05])
def test_infonce_temperature_scaling(temperature):
    loss = InfoNCE(temperature=temperature, min_temperature=0.01)(t(SRC), t(TGT), *DISTINCT)
    assert loss.item() == pytest.approx(hand_infonce(SRC, TGT, temperature), rel=1e-5)


def test_infonce_temperature_changes_value():
    hot = InfoNCE(temperature=1.0)(t(SRC), t(TGT), *DISTINCT).item()
    cold = InfoNCE(temperature=0.1)(t(SRC), t(TGT), *DISTINCT).item()
    assert hot == pytest.approx(hand_infonce(SRC, TGT, 1.0), rel=1e-5)
    assert cold == pytest.approx(hand_infonce(SRC, TGT, 0.1), rel=1e-5)
    assert abs(hot - cold) > 0.1


def test_false_negative_mask_exact():
    # repeated source string (rows 0 and 1): each is a correct target of the other
    assert false_negative_mask(ids(0, 0, 1), ids(0, 1, 2)).tolist() == [
        [False, True, False], [True, False, False], [False, False, False]]
    # repeated target string (rows 1 and 2)
    assert false_negative_mask(ids(0, 1, 2), ids(0, 1, 1)).tolist() == [
        [False, False, False], [False, False, True], [False, True, False]]
    # both at once, and a row that repeats nothing
    assert false_negative_mask(ids(0, 0, 1, 2), ids(5, 6, 6, 7)).tolist() == [
        [False, True, False, False], [True, False, True, False], [False, True, False, False],
        [False, False, False, False]]
    # nothing repeated: the diagonal (the positives) is never masked
    assert not false_negative_mask(*DISTINCT).any()


@pytest.mark.parametrize("src_ids,tgt_ids,excluded", [
    ((0, 0, 1), (0, 1, 2), [[False, True, False], [True, False, False], [False, False, False]]),
    ((0, 1, 2), (0, 1, 1), [[False, False, False], [False, False, True], [False, True, False]]),
])
def test_infonce_false_negative_masking(src_ids, tgt_ids, excluded):
    masked = InfoNCE(temperature=0.5)(t(SRC), t(TGT), ids(*src_ids), ids(*tgt_ids)).item()
    assert masked == pytest.approx(hand_infonce(SRC, TGT, 0.5, excluded=excluded), rel=1e-5)
    unmasked = InfoNCE(temperature=0.5, mask_false_negatives=False)(t(SRC), t(TGT), ids(*src_ids), ids(*tgt_ids))
    assert unmasked.item() == pytest.approx(hand_infonce(SRC, TGT, 0.5), rel=1e-5)
    # removing terms from the denominators can only lower the loss; here strictly
    assert masked < unmasked.item() - 1e-3


def test_infonce_fixed_temperature_has_no_parameters():
    loss = InfoNCE(temperature=0.05)
    assert loss.log_scale is None
    assert list(loss.parameters()) == []
    assert loss.temperature.item() == pytest.approx(0.05, rel=1e-6)


def test_infonce_learnable_temperature_gets_gradient():
    loss_fn = InfoNCE(temperature=0.5, learnable_temperature=True)
    assert isinstance(loss_fn.log_scale, nn.Parameter)
    assert [p for p in loss_fn.parameters()] == [loss_fn.log_scale]
    assert loss_fn.log_scale.item() == pytest.approx(math.log(2.0), rel=1e-6)
    loss = loss_fn(t(SRC), t(TGT), *DISTINCT)
    assert loss.item() == pytest.approx(hand_infonce(SRC, TGT, 0.5), rel=1e-5)
    loss.backward()
    grad = loss_fn.log_scale.grad
    assert grad is not None and torch.isfinite(grad) and grad.abs().item() > 1e-6


def test_infonce_learnable_temperature_is_clamped():
    loss_fn = InfoNCE(temperature=0.5, learnable_temperature=True, min_temperature=0.2)
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(1 / 0.25))  # inside the range: T = 0.25
    assert loss_fn.temperature.item() == pytest.approx(0.25, rel=1e-6)
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(1 / 0.2) + 1.0)  # above log(1 / min_temperature)
    assert loss_fn.temperature.item() == pytest.approx(0.2, rel=1e-6)
    # and the loss uses the clamped temperature
    value = loss_fn(t(SRC), t(TGT), *DISTINCT).item()
    assert value == pytest.approx(hand_infonce(SRC, TGT, 0.2), rel=1e-5)


def test_infonce_gradients_reach_inputs():
    src, tgt = t(SRC).requires_grad_(), t(TGT).requires_grad_()
    InfoNCE(temperature=0.1)(src, tgt, ids(0, 0, 1), ids(0, 1, 2)).backward()
    for g in (src.grad, tgt.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_infonce_constructor_errors():
    with pytest.raises(ValueError, match="loss.temperature"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ValueError, match="loss.min_temperature"):
        InfoNCE(temperature=0.05, min_temperature=0.1)


# ---- BatchHardTriplet -------------------------------------------------------------------------------------------


def test_triplet_worked_example():
    # src = [e1, e2], tgt = [e1, (1, 1)/sqrt 2], margin 0.4:
    #   row 0: positive cos 1, only negative cos(e1, tgt1) = 1/sqrt 2 -> relu(0.4 - 1 + 0.70711) = 0.10711
    #   row 1: positive cos(e2, tgt1) = 1/sqrt 2, negative cos(e2, e1) = 0 -> relu(0.4 - 0.70711 + 0) = 0
    #   mean = 0.053553...
    src, tgt = t([[1.0, 0.0], [0.0, 1.0]]), t([[1.0, 0.0], [1.0, 1.0]])
    loss = BatchHardTriplet(margin=0.4)(src, tgt, ids(0, 1), ids(0, 1))
    assert loss.item() == pytest.approx((0.4 - 1 + 1 / math.sqrt(2)) / 2, rel=1e-5)


def test_triplet_value_hardest_negative():
    loss = BatchHardTriplet(margin=0.4)(t(SRC), t(TGT), *DISTINCT)
    expected = hand_triplet(SRC, TGT, 0.4)
    assert expected > 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_triplet_false_negative_changes_hardest():
    # row 0: tgt1 (cos 0.8) is the hardest negative unless it is a false negative; then tgt2 (cos 1/sqrt 2) is
    src = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
    tgt = [[1.0, 0.0], [0.8, 0.6], [1.0, 1.0]]
    src_ids, tgt_ids = ids(0, 1, 2), ids(0, 0, 1)  # targets 0 and 1 are the same string
    excluded = [[False, True, False], [True, False, False], [False, False, False]]
    plain = BatchHardTriplet(margin=0.4, mask_false_negatives=False)(t(src), t(tgt), src_ids, tgt_ids).item()
    masked = BatchHardTriplet(margin=0.4)(t(src), t(tgt), src_ids, tgt_ids).item()
    assert plain == pytest.approx(hand_triplet(src, tgt, 0.4), rel=1e-5)
    assert masked == pytest.approx(hand_triplet(src, tgt, 0.4, excluded=excluded), rel=1e-5)
    # row-0 terms written out: 0.4 - 1 + 0.8 = 0.2 unmasked, 0.4 - 1 + 0.70711 = 0.10711 masked
    row1 = max(0.0, 0.4 - _cos(src[1], tgt[1]) + max(_cos(src[1], tgt[0]), _cos(src[1], tgt[2])))
    row1_masked = max(0.0, 0.4 - _cos(src[1], tgt[1]) + _cos(src[1], tgt[2]))
    row2 = max(0.0, 0.4 - _cos(src[2], tgt[2]) + max(_cos(src[2], tgt[0]), _cos(src[2], tgt[1])))
    assert plain == pytest.approx((0.2 + row1 + row2) / 3, rel=1e-5)
    assert masked == pytest.approx((0.4 - 1 + 1 / math.sqrt(2) + row1_masked + row2) / 3, rel=1e-5)
    assert masked != pytest.approx(plain, rel=1e-3)


def test_triplet_zero_when_positives_far_above_negatives():
    e = torch.eye(3)  # positives cos 1, negatives cos 0: relu(0.4 - 1 + 0) = 0 in every row
    src = e.clone().requires_grad_()
    loss = BatchHardTriplet(margin=0.4)(src, e, *DISTINCT)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(src.grad).all()


def test_triplet_only_false_negatives_is_zero_not_nan():
    src = t([[1.0, 0.0], [0.0, 1.0]]).requires_grad_()
    tgt = t([[0.0, 1.0], [1.0, 0.0]]).requires_grad_()  # would be a large loss without the mask
    loss = BatchHardTriplet(margin=0.4)(src, tgt, ids(7, 7), ids(0, 1))  # same source: each is a correct target
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(src.grad).all() and torch.isfinite(tgt.grad).all()
    assert BatchHardTriplet(margin=0.4, mask_false_negatives=False)(src, tgt, ids(7, 7), ids(0, 1)).item() > 1


def test_triplet_gradients_reach_inputs():
    src, tgt = t(SRC).requires_grad_(), t(TGT).requires_grad_()
    BatchHardTriplet(margin=0.4)(src, tgt, *DISTINCT).backward()
    for g in (src.grad, tgt.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


# ---- build_loss -------------------------------------------------------------------------------------------------


def test_build_loss_infonce():
    loss = build_loss({"name": "infonce", "temperature": 0.1})
    assert isinstance(loss, InfoNCE)
    assert loss.temperature.item() == pytest.approx(0.1, rel=1e-6)
    assert loss(t(SRC), t(TGT), *DISTINCT).item() == pytest.approx(hand_infonce(SRC, TGT, 0.1), rel=1e-5)


def test_build_loss_triplet():
    loss = build_loss({"name": "triplet", "margin": 0.4})
    assert isinstance(loss, BatchHardTriplet)
    assert loss.margin == 0.4


def test_build_loss_unknown_name():
    with pytest.raises(ValueError, match="loss.name") as err:
        build_loss({"name": "hinge"})
    assert "infonce" in str(err.value) and "triplet" in str(err.value)


def test_build_loss_unknown_option():
    with pytest.raises(ValueError, match=r"loss\.temp\b") as err:
        build_loss({"name": "infonce", "temp": 0.1})
    assert "temperature" in str(err.value) and "learnable_temperature" in str(err.value)
    with pytest.raises(ValueError, match=r"loss\.temperature") as err:
        build_loss({"name": "triplet", "temperature": 0.1})
    assert "margin" in str(err.value)


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_build_loss_bad_temperature(temperature):
    with pytest.raises(ValueError, match=r"loss\.temperature"):
        build_loss({"name": "infonce", "temperature": temperature})


def test_build_loss_negative_margin():
    with pytest.raises(ValueError, match=r"loss\.margin"):
        build_loss({"name": "triplet", "margin": -0.1})
