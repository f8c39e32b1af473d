"""What a MiVOLO run is configured by: the registered architectures and the training settings.

Torch-free, so that params.yaml's `train_mivolo.config` is checked when params are loaded (`agegender.params`, in
every stage and in `agegender check`), with the key path in every error, not when training starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from agegender.errors import InputError
from agegender.settings import build_settings


@dataclass(frozen=True)
class MiVOLOSpec:
    """Architecture of one registered variant (VOLO arguments, by keyword)."""

    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]
    num_heads: tuple[int, ...]
    img_size: int = 224
    stem_hidden_dim: int = 64
    patch_size: int = 8
    mlp_ratio: float = 3.0
    downsamples: tuple[bool, ...] = (True, False, False, False)
    outlook_attention: tuple[bool, ...] = (True, False, False, False)
    post_layers: tuple[str, ...] = ("ca", "ca")
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for VOLO (timm >= 0.9 inserted `pos_drop_rate`: never pass them by position)."""
        n = len(self.layers)
        return {
            "layers": list(self.layers),
            "embed_dims": list(self.embed_dims),
            "num_heads": list(self.num_heads),
            "img_size": self.img_size,
            "stem_hidden_dim": self.stem_hidden_dim,
            "patch_size": self.patch_size,
            "mlp_ratio": self.mlp_ratio,
            "downsamples": tuple(self.downsamples[:n]),
            "outlook_attention": tuple(self.outlook_attention[:n]),
            "post_layers": self.post_layers,
            **self.extra,
        }


_D1 = {"layers": (4, 4, 8, 2), "embed_dims": (192, 384, 384, 384), "num_heads": (6, 12, 12, 12)}

