import csv
import json
import logging
import shutil

import pytest
import torch
from helpers import FAST_CPU, compose, job_overrides
from scipy import stats

from tli.errors import AdapterError, ConfigError, DataError
from tli.eval.report import render
from tli.jobs.evaluate import evaluate_job
from tli.jobs.scan import scan_job
from tli.jobs.train import train_job

FAST = [FAST_CPU, "data.batch_size=8", "data.val_fraction=0.25", "optim.warmup_steps=1", "optim.lr=5e-3", "lora.r=4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir, small_lexicons):
    """Two adapters trained one epoch each (seeds 0 and 1) on the small lexicons."""
    runs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"train{seed}")
        cfg = compose("train", [*job_overrides(out, tiny_dir, small_lexicons), f"seed={seed}", *FAST])
        train_job(cfg)
        runs.append(out / "adapter")
    return runs


def test_statistics_equal_scipy_on_the_written_pairs(trained, eval_cfg, tmp_path):
    summary = evaluate_job(eval_cfg(f"adapter={trained[0]}"))
    rows = list(csv.DictReader((tmp_path / "eval" / "pairs.csv").open(encoding="utf-8")))
    assert {r["layer"] for r in rows} == {"2", "32"}  # the adapter's target layer and the last index by default
    for split in ("train", "control"):
        for layer in (2, 32):
            sel = [r for r in rows if r["split"] == split and r["layer"] == str(layer)]
            for variant in ("raw", "centred"):
                prefix = "" if variant == "raw" else "centred_"
                for score, column in (("cosine", "cos"), ("margin", "margin"), ("pool_mrr", "pool_mrr")):
                    before = [float(r[f"{prefix}{column}_before"]) for r in sel]
                    after = [float(r[f"{prefix}{column}_after"]) for r in sel]
                    got = summary["runs"]["run"][split][layer][variant]["paired"][score]
                    ref = stats.ttest_rel(after, before)
                    assert got["n"] == len(sel) == {"train": 48, "control": 12}[split]
                    assert got["t"] == pytest.approx(ref.statistic, rel=1e-5)
                    assert got["p"] == pytest.approx(ref.pvalue, rel=1e-4)
                    assert got["wilcoxon_p"] == pytest.approx(stats.wilcoxon(after, before).pvalue, rel=1e-4)
                    assert got["delta"] == pytest.approx(sum(after) / len(after) - sum(before) / len(before),
                                                         abs=1e-6)
            did = summary["runs"]["run"]["targeted"][layer]["raw"]["margin"]
            train = [float(r["margin_after"]) - float(r["margin_before"])
                     for r in rows if r["split"] == "train" and r["layer"] == str(layer)]
            control = [float(r["margin_after"]) - float(r["margin_before"])
                       for r in rows if r["split"] == "control" and r["layer"] == str(layer)]
            assert did["p"] == pytest.approx(stats.ttest_ind(train, control, equal_var=False).pvalue, rel=1e-4)
    on_disk = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert on_disk["settings"]["layers"] == [2, 32] and on_disk["settings"]["pooling"] == "mean"
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "| train | 32 |" in report and "trained vs control (raw, margin)" in report and "nf4" in report
    assert "unseen (control) pairs, index 32, centred vectors" in report
    for png in ("layers.png", "scatter.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_before_values_equal_the_base_scan(trained, eval_cfg, scan_cfg, tmp_path):
    evaluate_job(eval_cfg(f"adapter={trained[0]}", out=tmp_path / "e"))
    scan_job(scan_cfg("scan.layers=[2,32]", out=tmp_path / "s"))
    pairs = list(csv.DictReader((tmp_path / "e" / "eval" / "pairs.csv").open(encoding="utf-8")))
    scan = list(csv.DictReader((tmp_path / "s" / "scan" / "layers.csv").open(encoding="utf-8")))
    summary = json.loads((tmp_path / "e" / "eval" / "summary.json").read_text())
    for split in ("train", "control"):
        for layer in ("2", "32"):
            before = [float(r["cos_before"]) for r in pairs if r["split"] == split and r["layer"] == layer]
            for variant in ("raw", "centred"):
                row = next(r for r in scan if (r["split"], r["layer"], r["vectors"]) == (split, layer, variant))
                if variant == "raw":
                    assert sum(before) / len(before) == pytest.approx(float(row["cosine"]), abs=1e-6)
                got = summary["runs"]["run"][split][layer][variant]["before"]
                for key in ("cosine", "baseline_cosine", "margin_z", "mrr", "pool_p_at_1", "csls_p_at_1"):
                    assert got[key] == pytest.approx(float(row[key]), abs=1e-6), (split, layer, variant, key)


def test_base_weights_load_once_for_several_runs(two_runs):
    summary, _, out, calls = two_runs
    assert len(calls) == 1
    assert set(summary["runs"]) == {"run0", "run1"}
    agg = summary["aggregate"]["train"][32]["raw"]["cosine_paired_delta"]
    deltas = [summary["runs"][r]["train"][32]["raw"]["paired"]["cosine"]["delta"] for r in ("run0", "run1")]
    assert agg["n"] == 2 and agg["mean"] == pytest.approx(sum(deltas) / 2)
    assert "margin_did" in summary["aggregate"]["targeted"][32]["centred"]
    assert "Across runs" in (out / "eval" / "report.md").read_text()


def test_bad_input(trained, eval_cfg, tmp_path, small_lexicons, caplog):
    with pytest.raises(AdapterError, match="adapter='/nope/adapter': no such directory"):
        evaluate_job(eval_cfg("adapter=/nope/adapter"))
    with pytest.raises(AdapterError, match="adapter is required"):
        evaluate_job(eval_cfg())
    foreign = tmp_path / "foreign"
    shutil.copytree(trained[0], foreign)
    sidecar = json.loads((foreign / "tli_adapter.json").read_text())
    # Other weights (another fingerprint) are refused even under the same name ...
    (foreign / "tli_adapter.json").write_text(json.dumps({**sidecar, "base_fingerprint": "0" * 16}))
    with pytest.raises(AdapterError, match=r"trained on other base weights \(fingerprint 0{16}.*model.name_or_path="):
        evaluate_job(eval_cfg(f"adapter={foreign}"))
    # ... and without a fingerprint, another name is refused.
    unprinted = {k: v for k, v in sidecar.items() if k != "base_fingerprint"}
    (foreign / "tli_adapter.json").write_text(json.dumps({**unprinted, "base_model": "someone/other-model"}))
    with pytest.raises(AdapterError, match=r"trained on base model 'someone/other-model'.*model.name_or_path="):
        evaluate_job(eval_cfg(f"adapter={foreign}"))
    with pytest.raises(ConfigError, match=r"eval.layers=\[2, 40\] is outside this model's range 0..32"):
        evaluate_job(eval_cfg(f"adapter={trained[0]}", "eval.layers=[2,40]"))
    # Different lexicon files: a warning naming both hashes, and the evaluation still runs.
    other = tmp_path / "other_train.json"
    pairs = json.loads(small_lexicons[0].read_text(encoding="utf-8"))[:30]
    other.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="tli.jobs.evaluate"):
        evaluate_job(eval_cfg(f"adapter={trained[0]}", f"data.train_file={other}",
                              "eval.layers=[32]"))
    trained_hash = sidecar["lexicons"]["train"]["sha256"][:12]
    assert any(trained_hash in r.message and "differs" in r.message for r in caplog.records)


