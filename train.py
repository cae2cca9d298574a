"""TLI training: LoRA + contrastive loss at layer k, Lightning + Hydra. See conf/train.yaml for the options."""

import hydra
from omegaconf import DictConfig

from tli.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | tuple[float, float] | None:
    from tli.jobs.common import in_multirun, run_entry
    from tli.jobs.sweep import sweep_value, sweeper_directions
    from tli.jobs.train import train_job

    directions = sweeper_directions()  # checked before training: the objective, or (alignment, harm)

    if in_multirun() and not cfg.logger.group:
        from hydra.core.hydra_config import HydraConfig

        cfg.logger.group = HydraConfig.get().sweep.dir.replace("/", "_")  # one W&B group per sweep
    return sweep_value(run_entry(train_job, cfg), directions)  # None: a failed job (Optuna records it as failed)


if __name__ == "__main__":
    from tli.jobs.common import check_output_dir_args, exit_if_jobs_failed

    check_output_dir_args()
    main()
    exit_if_jobs_failed()
