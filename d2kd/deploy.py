"""Deploy an exported student beyond Python: TorchScript and ONNX models, and a runtime for both.

Export (next to the ``student/`` folder a run writes, :mod:`d2kd.export`)::

    python3 -m d2kd.deploy export --student RUN/student --format torchscript onnx

writes ``RUN/student/deploy/model.ts`` (``torch.jit.trace`` through Detectron2's
``TracingAdapter``) and ``model.onnx`` (``torch.onnx.export`` of the same adapter, opset
:data:`ONNX_OPSET`), each with a sidecar ``model.ts.json`` / ``model.onnx.json``:

- input ``image``: the **resized** image, uint8, H x W x 3, in the channel order ``input.format``
  (BGR or RGB), pixel range 0-255. The resize (``input.resize``: Detectron2's
  ``ResizeShortestEdge`` or a fixed ``Resize``, the test mapper's) is done outside the model;
  the model's own normalisation (``pixel_mean``/``pixel_std``) and size-divisibility padding
  are inside it. ``input.fixed_size``: the model accepts only that height and width (SSD: its
  priors are constants of the trace).
- outputs ``boxes`` (N x 4 float32, XYXY in pixels of the model input, i.e. the resized image),
  ``scores`` (N float32, descending per class after NMS), ``classes`` (N int64, indices into
  ``class_names``); a Mask R-CNN student adds ``masks`` (N x 1 x M x M float32, the mask head's
  probabilities inside each box, M = 28 by default), which the runtime pastes into the image at
  ``mask_threshold`` 0.5, as ``GeneralizedRCNN``'s post-processing does. The sidecar's
  ``output_names`` lists them in order.

Runtime (:class:`DeployedModel`, and the ``predict`` command) applies ``DefaultPredictor``'s
pre- and post-processing: resize, run, boxes scaled back to the original image
(``detector_postprocess``)::

    python3 -m d2kd.deploy predict --model RUN/student/deploy/model.onnx --input img.png \
        --output output/deploy_demo

Latency (:func:`latency`): ``python3 -m d2kd.deploy latency --student RUN/student`` prints the
median CPU milliseconds per image of the eager student, TorchScript and ONNX Runtime.

Parity (:func:`evaluate`): ``python3 -m d2kd.deploy evaluate --student RUN/student`` (or
``export --eval``) prints the eager student's and the exported models' AP on the student's test
set, with the same loader and ``COCOEvaluator`` as ``--eval-only``.

ONNX needs ``onnx`` and ``onnxruntime`` (``pip install d2kd[deploy]``).
"""
import argparse
import json
import os
import sys
import traceback
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from detectron2.config import LazyConfig
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN, detector_postprocess
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, Instances

from .config import config_test_resize, is_yacs_yaml
from .export import build_predictor
from .modeling.meta_arch.ssd import SSD

#: Output file per format, inside ``<student>/deploy/``.
FORMATS = {"torchscript": "model.ts", "onnx": "model.onnx"}
#: ONNX opset of the exported models (RoIAlign with ``aligned=True`` needs 16 or later).
ONNX_OPSET = 17
#: The outputs of every exported model, in order; a model with a mask head adds ``MASK_OUTPUT``.
OUTPUT_NAMES = ("boxes", "scores", "classes")
MASK_OUTPUT = "masks"
#: What a missing ONNX dependency says.
INSTALL_HINT = "pip install d2kd[deploy]"
#: The route for a model these exports do not cover.
EAGER_ROUTE = ("serve it eagerly with d2kd.export.build_predictor(<student>/predictor.yaml) "
               "(tools/demo.py --predictor)")


class DeployError(RuntimeError):
    """An export or a deployed model that cannot be made or run; its message is one line."""


# ---- export ------------------------------------------------------------------------------------
def has_masks(model: nn.Module) -> bool:
    """Whether the exported model has a ``masks`` output (an R-CNN student with a mask head)."""
    return isinstance(model, GeneralizedRCNN) and bool(getattr(model.roi_heads, "mask_on", False))


def output_names(model: nn.Module) -> Tuple[str, ...]:
    return OUTPUT_NAMES + ((MASK_OUTPUT,) if has_masks(model) else ())


