"""Ray Train wrapper: the same :func:`reenact.model.train.training_loop` on N workers (CPUs or GPUs, one node or
many). Each worker builds its own dataset from the config and reads its share of every epoch; DDP averages the
gradients; rank 0 writes the checkpoint, config and logs into ``run_dir`` (a folder every worker can reach)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reenact.model.train import TrainConfig, training_loop


def _worker(loop_config: dict[str, Any]) -> None:
    training_loop(TrainConfig(**loop_config), distributed=True)


def train_on_ray(cfg: TrainConfig, num_workers: int = 1, use_gpu: bool = False, address: str | None = None):
    """Run ``cfg`` with Ray Train's ``TorchTrainer`` on ``num_workers`` workers; returns Ray's ``Result``.

    ``address``: a Ray cluster to join (default: the running session, else a local one).
    """
    import ray

    try:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:  # ray without its train extra (pydantic)
        raise ImportError(f"Ray Train is not usable here: {e}. Install it with `pip install 'ray[train]'`, or train "
                          "in one process (without --ray-workers).") from e
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    run_dir = Path(cfg.run_dir).resolve()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), progress=False)
    trainer = TorchTrainer(_worker, train_loop_config=dataclasses.asdict(cfg),
                           scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
                           run_config=RunConfig(name="ray", storage_path=str(run_dir)))
    return trainer.fit()
