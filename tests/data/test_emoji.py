"""The emoji set: names, captions, rendering of a small subset, split and source handling."""

import warnings

import numpy as np
import pytest

pytest.importorskip(
    "emoji", reason="the PyPI package `emoji` is not installed (scripts/install_data_deps.sh)"
)

from swd.data import concept_split, read_image_set  # noqa: E402
from swd.data import emoji as emoji_data  # noqa: E402
from swd.errors import SwdError  # noqa: E402

WOMAN_COOK_MEDIUM_DARK = "\U0001f469\U0001f3fe\u200d\U0001f373"
SUBSET = [
    "\U0001f600",
    WOMAN_COOK_MEDIUM_DARK,
    "\U0001f1ef\U0001f1f5",
    "\U0001f431",
    "\U0001f680",
    "#\ufe0f\u20e3",
]


def _installed(style):
    return not isinstance(emoji_data.SOURCES[style](), str)


def test_names_follow_cldr():
    assert emoji_data.emoji_name(WOMAN_COOK_MEDIUM_DARK) == "woman cook: medium-dark skin tone"
    assert emoji_data.emoji_name("\U0001f600") == "grinning face"
    assert emoji_data.emoji_name("\U0001f1ef\U0001f1f5") == "flag: Japan"
    assert emoji_data.emoji_name("#\ufe0f\u20e3") == "keycap: #"
    assert (
        emoji_data.emoji_name("\U0001faf1\U0001f3fb\u200d\U0001faf2\U0001f3ff")
        == "handshake: light skin tone, dark skin tone"
    )
    assert emoji_data.caption("noto", "grinning face") == "noto style: grinning face"
    assert emoji_data.sequence_key("\u263a\ufe0f") == "263a"  # variation selectors do not split concepts
    with pytest.raises(SwdError, match="emoji"):
        emoji_data.emoji_name("x")


def test_concepts_and_split_are_deterministic():
    concepts = emoji_data.emoji_concepts()
    assert len(concepts) > 3500
    names = sorted({c.name for c in concepts.values()})
    heldout = [n for n in names if concept_split(n) == "heldout"]
    assert 0.07 < len(heldout) / len(names) < 0.13
    assert [concept_split(n) for n in names[:50]] == [concept_split(n) for n in names[:50]]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    if not any(_installed(s) for s in emoji_data.SOURCES):
        pytest.skip("no emoji source installed (run scripts/install_data_deps.sh)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = emoji_data.build_emoji(tmp_path_factory.mktemp("emoji"), only=SUBSET, progress=False)
    return read_image_set(path)


def test_subset_renders_every_installed_style(subset):
    styles = [s for s in emoji_data.SOURCES if _installed(s)]
    assert set(subset.summary["sources"]) == set(styles)
    assert subset.images.shape[1:] == (64, 64, 3) and subset.images.dtype == np.uint8
    cook = [r for r in subset.records if r["emoji"] == WOMAN_COOK_MEDIUM_DARK]
    assert {r["caption"] for r in cook} == {f"{s} style: woman cook: medium-dark skin tone" for s in styles}
    for image in subset.images:
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners >= 250).all()  # on white, with a margin
        assert (image < 200).any(axis=-1).mean() > 0.05  # not blank
    x = subset.tensors()
    assert x.shape == (len(subset), 3, 64, 64) and -1 <= x.min() and x.max() <= 1


def test_split_is_disjoint_by_concept(subset):
    train = {r["name"] for r in subset.records if r["split"] == "train"}
    heldout = {r["name"] for r in subset.records if r["split"] == "heldout"}
    assert not train & heldout
    assert all(r["split"] == concept_split(r["name"]) for r in subset.records)


def test_noto_skips_glyphs_the_font_lacks():
    source = emoji_data.noto_source()
    if isinstance(source, str):
        pytest.skip(source)
    missing = emoji_data.EmojiConcept("10fffd", "\U0010fffd", "private use")
    assert source.render(missing) is None
    assert source.render(emoji_data.emoji_concepts()["1f600"]).shape == (64, 64, 3)


def test_limit_takes_the_first_concepts(tmp_path):
    styles = [s for s in emoji_data.SOURCES if _installed(s)][:1]
    if not styles:
        pytest.skip("no emoji source installed")
    data = read_image_set(emoji_data.build_emoji(tmp_path, limit=5, styles=styles, progress=False))
    assert data.summary["counts"]["concepts_tried"] == 5 and 1 <= len(data) <= 5


def test_missing_sources_warn_and_none_fails(monkeypatch):
    monkeypatch.setitem(emoji_data.SOURCES, "noto", lambda: "not here")
    monkeypatch.setitem(emoji_data.SOURCES, "fluent", lambda: "not here either")
    if _installed("twitter"):
        with pytest.warns(UserWarning) as caught:
            found, missing = emoji_data.available_sources()
        assert [s.style for s in found] == ["twitter"] and set(missing) == {"noto", "fluent"}
        assert sorted(str(w.message).split("'")[1] for w in caught) == ["fluent", "noto"]
    monkeypatch.setitem(emoji_data.SOURCES, "twitter", lambda: "gone")
    with pytest.warns(UserWarning), pytest.raises(SwdError, match="sources: no emoji source"):
        emoji_data.build_emoji(limit=1, progress=False)
    with pytest.raises(SwdError, match="sources"):
        emoji_data.available_sources(["bogus"])


def test_load_without_a_build_says_how(tmp_path):
    with pytest.raises(SwdError, match="swd data build emoji"):
        emoji_data.load_emoji(tmp_path)