def _detections(model: nn.Module, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """``(boxes, scores, classes[, masks])`` of one CHW float image, boxes in its own pixels;
    ``masks``: the mask head's N x 1 x M x M probabilities, not yet pasted into the image."""
    inputs = [{"image": image}]
    if isinstance(model, GeneralizedRCNN):
        if getattr(model.roi_heads, "keypoint_on", False):
            raise DeployError(f"{type(model.roi_heads).__name__} with a keypoint head: boxes and masks "
                              f"are exported, keypoints are not; {EAGER_ROUTE}")
        inst = model.inference(inputs, do_postprocess=False)[0]
        if has_masks(model):
            return inst.pred_boxes.tensor, inst.scores, inst.pred_classes, inst.pred_masks
    elif isinstance(model, SSD):
        inst = model.forward_inference(inputs, do_postprocess=False)[0]
    elif isinstance(model, DenseDetector):  # RetinaNet, FCOS: one-stage heads over anchors or points
        inst = model(inputs)[0]["instances"]  # postprocessed to the input's own size: clipped
    else:
        raise DeployError(f"cannot export a {type(model).__name__} (the student's model): TorchScript/ONNX "
                          f"export covers GeneralizedRCNN (Faster R-CNN, Mask R-CNN), Detectron2's dense detectors "
                          f"(RetinaNet, FCOS) and d2kd's SSD; {EAGER_ROUTE}")
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


class ImageDetector(nn.Module):
    """The student as a function of one resized uint8 H x W x 3 image (the model's channel
    order) to ``(boxes, scores, classes[, masks])``: the tensor-only signature that traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        return _detections(self.model, image.permute(2, 0, 1).float())


def student_config(student_dir: str):
    """The LazyConfig ``config.yaml`` of an exported student folder. A yacs one (a run trained
    from a yacs config exports the stock Detectron2 config) is refused with the stock route."""
    path = os.path.join(student_dir, "config.yaml")
    if not os.path.isfile(path):
        raise DeployError(f"no config.yaml in {student_dir}: give a student/ folder written by a d2kd run "
                          f"or by python3 -m d2kd.export")
    if is_yacs_yaml(path):
        raise DeployError(f"{path} is a stock Detectron2 yacs config: export it with Detectron2's "
                          f"tools/deploy/export_model.py (the folder's README.md gives the command); "
                          f"d2kd.deploy reads LazyConfig students")
    return LazyConfig.load(path)


def deploy_resize(student_cfg) -> Dict:
    """The test mapper's resize of a student's ``config.yaml``, as the sidecar states it."""
    resize = config_test_resize(student_cfg)
    names = []
    for aug in OmegaConf.select(student_cfg, "dataloader.test.mapper.augmentations", default=None) or []:
        target = aug.get("_target_", "") if hasattr(aug, "get") else ""
        names.append((target if isinstance(target, str) else getattr(target, "__qualname__", "")).rsplit(".", 1)[-1])
    if resize is None:
        return {"type": "none"}
    if "Resize" in names and "ResizeShortestEdge" not in names:
        aug = student_cfg.dataloader.test.mapper.augmentations[names.index("Resize")]
        shape = aug.shape
        h, w = (shape, shape) if isinstance(shape, int) else tuple(shape)
        return {"type": "Resize", "height": int(h), "width": int(w)}
    return {"type": "ResizeShortestEdge", "short_edge": resize[0], "max_size": resize[1]}


def resize_augmentation(spec: Dict) -> Optional[T.Augmentation]:
    if spec["type"] == "Resize":
        return T.Resize((spec["height"], spec["width"]))
    if spec["type"] == "ResizeShortestEdge":
        return T.ResizeShortestEdge([spec["short_edge"], spec["short_edge"]], spec["max_size"])
    return None


def _sample_image(spec: Dict, seed: int = 0) -> np.ndarray:
    """A random uint8 image of the size the resize produces (non-square where it may be)."""
    if spec["type"] == "Resize":
        h, w = spec["height"], spec["width"]
    elif spec["type"] == "ResizeShortestEdge":
        h, w = spec["short_edge"], min(spec["max_size"], (spec["short_edge"] * 4) // 3)
    else:
        h, w = 128, 160
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8")


def _where(exc: BaseException) -> str:
    """The innermost frame of ``exc`` in Detectron2 or d2kd code: the part that failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f"{os.sep}detectron2{os.sep}" in f.filename or f"{os.sep}d2kd{os.sep}" in f.filename]
    if not frames:
        return "the model"
    f = frames[-1]
    return f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def match_detections(a: Sequence, b: Sequence) -> float:
    """Largest difference between two ``(boxes, scores, classes)`` sets of detections, each
    detection compared with its nearest one in the other set (order-free: NMS and top-k may order
    near-equal scores differently); ``inf`` if the counts differ."""
    a = [torch.as_tensor(np.asarray(x)).float().reshape(len(np.asarray(x)), -1) for x in a]
    b = [torch.as_tensor(np.asarray(x)).float().reshape(len(np.asarray(x)), -1) for x in b]
    if len(a[0]) != len(b[0]):
        return float("inf")
    if len(a[0]) == 0:
        return 0.0
    d = (torch.cat(a, 1)[:, None, :] - torch.cat(b, 1)[None]).abs().amax(-1)
    return max(d.amin(1).max().item(), d.amin(0).max().item())


