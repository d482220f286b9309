"""MiniLM conditioning: shapes, padding, pooling by hand, the empty prompt and the cache."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything must load from the wheel, offline

from swd.data import text  # noqa: E402
from swd.errors import SwdError  # noqa: E402

try:
    text.minilm_path()
    MISSING = None
except SwdError as e:
    MISSING = str(e)

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"MiniLM unavailable: {MISSING}")

T = 12


@pytest.fixture(scope="module")
def encoder():
    return text.TextEncoder(max_length=T)


def test_shapes_and_padding(encoder):
    out = encoder(["a red circle", "noto style: woman cook: medium-dark skin tone", ""])
    assert out.states.shape == (3, T, text.HIDDEN_SIZE) and out.states.dtype == torch.float32
    assert out.pooled.shape == (3, text.HIDDEN_SIZE) and out.mask.shape == (3, T)
    assert out.mask[2].tolist() == [1, 1] + [0] * (T - 2)  # "" is [CLS] [SEP] then padding
    assert out.mask[0].sum() == 5  # [CLS] a red circle [SEP]
    assert out.mask[1].sum() == T  # truncated to max_length
    assert torch.isfinite(out.states).all()


def test_identical_prompts_match_and_different_ones_differ(encoder):
    out = encoder(["a red circle", "a red circle", "a blue square"])
    assert torch.equal(out.states[0], out.states[1]) and torch.equal(out.pooled[0], out.pooled[1])
    assert (out.pooled[0] - out.pooled[2]).abs().max() > 0.1
    cosine = torch.nn.functional.cosine_similarity(out.pooled[0], out.pooled[2], dim=0)
    assert 0.2 < cosine < 0.99


def test_pooled_is_the_masked_mean_of_token_states(encoder):
    out = encoder(["three stars", "flag: Japan and more words here", ""])
    for states, mask, pooled in zip(out.states, out.mask, out.pooled):
        n = int(mask.sum())
        by_hand = states[:n].sum(0) / n  # real tokens come first
        assert torch.allclose(pooled, by_hand, atol=1e-6)


def test_batches_do_not_change_results(encoder):
    captions = ["a star", "two crosses", "a green square and a red star", "x"]
    assert torch.allclose(encoder(captions).states, encoder(captions, batch_size=3).states, atol=1e-5)


def test_cache_round_trip_in_caption_order(encoder, tmp_path):
    captions = ["b caption", "a caption", "b caption", ""]
    first = text.encode_captions(captions, max_length=T, cache_dir=tmp_path, encoder=encoder)
    files = list((tmp_path / "text").glob("*.safetensors"))
    assert len(files) == 1 and files[0] == text.cache_file(captions, T, tmp_path)
    again = text.encode_captions(["", "a caption"], max_length=T, cache_dir=tmp_path)  # new set: new key
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 2
    cached = text.encode_captions(list(reversed(captions)), max_length=T, cache_dir=tmp_path)
    assert cached.captions == list(reversed(captions))
    assert torch.equal(cached.states, first.states.flip(0)) and torch.equal(
        cached.pooled, first.pooled.flip(0)
    )
    direct = encoder(captions)
    assert torch.allclose(first.states, direct.states, atol=2e-2)  # float16 storage
    assert torch.equal(first.pooled, direct.pooled)  # pooled is kept in float32
    assert torch.allclose(again.pooled[0], direct.pooled[3])
    empty = text.empty_prompt(max_length=T, cache_dir=tmp_path, encoder=encoder)
    assert empty.captions == [""] and torch.allclose(empty.pooled[0], direct.pooled[3])


def test_user_errors_name_the_field(encoder):
    with pytest.raises(SwdError, match="captions"):
        encoder("a single string")
    with pytest.raises(SwdError, match="max_length"):
        text.encode_captions(["a"], max_length=T + 1, encoder=encoder)
