"""Inference-time alignment without training (`evaluate.py intervention=linear_map|mean_shift`).

A closed-form map from source-language to English word vectors at chosen hidden-state indices, fitted on the run's
training pairs and added to the residual stream at inference, after INCLINE (Wang et al., ACL 2025,
arXiv 2410.12462), or the mean language-difference vector with the hidden state's norm restored, after ReCoVeR
(Sterz et al., EMNLP Findings 2025, arXiv 2509.14814). One job per module:

- `config`: `intervention.*` (`InterventionConfig`);
- `maps`: the solvers (ridge, orthogonal Procrustes, mean difference) and the update `h -> h'` (`Intervention`);
- `positions`: which token positions of which sequences the update applies at (`Targets`);
- `hooks`: `intervened(model, intervention, targets)`, the forward hooks that apply it;
- `artifact`: the saved map (`map.safetensors` + `intervention.json`, an `InterventionCard`) and its checks;
- `fit`: fitting on the training pairs and choosing alpha on the validation pairs within the harm budget;
- `measure`: the evaluation job's steps: which runs (a map to fit, saved maps), fit-and-save, and the "after" state
  with an intervention (vectors, translation, held-out loss).
The Hydra callback that evaluates a multirun's saved maps as recipes is `tli.jobs.intervention_report`.
"""
