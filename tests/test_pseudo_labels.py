"""Teacher pseudo-labelling (docs/methods.md §5.2): COCO json validity, threshold, category ids,
resuming, sharding/merging, reading back, and the command line."""
import json
import os
import sys

import pytest
from conftest import D2_MISSING, tool_env

pytest.importorskip("detectron2", reason=D2_MISSING)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

import d2kd  # noqa: F401,E402
from d2kd.data import pseudo_labels as pl  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTeacher:
    """Deterministic detector: per image 3 boxes with scores 0.9, 0.5 (= threshold), 0.3;
    classes 0, 2, 1. Counts forward calls and images; can crash after ``fail_after`` images."""

    def __init__(self, fail_after=None):
        self.calls, self.images, self.fail_after = 0, 0, fail_after

    def __call__(self, inputs):
        if self.fail_after is not None and self.images + len(inputs) > self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls += 1
        self.images += len(inputs)
        out = []
        for x in inputs:
            i = x["image_id"]
            inst = Instances((x["height"], x["width"]))
            inst.pred_boxes = Boxes(torch.tensor([[1.0 + i, 2.0, 11.0 + i, 22.0], [5.0, 5.0, 9.0, 8.0],
                                                  [0.0, 0.0, 3.0, 3.0]]))
            inst.scores = torch.tensor([0.9, 0.5, 0.3])
            inst.pred_classes = torch.tensor([0, 2, 1])
            out.append({"instances": inst})
        return out


def _dicts(n=7):
    return [{"file_name": f"shapes://shapes_tiny_val/{i:06d}.png", "image_id": i, "height": 128, "width": 128}
            for i in range(n)]


def _identity(d):
    return d


def _run(tmp_path, model, dicts, out, **kw):
    cats, to_ds = pl.category_info("shapes_train", 8)
    n = pl.annotate_images(model, dicts, _identity, pl.part_file(out, 0, 1), output_json=out,
                           to_dataset_id=to_ds, **kw)
    return n, cats


def test_json_is_valid_coco_and_thresholded(tmp_path):
    from pycocotools.coco import COCO

    out = str(tmp_path / "pl.json")
    dicts = _dicts(5)
    model = FakeTeacher()
    _run(tmp_path, model, dicts, out, batch_size=2, score_thresh=0.5)
    cats, _ = pl.category_info("shapes_train", 8)
    summary = pl.merge_parts(out, dicts, cats, {"score_thresh": 0.5})
    assert summary == {"images": 5, "images_with_boxes": 5, "boxes": 10}
    assert model.calls == 3  # batches of 2: 2 + 2 + 1
    coco = COCO(out)
    assert len(coco.getImgIds()) == 5 and len(coco.getAnnIds()) == 10
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[3]))
    assert sorted(a["score"] for a in anns) == [0.5, 0.9]  # 0.3 dropped, 0.5 kept (≥)
    top = max(anns, key=lambda a: a["score"])
    assert top["bbox"] == [4.0, 2.0, 10.0, 20.0]  # XYXY (4,2,14,22) → XYWH
    assert top["area"] == 200.0 and top["category_id"] == 0 and top["iscrowd"] == 0
    assert len({a["id"] for a in coco.dataset["annotations"]}) == 10
    assert [c["name"] for c in coco.dataset["categories"]] == list(MetadataCatalog.get("shapes_train").thing_classes)
    assert not os.path.exists(out + ".tmp.%d" % os.getpid())


def test_coco_category_ids_are_mapped(tmp_path):
    cats, to_ds = pl.category_info("coco_2017_train", 80)
    assert to_ds[:3] == [1, 2, 3] and to_ds[-1] == 90 and cats[0] == {"id": 1, "name": "person"}
    with pytest.raises(ValueError, match="80 classes"):
        pl.category_info("shapes_train", 80)
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 2.0, 4.0]]))
    inst.scores = torch.tensor([0.7])
    inst.pred_classes = torch.tensor([79])
    (a,) = pl.instances_to_annotations(inst, 0.5, to_ds)
    assert a["category_id"] == 90 and a["bbox"] == [0.0, 0.0, 2.0, 4.0]


def test_resume_after_crash_does_not_redo_images(tmp_path):
    out = str(tmp_path / "pl.json")
    dicts = _dicts(7)
    crashing = FakeTeacher(fail_after=4)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(tmp_path, crashing, dicts, out, batch_size=2)
    assert crashing.images == 4
    part = pl.part_file(out, 0, 1)
    # simulate a kill in the middle of writing a line
    with open(part, "a") as f:
        f.write('{"image": {"id": 4, "file_na')
    assert pl.merge_parts(out, dicts, []) is None and not os.path.exists(out)
    again = FakeTeacher()
    n, cats = _run(tmp_path, again, dicts, out, batch_size=2)
    assert n == 3 and again.images == 3  # only images 4, 5, 6
    assert pl.merge_parts(out, dicts, cats)["images"] == 7
    with open(out) as f:
        data = json.load(f)
    assert [im["id"] for im in data["images"]] == list(range(7))
    # the part file is intact jsonl (the truncated line was cut, not glued to the next one)
    with open(part) as f:
        assert [json.loads(line)["image"]["id"] for line in f] == [0, 1, 2, 3, 4, 5, 6]
    # a third run does nothing
    third = FakeTeacher()
    assert _run(tmp_path, third, dicts, out)[0] == 0 and third.calls == 0