def _export_one(fmt: str, adapter: TracingAdapter, image: torch.Tensor, path: str, fixed: bool,
                names: Sequence[str]):
    if fmt == "torchscript":
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
        torch.jit.save(traced, path)
        return
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
    except ImportError as e:
        raise DeployError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from e
    dynamic = {n: {0: "detections"} for n in names}  # the count of detections varies
    if not fixed:
        dynamic["image"] = {0: "height", 1: "width"}
    torch.onnx.export(adapter, (image,), path, opset_version=ONNX_OPSET, input_names=["image"],
                      output_names=list(names), dynamic_axes=dynamic, dynamo=False)


def export_deployable(student_dir: str, formats: Sequence[str] = tuple(FORMATS),
                      output_dir: Optional[str] = None) -> Dict[str, str]:
    """Export the student in ``student_dir`` (``config.yaml``, ``predictor.yaml``,
    ``model_final.pth``, as :func:`d2kd.export.export_student` writes) to ``formats``, into
    ``output_dir`` (default ``student_dir/deploy``). Returns ``{format: model path}``; each
    model has a ``.json`` sidecar, which also records its largest difference from the eager
    model on a sample image (``check.max_abs_diff``)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise DeployError(f"unknown format(s) {unknown}; choose from {sorted(FORMATS)}")
    student_cfg = student_config(student_dir)
    predictor = build_predictor(os.path.join(student_dir, "predictor.yaml"), device="cpu")
    model = predictor.model.eval()
    spec = deploy_resize(student_cfg)
    # SSD's priors are computed from the feature-map sizes in Python: constants of the trace.
    fixed = isinstance(model, SSD)
    if fixed and spec["type"] != "Resize":
        raise DeployError(f"SSD traces for one input size only, and the student's test resize is "
                          f"{spec['type']}, not a fixed Resize((h, w)); {EAGER_ROUTE}")
    sample = _sample_image(spec)
    aug = resize_augmentation(spec)
    resized = torch.as_tensor(np.array(aug.get_transform(sample).apply_image(sample) if aug is not None else sample))
    adapter = TracingAdapter(ImageDetector(model), (resized,)).eval()
    with torch.no_grad():
        eager = adapter(resized)  # also: an unsupported model is refused here, before tracing
    names = output_names(model)
    output_dir = output_dir or os.path.join(student_dir, "deploy")
    os.makedirs(output_dir, exist_ok=True)
    metadata = getattr(predictor, "metadata", None)
    sidecar = {
        "architecture": type(model).__name__,
        "weights": os.path.relpath(os.path.abspath(predictor.cfg.MODEL.WEIGHTS), os.path.abspath(output_dir)),
        "input": {
            "name": "image", "dtype": "uint8", "layout": "HWC (height x width x 3), one image, no batch axis",
            "format": predictor.input_format, "pixel_range": [0, 255],
            "resize": spec, "fixed_size": fixed,
            "normalisation": {"pixel_mean": model.pixel_mean.flatten().tolist(),
                              "pixel_std": model.pixel_std.flatten().tolist(), "where": "inside the model"},
            "size_divisibility": int(getattr(model.backbone, "size_divisibility", 0)),
        },
        "output_names": list(names),
        "outputs": {
            "boxes": "float32 N x 4, XYXY in pixels of the model input (the resized image); "
                     "scale x by original_width / input_width and y likewise for the original image",
            "scores": "float32 N", "classes": "int64 N, index into class_names",
            **({MASK_OUTPUT: "float32 N x 1 x M x M, the probability of each cell of the box's M x M grid "
                             "being the object; paste each into its (scaled) box and threshold at 0.5 "
                             "(detectron2.modeling.postprocessing.detector_postprocess does both)"}
               if MASK_OUTPUT in names else {}),
        },
        "class_names": list(getattr(metadata, "thing_classes", []) or []),
    }
    written = {}
    for fmt in formats:
        path = os.path.join(output_dir, FORMATS[fmt])
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # TracerWarnings: the checks below compare outputs
                _export_one(fmt, adapter, resized, path, fixed, names)
        except DeployError:
            raise
        except Exception as e:  # noqa: BLE001  (any tracing failure is reported the same way)
            raise DeployError(f"{fmt} export of {type(model).__name__} failed in {_where(e)}: {_first_line(e)}; "
                              f"{EAGER_ROUTE}") from e
        info = dict(sidecar, format=fmt, **({"opset": ONNX_OPSET} if fmt == "onnx" else {}))
        deployed = DeployedModel(path, sidecar=info)
        diff = match_detections([x.numpy() for x in eager], deployed.run_resized(resized.numpy()))
        info["check"] = {"max_abs_diff_vs_eager": diff, "image_hw": list(resized.shape[:2]),
                         "detections": int(len(eager[0]))}
        with open(path + ".json", "w") as f:
            json.dump(info, f, indent=2)
        written[fmt] = path
    return written


# ---- runtime -----------------------------------------------------------------------------------
def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise DeployError(f"running an ONNX model needs onnxruntime: {INSTALL_HINT}") from e
    return onnxruntime


class DeployedModel:
    """An exported model (``model.ts`` or ``model.onnx`` with its sidecar) with
    ``DefaultPredictor``'s pre- and post-processing: ``model(image)`` takes an original
    H x W x 3 uint8 image in ``self.input_format`` and returns ``Instances`` in its pixels."""

    def __init__(self, path: str, *, sidecar: Optional[Dict] = None, threads: int = 1):
        if sidecar is None:
            if not os.path.isfile(path + ".json"):
                raise DeployError(f"no sidecar {path}.json next to {path} (d2kd.deploy export writes both)")
            with open(path + ".json") as f:
                sidecar = json.load(f)
        self.path, self.sidecar = path, sidecar
        self.output_names = tuple(sidecar.get("output_names", OUTPUT_NAMES))
        self.format = "onnx" if path.endswith(".onnx") else "torchscript"
        self.input_format = sidecar["input"]["format"]
        self.aug = resize_augmentation(sidecar["input"]["resize"])
        self.metadata = Metadata(name=os.path.basename(path), thing_classes=sidecar.get("class_names") or [])
        if self.format == "onnx":
            ort = _onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        else:
            self.module = torch.jit.load(path, map_location="cpu").eval()

    def run_resized(self, image: np.ndarray) -> List[np.ndarray]:
        """``[boxes, scores, classes(, masks)]`` (``self.output_names``) of an already resized
        image, in its pixels."""
        if self.format == "onnx":
            return self.session.run(list(self.output_names), {"image": np.ascontiguousarray(image)})
        with torch.no_grad():
            return [x.numpy() for x in self.module(torch.as_tensor(np.array(image)))]

    def instances(self, resized: np.ndarray, height: int, width: int) -> Instances:
        """The detections of an already resized image as ``DefaultPredictor`` returns them for
        its ``height`` x ``width`` original: boxes scaled back, masks pasted into it."""
        outputs = dict(zip(self.output_names, self.run_resized(resized)))
        result = Instances(tuple(resized.shape[:2]))
        result.pred_boxes = Boxes(torch.as_tensor(outputs["boxes"]))
        result.scores = torch.as_tensor(outputs["scores"])
        result.pred_classes = torch.as_tensor(outputs["classes"])
        if MASK_OUTPUT in outputs:
            result.pred_masks = torch.as_tensor(outputs[MASK_OUTPUT])
        return detector_postprocess(result, height, width)

    def __call__(self, image: np.ndarray) -> Instances:
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image) if self.aug is not None else image
        return self.instances(resized, height, width)


def draw(model: DeployedModel, path: str, score_thresh: float = 0.3) -> Tuple[np.ndarray, int]:
    """The RGB picture of ``model``'s detections on the image file ``path``, and their count."""
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    image = read_image(path, format=model.input_format)
    instances = model(image)
    instances = instances[instances.scores >= score_thresh]
    rgb = image[:, :, ::-1] if model.input_format == "BGR" else image
    scale = max(1.0, 512 / max(rgb.shape[:2]))  # small images are enlarged so labels stay legible
    return Visualizer(rgb, model.metadata, scale=scale).draw_instance_predictions(instances).get_image(), len(instances)


