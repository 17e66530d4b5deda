"""``emojidiff models …`` and ``emojidiff faces …`` commands."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from ..cli import main, user_errors
from ..errors import EmojiDiffError, NoFaceError
from ..io import load_image
from . import models as M

# --- models ---------------------------------------------------------------------------------------------------


@click.group("models")
def models_group() -> None:
    """Face model files: where they are looked for, status, licences, checked downloads."""


@models_group.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@user_errors
def models_check(as_json: bool) -> None:
    """List every face model, where it is looked for, present or missing, what needs it, and its licence."""
    rows = M.check()
    if as_json:
        click.echo(json.dumps({"models_dir": str(M.models_dir()), "models": rows}, indent=2))
        return
    click.echo(f"models folder: {M.models_dir()}  (set EMOJIDIFF_MODELS_DIR to change it)")
    for r in rows:
        status = f"present  {r['path']}" if r["present"] else "MISSING"
        click.echo(f"\n{r['name']}: {status}")
        click.echo(f"  needed for: {r['feature']}  [backends: {r['backends']}]")
        click.echo(f"  licence:    {r['licence']}")
        if not r["present"]:
            click.echo(f"  looked in:  {'; '.join(r['looked_in'])}")
            click.echo(f"  to get it:  {r['how_to_get']}")


@models_group.command("download")
@click.argument("name")
@click.option("--repo", default=None, help="Hugging Face Hub repository holding the file (overrides the catalogue).")
@click.option("--filename", default=None, help="File path inside the repository.")
@click.option("--sha256", default=None, help="Expected SHA-256 of the file (required where the catalogue has none).")
@click.option("--revision", default=None, help="Branch, tag or commit of the repository.")
@user_errors
def models_download(name: str, repo: str | None, filename: str | None, sha256: str | None, revision: str | None):
    """Download model NAME from the Hugging Face Hub into the models folder, verifying its SHA-256."""
    spec = M.CATALOGUE.get(name)
    if spec is not None:
        click.echo(f"{name}: licence {spec.licence}", err=True)
    path = M.download(name, repo=repo, filename=filename, sha256=sha256, revision=revision)
    click.echo(f"installed {name} at {path} (SHA-256 verified)")


main.add_command(models_group)

# --- faces ----------------------------------------------------------------------------------------------------


@click.group("faces")
def faces_group() -> None:
    """Inspect what the face backends see in an image."""


def _recognizers_for_inspect(analyzer):
    """The analyzer's own recogniser plus every other recogniser whose files are present."""
    from .recognizers import DlibRecognizer, OnnxArcFaceRecognizer, TorchArcFaceRecognizer

    recs, notes = [], []
    own = getattr(analyzer, "recognizer", None)
    if own is not None:
        recs.append(own)
    names = {r.name for r in recs}
    candidates = [("dlib", lambda: DlibRecognizer())]
    for pack in ("buffalo_l", "antelopev2"):
        p = M.locate(f"insightface-{pack}")
        if p is not None:
            candidates.append((pack, lambda p=p, pack=pack: OnnxArcFaceRecognizer(p, name=f"insightface-{pack}")))
    p = M.locate("arcface-torch")
    if p is not None:
        candidates.append(("arcface-torch", lambda p=p: TorchArcFaceRecognizer(p)))
    for label, make in candidates:
        try:
            rec = make()
        except EmojiDiffError as e:
            notes.append(f"{label}: {e}")
            continue
        if rec.name not in names:
            recs.append(rec)
            names.add(rec.name)
    return recs, notes


def draw_overlay(image: Image.Image, faces, analyzer, chosen: int = 0) -> Image.Image:
    """Boxes (chosen face in green), landmarks, and the chosen face's expression mask tinted in."""
    out = image.convert("RGB").copy()
    if faces:
        mask = analyzer.face_mask(image, faces[chosen])
        arr = np.asarray(out, dtype=np.float32)
        tint = np.array([80, 160, 255], dtype=np.float32)
        arr = arr * (1 - 0.35 * mask[..., None]) + tint * 0.35 * mask[..., None]
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(out)
    lw = max(1, round(max(image.size) / 400))
    for i, f in enumerate(faces):
        colour = (40, 220, 60) if i == chosen else (255, 170, 0)
        d.rectangle(f.box, outline=colour, width=lw + 1)
        d.text((f.box[0] + 2, f.box[1] + 2), f"#{i} {f.score:.2f}", fill=colour)
        pts = f.landmarks if f.landmarks is not None else f.extra.get("points5")
        if pts is not None:
            r = max(1.0, lw * 0.8)
            for x, y in np.asarray(pts)[:, :2]:
                d.ellipse((x - r, y - r, x + r, y + r), fill=(255, 40, 40))
    return out


