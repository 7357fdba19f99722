"""Labelled texts for the foundation study: the Debian package `fortunes` (quotes in category files),
or a tiny corpus generated here (so the tests need no package).

A corpus is its texts, their category and the categories' names, split once into train and test
(stratified, fixed seed: the same split on every run); its digest names exactly those texts, labels
and split, so cached embeddings are found again only for the same data.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from manymodels.node.learning.datasets import SPLIT_SEED
from manymodels.node.spec import SpecError

CORPORA = ("fortunes", "tiny")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_DIR_ENV = "MANYMODELS_FORTUNES_DIR"
TEST_SHARE = 0.25


@dataclass(frozen=True, eq=False)
class Corpus:
    name: str
    categories: tuple[str, ...]  # label k is categories[k]
    texts: tuple[str, ...]
    labels: np.ndarray  # int64, one per text
    test: np.ndarray  # bool, one per text: held out

    @property
    def digest(self) -> str:
        """SHA-256 of the texts, labels, category names and split, canonically."""
        h = hashlib.sha256(json.dumps([self.name, self.categories, self.labels.tolist(), self.test.tolist()]).encode())
        for text in self.texts:
            h.update(len(text.encode()).to_bytes(8, "big") + text.encode())
        return h.hexdigest()


def load_corpus(name: str, categories: int, per_category: int | None = None) -> Corpus:
    """The `categories` largest categories of corpus `name` (by number of texts; ties by name), each cut
    to its first `per_category` texts if given."""
    if name not in CORPORA:
        raise SpecError(f"unknown corpus {name!r}; available: {', '.join(CORPORA)}")
    by_category = _fortunes() if name == "fortunes" else tiny_texts()
    if not 2 <= categories <= len(by_category):
        raise SpecError(f"--categories: the {name} corpus has {len(by_category)} categories; "
                        f"choose 2..{len(by_category)}, got {categories}")
    chosen = sorted(by_category, key=lambda c: (-len(by_category[c]), c))[:categories]
    by_category = {c: by_category[c][:per_category] for c in chosen}
    texts = [t for c in chosen for t in by_category[c]]
    labels = np.concatenate([np.full(len(by_category[c]), k, dtype=np.int64) for k, c in enumerate(chosen)])
    return Corpus(name, tuple(chosen), tuple(texts), labels, _test_split(labels))


def _test_split(labels: np.ndarray) -> np.ndarray:
    """A stratified TEST_SHARE of each category, chosen with the fixed split seed."""
    rng, test = np.random.default_rng(SPLIT_SEED), np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        test[rng.choice(members, size=round(TEST_SHARE * len(members)), replace=False)] = True
    return test


def _fortunes() -> dict[str, list[str]]:
    """Every category file of the fortunes package (the UTF-8 `.u8` copies): quotes between lines of '%'."""
    root = Path(os.environ.get(FORTUNES_DIR_ENV) or FORTUNES_DIR)
    files = sorted(root.glob("*.u8")) if root.is_dir() else []
    if not files:
        raise SpecError(f"the fortunes corpus needs the Debian package fortunes (apt-get install fortunes): "
                        f"no category files in {root}")
    by_category = {}
    for file in files:
        quotes = [q.strip() for q in file.read_text(encoding="utf-8", errors="replace").split("\n%\n")]
        by_category[file.name.removesuffix(".u8")] = [q for q in quotes if q and q != "%"]
    return by_category


# The tiny corpus: six topics, each with its own words, in sentences padded with shared filler words.
_TOPICS = {
    "space": "rocket orbit planet star moon galaxy comet astronaut telescope launch gravity nebula",
    "food": "bread cheese soup garlic kitchen recipe butter oven pepper dinner salad noodle",
    "sport": "goal match team coach ball score runner stadium season referee sprint trophy",
    "music": "guitar melody song drum chorus piano concert rhythm singer violin album tune",
    "sea": "wave ship sailor harbor anchor tide island fish coral storm whale beach",
    "code": "compiler bug function server kernel python script debug memory cursor loop patch",
}
_FILLER = "the a of and to in is it that was for on with as at by this from but not very".split()


@cache
def tiny_texts(per_topic: int = 150) -> dict[str, tuple[str, ...]]:
    """Texts of 6-11 words: 2-4 words of their topic, one of another topic (so some are ambiguous),
    the rest filler; generated from a fixed seed, the same on every machine."""
    rng = np.random.default_rng(20261130)
    words = {topic: w.split() for topic, w in _TOPICS.items()}
    topics = list(words)
    corpus = {}
    for topic in topics:
        texts = []
        for _ in range(per_topic):
            other = topics[(topics.index(topic) + 1 + rng.integers(len(topics) - 1)) % len(topics)]
            chosen = [*rng.choice(words[topic], size=rng.integers(2, 5)), rng.choice(words[other]),
                      *rng.choice(_FILLER, size=rng.integers(3, 7))]
            texts.append(" ".join(rng.permutation(chosen)))
        corpus[topic] = tuple(texts)
    return corpus