def predict(model_path: str, inputs: Sequence[str], output: str, score_thresh: float = 0.3) -> List[str]:
    """Draw ``model_path``'s detections on each image of ``inputs`` into PNGs under ``output``
    (a folder, or a ``.png`` file name for a single input)."""
    import cv2

    model = DeployedModel(model_path)
    single = output.lower().endswith(".png")
    if single and len(inputs) != 1:
        raise DeployError(f"--output {output} names one PNG file, but {len(inputs)} inputs were given")
    os.makedirs(os.path.dirname(os.path.abspath(output)) if single else output, exist_ok=True)
    written = []
    for i, path in enumerate(inputs):
        drawn, n = draw(model, path, score_thresh)
        name = os.path.splitext(os.path.basename(path))[0] or f"image{i}"
        out = output if single else os.path.join(output, f"{i:03d}_{name}.png")
        cv2.imwrite(out, drawn[:, :, ::-1])
        print(f"{path}: {n} detections -> {out}")
        written.append(out)
    return written


# ---- parity ------------------------------------------------------------------------------------
class _DatasetModel:
    """A :class:`DeployedModel` as ``inference_on_dataset`` calls a model: the test mapper's
    inputs (resized CHW image in the model's format, ``height``/``width`` of the original)."""

    def __init__(self, model: DeployedModel):
        self.model = model

    def __call__(self, batched_inputs):
        outputs = []
        for x in batched_inputs:
            image = x["image"].permute(1, 2, 0).numpy().astype(np.uint8)
            h, w = x.get("height", image.shape[0]), x.get("width", image.shape[1])
            outputs.append({"instances": self.model.instances(image, h, w)})
        return outputs