def test_shards_merge_only_when_all_done(tmp_path):
    out = str(tmp_path / "pl.json")
    dicts = _dicts(5)
    cats, to_ds = pl.category_info("shapes_train", 8)
    shards = [pl.shard_dicts(dicts, 2, i) for i in range(2)]
    assert [d["image_id"] for d in shards[0]] == [0, 2, 4] and [d["image_id"] for d in shards[1]] == [1, 3]
    pl.annotate_images(FakeTeacher(), shards[1], _identity, pl.part_file(out, 1, 2), output_json=out, to_dataset_id=to_ds)
    assert pl.merge_parts(out, dicts, cats) is None
    pl.annotate_images(FakeTeacher(), shards[0], _identity, pl.part_file(out, 0, 2), output_json=out, to_dataset_id=to_ds)
    assert pl.merge_parts(out, dicts, cats, remove_parts=True)["images"] == 5
    assert not os.path.exists(pl.parts_dir(out))
    # a resumed run with another shard count skips what any part file holds
    out2 = str(tmp_path / "pl2.json")
    pl.annotate_images(FakeTeacher(), shards[0], _identity, pl.part_file(out2, 0, 2), output_json=out2, to_dataset_id=to_ds)
    m = FakeTeacher()
    pl.annotate_images(m, dicts, _identity, pl.part_file(out2, 0, 1), output_json=out2, to_dataset_id=to_ds)
    assert m.images == 2


def test_read_back_as_dataset(tmp_path):
    out = str(tmp_path / "pl.json")
    dicts = _dicts(4)
    _, cats = _run(tmp_path, FakeTeacher(), dicts, out, score_thresh=0.3)
    pl.merge_parts(out, dicts, cats)
    loaded = pl.load_pseudo_label_dicts(out, thing_classes=MetadataCatalog.get("shapes_train").thing_classes)
    assert len(loaded) == 4 and loaded[1]["file_name"] == "shapes://shapes_tiny_val/000001.png"
    assert sorted(a["category_id"] for a in loaded[1]["annotations"]) == [0, 1, 2]
    assert len(pl.load_pseudo_label_dicts(out, min_score=0.5)[1]["annotations"]) == 2
    with pytest.raises(ValueError, match="do not match"):
        pl.load_pseudo_label_dicts(out, thing_classes=["a"] * 8)
    with pytest.raises(FileNotFoundError, match="tools/pseudo_label.py"):
        pl.load_pseudo_label_dicts(str(tmp_path / "missing.json"))
    pl.register_pseudo_labeled_dataset("adltest_pseudo", out, metadata_from="shapes_train", min_score=0.5)
    try:
        got = DatasetCatalog.get("adltest_pseudo")
        assert sum(len(d["annotations"]) for d in got) == 8
        assert MetadataCatalog.get("adltest_pseudo").thing_classes == MetadataCatalog.get("shapes_train").thing_classes
        # the registered set goes through Detectron2's loader helpers
        from detectron2.data import get_detection_dataset_dicts

        assert len(get_detection_dataset_dicts(["shapes_tiny_train", "adltest_pseudo"])) == 32 + 4
    finally:
        DatasetCatalog.remove("adltest_pseudo")
        MetadataCatalog.remove("adltest_pseudo")


