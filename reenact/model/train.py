"""Training the multiple-guidance model: one config dataclass, one loop (1 CPU, 1 GPU, or many workers on Ray Train).

The loop (paper, Training section): self-reenactment pairs from one video; guidance F_c, O_c, I_r computed on the
fly, batched, on the training device (or read from the item when it carries ``flow`` / ``occlusion`` /
``rendered``); loss L_c + lambda_s L_s (Eqs. 8-10) or the explicit weight-free fallback; Adam 1e-4, dropping to
1e-5 after 60 % of the epochs (paper: 100 epochs, batch 8).

Run folder ``run_dir``:

* ``config.json``: the :class:`TrainConfig` with provenance (the loss name included);
* ``checkpoint.pt``: model, optimizer, AMP scaler, step, RNG states, config (written atomically every
  ``checkpoint_every`` steps and at the end); a rerun with the same ``run_dir`` resumes from it;
* ``log.csv``: one row per ``log_every`` steps (the loss name in every row); ``tensorboard/``: the same scalars.

Data order is a function of ``(seed, epoch)`` only, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from reenact.config import save_run_config
from reenact.face3d.coeffs import motion_coeffs
from reenact.face3d.guidance import compute_guidance
from reenact.model.losses import (
    LAMBDA_STYLE,
    LOSSES,
    PERCEPTUAL,
    PYRAMID_SCALES,
    build_loss,
)
from reenact.model.networks import (
    ABLATIONS,
    SIZES,
    ModelConfig,
    MultipleGuidanceModel,
    model_config,
)

CHECKPOINT = "checkpoint.pt"
#: Fields that may change between a run and its resumption (everything else must match the checkpoint).
RESUMABLE_CHANGES = {"max_steps", "progress", "log_every", "checkpoint_every", "num_workers", "device", "resume",
                     "tensorboard"}


@dataclass
class TrainConfig:
    """Every option of a training run (saved as ``run_dir/config.json`` and in each checkpoint)."""

    run_dir: str = field(default="runs/paper", metadata={"help": "run folder (config, checkpoint, logs)"})
    data: str = field(default="synthetic", metadata={
        "help": "training pairs: 'synthetic' (rendered on the fly), or a prepared folder read through "
                "reenact.data.datasets"})
    size: Literal["tiny", "small", "full"] = field(default="full", metadata={
        "help": "network size: full (256^2, the paper), small (128^2) or tiny (64^2, CPU smoke runs)"})
    ablation: Literal["base", "fg", "fg-og", "fg-og-sg"] = field(default="fg-og-sg", metadata={
        "help": "Table 3 row: base (no guidance), fg (+flow), fg-og (+occlusion), fg-og-sg (+I_r: the full model)"})
    loss: Literal["vgg19-perceptual", "l1-msssim"] = field(default=PERCEPTUAL, metadata={
        "help": "vgg19-perceptual (Eqs. 8-10, needs the VGG-19 ImageNet weights) or l1-msssim (explicit "
                "weight-free fallback: multi-scale L1 + MS-SSIM)"})
    epochs: int = field(default=100, metadata={"help": "epochs over the pairs"})
    batch_size: int = field(default=8, metadata={"help": "pairs per step (per worker)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate"})
    lr_final: float = field(default=1e-5, metadata={"help": "learning rate after the drop"})
    lr_drop_at: float = field(default=0.6, metadata={"help": "fraction of the epochs after which lr drops"})
    lambda_style: float = field(default=LAMBDA_STYLE, metadata={"help": "lambda_s of Eq. 10"})
    scales: tuple[float, ...] = field(default=PYRAMID_SCALES, metadata={"help": "pyramid scales of L_c"})
    morphable: str = field(default="procedural-full", metadata={"help": "morphable model for the guidance"})
    synthetic_videos: int = field(default=4, metadata={"help": "synthetic data: videos (identities)"})
    synthetic_frames: int = field(default=6, metadata={"help": "synthetic data: frames per video"})
    seed: int = field(default=0, metadata={"help": "seed of weights and data order"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (smoke runs)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    amp: bool = field(default=True, metadata={"help": "mixed precision on CUDA"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    log_every: int = field(default=10, metadata={"help": "steps between log rows"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})
    resume: bool = field(default=True, metadata={"help": "resume from run_dir/checkpoint.pt when present"})
    progress: bool = field(default=True, metadata={"help": "progress bar"})
    tensorboard: bool = field(default=True, metadata={"help": "TensorBoard event files"})
    assets: str | None = field(default=None, metadata={"help": "asset folder (VGG-19 weights, BFM)"})

    def __post_init__(self):
        self.scales = tuple(float(s) for s in self.scales)
        if self.ablation not in ABLATIONS or self.size not in SIZES or self.loss not in LOSSES:
            raise ValueError(f"bad size / ablation / loss: {self.size!r}, {self.ablation!r}, {self.loss!r}")

    def model_config(self) -> ModelConfig:
        return model_config(self.size, self.ablation)


#: Named presets: ``tiny`` for CPU smoke runs and the quickstart, ``paper`` for the paper's schedule.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": {"size": "tiny", "epochs": 4, "batch_size": 4, "lr": 1e-3, "lr_final": 1e-4, "morphable": "procedural-small",
             "synthetic_videos": 2, "synthetic_frames": 4, "log_every": 1, "checkpoint_every": 50},
}


def train_config(preset: str = "paper", **overrides: Any) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose from {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------------------------------- data
def build_dataset(cfg: TrainConfig) -> Dataset:
    """The training pairs named by ``cfg.data``: rendered synthetic pairs, or self pairs of a prepared folder (frame
    and coefficient shards, ``reenact.data.datasets``) with fresh random pairs every epoch, one per chunk."""
    if cfg.data == "synthetic":
        from reenact.model.synthetic_pairs import SyntheticPairs, SyntheticSpec

        return SyntheticPairs(SyntheticSpec(size=cfg.model_config().image_size, videos=cfg.synthetic_videos,
                                            frames=cfg.synthetic_frames, seed=cfg.seed))
    try:
        from reenact.data.datasets import FrameDataset, SelfPairDataset
    except ImportError as e:
        raise ValueError(f"data={cfg.data!r}: reading prepared folders needs reenact.data.datasets ({e})") from e
    frames = FrameDataset(cfg.data)
    chunks = len(SelfPairDataset(frames, 1, cfg.seed).chunks)
    return EpochResampled(SelfPairDataset(frames, chunks * cfg.epochs, cfg.seed), chunks)


class EpochResampled(Dataset):
    """Epoch ``e`` of ``base`` (items a function of their index) is its items ``e n .. e n + n - 1``."""

    def __init__(self, base: Dataset, per_epoch: int):
        self.base, self.per_epoch, self.epoch = base, per_epoch, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __getitem__(self, index: int):
        return self.base[self.epoch * self.per_epoch + index]


def epoch_order(num_items: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This worker's share of epoch ``epoch``'s permutation (a function of the seed and epoch only)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_items, generator=g)[rank::world].tolist()


def steps_per_epoch(num_items: int, batch_size: int, world: int = 1) -> int:
    steps = (num_items // world) // batch_size
    if steps < 1:
        raise ValueError(f"{num_items} training pairs over {world} worker(s) cannot fill one batch of {batch_size}")
    return steps


def learning_rate(cfg: TrainConfig, step: int, per_epoch: int) -> float:
    """Adam's rate at ``step``: ``lr`` until ``lr_drop_at`` of the epochs are done, then ``lr_final``."""
    return cfg.lr if step < round(cfg.lr_drop_at * cfg.epochs) * per_epoch else cfg.lr_final


