"""The translation-LM baseline (`loss.translation_lm`): the causal-LM loss on few-shot translation prompts built from
the training pairs, as Prompt4BLI fine-tunes. Each pair of a batch becomes two sequences, one per direction, in the
evaluation's prompt format (`tli.eval.translation.format_prompt`): its shots are the next `shots` pairs of the same
batch (cyclically; batches hold no repeated string, so a shot never shares a word with the query), and only the
answer's tokens (" <answer>\n": the leading space and the newline that ends an answer) are targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tli.eval.translation import format_prompt


def translation_sequences(pairs: Sequence[tuple[str, str]], src_lang: str, tgt_lang: str,
                          shots: int) -> list[tuple[str, str]]:
    """(prompt, answer) for each pair and direction: 2B sequences (forward for all pairs, then backward)."""
    B, out = len(pairs), []
    for direction in ("forward", "backward"):
        langs = (src_lang, tgt_lang) if direction == "forward" else (tgt_lang, src_lang)
        sided = [p if direction == "forward" else p[::-1] for p in pairs]
        for i, (word, answer) in enumerate(sided):
            examples = [sided[(i + j) % B] for j in range(1, min(shots, B - 1) + 1)]
            out.append((format_prompt(examples, word, *langs), f" {answer}\n"))
    return out


def tokenize_sequences(tokenizer, sequences: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded (N, T) input_ids and attention_mask, and labels: the answer's tokens, -100 elsewhere."""
    rows = []
    for prompt, answer in sequences:
        head = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"]
        rows.append((head + tail, [-100] * len(head) + list(tail)))
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)  # (N, T)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, (seq, lab) in enumerate(rows):
        ids[r, :len(seq)], labels[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def translation_batch(pairs: Sequence[tuple[str, str]], tokenizer, src_lang: str, tgt_lang: str,
                      shots: int) -> dict[str, torch.Tensor]:
    """The batch's translation-LM sequences, tokenised (what the training collator adds as batch["translation"])."""
    return tokenize_sequences(tokenizer, translation_sequences(pairs, src_lang, tgt_lang, shots))