@faces_group.command("inspect")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--backend", "backend", default="mediapipe", show_default=True, help="Face backend name.")
@click.option("--face-index", type=int, default=None, help="Face to describe in detail (default: the best, 0).")
@click.option("--out", "out_png", type=click.Path(path_type=Path), default=None, help="Write an overlay PNG.")
@click.option("--json", "out_json", type=click.Path(path_type=Path), default=None, help="Write the findings as JSON.")
@click.option("--crop", "out_crop", type=click.Path(path_type=Path), default=None, help="Write the expression crop.")
@user_errors
def faces_inspect(image: Path, backend: str, face_index, out_png, out_json, out_crop) -> None:
    """Print the faces found in IMAGE: box, score, landmarks, identity embeddings, expression ratios."""
    from .base import select_face
    from .blendshapes import BlendshapeModel, blendshapes_available
    from .registry import get_face_analyzer

    notes: list[str] = []
    img = load_image(image, "image", notes=notes)
    analyzer = get_face_analyzer(backend)
    faces = analyzer.detect(img)
    if not faces:
        raise NoFaceError(f"no face found in image '{image}' (faces smaller than ~20 px or turned far away are missed)")
    chosen = select_face(faces, f"image '{image}'", face_index)
    ci = faces.index(chosen)
    recs, rec_notes = _recognizers_for_inspect(analyzer)
    bs_model, bs_note = None, None
    if blendshapes_available():
        try:
            bs_model = BlendshapeModel()
        except EmojiDiffError as e:
            bs_note = str(e)
    else:
        bs_note = "blendshapes: face_landmarker.task not found (see 'emojidiff models check')"
    report = {
        "image": str(image),
        "size": list(img.size),
        "backend": analyzer.name,
        "load_notes": notes,
        "face_count": len(faces),
        "chosen_face": ci,
        "faces": [],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, f in enumerate(faces):
            entry = {
                "index": i,
                "box": [round(float(v), 1) for v in f.box],
                "score": round(float(f.score), 4),
                "size_px": round(f.size, 1),
                "landmarks": 0 if f.landmarks is None else len(f.landmarks),
                "pose_deg": {k: round(float(v), 1) for k, v in f.extra.get("pose", {}).items()},
                "warnings": list(f.extra.get("warnings", [])),
                "identity": [],
            }
            for rec in recs:
                try:
                    e = rec.embed(img, f)
                    entry["identity"].append({"recognizer": rec.name, "dim": int(e.shape[0]),
                                              "norm": round(float(np.linalg.norm(e)), 4)})  # fmt: skip
                except EmojiDiffError as err:
                    entry["identity"].append({"recognizer": rec.name, "error": str(err)})
            if f.landmarks is not None and len(f.landmarks) >= 468:
                entry["expression"] = {k: round(float(v), 4) for k, v in analyzer.measure_expression(img, f).items()}
            if bs_model is not None:
                try:
                    entry["blendshapes"] = {k: round(v, 4) for k, v in bs_model.score(img, f).items()}
                except EmojiDiffError as err:
                    entry["blendshapes_error"] = str(err)
            report["faces"].append(entry)
    report["notes"] = rec_notes + ([bs_note] if bs_note else [])

    click.echo(f"{image}: {img.size[0]}x{img.size[1]}, {len(faces)} face(s), backend {analyzer.name}")
    for n in notes:
        click.echo(f"  note: {n}")
    for e in report["faces"]:
        mark = "*" if e["index"] == ci else " "
        click.echo(
            f"{mark}face {e['index']}: box {e['box']} score {e['score']:.3f} size {e['size_px']:.0f}px "
            f"landmarks {e['landmarks']} pose {e['pose_deg']}"
        )
        for w in e["warnings"]:
            click.echo(f"    warning: {w}")
        for idn in e["identity"]:
            if "error" in idn:
                click.echo(f"    identity {idn['recognizer']}: {idn['error']}")
            else:
                click.echo(f"    identity {idn['recognizer']}: dim {idn['dim']} norm {idn['norm']:.3f}")
        if "expression" in e:
            click.echo("    expression: " + ", ".join(f"{k} {v:.3f}" for k, v in e["expression"].items()))
        if "blendshapes" in e:
            top = sorted(e["blendshapes"].items(), key=lambda kv: -kv[1])[:6]
            click.echo("    blendshapes (top): " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    for n in report["notes"]:
        click.echo(f"  note: {n}")
    if out_png:
        draw_overlay(img, faces, analyzer, ci).save(out_png)
        click.echo(f"overlay written to {out_png}")
    if out_crop:
        analyzer.expression_crop(img, chosen).save(out_crop)
        click.echo(f"expression crop written to {out_crop}")
    if out_json:
        Path(out_json).write_text(json.dumps(report, indent=2))
        click.echo(f"JSON written to {out_json}")


main.add_command(faces_group)
