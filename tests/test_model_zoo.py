"""The checkpoints d2kd ships (d2kd/model_zoo/): what their cards say, that Detectron2's
checkpointer loads them into their models, the digest that identifies their weights, and that
the command on a card makes the same weights again (tools/pack_checkpoint.py --check)."""
import os

import pytest
import torch
from conftest import D2_MISSING, REPO, TINY, run_train_net, run_train_net_here

pytest.importorskip("detectron2", reason=D2_MISSING)


def test_a_shipped_checkpoint_is_what_its_card_says_and_loads_into_its_model():
    """Each checkpoint in d2kd/model_zoo/shapes/: float16 tensors whose digest is the card's,
    and Detectron2's checkpointer loads it into the model of the card's config with nothing
    missing or unexpected, cast to float32."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    from d2kd.model_zoo import SHAPES_DIR, checkpoint_card, shapes_checkpoint, tensor_digest

    names = sorted(os.path.splitext(f)[0] for f in os.listdir(SHAPES_DIR) if f.endswith(".pth"))
    assert {"retinanet_teacher_12000", "retinanet_student_12000", "faster_rcnn_student_12000",
            "fcos_teacher_6000", "fcos_student_12000", "faster_rcnn_teacher_8000"} <= set(names)
    for name in names:
        path = shapes_checkpoint(name)
        card = checkpoint_card(path)
        state = torch.load(path, map_location="cpu", weights_only=True)["model"]
        assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}, name
        assert tensor_digest(state) == card["digest_float16"], name
        config = card["command"].split("--config-file ")[1].split()[0]
        model = instantiate(LazyConfig.load(os.path.join(REPO, config)).model)
        incompatible = DetectionCheckpointer(model)._load_model({"model": dict(state)})
        assert not incompatible.missing_keys and not incompatible.unexpected_keys, name
        loaded = model.state_dict()
        for k, v in state.items():
            assert loaded[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype)
            assert torch.equal(loaded[k], v.to(loaded[k].dtype)), (name, k)


def test_tensor_digest_sees_every_value_and_not_the_file(tmp_path):
    from d2kd.model_zoo import half_state_dict, tensor_digest

    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(7)}
    torch.save(state, tmp_path / "a.pth")
    again = torch.load(tmp_path / "a.pth")
    assert tensor_digest(again) == tensor_digest(dict(reversed(list(state.items()))))
    changed = dict(state, w=state["w"].clone())
    changed["w"][1, 2] = 5.0000005  # one value, one ulp
    assert tensor_digest(changed) != tensor_digest(state)
    assert tensor_digest({**state, "n": torch.tensor(8)}) != tensor_digest(state)
    half = half_state_dict(state)
    assert half["w"].dtype == torch.float16 and half["n"].dtype == torch.int64
    assert tensor_digest(half) != tensor_digest(state)




def test_the_same_training_command_makes_the_same_weights_and_pack_check_says_so(tmp_path, monkeypatch):
    """What "the command on the card makes it again, bit for bit" rests on: the same training
    command run twice (seed 0, one thread) ends with equal digests, and ``pack_checkpoint
    --check`` tells it from a run with another seed. The two are separate commands, as on the
    card: a second training inside one Python process did not repeat the first (seen here)."""
    import importlib.util

    tools = os.path.join(REPO, "tools")
    monkeypatch.syspath_prepend(tools)
    spec = importlib.util.spec_from_file_location("pack_checkpoint", os.path.join(tools, "pack_checkpoint.py"))
    pack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack)

    def train(name, seed, command):
        out = str(tmp_path / name)
        args = ["--config-file", "configs/shapes/retinanet_student.py", *TINY, "train.max_iter=3",
                f"train.seed={seed}", f"train.output_dir={out}"]
        assert command(args) == 0
        return out

    first, again = (train(n, 0, lambda args: run_train_net(args).returncode) for n in ("a", "b"))
    other = train("c", 1, lambda args: run_train_net_here(args, monkeypatch))
    zoo = str(tmp_path / "zoo")
    assert pack.main([first, "--name", "tiny_student_3", "--command", "train_net.py ...", "--output-dir", zoo]) == 0
    card, half = pack.card_of(first, "tiny_student_3", "")
    assert card["iters"] == 3 and card["train_dtype"] == "float32"
    shipped = torch.load(os.path.join(zoo, "tiny_student_3.pth"), weights_only=True)["model"]
    assert set(shipped) == set(half) and all(torch.equal(shipped[k], half[k]) for k in half)
    assert pack.main([again, "--name", "tiny_student_3", "--output-dir", zoo, "--check"]) == 0
    assert pack.main([other, "--name", "tiny_student_3", "--output-dir", zoo, "--check"]) == 1