# ---------------------------------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class Batch:
    source: torch.Tensor      # I_s, B x 3 x H x W
    driving: torch.Tensor     # I_d, B x 3 x H x W
    motion: torch.Tensor      # v~_d, B x 70
    flow: torch.Tensor        # F_c, B x 2 x H x W
    occlusion: torch.Tensor   # O_c, B x 1 x H x W
    render: torch.Tensor      # I_r, B x 3 x H x W


def prepare_batch(item: dict[str, torch.Tensor], morphable, size: int, device: torch.device) -> Batch:
    """Move an item batch to ``device`` at the network's ``size`` and complete it with guidance computed there (unless
    the item carries guidance of that size). Coefficients do not depend on the image size (Deep3D's camera scales)."""
    source, driving = (_resized(item[k].to(device), size) for k in ("source", "driving"))
    sc, dc = item["source_coeffs"].to(device).float(), item["driving_coeffs"].to(device).float()
    carried = all(k in item and tuple(item[k].shape[-2:]) == (size, size) for k in ("flow", "occlusion", "rendered"))
    if carried:
        flow, occlusion, render = (item[k].to(device).float() for k in ("flow", "occlusion", "rendered"))
    else:
        with torch.no_grad():
            g = compute_guidance(morphable, sc, dc, size, with_source_render=False)
        flow, occlusion, render = g.flow, g.occlusion, g.render
    return Batch(source, driving, motion_coeffs(dc), flow, occlusion, render)


