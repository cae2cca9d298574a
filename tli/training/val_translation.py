"""Validation translation: every validation translates the run's validation pairs with the adapted model, so that a
run (and a sweep) can be chosen on what the model does, not only on how its representations align.

`objective.metric=translation` makes the validation pairs' greedy few-shot accuracy the objective
(`val/translation/accuracy`), `objective.metric=translation_logprob` the mean log-probability of the gold
translation (`val/translation/gold_logprob`, a graded score that moves before greedy answers do);
`objective.score_translation=true` logs both beside an alignment objective. The queries are those of the
evaluation (`tli.eval.translation`: the same prompt, normalisation and graded scores), one per distinct validation
word in `objective.translation_direction`, with `objective.translation_shots` shots drawn by the run's seed from its
**true** training pairs: never a validation pair, never a cross-fitted held-out fold, and not deranged in a
`data.derange` run (what is validated is real translation, as the validation pairs themselves stay true). The
sanity-check validation before the first step gives the base model's figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tli.data.config import DataConfig
from tli.data.lexicon import Lexicon
from tli.data.splits import split_pairs
from tli.errors import ConfigError
from tli.eval.translation import Query, build_queries, evaluate_translation

KEYS = ("val/translation/accuracy", "val/translation/gold_logprob")


@dataclass
class ValidationTranslation:
    """The validation pairs' translation queries of one run and how to score them."""

    queries: list[Query]
    tokenizer: object = field(repr=False)
    batch_size: int = 32

    @classmethod
    def for_run(cls, lexicon: Lexicon, data: DataConfig, seed: int, *, direction: str, shots: int,
                tokenizer) -> ValidationTranslation:
        """Queries for the validation pairs that `data` and `seed` carve from `lexicon` (the audited training
        lexicon), with shots from the same split's true training pairs."""
        train, val, _ = split_pairs(lexicon, replace(data, derange=False), seed)
        if not val:
            raise ConfigError("objective.metric / objective.score_translation: validation translation needs "
                              f"validation pairs; data.val_fraction={data.val_fraction} leaves none")
        splits = {"validation": replace(lexicon, pairs=val, dropped=[]),
                  "shots": replace(lexicon, pairs=train, dropped=[])}
        queries = build_queries(splits, k=shots, seed=seed, directions=[direction], scored=["validation"])
        return cls(queries, tokenizer)

    def rows(self, model) -> list[dict]:
        """One row per validation word (tli.eval.translation.evaluate_translation) of `model` as it is."""
        return evaluate_translation(model, self.tokenizer, self.queries, batch_size=self.batch_size)

    def score(self, model) -> dict[str, float]:
        """{val/translation/accuracy, val/translation/gold_logprob} of `model` as it is (adapters on)."""
        return figures(self.rows(model))


def figures(rows: list[dict]) -> dict[str, float]:
    """Accuracy and mean gold log-probability (over the rows that have one) of translation rows."""
    logprobs = [r["gold_logprob"] for r in rows if r["gold_logprob"] is not None]
    return {KEYS[0]: sum(r["correct"] for r in rows) / len(rows),
            KEYS[1]: sum(logprobs) / len(logprobs) if logprobs else float("nan")}
