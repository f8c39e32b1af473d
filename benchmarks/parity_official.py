"""Same weights, same input -> same outputs? Our MiVOLO against the official implementation.

For users who have the official repository and a released checkpoint (not downloadable here):

    git clone https://github.com/WildChlamydia/MiVOLO /path/to/MiVOLO
    .venv/bin/python benchmarks/parity_official.py --official-repo /path/to/MiVOLO \\
        --checkpoint models/mivolo_imdb_cross_person_4.22_99.46.pth.tar

Both models get the checkpoint's weights (read once, safely, by `agegender.mivolo.read_checkpoint`; the
official loader calls `torch.load` without an allowlist) and the same random inputs; the script prints the
largest absolute output difference and, when the official preprocessing imports (it needs scipy), the
largest difference between the official `prepare_classification_images` and our `make_input` on random
crops. Without `--checkpoint`, random weights of `--variant` are used. Exit code 1 when a difference
exceeds `--atol`.

The official code targets timm 0.8, whose VOLO took its arguments positionally; timm >= 0.9 inserted
`pos_drop_rate`. The official class is therefore built with VOLO's constructor temporarily mapping those
positional arguments to keywords (nothing of the official repository is modified or copied).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agegender.mivolo.checkpoint import load_checkpoint, read_checkpoint
from agegender.mivolo.model import MiVOLOModel, MiVOLOSpec, create_mivolo
from agegender.mivolo.preprocess import make_input

# timm 0.8's VOLO.__init__ parameter order, which the official MiVOLOModel relies on.
_OLD_VOLO_ORDER = [
    "layers",
    "img_size",
    "in_chans",
    "num_classes",
    "global_pool",
    "patch_size",
    "stem_hidden_dim",
    "embed_dims",
    "num_heads",
    "downsamples",
    "outlook_attention",
    "mlp_ratio",
    "qkv_bias",
    "drop_rate",
    "attn_drop_rate",
    "drop_path_rate",
    "norm_layer",
    "post_layers",
    "use_aux_head",
    "use_mix_token",
    "pooling_scale",
]


@contextlib.contextmanager
def volo_positional_args() -> Iterator[None]:
    """Let code written for timm 0.8 pass VOLO's arguments by position under newer timm."""
    from timm.models.volo import VOLO

    if "pos_drop_rate" not in inspect.signature(VOLO.__init__).parameters:
        yield
        return
    original = VOLO.__init__

    def init(self: nn.Module, *args: object, **kwargs: object) -> None:
        kwargs.update(zip(_OLD_VOLO_ORDER, args, strict=False))
        original(self, **kwargs)

    VOLO.__init__ = init
    try:
        yield
    finally:
        VOLO.__init__ = original


def import_official(repo: str | Path) -> object:
    """Import the official `mivolo` package from a checkout (its model module only needs torch and timm)."""
    repo = Path(repo).resolve()
    if not (repo / "mivolo" / "model" / "mivolo_model.py").is_file():
        raise SystemExit(f"{repo} is not a MiVOLO checkout (no mivolo/model/mivolo_model.py)")
    sys.path.insert(0, str(repo))
    return importlib.import_module("mivolo.model.mivolo_model")


def official_model(repo: str | Path, spec: MiVOLOSpec, in_chans: int, num_classes: int) -> nn.Module:
    """The official MiVOLOModel with our spec's architecture (random weights, eval mode)."""
    module = import_official(repo)
    with volo_positional_args():
        model = module.MiVOLOModel(
            layers=spec.layers,
            img_size=spec.img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            patch_size=spec.patch_size,
            stem_hidden_dim=spec.stem_hidden_dim,
            embed_dims=spec.embed_dims,
            num_heads=spec.num_heads,
            downsamples=spec.downsamples[: len(spec.layers)],
            outlook_attention=spec.outlook_attention[: len(spec.layers)],
            mlp_ratio=spec.mlp_ratio,
            post_layers=spec.post_layers,
        )
    return model.eval()


def compare_preprocessing(size: int, seed: int) -> float | None:
    """Max |official - ours| on random crops (None when the official preprocessing cannot be imported)."""
    try:
        misc = importlib.import_module("mivolo.data.misc")
    except ImportError as exc:
        print(f"preprocessing: skipped (official mivolo.data.misc does not import: {exc})")
        return None
    rng = np.random.default_rng(seed)
    shapes = [(37, 23), (size, size), (10, 90), (size * 2 + 1, size // 3), None, (5, 3)]
    crops = [None if s is None else rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    # the official code reads BGR and converts; ours takes RGB
    official = misc.prepare_classification_images([None if c is None else c[..., ::-1].copy() for c in crops], size)
    ours = make_input(crops, None, size, with_persons=False)
    return float((official - ours).abs().max())


def main(argv: list[str] | None = None) -> int:
    """Run the comparison; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", required=True, help="a checkout of github.com/WildChlamydia/MiVOLO")
    parser.add_argument("--checkpoint", help="a released .pth.tar (or HF folder); random weights when omitted")
    parser.add_argument("--variant", default="mivolo_d1_224", help="architecture for random weights")
    parser.add_argument("--in-chans", type=int, default=6, choices=(3, 6), help="for random weights")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--atol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    if args.checkpoint:
        ours = load_checkpoint(args.checkpoint, device=args.device)
        state = read_checkpoint(args.checkpoint).state_dict
        print(f"checkpoint {args.checkpoint}: age range {ours.min_age}..{ours.max_age} (avg {ours.avg_age})")
    else:
        ours = create_mivolo(args.variant, in_chans=args.in_chans).to(args.device).eval()
        state = ours.state_dict()
        print(f"random weights, {args.variant}")
    assert isinstance(ours, MiVOLOModel)
    official = official_model(args.official_repo, ours.spec, ours.in_chans, ours.num_classes)
    official.load_state_dict(state, strict=True)
    official.to(args.device)

    size = ours.spec.img_size
    x = torch.randn(args.batch, ours.in_chans, size, size, generator=torch.Generator().manual_seed(args.seed))
    x = x.to(args.device)
    with torch.inference_mode():
        diff = float((ours(x) - official(x)).abs().max())
    print(f"model: {ours.in_chans} channels, {ours.num_classes} outputs, input {size}; max |diff| = {diff:.3g}")
    pre = compare_preprocessing(size, args.seed)
    if pre is not None:
        print(f"preprocessing: max |diff| = {pre:.3g}")
    worst = max(diff, pre or 0.0)
    print("OK" if worst <= args.atol else f"MISMATCH (> atol {args.atol:g})")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    raise SystemExit(main())
