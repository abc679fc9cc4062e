"""The config sections the training loop reads: ``optim``, ``sched``, ``ema``, ``train``.

Defaults are the project's ImageNet-1K classification recipe (docs/design.md, "Package
layers"); the detection and segmentation configs override them. A run config (``grootvl.tasks.RunConfig``) holds these
four sections next to the task's own (``model``, ``data``...).
"""
from __future__ import annotations

import re
from typing import Any, Literal, Protocol

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from .config import ConfigSection

__all__ = ["EmaConfig", "EngineConfig", "OptimConfig", "SchedConfig", "TrainConfig"]

SCHEDULES = ("cosine", "tanh", "multistep", "poly", "constant")


class OptimConfig(ConfigSection):
    name: str = Field("adamw", description="timm optimizer name (adamw, sgd, lamb...)")
    base_lr: PositiveFloat = Field(5e-4, description="learning rate at lr_base_batch")
    lr_base_batch: PositiveInt | None = Field(
        512, description="lr scales linearly with the total batch (batch_size x processes x "
        "accum_steps) / this; null: base_lr as given")
    weight_decay: NonNegativeFloat = Field(
        0.05, description="not applied to 1-D tensors (norms, biases) nor to the names the "
        "model's no_weight_decay() lists")
    layer_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="layer-wise lr decay: layer i of n (the model's "
        "group_matcher()) trains at layer_decay ** (n - 1 - i) of the lr; null: off")
    eps: PositiveFloat = Field(1e-8, description="Adam-type optimizers")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam-type optimizers")
    momentum: NonNegativeFloat = Field(0.9, description="sgd only")
    fused: bool | None = Field(
        None, description="torch's fused update (one kernel for all parameters) for adam, "
        "adamw, sgd, momentum, nesterov and adagrad; null: on where torch has it (CPU, CUDA; "
        "float parameters); false: the per-tensor loop")
    clip_grad: PositiveFloat | None = Field(5.0, description="max global gradient norm; null: off")
    accum_steps: PositiveInt = Field(
        1, description="gradient accumulation (micro-batches per optimizer step)")

    @field_validator("name")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        from timm.optim import list_optimizers

        known = list_optimizers()
        if name.lower() not in known:
            import difflib

            close = difflib.get_close_matches(name.lower(), known, n=3)
            raise ValueError("not a timm optimizer"
                             + (f"; did you mean {' or '.join(close)}?" if close else ""))
        return name

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError("both must lie in [0, 1)")
        return betas


class SchedConfig(ConfigSection):
    name: Literal[SCHEDULES] = Field("cosine", description=" | ".join(SCHEDULES) + " (timm)")
    epochs: PositiveInt = Field(300, description="length of the run")
    warmup_epochs: NonNegativeInt = Field(20, description="linear warm-up from warmup_lr")
    warmup_steps: NonNegativeInt | None = Field(
        None, description="warm-up length in optimizer steps instead (needs step_on_epochs: false)")
    warmup_lr: NonNegativeFloat = Field(5e-7, description="scaled like base_lr")
    min_lr: NonNegativeFloat = Field(5e-6, description="floor of cosine/poly; scaled like base_lr")
    step_on_epochs: bool = Field(False, description="false: lr changes every optimizer step")
    decay_milestones: tuple[NonNegativeInt, ...] = Field(
        (), description="multistep: epochs after which the lr is multiplied by decay_rate")
    decay_rate: PositiveFloat = Field(0.1, description="multistep factor; the exponent for poly")

    @model_validator(mode="after")
    def _steps_need_per_step_schedule(self):
        if self.warmup_steps is not None and self.step_on_epochs:
            raise ValueError("warmup_steps counts optimizer steps: it needs step_on_epochs "
                             "false (or use warmup_epochs)")
        return self


class EmaConfig(ConfigSection):
    enabled: bool = Field(True, description="keep an exponential moving average of the weights")
    decay: float = Field(0.9999, gt=0.0, lt=1.0, description="per optimizer step")
    evaluate: bool = Field(True, description="evaluate the EMA weights too, keep ema_best.pth")


class TrainConfig(ConfigSection):
    batch_size: PositiveInt = Field(128, description="per process")
    epochs_between_eval: PositiveInt = Field(1, description="validation every this many epochs")
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16/fp16 on CUDA, none on CPU")
    channels_last: bool = Field(True, description="NHWC memory format for images and model")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward")
    compile: bool = Field(
        False, description="torch.compile the whole model (in place: snapshots keep its plain "
        "names; the EMA copy stays eager); the first steps and evaluations compile")
    sync_bn: bool = Field(False, description="synchronise BatchNorm over processes (CUDA)")
    seed: NonNegativeInt = Field(0, description="each process uses seed + rank")
    deterministic: bool = Field(False, description="deterministic kernels (slower)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: PositiveInt | None = Field(
        None, description="CPU threads for torch and numba per process; null: default")
    limit_train_steps: PositiveInt | None = Field(
        None, description="stop each epoch after this many optimizer steps (smoke tests)")
    limit_val_steps: PositiveInt | None = Field(None, description="validation batches at most")
    log_every: PositiveInt = Field(50, description="steps between JSON-line / progress records")
    progress: Literal["auto", "bar", "log", "none"] = Field(
        "auto", description="auto: a bar on a terminal, log lines otherwise")


    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return device


class LoaderSettings(Protocol):
    """The data loader settings the loop reads from a run config's ``data`` section."""

    num_workers: int
    pin_memory: bool


class EngineConfig(Protocol):
    """What the loop needs of a run config: these four sections, the loader settings of
    ``data``, and ``model_dump``."""

    data: LoaderSettings
    optim: OptimConfig
    sched: SchedConfig
    ema: EmaConfig
    train: TrainConfig

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]: ...