#: name -> architecture. `mivolo_d1_*` are the paper's; the small ones are for the demo and tests.
MODEL_SPECS: dict[str, MiVOLOSpec] = {
    "mivolo_d1_224": MiVOLOSpec(**_D1, img_size=224),
    "mivolo_d1_384": MiVOLOSpec(**_D1, img_size=384),
    "mivolo_small_112": MiVOLOSpec(
        layers=(1, 1), embed_dims=(64, 128), num_heads=(2, 4), img_size=112, stem_hidden_dim=32
    ),
    # the real profile's model: the largest that trains on UTKFace's 6.8k faces in about 15 minutes on 2 CPU cores
    "mivolo_small_64": MiVOLOSpec(
        layers=(2, 2), embed_dims=(64, 128), num_heads=(2, 4), img_size=64, stem_hidden_dim=32
    ),
    "mivolo_tiny_64": MiVOLOSpec(layers=(1, 1), embed_dims=(32, 64), num_heads=(1, 2), img_size=64, stem_hidden_dim=16),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a MiVOLO training run depends on (the `train_mivolo` section of params.yaml).

    Args:
        variant: a key of `model.MODEL_SPECS`; the input size follows from it (`img_size`).
        stage1_epochs: epochs of the face-only stage (0 skips it: stage 2 starts from `pretrained` or scratch).
        stage2_epochs: epochs of the face+body stage (0 stops after stage 1; the final model is face-only).
        batch_size: samples per step and process; the global batch is this times the number of processes.
        lr: peak learning rate of stage 1 (AdamW).
        stage2_lr: peak learning rate of stage 2 (None: `lr`).
        weight_decay: AdamW weight decay (not applied to biases, norms, position embedding, class token).
        warmup_epochs: linear warm-up length per stage, in epochs (converted to steps).
        warmup_lr: learning rate at the first step of the warm-up.
        min_lr: learning rate at the end of the cosine decay.
        drop_rate: dropout before the heads.
        drop_path_rate: stochastic depth.
        face_blur_p1: probability that a sample's face crop is blurred in stage 1; the paper (section 3.3): "this
            blur was applied slightly, with a 5% random chance" (0.05).
        face_blur_p2: probability that a sample's face crop is blurred in stage 2; the paper (section 3.3):
            "blurring parameters were significantly increased, with up to a 70% probability", which we read as a
            per-sample probability of 0.7 (profiles/paper.yaml); the default 0.5 is the demo's. The blur's
            strength (`dataset.Augment.blur_sigma`) is ours: the paper gives none.
        drop_face_p: stage 2: probability of blacking out the face input (the body input kept).
        drop_body_p: stage 2: probability of blacking out the body input (the face input kept).
        flip_p: horizontal flip probability.
        scale_jitter: box scale jitter (fraction).
        translate_jitter: box translation jitter (fraction of the box side).
        age_loss: `mse` (the MiVOLO paper) or `l1`, on the normalised age.
        age_weighting: weight the age loss by label-distribution smoothing (LDS).
        lds_sigma: Gaussian kernel sigma of the LDS histogram smoothing, in years.
        lds_power: weights are smoothed_density ** -power (1: inverse frequency, 0.5: its square root).
        ema: keep an exponential moving average of the weights and evaluate/save it.
        ema_decay: EMA decay (reached after timm's warm-up of the decay).
        seed: root seed of initialisation, data order, augmentation and dropout.
        num_workers: DataLoader worker processes per training process.
        threads: torch CPU threads per process (0: the machine's cores divided by the local processes).
        device: `auto` (CUDA when available), `cpu`, `cuda`.
        bf16: bf16 autocast on CUDA (ignored on the CPU).
        pretrained: a local timm VOLO ImageNet state dict (.pth/.pt/.bin/.safetensors) to start from, or None.
        out_dir: default output folder (the `out_dir` argument of `train_mivolo` wins).
        train_split: split of the sample table to train on.
        val_split: split evaluated after every epoch (None: no validation).
        min_face_size: faces whose shorter side is below this many pixels count as missing.
        min_person_size: persons whose shorter side is below this count as missing (official reader: 100).
        min_person_nonzero: a masked body crop with less non-black area than this counts as missing.
        cache_crops: cut the crops once and keep them in memory (False: cut in the DataLoader workers).
        eval_batch_size: batch size of the validation pass.
    """

    variant: str = "mivolo_tiny_64"
    stage1_epochs: int = 2
    stage2_epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    stage2_lr: float | None = None
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-5
    drop_rate: float = 0.1
    drop_path_rate: float = 0.1
    face_blur_p1: float = 0.05
    face_blur_p2: float = 0.5
    drop_face_p: float = 0.1
    drop_body_p: float = 0.1
    flip_p: float = 0.5
    scale_jitter: float = 0.1
    translate_jitter: float = 0.05
    age_loss: str = "mse"
    age_weighting: bool = True
    lds_sigma: float = 2.0
    lds_power: float = 0.5
    ema: bool = False
    ema_decay: float = 0.999
    seed: int = 1234
    num_workers: int = 0
    threads: int = 0
    device: str = "auto"
    bf16: bool = True
    pretrained: str | None = None
    out_dir: str | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    min_face_size: int = 5
    min_person_size: int = 100
    min_person_nonzero: float = 0.4
    cache_crops: bool = True
    eval_batch_size: int = 64

    def __post_init__(self) -> None:
        """Check every value; an `InputError` names the field (`build_settings` adds the key path)."""

        def require(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise InputError(f"must be {what}, got {getattr(self, name)!r}", field=name)

        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

        if self.variant not in MODEL_SPECS:
            raise InputError(f"unknown MiVOLO variant {self.variant!r}; known: {sorted(MODEL_SPECS)}", field="variant")
        for name in ("stage1_epochs", "stage2_epochs", "num_workers", "threads", "min_face_size", "min_person_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name, "an integer >= 0")
        for name in ("batch_size", "eval_batch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "an integer >= 1")
        require(self.stage1_epochs + self.stage2_epochs > 0, "stage2_epochs", "at least 1 with stage1_epochs 0")
        probs = ("drop_rate", "drop_path_rate", "face_blur_p1", "face_blur_p2", "drop_face_p", "drop_body_p")
        for name in (*probs, "flip_p", "min_person_nonzero", "ema_decay"):
            value = getattr(self, name)
            require(number(value) and 0.0 <= value <= 1.0, name, "a number in [0, 1]")
        require(self.drop_face_p + self.drop_body_p <= 1.0, "drop_body_p", "at most 1 - drop_face_p")
        for name in ("lr", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "scale_jitter", "translate_jitter"):
            require(number(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        require(
            self.stage2_lr is None or (number(self.stage2_lr) and self.stage2_lr >= 0),
            "stage2_lr",
            "a number >= 0 or null",
        )
        require(self.scale_jitter < 0.5, "scale_jitter", "below 0.5")
        require(self.translate_jitter < 0.5, "translate_jitter", "below 0.5")
        require(number(self.lds_sigma) and self.lds_sigma > 0, "lds_sigma", "a number > 0")
        require(number(self.lds_power) and self.lds_power >= 0, "lds_power", "a number >= 0")
        require(self.age_loss in ("mse", "l1"), "age_loss", "'mse' or 'l1'")
        require(self.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")

    @property
    def img_size(self) -> int:
        """The input size of the variant."""
        return MODEL_SPECS[self.variant].img_size

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "train_mivolo.config") -> TrainConfig:
        """Build a config from a mapping (e.g. a config file of `python -m agegender.mivolo.train`).

        Args:
            d: setting name -> value; missing settings keep their defaults. `img_size` is accepted when it
                equals the variant's (so a config file may state it).
            where: the mapping's key path in error messages.

        Returns:
            The validated config.

        Raises:
            ValueError: `<where>.<setting>: ...` for an unknown key (a typo would otherwise be ignored), a wrongly
                typed or a bad value.
        """
        d = dict(d)
        img_size = d.pop("img_size", None)
        config = build_settings(cls, d, where)
        if img_size is not None and img_size != config.img_size:
            raise ValueError(
                f"{where}.img_size: {img_size} does not match variant {config.variant} ({config.img_size})"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain dict (the inverse of `from_dict`)."""
        return asdict(self)
