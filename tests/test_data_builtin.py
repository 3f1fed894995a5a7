import pytest
from conftest import D2_MISSING

pytest.importorskip("detectron2", reason=D2_MISSING)

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import d2kd.data  # noqa: E402,F401
from d2kd.data.builtin import (  # noqa: E402
    DATASETS_ROOT,
    SHAPES_SPLITS,
    DatasetNotRegisteredError,
    check_dataset_available,
    load_coco_unlabeled,
)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances, register_pascal_voc  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def temp_names():
    names = []
    yield names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)


def test_default_registrations():
    registered = set(DatasetCatalog.list())
    expected = {"shapes_train": 2000, "shapes_val": 300, "shapes_train_500": 500,
                "shapes_unlabeled": 2000, "shapes_tiny_train": 32, "shapes_tiny_val": 16,
                "shapes_train_masks": 2000, "shapes_val_masks": 300, "shapes_tiny_train_masks": 32,
                "shapes_tiny_val_masks": 16}
    assert set(SHAPES_SPLITS) == set(expected)
    for name, n in expected.items():
        assert name in registered
        meta = MetadataCatalog.get(name)
        assert meta.shapes_num_images == n and meta.shapes_image_size == 128
        assert meta.evaluator_type == "coco" and len(meta.thing_classes) == 8
        assert meta.shapes_masks == name.endswith("_masks")
    # detectron2's own names are there, not replaced
    for name in ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test", "coco_2017_train",
                 "coco_2017_val"):
        assert name in registered
    assert MetadataCatalog.get("voc_2007_test").evaluator_type == "pascal_voc"
    # d2kd's additions, rooted where detectron2 roots its own
    assert DATASETS_ROOT == os.path.dirname(MetadataCatalog.get("voc_2007_trainval").dirname)
    m = MetadataCatalog.get("voc_2007_2012_trainval")
    assert m.dirnames == [os.path.join(DATASETS_ROOT, "VOC2007"),
                          os.path.join(DATASETS_ROOT, "VOC2012")]
    assert len(m.thing_classes) == 20 and m.split == "trainval"
    u = MetadataCatalog.get("coco_2017_unlabeled")
    assert u.image_root == os.path.join(DATASETS_ROOT, "coco", "unlabeled2017")
    assert u.json_file == os.path.join(DATASETS_ROOT, "coco", "annotations",
                                       "image_info_unlabeled2017.json")
    assert len(u.thing_classes) == 80
    assert u.thing_classes == MetadataCatalog.get("coco_2017_train").thing_classes


def test_shapes_datasets_are_always_available():
    for name in SHAPES_SPLITS:
        assert check_dataset_available(name) is None


def test_missing_voc_dir_gives_one_line_naming_the_path(tmp_path, temp_names):
    voc = tmp_path / "VOC2007"
    temp_names.append("_test_voc")
    register_pascal_voc("_test_voc", str(voc), "trainval", 2007)
    with pytest.raises(FileNotFoundError) as e:
        check_dataset_available("_test_voc")
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{voc} does not exist" in msg
    assert "DETECTRON2_DATASETS" in msg and "datasets/README.md" in msg
    # a partial tree: the first missing piece is named
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/trainval\.txt does not exist"):
        check_dataset_available("_test_voc")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n")
    assert check_dataset_available("_test_voc") is None


def test_builtin_voc_names_use_registered_paths():
    name = "voc_2007_trainval"
    dirname = MetadataCatalog.get(name).dirname
    if os.path.isdir(os.path.join(dirname, "ImageSets")):
        pytest.skip(f"VOC2007 is present at {dirname}")
    with pytest.raises(FileNotFoundError, match=f"{dirname}"):
        check_dataset_available(name)
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        check_dataset_available("voc_2007_2012_trainval")


def test_coco_style_dataset_missing_json(tmp_path, temp_names):
    (tmp_path / "imgs").mkdir()
    temp_names.append("_test_coco")
    register_coco_instances("_test_coco", {}, str(tmp_path / "ann.json"), str(tmp_path / "imgs"))
    with pytest.raises(FileNotFoundError, match=r"ann\.json does not exist"):
        check_dataset_available("_test_coco")


def test_missing_data_in_a_fresh_process_with_empty_detectron2_datasets(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("from d2kd.data.builtin import check_dataset_available as c\n"
            "for n in ('voc_2007_test', 'coco_2017_unlabeled'):\n"
            "    try:\n        c(n)\n    except FileNotFoundError as e:\n        print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    assert f"{tmp_path / 'VOC2007'} does not exist" in lines[0]
    assert f"{tmp_path / 'coco' / 'unlabeled2017'} does not exist" in lines[1]


def test_unknown_name_lists_available_names():
    with pytest.raises(KeyError) as e:
        check_dataset_available("shapes_trian")
    assert isinstance(e.value, DatasetNotRegisteredError)
    msg = str(e.value)
    assert "'shapes_trian' is not registered" in msg and "shapes_train" in msg
    assert "\n" not in msg
    with pytest.raises(DatasetNotRegisteredError) as e:
        check_dataset_available("zzz_nothing_like_it")
    msg = str(e.value)
    assert "shapes_val" in msg and "voc_2007_test" in msg


def test_coco_unlabeled_loader_reads_an_image_list(tmp_path):
    info = {"images": [{"id": 7, "file_name": "000000000007.jpg", "height": 480, "width": 640},
                       {"id": 9, "file_name": "000000000009.jpg", "height": 10, "width": 20}]}
    (tmp_path / "info.json").write_text(json.dumps(info))
    dicts = load_coco_unlabeled(str(tmp_path / "info.json"), "/data/unlabeled2017")
    assert dicts == [
        {"file_name": "/data/unlabeled2017/000000000007.jpg", "image_id": 7, "height": 480,
         "width": 640},
        {"file_name": "/data/unlabeled2017/000000000009.jpg", "image_id": 9, "height": 10,
         "width": 20},
    ]
