"""Training hyper-parameters as data (JSON), with the reason for every default.

:class:`TrainConfig` is written to ``RUN_DIR/train_config.json`` at the start of a run and read back by
``--resume``. The loss weights and distillation constants are unpublished for R2D2; the defaults follow
ALBEF, whose code R2D2's release builds on (see ``docs/training.md``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class LossSpec:
    """One pre-training loss: its name (the ``LossConfig`` weight field, the log key, the CLI flag
    ``--NAME``) and a one-line description."""

    name: str
    help: str


#: The pre-training losses, in the order they are computed and logged. The single list the objective, the
#: CLI options (``--gcpr W`` ...), the log line and the docs are generated from.
LOSSES: Tuple[LossSpec, ...] = (
    LossSpec("gcpr", "global contrastive pre-ranking (InfoNCE over the global batch)"),
    LossSpec("fgr", "fine-grained ranking (both cross encoders classify positives and hard negatives)"),
    LossSpec("tgd", "target-guided distillation (EMA teacher soft targets over batch + queue)"),
    LossSpec("fgd", "feature-guided distillation (masked student regresses the unmasked teacher)"),
    LossSpec("mlm", "masked language modelling on the text-side cross encoder"),
)
LOSS_NAMES: Tuple[str, ...] = tuple(s.name for s in LOSSES)
#: what the student's encoders see when FgD is on (:attr:`LossConfig.student_view`)
STUDENT_VIEWS: Tuple[str, ...] = ("full", "masked")
#: Keys of a training log record that are losses (the pre-training ones, fine-tuning's match loss, the total).
LOG_LOSS_KEYS: Tuple[str, ...] = ("loss",) + LOSS_NAMES + ("match",)


@dataclass
class LossConfig:
    """Which losses run (weight > 0) and their constants."""

    #: GCPR weight. 1: the contrastive term is the anchor every other weight is relative to.
    gcpr: float = 1.0
    #: FGR weight. 1: ALBEF weights ITC and ITM equally; R2D2 ranks with both stages at inference.
    fgr: float = 1.0
    #: TgD weight. 1: one distillation term per stage, as ALBEF's momentum distillation.
    tgd: float = 1.0
    #: FgD weight. 1: the feature regression is on unit vectors (values in [0, 4]), same scale as CE.
    fgd: float = 1.0
    #: MLM weight. 0 (off): the released R2D2 checkpoints carry no MLM head and the paper reports no
    #: ablation of it; it costs one more text-side cross-encoder pass. ALBEF uses 1 (``--mlm 1``).
    mlm: float = 0.0
    #: FGR class weights (negative, positive): each positive has two hard negatives (R2D2: 1 and 2).
    fgr_class_weights: Tuple[float, float] = (1.0, 2.0)
    #: Where FGR draws its hard negatives: "global" (the issue's and R2D2's: the softmax over the global
    #: batch; every rank all-gathers the hidden states *with gradient*, W*B*(tokens)*width values, fine on
    #: one node) or "local" (this rank's batch, as ALBEF: nothing gathered; use it at cluster scale).
    fgr_negatives: str = "global"
    #: TgD mixing coefficient: ALBEF's alpha 0.4 (teacher share of the soft targets).
    alpha: float = 0.4
    #: EMA momentum of the teacher: ALBEF's 0.995 (half-life ~140 steps). Runs of a few hundred steps
    #: (tests, the demo) learn faster with 0.9-0.99 (docs/training.md, "Short runs").
    momentum: float = 0.995
    #: Feature-queue length (teacher image + text features). ALBEF uses 65,536 at batch 512; 16,384 keeps
    #: the queue a few global batches deep at R2D2's batch sizes while staying fresh for the EMA teacher.
    #: The queue starts full of random unit vectors (ALBEF), so the TgD loss does not rise as it fills.
    queue_size: int = 16384
    #: FgD text masking: BERT's 15 % of real tokens replaced by [MASK].
    text_mask_ratio: float = 0.15
    #: FgD image masking: half of the patch tokens are dropped from the student's ViT input (FLIP's 50 %:
    #: the masked student pass costs about half; the kept half still identifies the image for alignment).
    patch_drop_ratio: float = 0.5
    #: What the student's encoders see when FgD is on. "full": the unmasked input for GCPR, FGR and TgD, plus a
    #: second, masked pass for FgD. "masked": one pass over FgD's masked input (15 % of tokens -> [MASK], 50 %
    #: of the patch tokens dropped) that every student loss reads, as R2D2's FgD ("the student a masked input")
    #: and FLIP; the teacher still sees the whole input. "masked" costs about half at ViT-B/16 (the ViT and
    #: the image side of the cross encoders see half the image tokens; docs/training.md, "Student view").
    student_view: str = "full"
    #: MLM: BERT's 15 % of real tokens chosen, of which 80 % -> [MASK], 10 % -> a random token, 10 % kept.
    mlm_ratio: float = 0.15
    #: Temperature bounds (ALBEF clamps to [0.001, 0.5]).
    temp_min: float = 0.001
    temp_max: float = 0.5

    def __post_init__(self) -> None:
        if self.fgr_negatives not in ("global", "local"):
            raise ValueError(f"fgr_negatives {self.fgr_negatives!r}: use global or local")
        if self.student_view not in STUDENT_VIEWS:
            raise ValueError(f"student_view {self.student_view!r}: use one of {STUDENT_VIEWS}")
        if not 0.0 <= self.patch_drop_ratio < 1.0:
            raise ValueError(f"patch_drop_ratio {self.patch_drop_ratio}: use 0 <= ratio < 1")
        for name in LOSS_NAMES:
            if float(getattr(self, name)) < 0:
                raise ValueError(f"loss weight {name}={getattr(self, name)}: weights must be >= 0")

    def weights(self) -> Dict[str, float]:
        """``{name: weight}`` of the enabled losses (weight > 0), in :data:`LOSSES` order."""
        return {n: float(getattr(self, n)) for n in LOSS_NAMES if float(getattr(self, n)) > 0}

    @property
    def needs_teacher(self) -> bool:
        return self.tgd > 0 or self.fgd > 0


@dataclass
class TrainConfig:
    """Optimisation, schedule, data and bookkeeping of a run (pre-training defaults)."""

    losses: LossConfig = field(default_factory=LossConfig)
    #: Length: ``steps`` (optimizer steps) wins over ``epochs`` (virtual epochs from sizes.json).
    steps: Optional[int] = None
    epochs: Optional[int] = None
    #: Samples per process per micro-batch; global batch = batch_size * world * grad_accum.
    batch_size: int = 64
    grad_accum: int = 1
    #: AdamW (ALBEF pre-training: lr 1e-4, wd 0.02; betas (0.9, 0.98) are CLIP's, stabler at large batch).
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    #: Linear warm-up then cosine decay to ``min_lr_ratio * lr``.
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0
    #: Gradient clipping on the global norm (0 disables).
    clip_grad: float = 1.0
    #: "auto": bf16 autocast on GPU, fp32 on CPU; or "bf16" / "fp32".
    precision: str = "auto"
    grad_checkpointing: bool = False
    freeze_vision: bool = False
    #: Data: which text of a sample each step uses ("random" or title/content/query/txt).
    text_choice: str = "random"
    max_text_len: Optional[int] = None  # None: the model config's max_text_len
    shuffle_buffer: int = 1000
    resampled: bool = True
    num_workers: int = 2
    seed: int = 0
    #: Bookkeeping.
    log_every: int = 10
    save_every: int = 1000
    keep_last: int = 3
    #: Fine-tuning only: metric the best checkpoint is chosen on (validation split).
    select_metric: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "TrainConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown training keys {unknown}")
        losses = data.pop("losses", {}) or {}
        lknown = {f.name for f in dataclasses.fields(LossConfig)}
        bad = sorted(set(losses) - lknown)
        if bad:
            raise ValueError(f"{source}: unknown loss keys {bad}")
        for k in ("betas",):
            if k in data:
                data[k] = tuple(data[k])
        if "fgr_class_weights" in losses:
            losses["fgr_class_weights"] = tuple(losses["fgr_class_weights"])
        return cls(losses=LossConfig(**losses), **data)

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        return cls.from_dict(data, source=str(path))

    def override(self, **kw: Any) -> "TrainConfig":
        """A copy with the non-None keyword values replaced (``losses`` keys as ``loss_<name>``)."""
        d = self.to_dict()
        for k, v in kw.items():
            if v is None:
                continue
            if k.startswith("loss_"):
                d["losses"][k[5:]] = v
            else:
                d[k] = v
        return TrainConfig.from_dict(d)


def finetune_defaults(task: str) -> TrainConfig:
    """The released fine-tuning recipes: vision frozen, AdamW lr 1e-5 (matching 3e-6), wd 0.05,
    500 warm-up steps then cosine, batch 32 per GPU; retrieval keeps GCPR + FGR, matching trains the
    match heads on the labelled pairs; the distillations are pre-training devices and are off."""
    if task not in ("retrieval", "matching"):
        raise ValueError(f"unknown fine-tuning task {task!r}: use retrieval or matching")
    losses = LossConfig(tgd=0.0, fgd=0.0)
    return TrainConfig(
        losses=losses, epochs=10, batch_size=32, lr=1e-5 if task == "retrieval" else 3e-6,
        weight_decay=0.05, warmup_steps=500, freeze_vision=True, log_every=50, save_every=1000,
        keep_last=1, select_metric="MR" if task == "retrieval" else "AUC", text_choice="txt",
        betas=(0.9, 0.999), eps=1e-8)
