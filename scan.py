"""Layer-wise alignment scan: which layer to target. See conf/scan.yaml for the options."""

import hydra
from omegaconf import DictConfig

from tli.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="scan")
def main(cfg: DictConfig) -> float:
    from tli.jobs.common import run_entry
    from tli.jobs.scan import scan_job

    result = run_entry(scan_job, cfg)
    return result["base"]["recommended_value"] if "base" in result else None  # None: a failed job of a sweep


if __name__ == "__main__":
    from tli.jobs.common import check_output_dir_args, exit_if_jobs_failed

    check_output_dir_args()
    main()
    exit_if_jobs_failed()
