"""Before/after report of a trained adapter on trained and control pairs. See conf/evaluate.yaml for the options."""

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from tli.evaluate_job import evaluate_job

    evaluate_job(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
