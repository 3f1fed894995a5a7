"""Pascal VOC evaluation with per-class AP, usable from LazyConfig ``dataloader.evaluator``.

Detectron2's ``PascalVOCDetectionEvaluator`` returns only the mean AP / AP50 / AP75 and does not
take the ``output_dir`` argument that d2kd's trainer gives every evaluator. This subclass:

- accepts (and uses) ``output_dir``: the per-class table is written to
  ``<output_dir>/voc_per_class_ap.json``;
- adds ``AP50-<class>`` (the VOC metric, 11-point for 2007) for every class to ``results["bbox"]``
  and logs a per-class table;
- computes the IoU thresholds in ``iou_thresholds`` (default 0.50:0.95 like Detectron2, so AP
  and AP75 are unchanged; ``(50,)`` is 10× faster and reports AP50 only).
"""
import json
import logging
import os
import tempfile
from collections import OrderedDict, defaultdict
from typing import Optional, Sequence

import numpy as np

from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    def __init__(self, dataset_name: str, output_dir: Optional[str] = None,
                 iou_thresholds: Sequence[int] = tuple(range(50, 100, 5))):
        super().__init__(dataset_name)
        self._output_dir = output_dir
        self._iou_thresholds = [int(t) for t in iou_thresholds]
        if 50 not in self._iou_thresholds:
            raise ValueError(f"VOCDetectionEvaluator: iou_thresholds must include 50, got {iou_thresholds}")

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return
        predictions = defaultdict(list)
        for per_rank in all_predictions:
            for cls_id, lines in per_rank.items():
                predictions[cls_id].extend(lines)
        del all_predictions

        aps = defaultdict(list)  # IoU threshold -> AP per class
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as dirname:
            res_file_template = os.path.join(dirname, "{}.txt")
            for cls_id, cls_name in enumerate(self._class_names):
                with open(res_file_template.format(cls_name), "w") as f:
                    f.write("\n".join(predictions.get(cls_id, [""])))
                for thresh in self._iou_thresholds:
                    _, _, ap = voc_eval(
                        res_file_template,
                        self._anno_file_template,
                        self._image_set_path,
                        cls_name,
                        ovthresh=thresh / 100.0,
                        use_07_metric=self._is_2007,
                    )
                    aps[thresh].append(ap * 100)

        mean = {t: float(np.mean(v)) for t, v in aps.items()}
        bbox = OrderedDict()
        bbox["AP"] = float(np.mean(list(mean.values())))
        bbox["AP50"] = mean[50]
        if 75 in mean:
            bbox["AP75"] = mean[75]
        per_class = OrderedDict((name, float(ap)) for name, ap in zip(self._class_names, aps[50]))
        for name, ap in per_class.items():
            bbox[f"AP50-{name}"] = ap
        table = "\n".join(f"  {name:>12s}: {ap:6.2f}" for name, ap in per_class.items())
        logger.info(
            "VOC%s AP50 per class on %s (mAP %.2f; Detectron2's voc_eval, not the Matlab API):\n%s",
            2007 if self._is_2007 else 2012, self._dataset_name, mean[50], table,
        )
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "voc_per_class_ap.json"), "w") as f:
                json.dump({"dataset": self._dataset_name, "AP50": mean[50], "per_class_AP50": per_class}, f, indent=1)
        return OrderedDict(bbox=bbox)
