"""Preservation and validation text: the base model's own samples in each language, generated once and cached.

The model hub is unreachable, so the ordinary text that the behaviour-preserving terms (`preserve.kl`,
`preserve.retain`) and the validation harm check (`val/nll/<lang>`) run on is sampled from the *base* model itself:
from short sentence openers in the language (`tli/lexicons/prompts/<code>.txt` for English, Korean and Swahili; for
other languages the training lexicon's words in that language), nucleus sampling (top-p 0.95, temperature 1) with a
seeded generator, `max_new_tokens` new tokens. A sample is the opener and its continuation on one line.

Training text and validation text are disjoint samples (different seeds; a validation sample equal to a training one
is dropped). Samples are cached per model fingerprint, language, seed and settings under
`<cache_dir>/base_text/<fingerprint>/` (JSON, written atomically), so every run of a sweep trains and validates on
the same text. Text files the user names (`preserve.text_files`, one sentence per line) are added to the training
text of every language. Nothing here ever uses the evaluation's held-out sentences (`tli/lexicons/heldout/`):
`check_disjoint` refuses text that shares a sentence with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from tli.errors import DataError, RunDirError
from tli.eval.lm_loss import HELDOUT_FILES, bundled_heldout, read_sentences
from tli.io import atomic_write_json
from tli.model.modes import eval_mode

log = logging.getLogger(__name__)
TOP_P, VAL_SEED_OFFSET = 0.95, 1_000_003


@dataclass(frozen=True)
class TextSplit:
    """One language's text: `train` (what the preservation terms run on) and `val` (what validation scores)."""

    train: list[str]
    val: list[str]


def openers(lang: str, fallback: Sequence[str] = ()) -> list[str]:
    """The bundled sentence openers of a language (name or ISO code), else `fallback` (e.g. lexicon words)."""
    code = HELDOUT_FILES.get(lang.strip().casefold())
    if code is not None:
        return read_sentences(Path(str(resources.files("tli") / "lexicons" / "prompts" / f"{code}.txt")))
    if not fallback:
        raise DataError(f"no bundled sentence openers for language {lang!r} (bundled: English, Korean, Swahili) and "
                        "no lexicon words to start from: name text files with preserve.text_files")
    return list(fallback)


@torch.no_grad()
def sample_text(model, tokenizer, prompts: Sequence[str], n: int, *, seed: int, max_new_tokens: int,
                batch_size: int = 16) -> list[str]:
    """`n` samples of the model from `prompts` (cycled in order), one line each. The global random state is left
    as it was (sampling runs on a forked RNG seeded with `seed`), so a resumed run's random stream is unaffected."""
    device = next(model.parameters()).device
    texts = [prompts[i % len(prompts)] for i in range(n)]
    out: list[str] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(model):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            chunk = texts[start:start + batch_size]
            batch = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left").to(device)
            ids = model.generate(**batch, do_sample=True, top_p=TOP_P, temperature=1.0, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)  # (b, T + new)
            new = tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            out += [" ".join(f"{p}{c}".split()) for p, c in zip(chunk, new, strict=True)]
    return out


def check_disjoint(text: Sequence[str], where: str) -> None:
    """Refuse text that shares a sentence with the evaluation's bundled held-out sentences."""
    folded = {" ".join(s.casefold().split()) for s in text}
    for code in sorted(set(HELDOUT_FILES.values())):
        heldout = bundled_heldout(code)
        shared = folded & {" ".join(s.casefold().split()) for s in read_sentences(heldout)}
        if shared:
            raise DataError(f"{where} shares {len(shared)} sentence(s) with the evaluation's held-out sentences "
                            f"({heldout}), e.g. {sorted(shared)[0][:60]!r}: preservation and validation text must "
                            "never be the text the evaluation scores")


def wants_written(kind: str, lang: str, path: str | None) -> bool:
    """Whether validation text of `kind` (`preserve.val_text`, `intervention.harm_text`: auto, samples, written,
    both) has written sentences in `lang`: written and both always; auto where a file is given or one is bundled."""
    return kind in ("written", "both") or (kind == "auto" and (bool(path) or bundled_heldout(lang, "validation")
                                                               is not None))


