#!/usr/bin/env bash
# Install the real-photo face stack (the `faces` extra plus the steps an extra cannot express) into the
# active Python environment. Run from anywhere; uses the repository's constraints.txt.
#
#   . .venv/bin/activate && bash .ci/install-faces.sh
#
# Why each step is shaped this way (see README, "Real photos"):
#  * constraints.txt pins torch (no surprise CUDA torch), protobuf<5 (mediapipe 0.10.21 breaks on >=5),
#    onnx<1.18 (needs protobuf>=5 otherwise) and opencv-python-headless<5 (5.x has no Haar cascades).
#  * mediapipe==0.10.21 is the last release whose wheel carries the face detection / FaceMesh tflite models.
#    Its metadata asks for numpy<2, jax, jaxlib, opencv-contrib-python, sounddevice, sentencepiece, none of
#    which the `mp.solutions` face models need, so it is installed with --no-deps after its real runtime deps.
#  * dlib comes from the prebuilt `dlib-bin` wheel (the `dlib` distribution is a C++ sdist); its model files
#    come from face_recognition_models 0.3.0 (an sdist, ~126 MB of data; the 0.1.3 wheel lacks the 5-point
#    model). We call dlib directly, so neither face_recognition nor pkg_resources is needed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
C="$here/constraints.txt"
python -m pip install -c "$C" \
    "numpy>=1.24" "opencv-python-headless>=4.8,<5" "protobuf>=4.25,<5" "absl-py" "attrs>=19.1" "flatbuffers>=2.0" \
    "matplotlib" "onnxruntime>=1.16" "onnx>=1.14,<1.18" "dlib-bin>=19.24" "face_recognition_models==0.3.0" \
    "scikit-image>=0.21"
python -m pip install -c "$C" --no-deps "mediapipe==0.10.21"
python - <<'PY'
import importlib.util, os
import mediapipe as mp, dlib, cv2, onnxruntime  # noqa: F401
mp.solutions.face_mesh.FaceMesh  # noqa: B018  (the legacy solutions API must be there)
spec = importlib.util.find_spec("face_recognition_models")
models = os.path.join(os.path.dirname(spec.origin), "models")
need = ["shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"]
missing = [n for n in need if not os.path.exists(os.path.join(models, n))]
assert not missing, f"face_recognition_models lacks {missing}"
assert hasattr(cv2, "CascadeClassifier"), "opencv without Haar cascades (need opencv-python-headless<5)"
print("face stack OK: mediapipe", mp.__version__, "dlib", dlib.__version__, "opencv", cv2.__version__)
PY
