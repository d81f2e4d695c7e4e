"""The notebook prose written from numbers (cluda_kit.analysis.narrative) says what its inputs say."""
import re

from cluda_kit.analysis.narrative import feature_space_conclusion
from cluda_kit.data.labels import CLASSES

LABELS = {"source_only": "source-only", "daformer": "DAFormer", "cluda": "CLUDA"}


def _values(miou):
    return {n: {"miou": m, "silhouette": 0.05, "ratio": 0.5, "mixing": 0.2,
                "class_silhouette": {c: 0.0 for c in range(len(CLASSES))}} for n, m in miou.items()}


def test_class_counts_are_taken_at_the_tables_precision():
    # Written out by hand: a 0.03 against 0.0 and a 10.04 against 10.0 print equal in a .1f table;
    # 5.0 vs 4.9 and 0.0 vs 0.2 do not.
    iou = {n: {c: None for c in CLASSES} for n in LABELS}
    cases = [(0.03, 0.0), (10.04, 10.0), (5.0, 4.9), (0.0, 0.2), (0.0, 0.0)]
    for c, (cl, da) in zip(CLASSES, cases):
        iou["cluda"][c], iou["daformer"][c], iou["source_only"][c] = cl, da, 0.0
    text = feature_space_conclusion(_values({"source_only": 17.0, "daformer": 24.3, "cluda": 23.8}), iou, LABELS)
    counts = re.search(r"above DAFormer's in (\d+) classes, below in (\d+) and equal in (\d+) \((\w+) of them", text)
    assert counts is not None, text
    assert counts.groups() == ("1", "1", "3", "2")


def test_mIoU_differences_add_up_as_printed():
    iou = {n: {c: None for c in CLASSES} for n in LABELS}
    text = feature_space_conclusion(_values({"source_only": 17.36, "daformer": 24.34, "cluda": 23.76}), iou, LABELS)
    # printed 24.3, 23.8 and 17.4: the differences written beside them are 0.5 and 6.9
    assert "24.3, ahead of CLUDA (23.8; +0.5 points" in text and "(17.4; +6.9 points)" in text, text