def evaluate(student_dir: str, model_paths: Sequence[str] = (), *, dataset: Optional[str] = None,
             output_dir: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Bounding-box metrics of the eager student and of each exported model in ``model_paths``,
    on the student's test set (or ``dataset``), with the same loader and the same evaluator
    (``config.yaml``'s ``dataloader.test`` / ``dataloader.evaluator``, as ``--eval-only``), and
    the mask metrics as ``segm/<name>`` where that evaluator scores masks.
    Returns ``{"eager": {"AP": ..., "segm/AP": ...}, "<model path>": {...}}``."""
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    cfg = student_config(student_dir)
    if "evaluator" not in cfg.dataloader:
        raise DeployError(f"{student_dir}/config.yaml has no dataloader.evaluator to score the models with")
    if dataset:
        cfg.dataloader.test.dataset.names = dataset
        cfg.dataloader.evaluator.dataset_name = dataset
    # The evaluator caches a COCO json of non-COCO sets (shapes) here, not in the run's folder.
    cfg.dataloader.evaluator.output_dir = output_dir or os.path.join(student_dir, "deploy", "inference")
    loader = instantiate(cfg.dataloader.test)
    evaluator = instantiate(cfg.dataloader.evaluator)
    predictor = build_predictor(os.path.join(student_dir, "predictor.yaml"), device="cpu")

    def metrics(model) -> Dict[str, float]:
        scores = inference_on_dataset(model, loader, evaluator)
        return {**scores["bbox"], **{f"segm/{k}": v for k, v in scores.get("segm", {}).items()}}

    results = {"eager": metrics(predictor.model)}
    for path in model_paths:
        results[path] = metrics(_DatasetModel(DeployedModel(path)))
    return results


# ---- latency -----------------------------------------------------------------------------------
def latency(student_dir: str, model_paths: Sequence[str] = (), *, images: int = 20, warmup: int = 3,
            threads: int = 1) -> Dict[str, float]:
    """Median CPU milliseconds per image of the eager student and of each exported model, on
    the same ``images`` resized sample images (the model call only: resize and drawing excluded),
    with ``threads`` intra-op threads, after ``warmup`` calls. ``{"eager": ms, path: ms}``."""
    import time

    predictor = build_predictor(os.path.join(student_dir, "predictor.yaml"), device="cpu")
    spec = deploy_resize(student_config(student_dir))
    aug = resize_augmentation(spec)
    samples = [_sample_image(spec, seed=i) for i in range(images)]
    samples = [np.array(aug.get_transform(x).apply_image(x)) if aug is not None else x for x in samples]
    eager = ImageDetector(predictor.model.eval())

    def run_eager(x):
        with torch.no_grad():
            return eager(torch.as_tensor(x))

    runners = {"eager": run_eager}
    for path in model_paths:
        runners[path] = DeployedModel(path, threads=threads).run_resized
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for name, run in runners.items():
            for x in samples[:warmup]:
                run(x)
            times = []
            for x in samples:
                start = time.perf_counter()
                run(x)
                times.append(time.perf_counter() - start)
            out[name] = float(np.median(times) * 1000)
        return out
    finally:
        torch.set_num_threads(previous)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m d2kd.deploy", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="TorchScript / ONNX models of an exported student")
    exp.add_argument("--student", required=True,
                     help="a run's student/ folder (config.yaml, predictor.yaml, model_final.pth)")
    exp.add_argument("--format", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    exp.add_argument("--output", default=None, help="folder for the models (default: <student>/deploy)")
    exp.add_argument("--eval", action="store_true",
                     help="then print the eager and the exported models' AP on the student's test set")
    exp.add_argument("--dataset", default=None, help="with --eval: another registered dataset")
    ev = sub.add_parser("evaluate", help="AP of the eager student and of exported models, side by side")
    ev.add_argument("--student", required=True, help="the student/ folder the models were exported from")
    ev.add_argument("--model", nargs="*", default=None, help="exported models (default: those in <student>/deploy)")
    ev.add_argument("--dataset", default=None, help="a registered dataset (default: the student's test set)")
    lat = sub.add_parser("latency", help="median CPU ms per image: eager, TorchScript, ONNX Runtime")
    lat.add_argument("--student", required=True, help="the student/ folder the models were exported from")
    lat.add_argument("--model", nargs="*", default=None, help="exported models (default: those in <student>/deploy)")
    lat.add_argument("--images", type=int, default=20)
    lat.add_argument("--threads", type=int, default=1)
    pre = sub.add_parser("predict", help="run an exported model on images, drawing PNGs")
    pre.add_argument("--model", required=True, help="model.ts or model.onnx (with its .json sidecar)")
    pre.add_argument("--input", nargs="+", required=True, help="image files")
    pre.add_argument("--output", default="output/deploy_demo", help="folder for the PNGs, or one .png file")
    pre.add_argument("--score-thresh", type=float, default=0.3)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            written = export_deployable(args.student, args.format, args.output)
            for fmt, path in written.items():
                with open(path + ".json") as f:
                    check = json.load(f)["check"]
                print(f"{fmt}: {path} (max abs difference from the eager student on a sample image: "
                      f"{check['max_abs_diff_vs_eager']:.2g}, {check['detections']} detections)")
            if not args.eval:
                return written
            models = list(written.values())
        if args.command in ("evaluate", "latency"):
            models = args.model
            if models is None:
                folder = os.path.join(args.student, "deploy")
                models = [os.path.join(folder, f) for f in FORMATS.values() if os.path.isfile(os.path.join(folder, f))]
        if args.command == "latency":
            results = latency(args.student, models, images=args.images, threads=args.threads)
            for name, ms in results.items():
                print(f"{name}: {ms:.1f} ms per image (median of {args.images}, {args.threads} thread(s))")
            return results
        if args.command in ("export", "evaluate"):
            results = evaluate(args.student, models, dataset=args.dataset)
            for name, metrics in results.items():
                masks = f"  mask AP {metrics['segm/AP']:.2f}" if "segm/AP" in metrics else ""
                print(f"{name}: AP {metrics['AP']:.2f}  AP50 {metrics['AP50']:.2f}  AP75 {metrics['AP75']:.2f}{masks}")
            return results
        return predict(args.model, args.input, args.output, args.score_thresh)
    except (DeployError, FileNotFoundError) as e:
        sys.exit(f"d2kd.deploy: error: {_first_line(e)}")


if __name__ == "__main__":
    main()
