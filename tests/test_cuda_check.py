"""tools/cuda_check.py's comparison of an exported student's GPU and CPU detections (the script
itself needs a GPU; docs/gpu.md has its results)."""
import math

import pytest
import torch
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

from detectron2.structures import Boxes, Instances  # noqa: E402

from cuda_check import detection_gap  # noqa: E402  (tools/, see conftest)


def _detections(boxes, classes, scores):
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.tensor(classes)
    inst.scores = torch.tensor(scores)
    return inst


def test_swapped_near_ties_are_no_gap_and_a_shift_is_its_size():
    cpu = _detections([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2], [0.0500, 0.0499])
    gpu_swapped = _detections([[50, 50, 60, 60], [0, 0, 10, 10]], [2, 1], [0.0501, 0.0500])
    box, score = detection_gap(gpu_swapped, cpu)
    assert box == 0.0 and score == pytest.approx(0.0001, abs=1e-7)
    gpu_shifted = _detections([[0, 0, 10, 10], [50, 53, 60, 61]], [1, 2], [0.05, 0.0499])
    assert detection_gap(gpu_shifted, cpu)[0] == pytest.approx(3.0)


def test_a_box_whose_class_the_other_side_lacks_is_infinitely_far():
    cpu = _detections([[0, 0, 10, 10]], [1], [0.9])
    gpu = _detections([[0, 0, 10, 10]], [3], [0.9])
    assert math.isinf(detection_gap(gpu, cpu)[0])
    assert detection_gap(gpu, _detections(torch.zeros(0, 4).tolist(), [], [])) == (0.0, 0.0)