def written_validation(lang: str, path: str | None, key: str, samples_key: str = "preserve.val_text") -> list[str]:
    """Written validation sentences of a language for the harm budget: the UTF-8 file `path` (one sentence per line;
    `key` is the config key that named it, `samples_key` the one that asks for samples instead) or the bundled
    sample (`tli/lexicons/validation`); never a sentence of the evaluation's held-out text."""
    file = Path(path).expanduser() if path else bundled_heldout(lang, "validation")
    if file is None:
        raise DataError(f"no bundled validation sentences for language {lang!r} (bundled: English, Korean, Swahili): "
                        f"set {key}=FILE (UTF-8, one sentence per line), or {samples_key}=samples")
    if not file.is_file():
        raise DataError(f"{key}={str(path)!r}: no such file (UTF-8 text, one sentence per line)")
    sentences = read_sentences(file)
    check_disjoint(sentences, f"{key}: {file}" if path else f"validation text {file}")
    return sentences


def _cached(model, tokenizer, lang: str, prompts: Sequence[str], n: int, *, seed: int, max_new_tokens: int,
            fingerprint: str | None, cache_dir: str | Path | None) -> list[str]:
    key = hashlib.sha256(json.dumps([list(prompts), n, seed, max_new_tokens, TOP_P]).encode()).hexdigest()
    file = None
    if fingerprint and cache_dir:
        file = Path(cache_dir).expanduser() / "base_text" / fingerprint / f"{lang.casefold()}-{key[:16]}.json"
        if file.is_file():
            try:
                return json.loads(file.read_text(encoding="utf-8"))["samples"]
            except (ValueError, KeyError) as err:
                log.warning("base-model text cache %s unreadable (%s): sampling again", file, err)
    samples = sample_text(model, tokenizer, prompts, n, seed=seed, max_new_tokens=max_new_tokens)
    if file is not None:
        try:
            atomic_write_json(file, {"language": lang, "seed": seed, "max_new_tokens": max_new_tokens, "top_p": TOP_P,
                                     "prompts": list(prompts), "samples": samples})
        except (OSError, RunDirError) as err:  # a read-only cache still works: the samples are just not kept
            log.warning("could not cache base-model text in %s (%s)", file, err)
    return samples


def preservation_text(model, tokenizer, langs: Sequence[str], *, seed: int, n_train: int, n_val: int | dict[str, int],
                      max_new_tokens: int = 48, fingerprint: str | None = None, cache_dir: str | Path | None = None,
                      files: Sequence[str | Path] = (), fallback: dict[str, Sequence[str]] | None = None,
                      written: dict[str, list[str]] | None = None) -> dict[str, TextSplit]:
    """{language: TextSplit} of the base model's own samples (`model` must be the base: disable adapters first).
    `fallback`: openers per language without bundled ones (e.g. its lexicon words); `written`: validation sentences
    per language added after the validation samples (`written_validation`); `n_val`: validation samples, for every
    language or per language."""
    extra = [s for f in files for s in read_sentences(f)]
    for f in files:
        check_disjoint(read_sentences(f), f"preserve.text_files: {f}")
    out = {}
    for lang in langs:
        prompts = openers(lang, (fallback or {}).get(lang, ()))
        common = dict(max_new_tokens=max_new_tokens, fingerprint=fingerprint, cache_dir=cache_dir)
        train = _cached(model, tokenizer, lang, prompts, n_train, seed=seed, **common) if n_train else []
        n = n_val.get(lang, 0) if isinstance(n_val, dict) else n_val
        val = _cached(model, tokenizer, lang, prompts, n, seed=seed + VAL_SEED_OFFSET, **common) if n else []
        val = [s for s in val if s not in set(train)] + list((written or {}).get(lang, []))
        check_disjoint(train + val, f"base-model samples in {lang}")
        out[lang] = TextSplit(train + extra, val)
    return out