def test_wandb_offline_gets_the_report(trained, eval_cfg, tmp_path):
    evaluate_job(eval_cfg(f"adapter={trained[0]}", "logger=wandb",
                          "logger.offline=true", "eval.layers=[32]", "eval.translation=true"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    # per-layer curves, the per-pair scatter plot and the per-query gold log-probability
    assert len(list(runs[0].glob("files/media/images/**/*.png"))) == 3
    assert list(runs[0].glob("files/media/table/eval/table_*.table.json"))  # the statistics table
    tables = list(runs[0].glob("files/media/table/eval/translation_*.table.json"))
    assert len(tables) == 1  # the translation rows
    table = json.loads(tables[0].read_text())
    n_rows = len(list(csv.DictReader((tmp_path / "eval" / "translation.csv").open(encoding="utf-8"))))
    assert table["columns"][:3] == ["run", "split", "direction"] and len(table["data"]) == n_rows
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # offline: the run summary lives in the run's log
    assert b"eval/translation/train/Swahili->English/accuracy_after" in log and b"eval/lm_loss/English/nll_after" in log


def test_validation_scores_equal_the_scan_on_the_same_pairs(trained, scan_cfg, train_cfg, tmp_path):
    """One metric function everywhere: the last validation of a run and a scan of its adapter on the validation
    pairs agree on every headline metric (raw vectors; centring statistics differ by design: training words)."""
    from tli.data.config import load_lexicons
    from tli.data.splits import split_validation
    from tli.eval.metrics import HEADLINE

    data = train_cfg().data  # the same data settings as `trained`
    _, val = split_validation(load_lexicons(data).train, data.val_fraction, seed=0)
    val_file = tmp_path / "val.json"
    val_file.write_text(json.dumps([{"swahili": p.source, "english": p.target} for p in val], ensure_ascii=False),
                        encoding="utf-8")
    scan_job(scan_cfg(f"data.train_file={val_file}", "data.control_file=null", f"adapter={trained[0]}",
                      "scan.layers=[2,32]"))
    logged = json.loads((trained[0].parent / "metrics.json").read_text())["metrics"]
    rows = list(csv.DictReader((tmp_path / "scan" / "layers.csv").open(encoding="utf-8")))
    for layer in (2, 32):
        row = next(r for r in rows if (r["model"], r["vectors"], r["layer"]) == ("adapted", "raw", str(layer)))
        assert int(row["n_pairs"]) == len(val) >= 10
        for name in HEADLINE:
            assert float(row[name]) == pytest.approx(logged[f"val/{name}@{layer}"], abs=1e-5), (layer, name)


# --- behaviour: few-shot translation and held-out LM loss (the tiny model's random weights translate nothing, so
# --- the second run lists some of its own answers as translations to get words right and flips to count) -------


def read_rows(path):
    return list(csv.DictReader(path.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def two_runs(trained, tmp_path_factory, tiny_dir, small_lexicons):
    """Both adapters evaluated together, with few-shot translation, behaviour in NF4 like the representations:
    (summary, translation.csv rows, output dir, the model paths `AutoModelForCausalLM.from_pretrained` was called
    with)."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("two_runs")
    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args[0])
        return real(cls, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(counting))
        summary = evaluate_job(compose("evaluate", [*job_overrides(out, tiny_dir, small_lexicons), "eval.n_boot=500",
                                                    f"adapter=[{trained[0]},{trained[1]}]", "eval.translation=true",
                                                    "eval.behaviour_quantization=nf4"]))
    return summary, read_rows(out / "eval" / "translation.csv"), out, calls


def test_several_runs_share_one_before_pass_and_aggregate(two_runs, tiny_nf4, small_lexicons):
    from tli.eval.lm_loss import heldout_sentences
    from tli.eval.translation import CSV_COLUMNS

    summary, rows, out, _ = two_runs
    assert list(rows[0]) == ["run", *CSV_COLUMNS]
    words = {split: len({p["swahili"] for p in pairs}) + len({p["english"] for p in pairs})
             for split, pairs in zip(("train", "control"), (json.loads(f.read_text(encoding="utf-8"))
                                                             for f in small_lexicons), strict=True)}
    for run in ("run0", "run1"):
        assert {s: sum(r["run"] == run and r["split"] == s for r in rows) for s in words} == words
    key = ("split", "direction", "source", "prediction_before", "correct_before")
    assert [tuple(r[k] for k in key) for r in rows if r["run"] == "run0"] == \
        [tuple(r[k] for k in key) for r in rows if r["run"] == "run1"]  # one base pass, whichever adapter
    assert any(r["prediction_before"] != r["prediction_after"] for r in rows)  # the adapters change the answers
    # "before" equals a plain greedy generate on the base model, for one word
    model, tok = tiny_nf4
    row = next(r for r in rows if r["split"] == "train" and r["direction"] == "English->Swahili")
    query = next(q for q in two_run_queries(small_lexicons) if (q.split, q.direction, q.source) ==
                 (row["split"], row["direction"], row["source"]))
    ids = tok(query.prompt, return_tensors="pt")["input_ids"]  # (1, T)
    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tok.pad_token_id)  # (1, T + n)
    assert tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip() == \
        row["prediction_before"]
    # LM loss before: the model's own loss, token-weighted over the bundled English sentences
    nll, tokens = 0.0, 0
    for sentence in heldout_sentences("English"):
        ids = tok(sentence, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            nll += float(model(ids, labels=ids).loss) * (ids.shape[1] - 1)
        tokens += ids.shape[1] - 1
    for run in ("run0", "run1"):
        assert summary["runs"][run]["lm_loss"]["English"]["nll_before"] == pytest.approx(nll / tokens, rel=1e-5)
    # aggregates: the mean of the runs' figures
    agg = summary["aggregate"]
    for split in ("train", "control"):
        for direction in ("Swahili->English", "English->Swahili"):
            got = agg["translation"][split][direction]["accuracy_after"]
            runs = [summary["runs"][r]["translation"][split][direction]["accuracy_after"] for r in ("run0", "run1")]
            assert got["n"] == 2 and got["mean"] == pytest.approx(sum(runs) / 2)
    for lang in ("Swahili", "English"):
        runs = [summary["runs"][r]["lm_loss"][lang]["nll_after"] for r in ("run0", "run1")]
        assert runs[0] != runs[1]
        assert agg["lm_loss"][lang]["nll_after"]["mean"] == pytest.approx(sum(runs) / 2)
        assert agg["lm_loss"][lang]["nll_before"]["std"] == 0  # one base pass
    report = (out / "eval" / "report.md").read_text()
    assert "### Few-shot word translation across runs" in report and "### Do no harm, across runs" in report


def two_run_queries(small_lexicons):
    from tli.data.lexicon import read_lexicon
    from tli.eval.translation import build_queries

    read = dict(src_field="swahili", tgt_field="english", src_lang="Swahili", tgt_lang="English")
    return build_queries({s: read_lexicon(f, **read) for s, f in zip(("train", "control"), small_lexicons,
                                                                       strict=True)}, k=5, seed=0)


def test_translation_csv_summary_and_report_agree(two_runs, trained, eval_cfg, tmp_path, small_lexicons):
    from tli.eval.graded import chrf
    from tli.eval.translation import CSV_COLUMNS, normalize_answer

    _, first, _, _ = two_runs
    # List the base model's own Swahili->English answers for three training words as translations: the shots of
    # those prompts (control pairs) stay the same, so the answers do too and count as right before.
    before = {r["source"]: r["prediction_before"] for r in first
              if r["run"] == "run1" and r["split"] == "train" and r["direction"] == "Swahili->English"}
    pairs = json.loads(small_lexicons[0].read_text(encoding="utf-8"))
    chosen = [p["swahili"] for p in pairs[:3]]
    for p in pairs[:3]:
        p["english"] = before[p["swahili"]]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    own = tmp_path / "en.txt"
    own.write_text("The river is wide.\nWe eat rice at noon.\nMy sister reads a book.\n", encoding="utf-8")
    summary = evaluate_job(eval_cfg(f"adapter={trained[1]}",
                                    f"data.train_file={train}", "eval.translation=true", "eval.layers=[32]",
                                    f"eval.heldout_tgt={own}", "eval.nn_shots=false"))
    rows = read_rows(tmp_path / "eval" / "translation.csv")
    assert list(rows[0]) == CSV_COLUMNS  # a single adapter and no null: exactly the contract's columns
    same = [r for r in rows if r["split"] == "train" and r["direction"] == "Swahili->English"]
    assert {r["source"]: r["prediction_before"] for r in same} == before  # one base pass, whichever adapter
    assert all(r["correct_before"] == "True" for r in same if r["source"] in chosen)
    result = summary["runs"]["run"]["translation"]
    for split in ("train", "control"):
        for direction in ("Swahili->English", "English->Swahili"):
            cell = [r for r in rows if (r["split"], r["direction"]) == (split, direction)]
            answer = "English" if direction.endswith("English") else "Swahili"
            for r in cell:  # correctness recomputed from the written predictions and listed translations
                gold = {normalize_answer(t, answer) for t in r["target"].split(" | ")}
                for when in ("before", "after"):
                    assert (r[f"correct_{when}"] == "True") == (normalize_answer(r[f"prediction_{when}"], answer)
                                                                 in gold)
            st = result[split][direction]
            right = {w: [r["correct_" + w] == "True" for r in cell] for w in ("before", "after")}
            assert st["n"] == len(cell)
            assert st["accuracy_before"] == pytest.approx(sum(right["before"]) / len(cell))
            assert st["accuracy_after"] == pytest.approx(sum(right["after"]) / len(cell))
            lost = [r["source"] for r in cell if r["correct_before"] == "True" and r["correct_after"] == "False"]
            gained = [r["source"] for r in cell if r["correct_before"] == "False" and r["correct_after"] == "True"]
            assert (st["mcnemar_b"], st["mcnemar_c"]) == (len(lost), len(gained))
            assert [f["source"] for f in st["right_to_wrong"]] == lost
            assert [f["source"] for f in st["wrong_to_right"]] == gained
            for r in cell:  # graded scores: chrF recomputed from the written strings; an exact match scores 100
                for when in ("before", "after"):
                    got = float(r[f"chrf_{when}"])
                    assert got == pytest.approx(chrf(r[f"prediction_{when}"], r["target"].split(" | "), answer))
                    assert got == pytest.approx(100.0) if r[f"correct_{when}"] == "True" else 0 <= got <= 100
                    assert float(r[f"gold_logprob_{when}"]) < 0 and int(r[f"gold_rank_{when}"]) >= 1
            for g in ("gold_logprob", "chrf", "gold_rank"):  # the summary's paired statistics are of these columns
                for when in ("before", "after"):
                    column = [float(r[f"{g}_{when}"]) for r in cell]
                    assert st["graded"][g][f"mean_{when}"] == pytest.approx(sum(column) / len(cell))
                assert st["graded"][g]["n"] == len(cell) and "wilcoxon_p" in st["graded"][g]
            assert set(result["targeted"][direction]["graded"]) == {"gold_logprob", "chrf", "gold_rank"}
    assert CSV_COLUMNS[-8:] == ["gold_logprob_before", "gold_logprob_after", "chrf_before", "chrf_after",
                                "gold_rank_before", "gold_rank_after", "fold", "seed"]
    assert all(r["fold"] == "" for r in rows)  # a plain (not cross-fitted) adapter
    assert result["train"]["Swahili->English"]["correct_before"] >= 3
    assert summary["settings"]["translation"]["words"]["train"]["Swahili->English"] == len(same)
    assert summary["settings"]["lm_loss"]["English"] == {
        "file": str(own), "sha256": __import__("hashlib").sha256(own.read_bytes()).hexdigest(), "sentences": 3}
    assert summary["runs"]["run"]["lm_loss"]["English"]["n_sentences"] == 3
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "### Few-shot word translation" in report and "| train | Swahili->English | 48 |" in report
    assert "Graded scores, per word" in report and "| train | Swahili->English | chrf | 48 |" in report
    assert "### Do no harm: held-out text" in report and "| English | 3 |" in report
    assert "Do no harm: the held-out language-modelling loss rose" not in report
    summary["runs"]["run"]["lm_loss"]["English"]["rise"] = True  # as if it had: the report says so at the top
    assert "**Do no harm: the held-out language-modelling loss rose in English (run)**" in \
        render(summary).split("## run")[0]


def test_bad_behaviour_settings_fail_before_any_weights_load(trained, eval_cfg, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: calls.append(a)))

    def run(*overrides):
        evaluate_job(eval_cfg(f"adapter={trained[0]}", *overrides))

    for key, value, allowed in (("shots", 0, ">= 1"), ("max_new_tokens", -1, ">= 1"),
                                ("generation_batch_size", 0, ">= 1")):
        with pytest.raises(ConfigError, match=f"eval.{key}={value} must be {allowed}"):
            run("eval.translation=true", f"eval.{key}={value}")
    with pytest.raises(ConfigError, match=r"eval.shots=20: split 'train'.*only \d+ shot pairs usable"):
        run("eval.translation=true", "eval.shots=20")
    with pytest.raises(ConfigError, match=r"eval.translation=true needs a control lexicon \(data.control_file\)"):
        run("eval.translation=true", "data.control_file=null")
    with pytest.raises(DataError, match=r"data.src_lang='Klingon'.*eval.heldout_src=PATH.*eval.lm_loss=false"):
        run("data.src_lang=Klingon")
    with pytest.raises(DataError, match=r"eval.heldout_tgt='/nope/en.txt': no such file"):
        run("eval.heldout_tgt=/nope/en.txt")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"eval.heldout_src: .*empty.txt: contains no sentences"):
        run(f"eval.heldout_src={tmp_path / 'empty.txt'}")
    assert calls == [] and not (tmp_path / "eval").exists()


def test_behaviour_is_scored_in_full_precision_by_default(trained, eval_cfg, tiny_dir, tmp_path, monkeypatch):
    """eval.behaviour_quantization=none (default): the held-out loss "before" is the full-precision base model's, not
    the NF4 model's the representations use; the base loads once per precision; the report says which."""
    from transformers import AutoModelForCausalLM

    from tli.eval.lm_loss import heldout_sentences, lm_loss
    from tli.model.loading import ModelSpec, load_model

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: calls.append(a[0]) or real(cls, *a, **k)))
    summary = evaluate_job(eval_cfg(f"adapter={trained[0]}", "eval.layers=[32]"))
    monkeypatch.undo()
    assert len(calls) == 2 and summary["settings"]["behaviour_quantization"] == "none"
    sentences = heldout_sentences("English")
    full, tok = load_model(ModelSpec(name_or_path=str(tiny_dir), quantization="none"), device="cpu")
    nf4, _ = load_model(ModelSpec(name_or_path=str(tiny_dir)), device="cpu")
    got = summary["runs"]["run"]["lm_loss"]["English"]["nll_before"]
    assert got == pytest.approx(lm_loss(full, tok, sentences)["nll"], rel=1e-6)
    assert got != pytest.approx(lm_loss(nf4, tok, sentences)["nll"], rel=1e-6)
    assert "scored with the base model in quantization none (full precision)" in \
        (tmp_path / "eval" / "report.md").read_text()
