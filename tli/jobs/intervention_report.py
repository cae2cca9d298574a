"""After a multirun of `evaluate.py -m intervention=...`: one evaluation of every saved map, as recipes.

Each job of the sweep fitted a map into `<job dir>/eval/intervention/` (with `intervention.fit_only=true`, that is
all it did). `InterventionReport` (a Hydra callback, set by conf/intervention/*.yaml) then evaluates them together
into `<sweep dir>/eval/`, exactly as `evaluate.py +adapters.<recipe>=[...]` would: maps made with the same settings
form one recipe (named by the kind, then the settings that differ between recipes, `-deranged` for the matched null,
listed after the recipe it is the null of), cross-fitted maps pool their held-out folds as unseen words, and the
recipes and the `nn_shots` null are compared on matched queries with Holm's adjustment (`tli.eval.recipes`).
"""

from __future__ import annotations

import json
from pathlib import Path

from tli.intervention.artifact import CARD_FILE

KEYS = ("type", "solver", "ridge", "update", "position", "layers", "select_on")  # what makes two maps one recipe


def saved_maps(sweep_dir: str | Path) -> list[Path]:
    """The maps the sweep's jobs saved, in job order."""
    found = Path(sweep_dir).glob(f"*/eval/intervention/{CARD_FILE}")
    return sorted((p.parent for p in found), key=lambda p: (len(p.parents[1].name), p.parents[1].name))


def recipes(maps: list[Path]) -> dict[str, list[str]]:
    """{recipe name: map directories}: maps with equal settings (KEYS and the derangement) form one recipe."""
    groups: dict[tuple, list[str]] = {}
    settings: dict[tuple, dict] = {}
    for path in maps:
        card = json.loads((path / CARD_FILE).read_text(encoding="utf-8"))
        s = {k: card["intervention"].get(k) for k in KEYS}
        key = (json.dumps(s, sort_keys=True), bool(card.get("split", {}).get("derange")))
        groups.setdefault(key, []).append(str(path))
        settings[key] = s
    differ = [k for k in KEYS[1:] if len({json.dumps(settings[g][k]) for g in groups}) > 1]
    out = {}
    for key in sorted(groups, key=lambda g: (g[1], list(groups).index(g))):  # each null after its recipes
        s = settings[key]
        name = s["type"] + "".join(f",{k}={s[k]}" for k in differ) + ("-deranged" if key[1] else "")
        out[name.replace("/", "_")] = groups[key]
    return out


class InterventionReport:
    """Hydra callback: after a multirun, one evaluation of every saved map into <sweep dir>/eval/ (see the module
    docstring); the jobs' own settings (data, model, eval.*) carry over, the intervention keys do not."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from tli.config import TLIConfig, to_typed
        from tli.jobs.evaluate import evaluate_job

        sweep_dir = Path(config.hydra.sweep.dir)
        maps = saved_maps(sweep_dir)
        if not maps:
            print(f"intervention report: no saved maps under {sweep_dir}")
            return
        data = OmegaConf.to_container(config, resolve=False)
        data.pop("hydra", None)
        data.pop("intervention", None)
        data.update(adapter=None, adapters=recipes(maps))
        data["paths"]["output_dir"] = str(sweep_dir)
        data["logger"]["type"] = "none"
        evaluate_job(to_typed(OmegaConf.merge(OmegaConf.structured(TLIConfig), data)))
        print(f"intervention report: {sweep_dir / 'eval' / 'report.md'} ({len(maps)} maps)")

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)
