"""MONAI Label serving of an adapted bundle, end to end, through ``scripts/monailabel_serve.sh``.

The end-to-end tests need the MONAI Label environment (its own venv, ~8 GB) and skip without it;
run them with ``bash scripts/test_monailabel.sh`` (creates the env if needed, then runs this file).
The argument checks of the serve script and the bundle linking run everywhere (no env needed).

What is checked end to end, on a tiny adapted ``bn_reestimation_segmentation`` (source model
trained for one short epoch on the tiny demo pair, then BN re-estimation with adapt.json):

- ``/info/`` lists the bundle as a 2D segmentation model with the labels of its metadata.json;
- ``/infer/<bundle>?image=<id>`` on a demo target NIfTI image returns the segmentation that the
  bundle's own ``configs/inference.json`` writes in the toolkit environment, with the image's
  affine; the same for a non-square PNG (the real data sets are PNG);
- MONAI Label's Slicer client (``MONAILabelLib`` shipped in the monailabel wheel, what 3D Slicer's
  MONAI Label module calls) gets the model list, the next sample, and a label whose SimpleITK
  geometry (how the Slicer module reads it) matches the image's, and submits it to the datastore;
- 20 concurrent requests all succeed with the same segmentation;
- MONAI Label's stock ``monaibundle`` app loads the bundle too (same labels, its 1 x H x W layout);
- every other method bundle (early-feature refinement, variance sampling, shallow-to-deep, pixel
  alignment), adapted by its own configs on the tiny demo pair, is listed by ``/info/`` and served
  the segmentation its own inference.json writes;
- a 3D source model served with ``MONAI_UDA_LABEL_OVERRIDES='{"spatial_dims": 3}'`` labels an R-A-S
  and an L-P-S volume on their own grids, equal to the toolkit's output once both are in RAS.

Tolerance: the server runs torch 2.14.1 (CUDA build on CPU) and numpy 1.26, the toolkit torch
2.13.0 CPU and numpy 2, so logits may differ in the last float bits; labels are compared exactly
except that a pixel may differ where the toolkit's two softmax probabilities are within 1e-3 of
each other (a tie that float noise can flip). On the tiny demo all pixels have so far been equal.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE = REPO / "scripts" / "monailabel_serve.sh"
REQUIREMENTS = REPO / "scripts" / "monailabel" / "requirements.txt"
BUNDLE = "bn_reestimation_segmentation"
RUN_CMD = "bash scripts/test_monailabel.sh"
TIE = 1e-3  # softmax margin under which a label may differ between the two torch builds
STARTUP_S = 240
N_CONCURRENT = 20


def _label_env() -> Path:
    return Path(os.environ.get("MONAI_UDA_LABEL_ENV", Path.home() / ".cache" / "monai-uda" / "monailabel-env"))


def _env_ready() -> str | None:
    """``None`` when the label env is complete and current, else why not."""
    if os.environ.get("MONAI_UDA_LABEL_TEST") != "1":
        return "the MONAI Label end-to-end test is opt-in (MONAI_UDA_LABEL_TEST=1, set by the script)"
    env = _label_env()
    stamp = env / ".monai-uda-label-ready"
    if not stamp.is_file() or not (env / "bin" / "python").is_file():
        return f"MONAI Label environment not set up at {env}"
    if stamp.read_text().strip() != hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest():
        return f"MONAI Label environment at {env} is older than scripts/monailabel/requirements.txt"
    return None


needs_label_env = pytest.mark.skipif(_env_ready() is not None,
                                     reason=f"{_env_ready()}; run it end to end with: {RUN_CMD}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, timeout: float = 300) -> tuple[int, bytes, float]:
    start = time.perf_counter()
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), time.perf_counter() - start
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.perf_counter() - start


def _get_json(url: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _read_nifti_bytes(data: bytes, tmp: Path, name: str) -> nib.Nifti1Image:
    path = tmp / f"{name}.nii.gz"
    path.write_bytes(data)
    img = nib.load(path)
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)


def _assert_labels_match(served: np.ndarray, ref: dict) -> None:
    """Exact equality, except at softmax ties (see the module docstring)."""
    expected = ref["label"]
    assert served.shape == expected.shape, (served.shape, expected.shape)
    assert set(np.unique(served)) <= {0, 1}
    diff = served != expected
    if diff.any():
        margin = ref["margin"][diff]
        assert margin.max() < TIE, f"{int(diff.sum())} pixels differ, up to softmax margin {margin.max():.4f}"
    assert expected.sum() > 0 and (1 - expected).sum() > 0, "degenerate reference (all one class)"


# ---------------------------------------------------------------------------------------------
# no MONAI Label environment needed
# ---------------------------------------------------------------------------------------------


def _serve_fails(tmp_path, *args, env: dict | None = None) -> str:
    # a reached env setup would fail at once instead of installing ~8 GB
    env = dict(os.environ, MONAI_UDA_LABEL_ENV=str(tmp_path / "no-env"), MONAI_UDA_LABEL_PYTHON="/bin/false",
               MONAI_UDA_LABEL_APP_DIR=str(tmp_path / "app"), **(env or {}))
    r = subprocess.run(["bash", str(SERVE), *map(str, args)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert not (tmp_path / "no-env").exists()
    return r.stderr


def _fake_bundle(root: Path, name: str = BUNDLE) -> Path:
    b = root / name
    shutil.copytree(REPO / "bundles" / name / "configs", b / "configs")
    return b


def test_serve_script_errors_name_the_problem(tmp_path):
    err = _serve_fails(tmp_path, "no_such_bundle", tmp_path)
    assert "bundle 'no_such_bundle' not found" in err and "bn_reestimation_segmentation" in err

    err = _serve_fails(tmp_path, tmp_path, tmp_path)
    assert "configs/inference.json not found" in err

    b = _fake_bundle(tmp_path)
    err = _serve_fails(tmp_path, b, tmp_path)
    assert "no trained/adapted model" in err and str(b / "models" / "model.pt") in err

    (b / "models").mkdir()
    (b / "models" / "model.pt").write_bytes(b"x")
    err = _serve_fails(tmp_path, b, tmp_path / "missing_studies")
    assert "studies folder" in err and "missing_studies" in err

    err = _serve_fails(tmp_path, b, tmp_path, "http")
    assert "PORT must be a number" in err

    err = _serve_fails(tmp_path, b, tmp_path, env={"MONAI_UDA_LABEL_OVERRIDES": "[3]"})
    assert "MONAI_UDA_LABEL_OVERRIDES must be a JSON object" in err


def test_link_bundle_serves_the_checkpoint_inference_json_loads(tmp_path):
    """pixel_alignment deploys models/self_train/model.pt; MONAI Label would load models/model.pt."""
    sys.path.insert(0, str(REPO / "scripts" / "monailabel"))
    try:
        import link_bundle
    finally:
        sys.path.pop(0)
    b = _fake_bundle(tmp_path, "pixel_alignment_segmentation")
    (b / "docs").mkdir()
    (b / "models" / "self_train").mkdir(parents=True)
    (b / "models" / "model.pt").write_bytes(b"before self-training")
    with pytest.raises(link_bundle.BundleError, match="self_train/model.pt not found"):
        link_bundle.link_bundle(b, tmp_path / "app")
    assert link_bundle.main(["--precheck", str(b)]) == 2
    (b / "models" / "self_train" / "model.pt").write_bytes(b"self-trained")
    (b / "models" / "head_model.pt").write_bytes(b"not the deployed network")
    assert link_bundle.main(["--precheck", str(b)]) == 0

    view = link_bundle.link_bundle(b, tmp_path / "app")
    assert view == tmp_path / "app" / "model" / "pixel_alignment_segmentation"
    assert sorted(p.name for p in (view / "models").iterdir()) == ["model.pt"]
    assert (view / "models" / "model.pt").read_bytes() == b"self-trained"
    assert (view / "configs").resolve() == (b / "configs").resolve() and (view / "docs").is_symlink()
    # relinking replaces the view, and the bundle's own files are untouched
    (b / "models" / "self_train" / "model.pt").write_bytes(b"self-trained v2")
    link_bundle.link_bundle(b, tmp_path / "app")
    assert (view / "models" / "model.pt").read_bytes() == b"self-trained v2"
    assert (b / "models" / "model.pt").read_bytes() == b"before self-training"


# ---------------------------------------------------------------------------------------------
# end to end: needs the MONAI Label environment
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapted_bundle(tmp_path_factory, tiny_demo_2d) -> Path:
    """A copy of the bundle, adapted on the tiny demo pair (its models/model.pt is the adapted net)."""
    from monai_uda.bundle import run_bundle

    root = tmp_path_factory.mktemp("bundles")
    b = root / BUNDLE
    shutil.copytree(REPO / "bundles" / BUNDLE, b, ignore=shutil.ignore_patterns("models", "eval", "demo_data"))
    src = root / "src"
    run_bundle("source_segmentation", "train.json", datalist=tiny_demo_2d, bundle_root=str(root), ckpt_dir=str(src),
               output_dir=str(src), max_epochs=1, epoch_length=2, batch_size=1, num_samples=1, roi_size=[32, 32],
               validate_during_training=False)
    run_bundle(BUNDLE, "adapt.json", datalist=tiny_demo_2d, bundle_root=str(b),
               source_checkpoint=str(src / "model.pt"), output_dir=str(root / "eval"))
    assert (b / "models" / "model.pt").is_file()
    return b


@pytest.fixture(scope="module")
def studies(tmp_path_factory, tiny_demo_2d) -> dict:
    """A studies folder: one demo target image (2D NIfTI) and a non-square PNG made from it."""
    from PIL import Image

    dl = json.loads(Path(tiny_demo_2d).read_text())
    src = Path(tiny_demo_2d).parent / dl["target_test"][1]["image"]
    d = tmp_path_factory.mktemp("studies")
    nii = d / src.name
    shutil.copy(src, nii)
    x = np.asarray(nib.load(nii).dataobj, dtype=np.float32)[:, 8:]  # 80 x 88: non-square
    png = (255 * (x - x.min()) / (x.max() - x.min())).astype(np.uint8)
    Image.fromarray(png).save(d / "target_png.png")
    return {"dir": d, "nifti_id": src.name[: -len(".nii.gz")], "nifti": nii, "png_id": "target_png",
            "png": d / "target_png.png"}


def _reference(bundle: Path, images: dict, out: Path, **override) -> dict:
    """The bundle's own inference.json run in this (toolkit) environment, plus softmax margins.

    Args:
        bundle: the bundle folder (``bundle_root``; the configs are the repository's).
        images: ``{key: image path}``.
        out: output folder of its ``SaveImaged``.
        override: more config overrides (e.g. ``spatial_dims=3``).

    Returns:
        ``{key: {"label", "affine", "margin"}}``; labels are in the preprocessed grid (RAS for 3D).
    """
    import torch

    from monai_uda.bundle import run_bundle

    # NIfTI references for every input (a PNG input's own default output is a PNG in the image's orientation;
    # the comparison below is in the preprocessed grid, which the NIfTI output keeps)
    override = {"output_ext": ".nii.gz", **override}
    wf = run_bundle(bundle.name, "inference.json", workflow_type="infer", bundle_root=str(bundle),
                    datalist=[{"image": str(p)} for p in images.values()], output_dir=str(out), **override)
    # softmax margins for the tie tolerance, from the same network, preprocessing and inferer
    p = wf.parser
    net, pre, inferer = p.get_parsed_content("network").eval(), p.get_parsed_content("preprocessing"), \
        p.get_parsed_content("inferer")
    refs = {}
    for key, path in images.items():
        seg = nib.load(out / f"{Path(path).name.split('.')[0]}_seg.nii.gz")
        with torch.no_grad():
            prob = torch.softmax(inferer(pre({"image": str(path)})["image"][None], net), 1)[0].numpy()
        label = np.asarray(seg.dataobj)
        assert np.array_equal(np.argmax(prob, 0), label)  # the margins belong to this very segmentation
        refs[key] = {"label": label, "affine": seg.affine, "margin": np.abs(prob[1] - prob[0])}
    return refs


@pytest.fixture(scope="module")
def reference(adapted_bundle, studies, tmp_path_factory) -> dict:
    """The bundle's own inference.json run in this (toolkit) environment on both study images."""
    return _reference(adapted_bundle, {"nifti": studies["nifti"], "png": studies["png"]},
                      tmp_path_factory.mktemp("reference"))


@contextlib.contextmanager
def _serving(bundle: Path, studies_dir: Path, work: Path, app: str = "uda", extra_env: dict | None = None):
    """Start ``scripts/monailabel_serve.sh`` on a free loopback port; always stop it on exit."""
    reason = _env_ready()
    if reason:
        pytest.skip(f"{reason}; run it end to end with: {RUN_CMD}")
    port = _free_port()
    log_path = work / f"server-{app}.log"
    env = dict(os.environ, MONAI_UDA_LABEL_APP_DIR=str(work / "app"), MONAI_UDA_LABEL_APP=app, **(extra_env or {}))
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", str(SERVE), str(bundle), str(studies_dir), str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                info = _get_json(f"{url}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.perf_counter() - start > STARTUP_S:
                    pytest.fail(f"server not up after {STARTUP_S} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(1)
        print(f"monailabel: {app} server up in {time.perf_counter() - start:.1f} s")
        yield {"url": url, "info": info, "log": log_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the session started above: the server and nothing else
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(adapted_bundle, studies, tmp_path_factory):
    """The real MONAI Label server (this repo's app) on a free loopback port, stopped at teardown."""
    with _serving(adapted_bundle, studies["dir"], tmp_path_factory.mktemp("monailabel")) as srv:
        yield srv


@needs_label_env
def test_info_lists_the_bundle(server):
    info = server["info"]
    assert list(info["models"]) == [BUNDLE]
    m = info["models"][BUNDLE]
    assert m["type"] == "segmentation" and m["dimension"] == 2
    assert m["labels"] == {"foreground": 1}
    assert m["config"]["model_filename"] == ["model.pt"]
    assert info["datastore"]["total"] == 2


@needs_label_env
def test_infer_nifti_equals_bundle_inference(server, studies, reference, tmp_path):
    status, body, dt = _post(f"{server['url']}/infer/{BUNDLE}?image={studies['nifti_id']}&output=image")
    assert status == 200, body[-2000:]
    print(f"monailabel: first NIfTI inference {dt:.2f} s")
    served = _read_nifti_bytes(body, tmp_path, "served")
    data = np.asarray(served.dataobj)
    # a H x W image gets a H x W x 1 label (one slice) with the image's affine
    assert data.shape == reference["nifti"]["label"].shape + (1,)
    assert data.dtype == np.uint8
    np.testing.assert_allclose(served.affine, nib.load(studies["nifti"]).affine, atol=1e-5)
    np.testing.assert_allclose(served.affine, reference["nifti"]["affine"], atol=1e-5)
    _assert_labels_match(data[..., 0], reference["nifti"])


@needs_label_env
def test_infer_png_equals_bundle_inference(server, studies, reference):
    from PIL import Image

    status, body, dt = _post(f"{server['url']}/infer/{BUNDLE}?image={studies['png_id']}&output=image")
    assert status == 200, body[-2000:]
    served = np.array(Image.open(io.BytesIO(body)))
    assert served.shape == np.array(Image.open(studies["png"])).shape == (80, 88)  # rows x columns of the PNG
    assert served.dtype == np.uint8
    # MONAI's PIL reader indexes (column, row): its array is the transpose of the PNG's pixel grid
    _assert_labels_match(served.T, reference["png"])


@needs_label_env
def test_slicer_client_workflow(server, studies, reference, tmp_path):
    """What 3D Slicer's MONAI Label module does, with its own client class, in the label env."""
    env_dir = _label_env()
    plugin = env_dir / "monailabel" / "plugins" / "slicer" / "MONAILabel"
    assert (plugin / "MONAILabelLib" / "client.py").is_file(), "the monailabel wheel no longer ships the Slicer plugin"
    script = f"""
import json, sys
import numpy as np, SimpleITK as sitk
from MONAILabelLib.client import MONAILabelClient
c = MONAILabelClient({server['url']!r}, tmpdir={str(tmp_path)!r})
info = c.info()
sample = c.next_sample("random", {{}})
out, params = c.infer({BUNDLE!r}, {studies['nifti_id']!r}, {{"device": "cpu", "model_filename": "model.pt"}})
# "Submit Label": Slicer PUTs the label with the segment names as label_info (tag "" = final)
saved = c.save_label({studies['nifti_id']!r}, out, params={{"label_info": [{{"name": "foreground", "idx": 1}}]}})
lab, img = sitk.ReadImage(out), sitk.ReadImage({str(studies['nifti'])!r})
arr = sitk.GetArrayFromImage(lab)  # z, y, x
np.save({str(tmp_path / 'label.npy')!r}, arr[0].T)
json.dump({{"models": sorted(info["models"]), "sample": sample["id"], "label_names": params["label_names"],
           "saved": saved,
           "lab": [lab.GetSize(), lab.GetSpacing(), lab.GetOrigin(), lab.GetDirection()],
           "img": [img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()]}}, sys.stdout)
"""
    env = dict(os.environ, PYTHONPATH=str(plugin))
    r = subprocess.run([str(env_dir / "bin" / "python"), "-c", script], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["models"] == [BUNDLE]
    assert res["sample"] in (studies["nifti_id"], studies["png_id"])
    assert res["label_names"] == {"foreground": 1}
    (lsize, lspacing, lorigin, ldir), (isize, ispacing, iorigin, idir) = res["lab"], res["img"]
    # the 2D image is a 2D ITK image; the label is its single-slice volume: same grid in the image plane
    assert len(isize) == 2 and lsize == isize + [1]
    np.testing.assert_allclose(lspacing[:2], ispacing, atol=1e-6)
    np.testing.assert_allclose(lorigin[:2], iorigin, atol=1e-6)
    np.testing.assert_allclose(np.reshape(ldir, (3, 3))[:2, :2], np.reshape(idir, (2, 2)), atol=1e-6)
    _assert_labels_match(np.load(tmp_path / "label.npy"), reference["nifti"])
    # the submitted label is in the studies folder's datastore, as the served file
    final = studies["dir"] / "labels" / "final" / studies["nifti"].name
    assert res["saved"]["image"] == studies["nifti_id"] and final.is_file()
    _assert_labels_match(np.asarray(nib.load(final).dataobj)[..., 0], reference["nifti"])


@needs_label_env
def test_concurrent_requests_all_succeed(server, studies, reference, tmp_path):
    url = f"{server['url']}/infer/{BUNDLE}?image={studies['nifti_id']}&output=image"
    _post(url)  # warm (network cached per device)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(N_CONCURRENT) as pool:
        results = list(pool.map(lambda _: _post(url), range(N_CONCURRENT)))
    wall = time.perf_counter() - start
    assert [s for s, _, _ in results] == [200] * N_CONCURRENT, [b[-500:] for s, b, _ in results if s != 200]
    labels = [np.asarray(_read_nifti_bytes(b, tmp_path, f"c{i}").dataobj)[..., 0] for i, (_, b, _) in enumerate(results)]
    for lab in labels:
        assert np.array_equal(lab, labels[0])
    _assert_labels_match(labels[0], reference["nifti"])
    lat = sorted(dt for _, _, dt in results)
    print(f"monailabel: {N_CONCURRENT} concurrent requests in {wall:.2f} s; latency min {lat[0]:.2f} s, "
          f"median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s")


@needs_label_env
def test_stock_monaibundle_app_serves_the_bundle_too(adapted_bundle, studies, reference, tmp_path):
    """MONAI Label's own sample-apps/monaibundle loads the bundle and computes the same labels.

    It keeps the channel axis of 2D labels: a H x W image gets a 1 x H x W float32 volume (axes
    that do not line up with the image), which is why the serve script uses scripts/monailabel_app.
    """
    with _serving(adapted_bundle, studies["dir"], tmp_path, app="monaibundle") as srv:
        assert list(srv["info"]["models"]) == [BUNDLE]
        status, body, _ = _post(f"{srv['url']}/infer/{BUNDLE}?image={studies['nifti_id']}&output=image")
    assert status == 200, body[-2000:]
    data = np.asarray(_read_nifti_bytes(body, tmp_path, "stock").dataobj)
    assert data.shape == (1,) + reference["nifti"]["label"].shape and data.dtype == np.float32
    _assert_labels_match(data[0].astype(np.uint8), reference["nifti"])


@needs_label_env
def test_3d_bundle_labels_lie_on_the_image_grid(tmp_path, tiny_demo_3d):
    """A bundle trained in 3D, served with MONAI_UDA_LABEL_OVERRIDES: RAS and non-RAS volumes.

    Its repository configs say 2D, so the override is what ``--spatial_dims 3`` is on the command
    line. The reference is in RAS (the preprocessing reorients); the served label must be on the
    image's own voxel grid with the image's affine, and equal the reference once both are in RAS.
    """
    from monai_uda.bundle import run_bundle

    b = tmp_path / "source_segmentation"
    shutil.copytree(REPO / "bundles" / b.name, b, ignore=shutil.ignore_patterns("models", "eval", "demo_data"))
    run_bundle(b.name, "train.json", datalist=tiny_demo_3d, bundle_root=str(b), output_dir=str(tmp_path / "train"),
               max_epochs=1, epoch_length=2, batch_size=1, num_samples=1, roi_size=[32, 32, 32],
               validate_during_training=False, spatial_dims=3)
    dl = json.loads(Path(tiny_demo_3d).read_text())
    src = Path(tiny_demo_3d).parent / dl["target_test"][0]["image"]
    studies_dir = tmp_path / "studies3d"
    studies_dir.mkdir()
    ras = nib.load(src)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    nib.save(ras, studies_dir / "ras.nii.gz")
    # the same volume stored L-P-S: first two axes reversed, affine adjusted (same world positions)
    n0, n1 = ras.shape[:2]
    flip = np.array([[-1, 0, 0, n0 - 1], [0, -1, 0, n1 - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    lps = nib.Nifti1Image(np.asarray(ras.dataobj)[::-1, ::-1].copy(), ras.affine @ flip)
    nib.save(lps, studies_dir / "lps.nii.gz")
    images = {"ras": studies_dir / "ras.nii.gz", "lps": studies_dir / "lps.nii.gz"}
    ref = _reference(b, images, tmp_path / "reference3d", spatial_dims=3)

    with _serving(b, studies_dir, tmp_path, extra_env={"MONAI_UDA_LABEL_OVERRIDES": '{"spatial_dims": 3}'}) as srv:
        assert srv["info"]["models"][b.name]["dimension"] == 3
        served = {}
        for key in images:
            status, body, dt = _post(f"{srv['url']}/infer/{b.name}?image={key}&output=image")
            assert status == 200, body[-2000:]
            print(f"monailabel: 3D {key} inference {dt:.2f} s")
            served[key] = _read_nifti_bytes(body, tmp_path, f"served3d_{key}")
    for key, path in images.items():
        img = nib.load(path)
        assert served[key].shape == img.shape
        np.testing.assert_allclose(served[key].affine, img.affine, atol=1e-5)
        canon = nib.as_closest_canonical(served[key])
        np.testing.assert_allclose(canon.affine, ref[key]["affine"], atol=1e-5)
        _assert_labels_match(np.asarray(canon.dataobj), ref[key])


# every other method bundle: (adaptation steps as (config layers, extra overrides)), the served checkpoint
_T = {"batch_size": 1, "num_samples": 1, "roi_size": [32, 32]}
METHOD_BUNDLES = {
    "early_feature_refinement_segmentation": (
        [("adapt.json", {**_T, "max_epochs": 2, "epoch_length": 1, "head_max_epochs": 1, "head_epoch_length": 1,
                         "source_max_epochs": 1, "source_epoch_length": 1})],
        "models/model.pt"),
    "variance_sampling_segmentation": (
        [("adapt.json", {**_T, "max_epochs": 1, "epoch_length": 1, "num_rounds": 1, "source_checkpoint": "SOURCE"})],
        "models/model.pt"),
    "shallow2deep_segmentation": (
        [("prepare_forests.json", {"n_forests": 3, "forest_trees": 3, "samples_per_class": 100,
                                   "patch_size_range": [24, 64], "workflow_type": None}),
         ("train_enhancer.json", {**_T, "max_epochs": 1, "epoch_length": 2, "workflow_type": None}),
         ("adapt.json", {**_T, "max_epochs": 1, "epoch_length": 2, "target_forest_trees": 5, "scribble_images": 1,
                         "workflow_type": None})],
        "models/model.pt"),
    "pixel_alignment_segmentation": (
        [("train_translation.json", {"translation_epochs": 1, "translation_epoch_length": 2,
                                     "translation_batch_size": 2, "translation_patch_size": [32, 32], "data_limit": 2}),
         (["train_translation.json", "translate.json"], {"data_limit": 2}),
         ("train.json", {**_T, "max_epochs": 1, "epoch_length": 2, "data_limit": 2}),
         (["train.json", "self_train.json"], {**_T, "max_epochs": 1, "epoch_length": 2, "data_limit": 2,
                                               "round_max_epochs": 1, "round_epoch_length": 2})],
        "models/self_train/model.pt"),
}


@needs_label_env
@pytest.mark.parametrize("name", list(METHOD_BUNDLES))
def test_every_method_bundle_serves_its_adapted_model(name, studies, tiny_demo_2d, tmp_path):
    """Each method bundle, adapted by its own configs on the tiny demo pair, served by MONAI Label:
    /info lists it as a 2D segmentation model and /infer returns what its own inference.json writes."""
    from monai_uda.bundle import run_bundle
    from monai_uda.bundle.stages import resolve_source_checkpoint

    steps, ckpt = METHOD_BUNDLES[name]
    b = tmp_path / name
    shutil.copytree(REPO / "bundles" / name, b, ignore=shutil.ignore_patterns("models", "eval", "demo_data"))
    source = None
    for configs, extra in steps:
        if extra.get("source_checkpoint") == "SOURCE":
            source = source or resolve_source_checkpoint(
                None, str(tmp_path / "source"), datalist=tiny_demo_2d, max_epochs=1, epoch_length=2, batch_size=1,
                num_samples=1, roi_size=[32, 32], validate_during_training=False)
            extra = dict(extra, source_checkpoint=source)
        run_bundle(name, configs, datalist=tiny_demo_2d, bundle_root=str(b), ckpt_dir=str(b / "models"),
                   output_dir=str(tmp_path / "eval"), **extra)
    assert (b / ckpt).is_file(), f"{name}: adaptation did not write {ckpt}"
    ref = _reference(b, {"nifti": studies["nifti"]}, tmp_path / "reference")
    (tmp_path / "monailabel").mkdir()
    with _serving(b, studies["dir"], tmp_path / "monailabel") as srv:
        m = srv["info"]["models"][name]
        assert list(srv["info"]["models"]) == [name]
        assert m["type"] == "segmentation" and m["dimension"] == 2 and m["labels"] == {"foreground": 1}
        status, body, dt = _post(f"{srv['url']}/infer/{name}?image={studies['nifti_id']}&output=image")
    assert status == 200, body[-2000:]
    print(f"monailabel: {name} NIfTI inference {dt:.2f} s")
    served = _read_nifti_bytes(body, tmp_path, "served")
    np.testing.assert_allclose(served.affine, nib.load(studies["nifti"]).affine, atol=1e-5)
    _assert_labels_match(np.asarray(served.dataobj)[..., 0], ref["nifti"])
