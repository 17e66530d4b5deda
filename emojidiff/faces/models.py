"""Face model files: where they are looked for, which feature needs which, licences, checked downloads.

Nothing is ever downloaded at run time. Backends look for their files in, in order:

1. a per-model environment variable (e.g. ``EMOJIDIFF_ARCFACE_ONNX``) naming a file or folder;
2. the models folder: ``$EMOJIDIFF_MODELS_DIR``, else ``$XDG_CONFIG_HOME/emojidiff/models``
   (``~/.config/emojidiff/models``);
3. files shipped inside an installed Python package (mediapipe's tflite models, face_recognition_models' dlib
   files).

``emojidiff models check`` lists every model with its status; ``emojidiff models download NAME`` fetches one from
the Hugging Face Hub into the models folder and verifies its SHA-256 (a download without a checksum is refused).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, ModelMissingError

NONCOMMERCIAL = "non-commercial research use only"


def models_dir() -> Path:
    """The folder user-supplied face models live in (it need not exist)."""
    env = os.environ.get("EMOJIDIFF_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "emojidiff" / "models"


def _package_dir(pkg: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(pkg)  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


@dataclass(frozen=True)
class ModelSpec:
    name: str
    feature: str  # what needs it
    backends: str  # which backends use it
    licence: str
    #: candidate relative paths inside the models folder (files, or folders holding the files)
    relpaths: tuple[str, ...]
    env: str | None = None
    #: (package, relative path) of a copy shipped inside a Python package
    package_file: tuple[str, str] | None = None
    #: how to get it when missing
    how_to_get: str = ""
    #: Hugging Face Hub source and the SHA-256 of the file, where known
    hub_repo: str | None = None
    hub_filename: str | None = None
    sha256: str | None = None
    extra_files: tuple[str, ...] = field(default_factory=tuple)


CATALOGUE: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(
            name="mediapipe-face-detection",
            feature="face detection (BlazeFace short and full range)",
            backends="mediapipe*",
            licence="Apache-2.0",
            relpaths=(),
            package_file=("mediapipe", "modules/face_detection/face_detection_short_range.tflite"),
            how_to_get="ships inside the mediapipe==0.10.21 wheel (bash .ci/install-faces.sh)",
        ),
        ModelSpec(
            name="mediapipe-face-mesh",
            feature="478 landmarks: alignment, face mask, expression ratios (LMS), head pose",
            backends="mediapipe*",
            licence="Apache-2.0",
            relpaths=(),
            package_file=("mediapipe", "modules/face_landmark/face_landmark_with_attention.tflite"),
            how_to_get="ships inside the mediapipe==0.10.21 wheel (bash .ci/install-faces.sh)",
        ),
        ModelSpec(
            name="dlib-shape-predictor-5",
            feature="dlib face chip alignment for the dlib recogniser",
            backends="mediapipe, mediapipe-dlib",
            licence="public domain (dlib-models, Davis King)",
            relpaths=("dlib/shape_predictor_5_face_landmarks.dat", "shape_predictor_5_face_landmarks.dat"),
            env="EMOJIDIFF_DLIB_SHAPE_PREDICTOR",
            package_file=("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat"),
            how_to_get="pip install face_recognition_models==0.3.0 (bash .ci/install-faces.sh)",
        ),
        ModelSpec(
            name="dlib-face-recognition",
            feature="128-d identity embedding (default evaluation recogniser)",
            backends="mediapipe, mediapipe-dlib",
            licence="public domain (dlib-models, Davis King)",
            relpaths=("dlib/dlib_face_recognition_resnet_model_v1.dat", "dlib_face_recognition_resnet_model_v1.dat"),
            env="EMOJIDIFF_DLIB_RECOGNIZER",
            package_file=("face_recognition_models", "models/dlib_face_recognition_resnet_model_v1.dat"),
            how_to_get="pip install face_recognition_models==0.3.0 (bash .ci/install-faces.sh)",
        ),
        ModelSpec(
            name="face-landmarker-task",
            feature="52 blendshape scores: the paper's Exp metric",
            backends="all mediapipe backends (optional)",
            licence="Apache-2.0",
            relpaths=("face_landmarker.task",),
            env="EMOJIDIFF_FACE_LANDMARKER",
            how_to_get="user-supplied: MediaPipe's face_landmarker.task (float16 model bundle) from the MediaPipe "
            "model page, saved as <models dir>/face_landmarker.task",
        ),
        ModelSpec(
            name="insightface-buffalo_l",
            feature="512-d ArcFace identity embedding (w600k_r50.onnx), IP-Adapter-FaceID's recogniser",
            backends="mediapipe-insightface, mediapipe-buffalo_l, insightface-buffalo_l",
            licence=f"InsightFace models: {NONCOMMERCIAL}",
            relpaths=("buffalo_l/w600k_r50.onnx", "buffalo_l"),
            env="EMOJIDIFF_ARCFACE_ONNX",
            how_to_get="user-supplied: unzip InsightFace's buffalo_l.zip into <models dir>/buffalo_l",
        ),
        ModelSpec(
            name="insightface-antelopev2",
            feature="512-d ArcFace identity embedding (glintr100.onnx), the paper's evaluation recogniser",
            backends="mediapipe-insightface, mediapipe-antelopev2, insightface-antelopev2",
            licence=f"InsightFace models: {NONCOMMERCIAL}",
            relpaths=("antelopev2/glintr100.onnx", "antelopev2"),
            env="EMOJIDIFF_ARCFACE_ONNX",
            how_to_get="user-supplied: unzip InsightFace's antelopev2.zip into <models dir>/antelopev2",
        ),
        ModelSpec(
            name="insightface-buffalo_l-detector",
            feature="SCRFD face detection + 5 keypoints (det_10g.onnx)",
            backends="insightface-buffalo_l",
            licence=f"InsightFace models: {NONCOMMERCIAL}",
            relpaths=("buffalo_l/det_10g.onnx",),
            env="EMOJIDIFF_SCRFD_ONNX",
            how_to_get="user-supplied: unzip InsightFace's buffalo_l.zip into <models dir>/buffalo_l",
        ),
        ModelSpec(
            name="insightface-antelopev2-detector",
            feature="SCRFD face detection + 5 keypoints (scrfd_10g_bnkps.onnx)",
            backends="insightface-antelopev2",
            licence=f"InsightFace models: {NONCOMMERCIAL}",
            relpaths=("antelopev2/scrfd_10g_bnkps.onnx",),
            env="EMOJIDIFF_SCRFD_ONNX",
            how_to_get="user-supplied: unzip InsightFace's antelopev2.zip into <models dir>/antelopev2",
        ),
        ModelSpec(
            name="arcface-torch",
            feature="differentiable 512-d ArcFace (IResNet) for identity losses",
            backends="mediapipe-arcface",
            licence=f"arcface_torch checkpoints (MS1MV3/Glint360K/WebFace): {NONCOMMERCIAL}",
            relpaths=("arcface_torch",),
            env="EMOJIDIFF_ARCFACE_TORCH",
            how_to_get="user-supplied: an arcface_torch IResNet backbone (.safetensors preferred, or backbone.pth) "
            "in <models dir>/arcface_torch/",
        ),
    ]
}


def _resolve(spec: ModelSpec) -> tuple[Path | None, list[str]]:
    """(path found or None, places looked at, in order)."""
    looked: list[str] = []
    if spec.env:
        val = os.environ.get(spec.env)
        looked.append(f"${spec.env}" + (f"={val}" if val else " (unset)"))
        if val and Path(val).expanduser().exists():
            return Path(val).expanduser(), looked
    base = models_dir()
    for rel in spec.relpaths:
        p = base / rel
        looked.append(str(p))
        if p.exists():
            return p, looked
    if spec.package_file:
        pkg, rel = spec.package_file
        d = _package_dir(pkg)
        looked.append(f"package {pkg}" + ("" if d else " (not installed)"))
        if d is not None and (d / rel).exists():
            return d / rel, looked
    return None, looked


def locate(name: str) -> Path | None:
    """The file or folder of model ``name``, or None when it is missing."""
    return _resolve(CATALOGUE[name])[0]


def require(name: str, purpose: str | None = None) -> Path:
    """The path of model ``name``, or a one-line :class:`ModelMissingError` saying where it was looked for."""
    spec = CATALOGUE[name]
    path, looked = _resolve(spec)
    if path is None:
        raise ModelMissingError(
            f"model '{name}' needed for {purpose or spec.feature} is missing (looked in: {'; '.join(looked)}); "
            f"{spec.how_to_get}; run 'emojidiff models check' for all models"
        )
    return path


def check() -> list[dict]:
    """One row per catalogued model: name, status, path, places looked at, feature, backends, licence."""
    rows = []
    for spec in CATALOGUE.values():
        path, looked = _resolve(spec)
        rows.append(
            {
                "name": spec.name,
                "present": path is not None,
                "path": str(path) if path else None,
                "looked_in": looked,
                "feature": spec.feature,
                "backends": spec.backends,
                "licence": spec.licence,
                "how_to_get": spec.how_to_get,
            }
        )
    return rows


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(
    name: str,
    repo: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    revision: str | None = None,
    dest: Path | None = None,
) -> Path:
    """Fetch model ``name`` from the Hugging Face Hub into the models folder and verify its SHA-256.

    ``repo``/``filename``/``sha256`` override the catalogue (where it has no Hub source or no checksum, they are
    required). The file is written under its catalogue path only after the checksum matched.
    """
    if name not in CATALOGUE:
        raise InputError(f"unknown model '{name}': known models are {', '.join(CATALOGUE)}")
    spec = CATALOGUE[name]
    repo = repo or spec.hub_repo
    filename = filename or spec.hub_filename
    sha256 = (sha256 or spec.sha256 or "").lower().strip() or None
    if not spec.relpaths:
        raise InputError(f"model '{name}' is not downloaded separately: it {spec.how_to_get}")
    if not repo or not filename:
        raise InputError(
            f"model '{name}' has no known Hugging Face Hub source: pass --repo and --filename of a copy you trust "
            f"(with --sha256), or {spec.how_to_get}"
        )
    if not sha256:
        raise InputError(
            f"no SHA-256 is known for model '{name}' from {repo}/{filename}: pass --sha256 with the checksum from a "
            "source you trust (downloads without a checksum are refused)"
        )
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InputError(f"--sha256 '{sha256}' is not a 64-character hexadecimal SHA-256")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a core dependency
        raise ModelMissingError(
            "downloading models needs the huggingface_hub package (pip install huggingface_hub)"
        ) from None
    target_root = dest or models_dir()
    rel = spec.relpaths[0]
    target = target_root / rel if Path(rel).suffix else target_root / rel / Path(filename).name
    try:
        cached = hf_hub_download(repo_id=repo, filename=filename, revision=revision)
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated, ...: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelMissingError(
            f"could not download model '{name}' from the Hugging Face Hub ({repo}/{filename}): "
            f"{type(e).__name__}: {first[:200]}"
        ) from None
    got = sha256_file(cached)
    if got != sha256:
        raise ModelMissingError(
            f"model '{name}' downloaded from {repo}/{filename} has SHA-256 {got}, expected {sha256}: not installed"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(cached, tmp)
    os.replace(tmp, target)
    return target
