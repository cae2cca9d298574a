"""Which positions of which token sequences an intervention applies at.

`Targets` holds token sequences (a trie), each with the positions (0-based, counting BOS) that get the update.
A row of a forward pass gets the positions of the registered sequence it continues (a prompt and its generated
tokens; a sequence scored as it was registered), or, while it is still a prefix of registered sequences (a shared
prefix run once into the KV cache), the positions they agree on before its end. Rows that match nothing get none:
the intervention acts only on the text registered for it.

The sequences of an evaluation (`for_words`, `for_queries`, `for_sentences`):
- words: the template around the word, tokenised as `tli.model.embed.tokenize_words`; the word's own tokens;
- translation queries: the prompt as `generate_answers` tokenises it and every `prompt + " " + target` as
  `tli.eval.graded.score_gold` does; `position=query`: the query word's tokens (its character span, the last line's
  word), `position=last`: the prompt's last token (INCLINE), in a scored sequence the last context token;
- sentences: every token of the text, special tokens (BOS) excluded, as `tli.eval.lm_loss` tokenises them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tli.errors import ModelError
from tli.eval.translation import Query
from tli.model.embed import tokenize_words


class _Node:
    __slots__ = ("children", "end", "within", "clash")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.end: frozenset[int] | None = None  # positions of a sequence ending here
        self.within: frozenset[int] | None = None  # positions before this depth, of every sequence through here
        self.clash = False  # sequences through here disagree on positions before this depth


class Targets:
    """Token sequences and the positions the intervention applies at in each (a trie)."""

    def __init__(self):
        self.root, self.n = _Node(), 0

    def __len__(self) -> int:
        return self.n

    def add(self, ids: Sequence[int], positions: Iterable[int]) -> None:
        positions = frozenset(int(p) for p in positions)
        if any(not 0 <= p < len(ids) for p in positions):
            raise ValueError(f"positions {sorted(positions)} outside a sequence of {len(ids)} tokens")
        node = self.root
        for depth, token in enumerate(ids, 1):
            node = node.children.setdefault(int(token), _Node())
            before = frozenset(p for p in positions if p < depth)
            if node.within is None:
                node.within = before
            elif node.within != before:
                node.clash = True
        if node.end is not None and node.end != positions:
            raise ValueError("one token sequence registered with two different position sets")
        if node.end is None:
            self.n += 1
        node.end = positions

    def positions(self, row: Sequence[int]) -> frozenset[int]:
        """The positions of `row` (a row's real tokens, padding removed) that get the intervention."""
        node, last_end = self.root, None
        for token in row:
            node = node.children.get(int(token))
            if node is None:  # the row leaves the registered sequences: it continues the last one it passed
                return last_end or frozenset()
            if node.end is not None:
                last_end = node.end
        if node.end is not None:
            return node.end
        if node.clash and last_end is not None:
            return last_end
        if node.clash:
            raise ModelError("intervention: a shared prefix of two registered sequences has different positions "
                             "for them, so the cached prefix cannot serve both")
        return node.within or frozenset()


def for_words(tokenizer, words: Sequence[str], template: str = "{word}", targets: Targets | None = None) -> Targets:
    """Each word inside `template`, with the word's own tokens as positions."""
    targets = targets or Targets()
    for enc in tokenize_words(tokenizer, words, template):
        targets.add(enc.input_ids, [i for i, m in enumerate(enc.word_mask) if m])
    return targets


def _word_span(q: Query) -> tuple[int, int]:
    """The query word's character span in its prompt (the prompt ends `"{word}\\n{answer_lang}:"`)."""
    tail = f"{q.source}\n{q.answer_lang}:"
    if not q.prompt.endswith(tail):
        raise ValueError(f"prompt of {q.source!r} does not end with its word and answer language")
    start = len(q.prompt) - len(tail)
    return start, start + len(q.source)


def for_queries(tokenizer, queries: Sequence[Query], position: str, targets: Targets | None = None) -> Targets:
    """Each query's prompt and each of its scored `prompt + " " + target` sequences (see the module docstring)."""
    from tli.eval.graded import _sequences

    targets = targets or Targets()
    enc = tokenizer([q.prompt for q in queries], add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    word_positions = []
    for q, ids, offsets, special in zip(queries, enc["input_ids"], enc["offset_mapping"],
                                        enc["special_tokens_mask"], strict=True):
        a, b = _word_span(q)
        word = [i for i, ((s, e), sp) in enumerate(zip(offsets, special, strict=True)) if not sp and s < b and e > a]
        if not word:
            raise ValueError(f"query word {q.source!r} has no tokens of its own in its prompt")
        word_positions.append(word)
        targets.add(ids, word if position == "query" else [len(ids) - 1])
    for qi, ids, context in _sequences(tokenizer, queries):
        word = word_positions[qi]
        if position == "query" and (max(word) >= context or ids[:max(word) + 1] != enc["input_ids"][qi][
                :max(word) + 1]):
            raise ValueError(f"the scored answer of {queries[qi].source!r} changes the tokens of its query word")
        targets.add(ids, word if position == "query" else [context - 1])
    return targets


def for_sentences(tokenizer, sentences: Sequence[str], targets: Targets | None = None) -> Targets:
    """Each sentence with every token but the special ones (BOS) as positions."""
    targets = targets or Targets()
    specials = set(tokenizer.all_special_ids)
    for ids in tokenizer(list(sentences), add_special_tokens=True)["input_ids"]:
        targets.add(ids, [i for i, t in enumerate(ids) if t not in specials])
    return targets