def test_empty_or_truncated_json_names_the_file_and_the_fix(tmp_path):
    """An empty, truncated or foreign json: one error naming the file and tools/pseudo_label.py,
    not json's bare "Expecting value: line 1 column 1 (char 0)"."""
    out = str(tmp_path / "pl.json")
    dicts = _dicts(3)
    _, cats = _run(tmp_path, FakeTeacher(), dicts, out)
    pl.merge_parts(out, dicts, cats)
    whole = open(out).read()
    cases = {
        "empty": ("", "is empty (0 bytes)"),
        "truncated": (whole[: len(whole) // 2], f"is not valid JSON (Expecting"),
        "foreign": ("[1, 2]", "is not a COCO-format pseudo-label json (no 'images', 'annotations', 'categories')"),
    }
    for name, (text, what) in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(text)
        with pytest.raises(ValueError) as e:
            pl.load_pseudo_label_dicts(str(bad))
        msg = str(e.value)
        assert msg.startswith(f"pseudo-label file {bad} {what}"), msg
        assert "tools/pseudo_label.py" in msg and f"--output {bad}" in msg, msg
    # through the semi-supervised pool a config builds (what train_net.py runs)
    from d2kd.data.mixed_loader import semi_supervised_dataset_dicts

    with pytest.raises(ValueError, match=f"pseudo-label file {tmp_path / 'truncated.json'} is not valid JSON"):
        semi_supervised_dataset_dicts(labeled="shapes_tiny_train", pseudo_label_files=[str(tmp_path / "truncated.json")])


def test_cli_annotates_again_over_an_unreadable_output(tmp_path, monkeypatch, capsys):
    """tools/pseudo_label.py said "exists: nothing to do" for a truncated --output, so re-running
    it (what the load error recommends) kept the broken file; it annotates again instead, and a
    readable output is still a no-op."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pseudo_label_tool", os.path.join(REPO, "tools/pseudo_label.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    teacher = FakeTeacher()
    teacher.num_classes = 8
    monkeypatch.setattr(pl, "build_annotator", lambda *a, **k: (teacher, _identity))
    out = tmp_path / "pl.json"
    out.write_text('{"images": [{"id": 0, "file_na')  # cut short
    args = ["--config-file", "configs/shapes/retinanet_student.py", "--weights", "unused.pth",
            "--source", "shapes_tiny_val", "--max-images", "3", "--output", str(out), "--device", "cpu"]
    assert tool.cli(args) == 0
    assert f"{out} exists but cannot be read (pseudo-label file {out} is not valid JSON" in capsys.readouterr().out
    assert teacher.images == 3 and len(pl.load_pseudo_label_dicts(str(out))) == 3
    assert tool.cli(args) == 0
    assert "exists: nothing to do" in capsys.readouterr().out and teacher.images == 3


def test_folder_source_with_relative_names(tmp_path):
    import cv2

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    cv2.imwrite(str(folder / "b.png"), np.zeros((20, 30, 3), np.uint8))
    cv2.imwrite(str(folder / "sub" / "a.jpg"), np.zeros((40, 10, 3), np.uint8))
    (folder / "notes.txt").write_text("x")
    dicts, root = pl.image_dicts_from_source(str(folder))
    assert root == str(folder)
    assert [(os.path.relpath(d["file_name"], folder), d["image_id"], d["height"], d["width"]) for d in dicts] == [
        ("b.png", 1, 20, 30), (os.path.join("sub", "a.jpg"), 2, 40, 10)]
    out = str(tmp_path / "pl.json")
    cats, to_ds = pl.category_info("shapes_train", 8)
    pl.annotate_images(FakeTeacher(), dicts, _identity, pl.part_file(out, 0, 1), output_json=out,
                       to_dataset_id=to_ds, image_root=root)
    pl.merge_parts(out, dicts, cats, {"image_root": root})
    with open(out) as f:
        assert json.load(f)["images"][1]["file_name"] == os.path.join("sub", "a.jpg")
    assert pl.load_pseudo_label_dicts(out)[1]["file_name"] == str(folder / "sub" / "a.jpg")
    with pytest.raises(FileNotFoundError, match="neither"):
        pl.image_dicts_from_source(str(tmp_path / "nope"))


def test_cli_shards_then_merge_with_a_real_teacher(tmp_path):
    """tools/pseudo_label.py with a random shapes RetinaNet whose class bias is 0 (scores ~0.5),
    on a 3-image folder, as 2 shards: the json appears after the second shard."""
    import subprocess

    import cv2

    from conftest import save_random_weights
    from d2kd.data.shapes import render_shapes_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        img = render_shapes_image("shapes_tiny_val", i)
        img = img[0] if isinstance(img, tuple) else img
        cv2.imwrite(str(folder / f"{i}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    model = save_random_weights("configs/shapes/retinanet_student.py", str(tmp_path / "t.pth"))
    sd = model.state_dict()
    sd["head.cls_score.bias"].zero_()
    torch.save({"model": sd}, tmp_path / "t.pth")
    out = tmp_path / "pl.json"
    base = [sys.executable, os.path.join(REPO, "tools/pseudo_label.py"), "--config-file",
            "configs/shapes/retinanet_student.py", "--weights", str(tmp_path / "t.pth"), "--source",
            str(folder), "--metadata-from", "shapes_train", "--output", str(out), "--score-thresh", "0.4",
            "--num-shards", "2"]
    env = tool_env(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    r0 = subprocess.run(base + ["--shard-id", "0"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert r0.returncode == 0, r0.stderr[-3000:]
    assert not out.exists() and "ETA" in r0.stdout + r0.stderr and "not finished" in r0.stdout + r0.stderr
    # the second shard in this process (saves a second interpreter start)
    import importlib.util

    spec = importlib.util.spec_from_file_location("pseudo_label_tool", os.path.join(REPO, "tools/pseudo_label.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert tool.cli(base[2:] + ["--shard-id", "1"]) == 0
        # the json exists: a re-run is a no-op
        assert tool.cli(base[2:] + ["--shard-id", "1"]) == 0
    finally:
        os.chdir(cwd)
    data = json.loads(out.read_text())
    assert [im["file_name"] for im in data["images"]] == ["0.png", "1.png", "2.png"]
    assert data["annotations"] and min(a["score"] for a in data["annotations"]) >= 0.4
    assert data["info"]["score_thresh"] == 0.4 and data["info"]["image_root"] == str(folder)
    assert not os.path.exists(str(out) + ".parts")
