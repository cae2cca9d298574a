"""Layer-wise alignment scan: which layer to target. See conf/scan.yaml for the options."""

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="scan")
def main(cfg: DictConfig) -> float:
    from tli.scan_job import scan_job

    summary = scan_job(OmegaConf.to_container(cfg, resolve=True))
    return summary["base"]["recommended_value"]


if __name__ == "__main__":
    main()
