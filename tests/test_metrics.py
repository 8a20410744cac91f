"""distbp.metrics against arithmetic done by hand: per-class F1 from a confusion matrix
written out, entity F1 on sentences whose chunks are counted by hand (conlleval's rules),
and regression metrics from their formulas."""

from __future__ import annotations

import numpy as np
import pytest

from distbp.metrics import chunks, classification_metrics, classify, confusion_matrix, entity_metrics, regression_metrics


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    c = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert c.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_f1_from_a_confusion_matrix_written_by_hand():
    # true \ predicted:  a   b   c
    confusion = [[5, 1, 0],    # a: 6 samples
                 [2, 3, 1],    # b: 6 samples
                 [0, 0, 4]]    # c: 4 samples, and nothing else is predicted c but one b
    r = classification_metrics(np.array(confusion), ["a", "b", "c"])
    # a: tp 5, predicted 7, support 6 -> p 5/7, r 5/6, f1 2*5/(7+6) = 10/13
    # b: tp 3, predicted 4, support 6 -> p 3/4, r 1/2, f1 2*3/(4+6) = 0.6
    # c: tp 4, predicted 5, support 4 -> p 4/5, r 1,   f1 2*4/(5+4) = 8/9
    assert r["per_class"]["a"] == pytest.approx({"precision": 5 / 7, "recall": 5 / 6, "f1": 10 / 13, "support": 6})
    assert r["per_class"]["b"] == pytest.approx({"precision": 0.75, "recall": 0.5, "f1": 0.6, "support": 6})
    assert r["per_class"]["c"] == pytest.approx({"precision": 0.8, "recall": 1.0, "f1": 8 / 9, "support": 4})
    assert r["accuracy"] == pytest.approx(12 / 16)
    assert r["macro_f1"] == pytest.approx((10 / 13 + 0.6 + 8 / 9) / 3)
    assert r["weighted_f1"] == pytest.approx((6 * 10 / 13 + 6 * 0.6 + 4 * 8 / 9) / 16)
    assert r["confusion"] == confusion


def test_a_class_never_predicted_or_never_present_scores_zero_not_nan():
    r = classify(np.array([0, 0, 1]), np.array([0, 0, 0]), ["x", "y", "z"])
    assert r["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


@pytest.mark.parametrize("tags, expected", [
    ("B-PER I-PER O B-LOC", {(0, 2, "PER"), (3, 4, "LOC")}),
    ("I-PER I-PER O", {(0, 2, "PER")}),                        # an I- with no B- starts a chunk
    ("O I-LOC", {(1, 2, "LOC")}),                              # ... after O too
    ("B-PER I-LOC I-LOC", {(0, 1, "PER"), (1, 3, "LOC")}),     # a type change inside starts another
    ("B-PER B-PER I-PER", {(0, 1, "PER"), (1, 3, "PER")}),     # adjacent entities of one type
    ("O O B-ORG", {(2, 3, "ORG")}),                            # an entity at the end of the sentence
    ("B-ORG I-ORG", {(0, 2, "ORG")}),
    ("O O O", set()),
])
def test_chunks_follow_conlleval(tags, expected):
    assert chunks(tags.split()) == expected


def test_entity_f1_on_sentences_counted_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"],            # PER(0,2), LOC(3,4)
            ["B-ORG", "I-ORG", "O"],                     # ORG(0,2)
            ["O", "B-PER", "B-PER"]]                     # PER(1,2), PER(2,3)
    pred = [["B-PER", "I-PER", "O", "I-LOC"],            # PER(0,2) correct, LOC(3,4) correct (I- after O)
            ["B-ORG", "I-LOC", "O"],                     # ORG(0,1) wrong span, LOC(1,2) wrong
            ["O", "B-PER", "I-PER"]]                     # PER(1,3) wrong: the adjacent pair merged
    r = entity_metrics(gold, pred)
    # 5 gold chunks, 5 predicted, 2 correct
    assert r["chunks"] == {"correct": 2, "predicted": 5, "true": 5}
    assert r["entity_precision"] == pytest.approx(0.4) and r["entity_recall"] == pytest.approx(0.4)
    assert r["entity_f1"] == pytest.approx(0.4)
    # PER: gold 3, predicted 2, correct 1; LOC: gold 1, predicted 2, correct 1; ORG: gold 1, predicted 1, correct 0
    assert r["per_type"]["PER"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4, "support": 3})
    assert r["per_type"]["LOC"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert r["per_type"]["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_entity_metrics_refuse_sentences_of_different_lengths():
    with pytest.raises(ValueError, match="a sentence of 2 tags against 1 predictions"):
        entity_metrics([["O", "O"]], [["O"]])


def test_regression_metrics_from_their_formulas():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    r = regression_metrics(t, p)
    assert r["mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert r["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert r["r2"] == pytest.approx(1 - 2.25 / 5.0)  # sum of squares about the mean 2.5 is 5
    two = regression_metrics(np.stack([t, 2 * t], 1), np.stack([p, 2 * t], 1))
    assert two["r2"] == pytest.approx((1 - 2.25 / 5.0 + 1.0) / 2)  # averaged over outputs
    assert regression_metrics(np.ones(3), np.ones(3))["r2"] == 1.0
