"""TLI training: LoRA + contrastive loss at layer k, Lightning + Hydra. See conf/train.yaml for the options."""

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from tli.train_job import train_job

    config = OmegaConf.to_container(cfg, resolve=True)
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and not config["logger"].get("group"):
        config["logger"]["group"] = hydra_cfg.sweep.dir.replace("/", "_")  # one W&B group per sweep
    return train_job(config)["objective"]


if __name__ == "__main__":
    main()
