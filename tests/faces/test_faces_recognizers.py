"""Recognisers that cannot be present here (InsightFace ONNX, arcface_torch weights): the missing-model boundary,
and their loading code on small stand-in models of the same interface built in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emojidiff.errors import ModelMissingError
from emojidiff.faces import geometry as g


def _standin_onnx(path, normalise_inside: bool = False, dim: int = 512, seed: int = 0):
    """A (N, 3, 112, 112) -> (N, dim) ONNX model shaped like InsightFace's recognisers."""
    onnx = pytest.importorskip("onnx", reason="onnx not installed: the faces extra is missing")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w_conv = rng.normal(size=(8, 3, 8, 8)).astype(np.float32) * 0.05
    w_fc = rng.normal(size=(8 * 14 * 14, dim)).astype(np.float32) * 0.05
    inits = [numpy_helper.from_array(w_conv, "w_conv"), numpy_helper.from_array(w_fc, "w_fc")]
    nodes = []
    src = "input.1"
    if normalise_inside:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]  # fmt: skip
        nodes += [helper.make_node("Sub", [src, "mean"], ["sub"], name="Sub_0"),
                  helper.make_node("Mul", ["sub", "scale"], ["mul"], name="Mul_1")]  # fmt: skip
        src = "mul"
    nodes += [
        helper.make_node("Conv", [src, "w_conv"], ["c"], strides=[8, 8], kernel_shape=[8, 8]),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w_fc"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes, "standin",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return w_conv, w_fc


def test_insightface_missing_model_message(face_models_dir):
    pytest.importorskip("mediapipe", reason="mediapipe not installed: the faces extra is missing")
    from emojidiff.faces import backends

    for make, needle in [
        (backends.make_mediapipe_insightface, "EMOJIDIFF_ARCFACE_ONNX"),
        (backends.make_mediapipe_buffalo_l, "buffalo_l"),
        (backends.make_mediapipe_antelopev2, "antelopev2"),
    ]:
        with pytest.raises(ModelMissingError) as exc:
            make()
        msg = str(exc.value)
        assert "\n" not in msg and needle in msg and str(face_models_dir) in msg


@pytest.mark.parametrize("inside", [False, True])
def test_onnx_recognizer_with_standin(face_models_dir, analyzer, astronaut, ast_face, inside):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the faces extra is missing")
    from emojidiff.faces import backends
    from emojidiff.faces.recognizers import OnnxArcFaceRecognizer

    _standin_onnx(face_models_dir / "buffalo_l" / "w600k_r50.onnx", normalise_inside=inside)
    fa = backends.make_mediapipe_insightface()
    rec = fa.recognizer
    assert isinstance(rec, OnnxArcFaceRecognizer)
    assert fa.identity_dim == 512 and fa.recognizer_name == "insightface-buffalo_l-w600k_r50"
    assert (rec.input_mean, rec.input_std) == ((0.0, 1.0) if inside else (127.5, 127.5))
    e = fa.identity_embedding(astronaut, ast_face)
    assert e.shape == (512,) and abs(np.linalg.norm(e) - 1) < 1e-5
    # same numbers as running the model by hand on the ArcFace-aligned crop
    crop = np.asarray(g.align_arcface(astronaut, g.five_points(ast_face.landmarks)), dtype=np.float32)
    x = crop if inside else (crop - 127.5) / 127.5
    sess = ort.InferenceSession(str(rec.path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input.1": x.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
    assert np.allclose(e, ref / np.linalg.norm(ref), atol=1e-5)


def test_onnx_recognizer_from_env_and_folder_scan(face_models_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed: the faces extra is missing")
    from emojidiff.faces.recognizers import OnnxArcFaceRecognizer, find_onnx_recognizer

    odd = tmp_path / "mypack"
    _standin_onnx(odd / "some_recogniser.onnx", dim=256)
    assert find_onnx_recognizer(odd).name == "some_recogniser.onnx"
    rec = OnnxArcFaceRecognizer(odd)
    assert rec.dim == 256
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelMissingError, match="could not be loaded"):
        OnnxArcFaceRecognizer(tmp_path / "junk.onnx")


def _small_iresnet():
    from emojidiff.faces.iresnet import IResNet

    torch.manual_seed(0)
    net = IResNet((1, 1, 1, 1)).eval()
    with torch.no_grad():  # non-trivial BN statistics so that loading them matters
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_iresnet_layout_matches_arcface_torch():
    from emojidiff.faces.iresnet import DEPTHS, IResNet, infer_layers

    keys = set(IResNet(DEPTHS[18]).state_dict())
    expected = {"conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
                "layer1.0.bn2.bias", "layer1.0.prelu.weight", "layer1.0.conv2.weight", "layer1.0.bn3.running_mean",
                "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight", "layer4.1.conv2.weight",
                "bn2.weight", "fc.weight", "fc.bias", "features.weight", "features.running_mean"}  # fmt: skip
    assert expected <= keys
    assert infer_layers(IResNet(DEPTHS[50]).state_dict()) == DEPTHS[50]


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped"])
def test_torch_arcface_loads_checkpoint(face_models_dir, analyzer, astronaut, ast_face, fmt, monkeypatch):
    from emojidiff.faces import backends
    from emojidiff.faces.recognizers import TorchArcFaceRecognizer

    net = _small_iresnet()
    folder = face_models_dir / "arcface_torch"
    folder.mkdir()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(folder / "backbone.safetensors"))
    elif fmt == "pth":
        torch.save(net.state_dict(), folder / "backbone.pth")
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, folder / "backbone.pth")
    fa = backends.make_mediapipe_arcface()
    rec = fa.recognizer
    assert isinstance(rec, TorchArcFaceRecognizer)
    assert fa.identity_dim == 512 and rec.name == "arcface-torch-r10" and rec.net.layers_cfg == (1, 1, 1, 1)
    e = fa.identity_embedding(astronaut, ast_face)
    crop = np.asarray(g.align_arcface(astronaut, g.five_points(ast_face.landmarks)), dtype=np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(crop / 127.5 - 1).permute(2, 0, 1)[None])[0].numpy()
    assert np.allclose(e, ref / np.linalg.norm(ref), atol=1e-4)


def test_torch_arcface_missing_model_message(face_models_dir):
    pytest.importorskip("mediapipe", reason="mediapipe not installed: the faces extra is missing")
    from emojidiff.faces import backends

    with pytest.raises(ModelMissingError, match="arcface-torch.*missing"):
        backends.make_mediapipe_arcface()


def test_torch_arcface_refuses_unsafe_checkpoints(tmp_path):
    from emojidiff.faces.iresnet import load_iresnet

    evil = tmp_path / "evil.pth"
    torch.save({"weights": torch.zeros(2), "hook": _EvilPayload()}, evil)  # an arbitrary object in the pickle
    with pytest.raises(ModelMissingError, match="could not be loaded safely"):
        load_iresnet(evil)
    assert not _EvilPayload.ran
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import save_file

    save_file({"layer1.0.conv1.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(ModelMissingError, match="no 'layer2"):
        load_iresnet(wrong)


class _EvilPayload:
    ran = False

    def __reduce__(self):
        return (_EvilPayload._run, ())

    @staticmethod
    def _run():
        _EvilPayload.ran = True
        return "ran"


def test_differentiable_alignment_and_embedding(astronaut, ast_face):
    from emojidiff.faces.recognizers import TorchArcFaceRecognizer, warp_to_arcface_tensor

    net = _small_iresnet()
    rec = TorchArcFaceRecognizer.__new__(TorchArcFaceRecognizer)
    rec.net, rec.dim, rec.name, rec._torch, rec.device = net, 512, "t", torch, "cpu"
    img = torch.from_numpy(np.asarray(astronaut, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    img.requires_grad_(True)
    pts = g.five_points(ast_face.landmarks)[None]
    aligned = warp_to_arcface_tensor(img, pts)
    ref = np.asarray(g.align_arcface(astronaut, pts[0]), dtype=np.float32) / 127.5 - 1
    diff = np.abs(aligned[0].detach().permute(1, 2, 0).numpy() - ref)
    assert aligned.shape == (1, 3, 112, 112) and diff.mean() < 0.03  # bilinear (torch) vs bicubic (PIL)
    emb = rec.embed_tensor(aligned)
    (1 - emb[0] @ emb[0].detach().roll(1)).backward()
    assert img.grad is not None and float(img.grad.abs().sum()) > 0
