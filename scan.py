"""Layer-wise alignment scan: which layer to target. See conf/scan.yaml for the options."""

import hydra
from omegaconf import DictConfig

from tli.config import register

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="scan")
def main(cfg: DictConfig) -> float:
    from tli.jobs.common import run_entry
    from tli.jobs.scan import scan_job

    return run_entry(scan_job, cfg)["base"]["recommended_value"]


if __name__ == "__main__":
    main()
