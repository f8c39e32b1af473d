"""The `vllm` backend: request building with a fake `vllm` module (CPU), and a real run where vLLM + CUDA exist."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from agegender.errors import InputError
from agegender.mllm.backends import GenerationParams, Query, create_backend
from agegender.mllm.backends.transformers_backend import TransformersBackend, pad_to_square
from agegender.mllm.tools.tiny import build_tiny_llava


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vllm")
    return {kind: build_tiny_llava(root / kind, kind=kind, image_size=56) for kind in ("llava", "llava_next")}


class _Completion:
    def __init__(self, text, token_ids, finish_reason):
        self.text, self.token_ids, self.finish_reason = text, token_ids, finish_reason


class _RequestOutput:
    def __init__(self, prompt_token_ids, completion):
        self.prompt_token_ids, self.outputs = prompt_token_ids, [completion]


def _fake_vllm() -> types.ModuleType:
    """A stand-in for vllm: records the engine arguments and the requests, answers from the image size."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0-fake"

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LLM:
        instances: list = []

        def __init__(self, **kwargs):
            self.kwargs, self.calls = kwargs, []
            LLM.instances.append(self)

        def generate(self, requests, sampling_params, use_tqdm=True):
            self.calls.append((requests, sampling_params))
            outs = []
            for req in requests:
                w, h = req["multi_modal_data"]["image"].size
                if w == 13:  # a request the engine rejects
                    raise ValueError("image too small")
                text = f" [female; {w}] "
                finish = "length" if w > 100 else "stop"
                outs.append(_RequestOutput(list(range(len(req["prompt"]) // 4)), _Completion(text, [1, 2, 3], finish)))
            return outs

    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    return mod


def test_requests_and_answers_with_fake_vllm(tiny, monkeypatch):
    fake = _fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = GenerationParams(max_new_tokens=12, seed=1234)
    backend = create_backend("vllm", str(tiny["llava"]), params=params, tensor_parallel_size=2, batch_size=2)
    llm = fake.LLM.instances[-1]
    assert llm.kwargs["model"] == str(tiny["llava"]) and llm.kwargs["tensor_parallel_size"] == 2
    assert llm.kwargs["limit_mm_per_prompt"] == {"image": 1} and llm.kwargs["seed"] == 1234

    rng = np.random.default_rng(0)
    tall = rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)
    queries = [Query("a", tall, "Age?"), Query("b", rng.integers(0, 256, (50, 120, 3), np.uint8), "Gender?")]
    queries.append(Query("c", rng.integers(0, 256, (40, 40, 3), np.uint8), "Age?"))
    answers = backend.generate_batch(queries)

    assert len(llm.calls) == 2  # batch_size 2: two generate calls
    requests, sampling = llm.calls[0]
    assert sampling.kwargs == {"n": 1, "temperature": 0.0, "max_tokens": 12, "seed": 1234}
    # the prompt is the model's chat template, identical to the transformers backend's
    reference = TransformersBackend(str(tiny["llava"]))
    assert requests[0]["prompt"] == reference.prompt_text("Age?")
    assert requests[0]["prompt"].endswith("USER: <image>\nAge? ASSISTANT:")
    image = requests[0]["multi_modal_data"]["image"]
    assert isinstance(image, Image.Image) and image.size == (90, 90)  # LLaVA-1.5 pad-to-square
    assert np.array_equal(np.asarray(image), pad_to_square(tall, (122, 116, 104)))

    assert [a.request_id for a in answers] == ["a", "b", "c"]
    assert answers[0].text == "[female; 90]" and answers[0].finish_reason == "stop"
    assert answers[1].finish_reason == "length" and answers[1].completion_tokens == 3
    assert answers[0].prompt_tokens == len(requests[0]["prompt"]) // 4
    assert all(a.status == "answered" and a.model_revision == backend.model_revision for a in answers)
    assert backend.key_options()["pad_to_square"] is True and backend.key_options()["engine"] == "vllm"
    info = backend.describe()
    assert info["backend"] == "vllm" and info["vllm"] == "0.0-fake" and info["tensor_parallel_size"] == 2
    backend.close()


def test_next_keeps_aspect_and_failures_are_isolated(tiny, monkeypatch):
    fake = _fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = create_backend("vllm", str(tiny["llava_next"]), params=GenerationParams(temperature=0.0, seed=None))
    assert not backend.pad_to_square
    rng = np.random.default_rng(1)
    queries = [Query(str(w), rng.integers(0, 256, (30, w, 3), np.uint8), "Age?") for w in (40, 13, 60)]
    answers = backend.generate_batch(queries)
    assert [a.status for a in answers] == ["answered", "failed", "answered"]
    assert "image too small" in answers[1].error
    requests, sampling = fake.LLM.instances[-1].calls[0]
    assert requests[0]["multi_modal_data"]["image"].size == (40, 30)  # no padding: NeXT's any-res
    assert "seed" not in sampling.kwargs


def test_missing_vllm_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"agegender\[vllm\]") as info:
        create_backend("vllm", str(tiny["llava"]))
    assert isinstance(info.value, InputError)


def test_bad_options(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm())
    with pytest.raises(InputError, match="n=1"):
        create_backend("vllm", str(tiny["llava"]), params=GenerationParams(n=3))
    with pytest.raises(InputError, match="not found"):
        create_backend("vllm", "/no/such/folder")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_vllm_matches_transformers(tmp_path):
    pytest.importorskip("vllm")
    # head size 32 (vLLM's attention kernels support a fixed list of head sizes; 16 is not on it)
    folder = str(build_tiny_llava(tmp_path / "llava", image_size=112, text_hidden=128, vision_hidden=64))
    rng = np.random.default_rng(2)
    queries = [Query(str(i), rng.integers(0, 256, (h, 40, 3), np.uint8), "Age?") for i, h in enumerate((30, 80))]
    params = GenerationParams(max_new_tokens=4)
    backend = create_backend("vllm", folder, params=params, dtype="float32", engine_options={"enforce_eager": True})
    answers = backend.generate_batch(queries)
    backend.close()
    assert all(a.status == "answered" and a.completion_tokens for a in answers)
    reference = TransformersBackend(folder, params=params, device="cuda", dtype="float32")
    assert [a.prompt_tokens for a in answers] == [a.prompt_tokens for a in reference.generate_batch(queries)]
