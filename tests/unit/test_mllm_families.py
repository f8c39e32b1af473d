"""Zero-shot through the transformers backend for today's model families, on tiny models built here.

Per family (`agegender.mllm.tools.tiny.build_tiny_family`): greedy batched answers equal batch-1 answers; the
family's resolution setting changes how many image tokens a crop costs and the response store's key; a system
prompt works (Gemma 3 folds it into the user turn); no template token reaches the answer text; one BOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agegender.errors import InputError
from agegender.mllm.backend_options import TransformersOptions
from agegender.mllm.backends.base import Query
from agegender.mllm.backends.transformers_backend import TransformersBackend
from agegender.mllm.tools.tiny import FAMILY_TOKENS, build_tiny_family, build_tiny_llava

#: family -> (resolution option, value that changes the image-token count of `_TALL`)
RESOLUTION = {
    "qwen2_5_vl": {"max_pixels": 28 * 28 * 8},
    "gemma3": {"do_pan_and_scan": True},
    "llava_onevision": {"image_grid_pinpoints": [[56, 56]]},  # as written in params.yaml
    "qwen3_vl": {"max_pixels": 32 * 32 * 8},
    "internvl": {"max_patches": 2},
    "smolvlm": {"image_longest_edge": 96},  # 3 tiles of 32 a side at most, not 2
}
#: a tall crop, long enough for Gemma's pan-and-scan (crops of at least 256 pixels a side)
_TALL = (800, 300)


@pytest.fixture(scope="module", params=sorted(RESOLUTION))
def family_folder(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny_family(tmp_path_factory.mktemp(family), family, seed=0)


def _queries(n: int = 4) -> list[Query]:
    rng = np.random.default_rng(7)
    sizes = [(90, 60), (60, 90), (64, 64), _TALL][:n]
    return [
        Query(request_id=str(i), image=rng.integers(0, 256, (*s, 3), dtype=np.uint8), prompt="How old is this person?")
        for i, s in enumerate(sizes)
    ]


def _backend(folder: Path, **options) -> TransformersBackend:
    return TransformersBackend(str(folder), options=TransformersOptions(device="cpu", **options))


def _image_tokens(backend: TransformersBackend, query: Query) -> int:
    ids = backend.build_inputs([query])["input_ids"][0]
    return int((ids == backend.hf_model.config.image_token_id).sum())


def test_every_family_has_a_resolution_case():
    """Each family the builder knows is tested below with its own resolution setting."""
    assert set(RESOLUTION) == set(FAMILY_TOKENS)


def test_batched_answers_equal_batch_one_answers(family_folder):
    _, folder = family_folder
    queries = _queries()
    backend = _backend(folder, batch_size=4)
    assert backend.build_inputs(queries)["input_ids"].shape[0] == 4  # one batch, not a fallback to batch 1
    batched = backend.generate_batch(queries)
    single = _backend(folder, batch_size=1).generate_batch(queries)
    assert [a.status for a in batched] == ["answered"] * 4
    assert [a.text for a in batched] == [a.text for a in single]
    assert [a.completion_tokens for a in batched] == [a.completion_tokens for a in single]
    assert [a.prompt_tokens for a in batched] == [a.prompt_tokens for a in single]


def test_resolution_setting_changes_image_tokens_and_key(family_folder):
    family, folder = family_folder
    default, budget = _backend(folder), _backend(folder, **RESOLUTION[family])
    tall = _queries()[-1]
    assert _image_tokens(default, tall) != _image_tokens(budget, tall)
    assert default.key_options() != budget.key_options()
    assert RESOLUTION[family].items() <= budget.key_options().items()
    assert RESOLUTION[family].items() <= budget.describe().items()
    assert not set(RESOLUTION[family]) & set(default.key_options())  # unset: absent, old store keys kept


def test_checkpoint_selection_predicts_the_key_with_the_resolution_setting(family_folder):
    """The selection's lazy backend predicts the store key before loading; with a resolution setting it must match
    what the loaded backend says (before, the prediction left the setting out and the load refused)."""
    from agegender.mllm.finetune.select import _LazyTransformers

    family, folder = family_folder
    options = TransformersOptions(device="cpu", **RESOLUTION[family])
    lazy = _LazyTransformers(str(folder), options=options)
    assert RESOLUTION[family].items() <= lazy.key_options().items()
    assert lazy.load().key_options() == lazy.key_options()


def test_system_prompt_reaches_the_prompt(family_folder):
    family, folder = family_folder
    backend = _backend(folder, system_prompt="Answer briefly.")
    text = backend.prompt_text("How old?")
    assert "Answer briefly." in text
    if family == "gemma3":  # no system role: folded into the user turn, before the image
        assert "<start_of_turn>user\nAnswer briefly.\n\n<start_of_image>" in text
    answer = backend.generate_batch(_queries(1))[0]
    assert answer.status == "answered"


def test_one_bos_and_no_template_tokens_in_answers(family_folder):
    _, folder = family_folder
    backend = _backend(folder, batch_size=2)
    ids = backend.build_inputs(_queries(2))["input_ids"]
    bos = backend.tokenizer.bos_token_id
    if bos is not None:
        assert ((ids == bos).sum(dim=1) <= 1).all()
    specials = set(backend.tokenizer.all_special_tokens) | set(FAMILY_TOKENS[family_folder[0]].extra_tokens)
    for answer in backend.generate_batch(_queries()):
        assert not [t for t in specials if t in answer.text]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("max_pixels", 28 * 28 * 8),
        ("min_pixels", 28 * 28),
        ("do_pan_and_scan", True),
        ("crop_to_patches", False),
        ("max_patches", 2),
        ("image_longest_edge", 96),
        ("do_image_splitting", False),
    ],
)
def test_resolution_options_a_model_lacks_are_refused(tmp_path, option, value):
    folder = build_tiny_llava(tmp_path / "llava", image_size=56, vision_hidden=16, text_hidden=32, num_layers=1)
    with pytest.raises(InputError) as err:
        _backend(folder, **{option: value})
    assert err.value.field == option


@pytest.mark.parametrize(
    "options",
    [
        {"max_pixels": 0},
        {"min_pixels": -1},
        {"min_pixels": 10, "max_pixels": 5},
        {"do_pan_and_scan": "yes"},
        {"crop_to_patches": "no"},
        {"max_patches": 0},
        {"image_longest_edge": 0},
        {"do_image_splitting": "no"},
    ],
)
def test_resolution_options_are_validated(options):
    with pytest.raises(InputError):
        TransformersOptions(**options)


def test_smolvlm_without_splitting_sees_the_global_view_alone(tmp_path_factory):
    """`do_image_splitting: false` leaves SmolVLM one view of the crop (one tile's tokens), and is recorded."""
    folder = build_tiny_family(tmp_path_factory.mktemp("smolvlm"), "smolvlm", seed=0)
    default, whole = _backend(folder), _backend(folder, do_image_splitting=False)
    tall = _queries()[-1]
    per_view = whole.processor.image_seq_len
    assert _image_tokens(whole, tall) == per_view < _image_tokens(default, tall)
    assert whole.key_options()["do_image_splitting"] is False
    assert whole.generate_batch([tall])[0].status == "answered"


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(InputError):
        build_tiny_family(tmp_path, "nope")  # type: ignore[arg-type]


def test_same_seed_same_weights(tmp_path):
    a = build_tiny_family(tmp_path / "a", "gemma3", seed=3)
    b = build_tiny_family(tmp_path / "b", "gemma3", seed=3)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_every_family_folder_passes_the_pre_flight_check(family_folder):
    """`agegender check` (and `agegender profile`) accept each family's folder: its model_type is supported."""
    from agegender.mllm.tools.convert import HF_MODEL_TYPES, check_model_folder

    family, folder = family_folder
    assert family in HF_MODEL_TYPES
    assert check_model_folder(folder) == []
