"""Before/after report of a trained adapter on trained and control pairs. See conf/evaluate.yaml for the options."""

import hydra
from omegaconf import DictConfig

from tli.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from tli.jobs.common import run_entry
    from tli.jobs.evaluate import evaluate_job

    run_entry(evaluate_job, cfg)


if __name__ == "__main__":
    from tli.jobs.common import check_output_dir_args, exit_if_jobs_failed

    check_output_dir_args()
    main()
    exit_if_jobs_failed()
