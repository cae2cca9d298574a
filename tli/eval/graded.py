"""Graded behavioural scores beside exact match: how close the model came, per query and model state.

- `gold_logprob`: the length-normalised log-probability (nats per token, <= 0; higher is better) of a listed
  translation as the continuation of the query's few-shot prompt, teacher-forced: the continuation is
  `" " + target` (the model answers after `"English:"` with a space, see `format_prompt`; no trailing newline is
  scored). The prompt and prompt + continuation are tokenised alike (special tokens as in generation: BOS); the
  scored tokens are those of prompt + continuation after its common prefix with the prompt's tokens (a tokenizer
  that merges the prompt's last characters with the answer then scores the merged token too, given the shorter
  prefix). Mean of their log-probabilities; the best (max) over the query's listed translations.
- `gold_rank`: the rank of the first scored token of a listed translation in the next-token distribution at the
  end of that prefix (1 = the greedy choice; 1 + the number of tokens with a strictly higher logit); the best
  (lowest) over the listed translations. gold_rank == 1 means greedy decoding starts the gold's first token.
- `chrf`: chrF (character 6-grams, beta = 2, spaces ignored; torchmetrics' `chrf_score` with `n_word_order=0`) of
  the prediction against each listed translation, on the strings exact match compares (`answer_key`), the best
  (max) over the listed translations, on a **0..100** scale (torchmetrics' 0..1 value x 100). As in sacrebleu, the
  average runs over the effective n-gram orders only (up to the shorter string's length in characters): identical
  strings score 100 however short (torchmetrics alone averages over all 6 orders, so "dog" vs "dog" would be 50).
  An empty prediction scores 0.

Listed translations whose `answer_key` is blank are left out (exact match never accepts them either); a query
with none left has None for all three scores. Scoring runs one forward pass per query and listed translation:
sequences sorted by token ids, the batch's common prefix (the shots) run once and its KV cache repeated over the
batch, the rest left-padded with explicit position ids, and only the last positions' logits kept. Results do not
depend on the batch size (up to float rounding; tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.text import chrf_score

from tli.eval.translation import Query, _common_prefix, answer_key
from tli.model.modes import eval_mode

CHAR_ORDER = 6  # chrF's character n-gram order
BETA = 2.0  # chrF's recall weight


def chrf(prediction: str, targets: Sequence[str], lang: str) -> float | None:
    """chrF (0..100) of `prediction` against the best of `targets`, on their `answer_key` forms (see the module
    docstring); None when no target has a non-blank key."""
    golds = [g for g in (answer_key(t, lang) for t in targets) if g]
    if not golds:
        return None
    pred = answer_key(prediction, lang)
    best = 0.0
    for gold in golds:
        if pred == gold:  # the formula's value, without its cost
            return 100.0
        order = min(CHAR_ORDER, len("".join(pred.split())), len("".join(gold.split())))  # effective order
        if order and set(pred) & set(gold):  # no shared character: 0
            score = chrf_score([pred], [[gold]], n_char_order=order, n_word_order=0, beta=BETA)
            best = max(best, 100.0 * float(score))
    return best


def _sequences(tokenizer, queries: Sequence[Query]) -> list[tuple[int, list[int], int]]:
    """(query index, token ids of prompt + " " + target, number of leading context tokens) per scored target."""
    specials = set(tokenizer.all_special_ids)
    out = []
    for qi, q in enumerate(queries):
        targets = [t for t in q.targets if answer_key(t, q.answer_lang)]
        if not targets:
            continue
        enc = tokenizer([q.prompt, *(f"{q.prompt} {t}" for t in targets)], add_special_tokens=True)["input_ids"]
        prompt = enc[0]
        tail = next((j for j in range(len(prompt)) if prompt[len(prompt) - 1 - j] not in specials), len(prompt))
        for ids in enc[1:]:  # trailing special tokens (an appended EOS) are not part of the answer
            ids = ids[:len(ids) - tail] if tail else ids
            P = _common_prefix(prompt, ids, len(prompt) - tail)
            if P == 0 or P == len(ids):
                raise ValueError(f"cannot score {q.source!r}: its prompt and answer share no context tokens "
                                 f"or the answer adds none")
            out.append((qi, ids, P))
    return out


@torch.no_grad()
def score_gold(model, tokenizer, queries: Sequence[Query], *, batch_size: int = 32) -> list[dict]:
    """Per query, in order: {"gold_logprob": float | None, "gold_rank": int | None} (see the module docstring)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    seqs = _sequences(tokenizer, queries)
    order = sorted(range(len(seqs)), key=lambda i: seqs[i][1])  # shared prefixes end up adjacent
    best: list[dict] = [{"gold_logprob": None, "gold_rank": None} for _ in queries]
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = [seqs[i] for i in order[start:start + batch_size]]
            B = len(rows)
            # the batch's common prefix, short of every row's first scored position (its logits are kept below)
            C = _common_prefix(rows[0][1], rows[-1][1], min(p for _, _, p in rows) - 1)
            rest = tokenizer.pad({"input_ids": [ids[C:] for _, ids, _ in rows]}, padding=True, padding_side="left",
                                 return_tensors="pt").to(device)  # input_ids, attention_mask: (B, S)
            mask = torch.cat([torch.ones(B, C, dtype=rest["attention_mask"].dtype, device=device),
                              rest["attention_mask"]], 1)  # (B, C + S)
            positions = (mask.cumsum(1) - 1).clamp(min=0)[:, C:]  # (B, S): padding hidden, positions follow mask
            extra = {}
            if C:
                prefix = torch.tensor(rows[0][1][:C], dtype=torch.long, device=device)[None]  # (1, C)
                cache = model(input_ids=prefix, use_cache=True).past_key_values
                cache.batch_repeat_interleave(B)
                extra["past_key_values"] = cache
            n_scored = [len(ids) - p for _, ids, p in rows]
            K = max(n_scored) + 1  # logits kept: the last K positions cover every row's scored tokens
            logits = model(input_ids=rest["input_ids"], attention_mask=mask, position_ids=positions,
                           use_cache=bool(C), logits_to_keep=K, **extra).logits.float()  # (B, K, V)
            for b, ((qi, ids, _), n) in enumerate(zip(rows, n_scored, strict=True)):
                scored = torch.tensor(ids[-n:], device=device)  # (n,)
                lp = logits[b, K - 1 - n:K - 1].log_softmax(-1)  # (n, V): position j predicts scored[j]
                logprob = float(lp.gather(1, scored[:, None]).mean())
                first = logits[b, K - 1 - n]  # (V,): the distribution at the end of the prefix
                rank = int((first > first[scored[0]]).sum()) + 1
                cur = best[qi]
                if cur["gold_logprob"] is None or logprob > cur["gold_logprob"]:
                    cur["gold_logprob"] = logprob
                if cur["gold_rank"] is None or rank < cur["gold_rank"]:
                    cur["gold_rank"] = rank
    return best
