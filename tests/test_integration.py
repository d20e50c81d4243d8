"""Integration: the real SmolLM2-135M-Instruct on real MMLU rows (the bundled model, converted and cached once)."""

import numpy as np
import pytest

from introspect import behavior
from introspect.errors import UserError
from introspect.paths import data_root
from introspect.models import load_model
from introspect.tasks import get_task

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smol():
    return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def root():
    try:
        return data_root()
    except UserError as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_real_model_sampling_bf16_matches_fp32(smol, root) -> None:
    task = get_task("hint-mmlu")
    pairs = task.pairs(root, "val", 12, seed=3)
    fast, _ = behavior.sample_behavior(smol.model, smol.tokenizer, task, pairs, progress=False)  # bf16 + fp32 near-ties
    exact, _ = behavior.sample_behavior(smol.model, smol.tokenizer, task, pairs, precision="fp32", progress=False)
    agree = np.mean(np.concatenate([fast["answer"] == exact["answer"], fast["answer_without"] == exact["answer_without"]]))
    assert agree >= 0.9
    assert (fast["choice_mass"] > 0.5).all()  # the prompt format makes the model answer with a letter
    np.testing.assert_allclose(np.array(fast["probs"].tolist()), np.array(exact["probs"].tolist()), atol=0.05)
    assert len(smol.weights_hash) == 16 and smol.weights_hash == load_model("smollm2-135m-instruct").weights_hash


def test_the_tiny_models_tokenizer_is_cached_without_converting_the_model(smol, tmp_path, monkeypatch) -> None:
    from introspect import bundled
    from introspect.paths import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    tok = bundled.smollm2_tokenizer()
    assert (tmp_path / "tokenizers").is_dir() and not (tmp_path / "models").exists()  # the GGUF's metadata only
    text = "<|im_start|>user\nWhich? (A) x (B) y Ünïcode 日本<|im_end|>\n"
    assert tok.get_vocab() == smol.tokenizer.get_vocab() and tok(text).input_ids == smol.tokenizer(text).input_ids
    assert tok.chat_template == smol.tokenizer.chat_template and tok.pad_token_id == smol.tokenizer.pad_token_id