def _resized(images: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(images.shape[-2:]) == (size, size):
        return images.float()
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def train_step(model, loss_fn, optimizer, scaler, batch: Batch, amp: bool):
    """One optimisation step; returns (loss, terms)."""
    device_type = batch.source.device.type
    with torch.autocast(device_type=device_type, enabled=amp):
        out = model(batch.source, batch.motion, batch.flow, batch.occlusion, batch.render)
    loss, terms = loss_fn(out.image.float(), batch.driving)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item(), terms


# ---------------------------------------------------------------------------------------------------- state
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model, optimizer, scaler, step: int, cfg: TrainConfig) -> None:
    """Write the checkpoint atomically (temporary name, then rename)."""
    path = Path(path)
    model = getattr(model, "module", model)                      # unwrap DDP
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
             "step": step, "rng": rng_state(), "config": dataclasses.asdict(cfg),
             "model_config": dataclasses.asdict(model.config), "loss": cfg.loss}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=False)


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume a checkpoint written with other settings (naming the fields that differ)."""
    now = dataclasses.asdict(cfg)
    differ = {k: (saved[k], now[k]) for k in now if k not in RESUMABLE_CHANGES and k in saved
              and (list(saved[k]) if isinstance(saved[k], tuple) else saved[k])
              != (list(now[k]) if isinstance(now[k], tuple) else now[k])}
    if differ:
        raise ValueError(f"{path} was written with other settings: "
                         + ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
                         + ". Use another --run-dir or --no-resume.")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------- logs
class RunLog:
    """CSV (+ TensorBoard) rows, each naming the loss, written on rank 0 only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, enabled: bool):
        self.enabled, self.loss, self.path = enabled, cfg.loss, run_dir / "log.csv"
        self.writer = None
        if enabled and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            self.writer.add_text("loss", cfg.loss)

    def header(self) -> str:
        return f"[loss={self.loss}]"

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"loss_fn": self.loss, **row}
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float) and k != "step":
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ---------------------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class TrainResult:
    steps: int
    losses: list[float]           # this call's per-step losses (rank 0)
    checkpoint: Path | None


def _distributed_context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def training_loop(cfg: TrainConfig, dataset: Dataset | None = None, *, distributed: bool = False) -> TrainResult:
    """Train (or resume) the run described by ``cfg``. ``distributed``: inside a Ray Train worker."""
    from tqdm.auto import tqdm

    rank, world = _distributed_context() if distributed else (0, 1)
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    loss_fn = build_loss(cfg.loss, scales=cfg.scales, lambda_style=cfg.lambda_style, assets=cfg.assets)
    dataset = build_dataset(cfg) if dataset is None else dataset
    torch.manual_seed(cfg.seed)
    model = MultipleGuidanceModel(cfg.model_config())
    if distributed:
        import ray.train.torch as ray_torch

        device = ray_torch.get_device()
        model = ray_torch.prepare_model(model)
    else:
        device = pick_device(cfg.device)
        model = model.to(device)
    loss_fn = loss_fn.to(device)
    amp = cfg.amp and device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    step = _resume(cfg, run_dir, model, optimizer, scaler)
    if rank == 0:
        save_run_config(cfg, run_dir, model_config=dataclasses.asdict(cfg.model_config()), loss=cfg.loss,
                        world_size=world)
    morphable = _morphable(cfg, device)
    per_epoch = steps_per_epoch(len(dataset), cfg.batch_size, world)
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * per_epoch)
    log = RunLog(run_dir, cfg, enabled=rank == 0)
    bar = tqdm(total=total, initial=step, desc=f"train {log.header()}", disable=not cfg.progress or rank != 0)
    losses, size = [], cfg.model_config().image_size
    model.train()
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        order = epoch_order(len(dataset), cfg.seed, epoch, rank, world)[offset * cfg.batch_size:]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = DataLoader(Subset(dataset, order), batch_size=cfg.batch_size, shuffle=False, drop_last=True,
                            num_workers=cfg.num_workers)
        for item in loader:
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step, per_epoch)
            start = time.perf_counter()
            loss, terms = train_step(model, loss_fn, optimizer, scaler, prepare_batch(item, morphable, size, device),
                                     amp)
            step += 1
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % cfg.log_every == 0 or step == total:
                log.write({"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "loss": loss,
                           **terms, "seconds_per_step": time.perf_counter() - start})
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == total):
                save_checkpoint(run_dir / CHECKPOINT, model, optimizer, scaler, step, cfg)
    bar.close()
    log.close()
    if distributed:
        import ray.train

        ray.train.report({"step": step, "loss": losses[-1] if losses else float("nan")})
    return TrainResult(steps=step, losses=losses, checkpoint=run_dir / CHECKPOINT if rank == 0 else None)


def _resume(cfg: TrainConfig, run_dir: Path, model, optimizer, scaler) -> int:
    path = run_dir / CHECKPOINT
    if not (cfg.resume and path.is_file()):
        return 0
    state = load_checkpoint(path)
    check_resumable(state["config"], cfg, path)
    getattr(model, "module", model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def _morphable(cfg: TrainConfig, device: torch.device):
    from reenact.face3d.io import load_morphable_model

    return load_morphable_model(cfg.morphable, cfg.assets).to(device)
