"""MiVOLO model: shapes, head, age coding, channel order, the D1 spec; and input preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agegender.errors import InputError
from agegender.mivolo.model import MODEL_SPECS, MiVOLOModel, create_mivolo
from agegender.mivolo.preprocess import IMAGENET_MEAN, IMAGENET_STD, make_input, normalize_uint8, to_tensor

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def tiny6() -> MiVOLOModel:
    torch.manual_seed(0)
    return create_mivolo("mivolo_tiny_64", in_chans=6).eval()


@pytest.mark.parametrize("in_chans", [3, 6])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_output_shapes(in_chans: int, num_classes: int) -> None:
    torch.manual_seed(0)
    model = create_mivolo("mivolo_tiny_64", in_chans=in_chans, num_classes=num_classes).eval()
    assert model.with_persons == (in_chans == 6)
    assert model.no_gender == (num_classes == 1)
    with torch.inference_mode():
        out = model(torch.randn(2, in_chans, 64, 64))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_face_only_model_has_volo_stem_and_face_body_model_two_stems() -> None:
    face = set(create_mivolo("mivolo_tiny_64", in_chans=3).state_dict())
    both = set(create_mivolo("mivolo_tiny_64", in_chans=6).state_dict())
    assert "patch_embed.conv.0.weight" in face and "patch_embed.proj.weight" in face
    assert {"patch_embed.conv1.0.weight", "patch_embed.conv2.0.weight", "patch_embed.proj1.weight"} <= both
    assert {"patch_embed.map.qkv_f.weight", "patch_embed.map.qkv_p.weight", "patch_embed.map.norm.weight"} <= both
    assert not any(k.startswith("patch_embed.conv.") for k in both)


def test_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="in_chans"):
        create_mivolo("mivolo_tiny_64", in_chans=4)


def test_head_is_class_token_plus_half_max_of_aux(tiny6: MiVOLOModel) -> None:
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        tiny6.head.register_forward_hook(lambda m, i, o: seen.__setitem__("head", o)),
        tiny6.aux_head.register_forward_hook(lambda m, i, o: seen.__setitem__("aux", o)),
    ]
    try:
        with torch.inference_mode():
            out = tiny6(torch.randn(3, 6, 64, 64))
    finally:
        for hook in hooks:
            hook.remove()
    assert seen["aux"].shape == (3, 16, 3)  # one prediction per token (64 / 16 = 4 x 4 grid)
    torch.testing.assert_close(out, seen["head"] + 0.5 * seen["aux"].max(dim=1).values)
    # and the aux term matters: the head alone is not the output
    assert not torch.allclose(out, seen["head"])


def test_age_encode_decode_roundtrip() -> None:
    model = create_mivolo("mivolo_tiny_64", in_chans=3)
    with pytest.raises(RuntimeError, match="age range"):
        model.decode_age(torch.zeros(1))
    model.set_age_range(1, 95)
    assert model.avg_age == 48.0
    ages = torch.tensor([1.0, 20.5, 48.0, 95.0])
    codes = model.encode_age(ages)
    torch.testing.assert_close(codes, (ages - 48.0) / 94.0)
    torch.testing.assert_close(model.decode_age(codes), ages)
    model.set_age_range(0, 122, avg_age=61.0)
    torch.testing.assert_close(model.decode_age(torch.tensor([0.0, 0.5])), torch.tensor([61.0, 122.0]))


def test_face_and_body_channels_are_not_interchangeable(tiny6: MiVOLOModel) -> None:
    x = torch.randn(2, 6, 64, 64)
    swapped = torch.cat([x[:, 3:], x[:, :3]], dim=1)
    with torch.inference_mode():
        assert not torch.allclose(tiny6(x), tiny6(swapped), atol=1e-4)


def test_d1_specs_match_the_paper() -> None:
    for name, size in (("mivolo_d1_224", 224), ("mivolo_d1_384", 384)):
        spec = MODEL_SPECS[name]
        assert spec.layers == (4, 4, 8, 2)
        assert spec.embed_dims == (192, 384, 384, 384)
        assert spec.num_heads == (6, 12, 12, 12)
        assert (spec.img_size, spec.stem_hidden_dim, spec.patch_size) == (size, 64, 8)
    with torch.device("meta"):  # no memory, no init cost
        model = create_mivolo("mivolo_d1_224", in_chans=6)
        model384 = create_mivolo("mivolo_d1_384", in_chans=3, num_classes=1)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 27.4e6) < 0.05e6, n_params
    # the official loader's rule: input size = position grid * 16
    assert model.pos_embed.shape[1] * 16 == 224 and model384.pos_embed.shape[1] * 16 == 384


# --- preprocessing --------------------------------------------------------------------------------------------


def _expected(crop: np.ndarray | None, size: int) -> torch.Tensor:
    """Reference: letterbox by hand for same-size crops, float64 maths as the official code."""
    img = np.zeros((size, size, 3), np.uint8) if crop is None else crop
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    return torch.from_numpy(((img / 255.0 - mean) / std).astype(np.float32).transpose(2, 0, 1).copy())


def test_missing_crop_is_normalised_black() -> None:
    tensor = to_tensor(None, 8)
    assert tensor.shape == (3, 8, 8) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    want = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(tensor[:, 0, 0], want)
    assert not torch.allclose(tensor, torch.zeros_like(tensor))


def test_to_tensor_normalises_and_letterboxes() -> None:
    rng = np.random.default_rng(0)
    square = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    torch.testing.assert_close(to_tensor(square, 16), _expected(square, 16), atol=1e-6, rtol=0)
    tall = np.full((16, 8, 3), 200, np.uint8)
    out = to_tensor(tall, 16)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[:, :, :4], black[:, None, None].expand(3, 16, 4))  # padding left
    torch.testing.assert_close(out[:, :, 4:12], _expected(np.full((16, 16, 3), 200, np.uint8), 16)[:, :, 4:12])
    torch.testing.assert_close(out[:, :, 12:], black[:, None, None].expand(3, 16, 4))  # and right


def test_make_input_puts_face_then_body() -> None:
    rng = np.random.default_rng(1)
    faces = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), None]
    bodies = [None, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)]
    x = make_input(faces, bodies, 12, with_persons=True)
    assert x.shape == (2, 6, 12, 12) and x.dtype == torch.float32
    for i in range(2):
        torch.testing.assert_close(x[i, :3], _expected(faces[i], 12), atol=1e-6, rtol=0)
        torch.testing.assert_close(x[i, 3:], _expected(bodies[i], 12), atol=1e-6, rtol=0)
    face_only = make_input(faces, bodies, 12, with_persons=False)
    assert face_only.shape == (2, 3, 12, 12)
    torch.testing.assert_close(face_only, x[:, :3])
    # missing bodies entirely: black bodies
    torch.testing.assert_close(make_input(faces, None, 12, with_persons=True)[0, 3:], _expected(None, 12))


def test_make_input_is_channels_last_and_usable(tiny6: MiVOLOModel) -> None:
    x = make_input([None], [None], 64, with_persons=True)
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(tiny6(x), tiny6(x.contiguous()))


def test_make_input_rejects_bad_crops() -> None:
    with pytest.raises(InputError, match="uint8"):
        make_input([np.zeros((4, 4, 3), np.float32)], None, 8, with_persons=False)
    with pytest.raises(InputError, match="RGB"):
        make_input([np.zeros((4, 4), np.uint8)], None, 8, with_persons=False)
    with pytest.raises(InputError, match="empty"):
        make_input([np.zeros((0, 4, 3), np.uint8)], None, 8, with_persons=False)
    with pytest.raises(InputError, match="2 face crops but 1 body"):
        make_input([None, None], [None], 8, with_persons=True)
    with pytest.raises(ValueError, match="uint8"):
        normalize_uint8(np.zeros((1, 4, 4, 3), np.float32))


def test_make_input_empty_batch() -> None:
    assert make_input([], [], 8, with_persons=True).shape == (0, 6, 8, 8)
