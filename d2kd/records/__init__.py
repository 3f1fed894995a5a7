"""Records: the contract between detectors and distillation methods.

What a detector computed on one training batch, one file per detector family (:mod:`.rcnn`,
:mod:`.retinanet`, :mod:`.fcos`, :mod:`.ssd`: each its record types and the code that fills them), gathered in
a :class:`DetectorRecord` (:mod:`.base`). Methods read them through family-neutral views
(:mod:`.views`). This package imports nothing of d2kd above it: models and methods import it,
never the other way round.
"""
from .base import (  # noqa: F401
    PAIRING_CHECKS,
    RECORD_LAYOUT_TABLE,
    TEACHER_PART_TABLE,
    TEACHER_PARTS,
    DetectorRecord,
    TeacherPart,
    check_paired_part,
    detector_num_classes,
    record_layout,
)
from .fcos import fcos_head_outputs, is_fcos  # noqa: F401
from .rcnn import (  # noqa: F401
    ROIRecord,
    RPNRecord,
    check_same_rpn_anchors,
    rcnn_layout,
    roi_box_outputs,
    roi_heads_training,
    rpn_outputs,
)
from .retinanet import (  # noqa: F401
    DenseHeadLayout,
    DenseHeadRecord,
    check_same_dense_head_layout,
    dense_head_layout,
    retinanet_head_outputs,
    retinanet_layout,
)
from .ssd import SSDRecord, check_same_priors, check_ssd_prior_layout, is_ssd, ssd_layout, ssd_outputs  # noqa: F401
from .views import (  # noqa: F401
    AnchorsLayout,
    AnchorsView,
    BoxPooling,
    ClassifierInputView,
    ClassifierLayout,
    ClassifierView,
    DetectionStageView,
    RecordLayout,
    StageLayout,
)
