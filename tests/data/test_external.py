"""Tests for monai_uda.data.external: manifests, datalist builders and the loopback download path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
import zipfile
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_uda.data.datalist import load_uda_datalist
from monai_uda.data.external import (
    MANIFESTS_ENV,
    ManifestError,
    build_datalist,
    download,
    list_manifests,
    load_manifest,
    manifests_dir,
    resolve_domain,
    schema_path,
)

EXPECTED = {"cc359", "crossmoda", "mnms", "mitoem", "epfl", "vnc", "bigbrain_allen"}


def _ids(dl, key):
    return {Path(e["image"]).name.split(".")[0].replace("_ss", "") for e in dl[key]}


# ---------------------------------------------------------------- manifests


def test_all_expected_manifests_exist():
    assert EXPECTED <= set(list_manifests())


@pytest.mark.parametrize("name", sorted(EXPECTED | {"hela_fibsem"}))
def test_manifest_validates_against_schema(name):
    schema = json.loads(schema_path().read_text())
    raw = json.loads((manifests_dir() / f"{name}.json").read_text())
    jsonschema.validate(raw, schema)
    m = load_manifest(name)
    assert m["name"] == name
    # a download is only declared with a URL and a hash; otherwise access must explain how to get the data
    if m["download"] is None:
        assert m["access"] in ("open", "registration", "challenge", "request", "unreleased")
    # every default pair resolves to existing domains with matching dimensionality and classes
    for pair in m["default_pairs"]:
        sm, sd = resolve_domain(pair["source"], name)
        tm, td = resolve_domain(pair["target"], name)
        assert sd in sm["domains"] and td in tm["domains"]
        assert sm["spatial_dims"] == tm["spatial_dims"] and sm["labels"] == tm["labels"]


def test_every_manifest_in_folder_validates():
    for name in list_manifests():
        load_manifest(name)


def test_schema_rejects_bad_manifest(tmp_path, monkeypatch):
    m = load_manifest("epfl")
    m["download"] = {"url": "ftp://x", "hash_type": "crc", "hash": "zz"}
    (tmp_path / "epfl.json").write_text(json.dumps(m))
    monkeypatch.setenv(MANIFESTS_ENV, str(tmp_path))
    with pytest.raises(ManifestError, match="download"):
        load_manifest("epfl")


def test_unknown_manifest_and_domain():
    with pytest.raises(ManifestError, match="no manifest named 'nope'.*cc359"):
        load_manifest("nope")
    with pytest.raises(ManifestError, match="unknown domain 'toshiba_7'"):
        resolve_domain("toshiba_7", "cc359")
    with pytest.raises(ManifestError, match="several domains"):
        resolve_domain("mitoem", "epfl")


def test_cc359_pairs_match_paper_001():
    m = load_manifest("cc359")
    targets = {p["target"] for p in m["default_pairs"] if p["source"] == "ge_3"}
    assert targets == {"ge_15", "philips_15", "philips_3", "siemens_15", "siemens_3"}


# ---------------------------------------------------------------- synthetic local copies


def _nii(path: Path, arr: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*spacing, 1.0])), str(path))


@pytest.fixture
def cc359_copy(tmp_path):
    root = tmp_path / "cc359"
    rng = np.random.default_rng(0)
    n = 0
    for scanner, count in (("ge_3", 6), ("philips_15", 7)):
        for _ in range(count):
            n += 1
            stem = f"CC{n:04d}_{scanner}_{50 + n}_M"
            img = rng.random((8, 8, 4)).astype(np.float32)
            lab = (img > 0.5).astype(np.uint8)
            _nii(root / "Original" / f"{stem}.nii.gz", img)
            _nii(root / "Silver-standard" / f"{stem}_ss.nii.gz", lab)
    return root


def test_build_cc359_datalist(cc359_copy, tmp_path):
    out = build_datalist("cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "dl" / "cc.json", seed=1, deep=True)
    dl = load_uda_datalist(out, deep=True)  # passes validate_uda_datalist
    assert dl["spatial_dims"] == 3 and dl["labels"] == {"0": "background", "1": "brain"}
    # source subjects are GE 3T only, target subjects Philips 1.5T only
    assert all("_ge_3_" in e["image"] for k in ("source_training", "source_validation") for e in dl[k])
    tgt_keys = ("target_training", "target_test", "oracle_training")
    assert all("_philips_15_" in e["image"] for k in tgt_keys for e in dl[k])
    assert len(dl["source_training"]) + len(dl["source_validation"]) == 6
    assert len(dl["source_validation"]) == 1  # round(0.2 * 6)
    assert len(dl["target_test"]) == 2  # round(0.3 * 7)
    assert all("label" not in e for e in dl["target_training"])
    src_tr, src_va = _ids(dl, "source_training"), _ids(dl, "source_validation")
    tgt_tr, tgt_te = _ids(dl, "target_training"), _ids(dl, "target_test")
    assert not src_tr & src_va and not tgt_tr & tgt_te
    assert _ids(dl, "oracle_training") == tgt_tr  # oracle="shared": same target images, labelled
    assert tgt_tr | tgt_te == {f"CC{i:04d}_philips_15_{50 + i}_M" for i in range(7, 14)}
    # label paths pair with their image
    for e in dl["target_test"]:
        assert Path(e["label"]).name == Path(e["image"]).name.replace(".nii.gz", "_ss.nii.gz")


def test_build_is_deterministic_and_seed_dependent(cc359_copy, tmp_path):
    def build(out, seed):
        return json.loads(Path(build_datalist("cc359", cc359_copy, "ge_3", "philips_15", out, seed=seed)).read_text())

    a, b = build(tmp_path / "a.json", 3), build(tmp_path / "b.json", 3)
    assert a == b
    splits = {json.dumps(build(tmp_path / f"s{s}.json", s)["target_test"]) for s in range(6)}
    assert len(splits) > 1


def test_build_disjoint_oracle_caps_and_transductive(cc359_copy, tmp_path):
    dl = json.loads(Path(build_datalist(
        "cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "d.json", oracle="disjoint",
        max_source_subjects=3, max_target_test_subjects=1)).read_text())
    sets = [_ids(dl, k) for k in ("target_training", "target_test", "oracle_training")]
    assert sum(map(len, sets)) == 7 and len(set.union(*sets)) == 7  # pairwise disjoint, all used
    assert len(dl["source_training"]) == 3 and len(dl["target_test"]) == 1
    tr = json.loads(Path(build_datalist("cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "t.json",
                                        setting="transductive")).read_text())
    assert tr["setting"] == "transductive" and _ids(tr, "target_training") == _ids(tr, "target_test")
    assert all("label" not in e for e in tr["target_training"])


def _png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def em_copies(tmp_path):
    rng = np.random.default_rng(1)
    epfl = tmp_path / "epfl_copy"
    for stack, n in (("training", 5), ("testing", 3)):
        for i in range(n):
            name = f"{stack}{i:04d}.png"
            _png(epfl / "images" / name, rng.integers(0, 255, (16, 16), dtype=np.uint8))
            _png(epfl / "labels" / "mito" / name, (rng.random((16, 16)) > 0.7).astype(np.uint8) * 255)
    vnc = tmp_path / "vnc_copy"
    for i in range(6):
        import tifffile

        (vnc / "stack1" / "raw").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(vnc / "stack1" / "raw" / f"{i:02d}.tif", rng.integers(0, 255, (16, 16), dtype=np.uint8))
        if i < 4:  # two sections without labels -> only usable as unlabelled target data
            _png(vnc / "stack1" / "mitochondria" / f"{i:02d}.png", (rng.random((16, 16)) > 0.8).astype(np.uint8) * 255)
    return epfl, vnc


def test_build_epfl_to_vnc_cross_dataset(em_copies, tmp_path):
    epfl, vnc = em_copies
    out = build_datalist("epfl", epfl, "epfl", "vnc:stack1", tmp_path / "a1.json", target_root=vnc, seed=0, deep=True)
    dl = load_uda_datalist(out, deep=True)
    assert dl["spatial_dims"] == 2 and dl["binarize"] is True  # 0/255 masks are accepted via binarize
    assert len(dl["source_training"]) + len(dl["source_validation"]) == 8
    assert all(str(epfl) in e["image"] for e in dl["source_training"])
    assert all("label" not in e for e in dl["target_training"])
    assert all(e["spacing"] == [4.6, 4.6] for e in dl["target_test"])
    assert all(e["spacing"] == [5.0, 5.0] for e in dl["source_training"])
    tgt_tr, tgt_te = _ids(dl, "target_training"), _ids(dl, "target_test")
    assert not tgt_tr & tgt_te
    assert {"04", "05"} <= tgt_tr  # unlabelled sections go to target_training only
    assert not {"04", "05"} & (tgt_te | _ids(dl, "oracle_training"))
    assert tgt_tr | tgt_te == {f"{i:02d}" for i in range(6)}


def test_missing_folder_is_named(em_copies, tmp_path):
    epfl, vnc = em_copies
    import shutil

    shutil.rmtree(vnc / "stack1" / "mitochondria")
    with pytest.raises(ManifestError, match=r"labels folder not found: .*stack1[/\\]mitochondria"):
        build_datalist("epfl", epfl, "epfl", "vnc:stack1", tmp_path / "x.json", target_root=vnc)
    with pytest.raises(ManifestError, match=r"images folder not found: .*Original"):
        build_datalist("cc359", tmp_path, "ge_3", "philips_15", tmp_path / "y.json")
    with pytest.raises(ManifestError, match="local root not found"):
        build_datalist("cc359", tmp_path / "absent", "ge_3", "philips_15", tmp_path / "z.json")
    assert not (tmp_path / "x.json").exists()


def test_empty_pattern_and_orphan_label(cc359_copy, tmp_path):
    with pytest.raises(ManifestError, match=r"no images match 'Original/CC\*_siemens_3_\*"):
        build_datalist("cc359", cc359_copy, "siemens_3", "ge_3", tmp_path / "a.json")
    _nii(cc359_copy / "Silver-standard" / "CC0099_ge_3_40_F_ss.nii.gz", np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ManifestError, match="labels without an image.*CC0099"):
        build_datalist("cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "b.json")


def test_bad_arguments(cc359_copy, tmp_path):
    with pytest.raises(ValueError, match="oracle"):
        build_datalist("cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "a.json", oracle="both")
    with pytest.raises(ValueError, match="target_test_fraction"):
        build_datalist("cc359", cc359_copy, "ge_3", "philips_15", tmp_path / "a.json", target_test_fraction=1.0)
    with pytest.raises(ManifestError, match="same domain"):
        build_datalist("cc359", cc359_copy, "ge_3", "ge_3", tmp_path / "a.json")
    with pytest.raises(ManifestError, match="spatial_dims differ"):
        build_datalist("cc359", cc359_copy, "ge_3", "epfl:epfl", tmp_path / "a.json")


# ---------------------------------------------------------------- download over loopback


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def loopback_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _zip(path: Path, files: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest_with_download(folder: Path, url: str, digest: str, name: str = "tinyem") -> None:
    m = load_manifest("epfl")
    m["name"] = name
    m["download"] = {"url": url, "hash_type": "sha256", "hash": digest}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(m))


def test_download_with_correct_hash_extracts_and_skips(loopback_server, tmp_path, monkeypatch):
    served, base = loopback_server
    digest = _zip(served / "tinyem.zip", {"images/training0000.png": b"img", "labels/mito/training0000.png": b"lab"})
    _manifest_with_download(tmp_path / "manifests", f"{base}/tinyem.zip", digest)
    monkeypatch.setenv(MANIFESTS_ENV, str(tmp_path / "manifests"))
    root = tmp_path / "data"
    dest = Path(download("tinyem", root, progress=False))
    assert dest == root / "tinyem"
    assert (dest / "images" / "training0000.png").read_bytes() == b"img"
    assert (dest / "labels" / "mito" / "training0000.png").read_bytes() == b"lab"
    # a second call with the server gone is a no-op: nothing is fetched or overwritten
    (served / "tinyem.zip").unlink()
    (dest / "images" / "training0000.png").write_bytes(b"kept")
    assert Path(download("tinyem", root, progress=False)) == dest
    assert (dest / "images" / "training0000.png").read_bytes() == b"kept"
    assert not list(root.glob(".tinyem.partial.*"))


def test_download_with_wrong_hash_extracts_nothing(loopback_server, tmp_path, monkeypatch):
    served, base = loopback_server
    _zip(served / "tinyem.zip", {"images/a.png": b"x"})
    _manifest_with_download(tmp_path / "manifests", f"{base}/tinyem.zip", "0" * 64)
    monkeypatch.setenv(MANIFESTS_ENV, str(tmp_path / "manifests"))
    root = tmp_path / "data"
    with pytest.raises(ValueError, match="failed the sha256 check"):
        download("tinyem", root, progress=False)
    assert not (root / "tinyem").exists()
    assert not (root / "tinyem.zip").exists()
    assert not list(root.glob(".tinyem.partial.*"))


def test_download_refuses_to_overwrite_foreign_folder(loopback_server, tmp_path, monkeypatch):
    served, base = loopback_server
    digest = _zip(served / "tinyem.zip", {"images/a.png": b"new"})
    _manifest_with_download(tmp_path / "manifests", f"{base}/tinyem.zip", digest)
    monkeypatch.setenv(MANIFESTS_ENV, str(tmp_path / "manifests"))
    (tmp_path / "data" / "tinyem" / "images").mkdir(parents=True)
    (tmp_path / "data" / "tinyem" / "images" / "a.png").write_bytes(b"mine")
    with pytest.raises(ManifestError, match="refusing to overwrite"):
        download("tinyem", tmp_path / "data", progress=False)
    assert (tmp_path / "data" / "tinyem" / "images" / "a.png").read_bytes() == b"mine"


def test_download_without_open_archive_explains_access(tmp_path):
    with pytest.raises(ManifestError, match=r"cc359.*registration.*sites\.google\.com/view/calgary-campinas"):
        download("cc359", tmp_path)
    with pytest.raises(ManifestError, match="unreleased"):
        download("bigbrain_allen", tmp_path)
    assert not any(tmp_path.iterdir())


def test_crossmoda_target_without_labels(tmp_path):
    root = tmp_path / "crossmoda"
    rng = np.random.default_rng(2)
    for i in range(1, 4):
        img = rng.random((8, 8, 4)).astype(np.float32)
        _nii(root / "source_training" / f"crossmoda2021_ldn_{i}_ceT1.nii.gz", img)
        _nii(root / "source_training" / f"crossmoda2021_ldn_{i}_Label.nii.gz", (img > 0.9).astype(np.uint8) * 2)
    for i in range(106, 109):
        _nii(root / "target_training" / f"crossmoda2021_ldn_{i}_hrT2.nii.gz", rng.random((8, 8, 4)).astype(np.float32))
    dl = load_uda_datalist(build_datalist("crossmoda", root, "ceT1", "hrT2", tmp_path / "cm.json", deep=True))
    assert len(dl["target_training"]) == 3 and dl["target_test"] == [] and dl["oracle_training"] == []
    assert "no labels" in dl["notes"][0]
    assert dl["labels"] == {"0": "background", "1": "vestibular_schwannoma", "2": "cochlea"}


def test_manifests_dir_prefers_env_then_repository_then_packaged_copy(tmp_path, monkeypatch):
    """A checkout uses ``<repo>/data_manifests``; a regular install its packaged ``monai_uda/_data_manifests``."""
    import monai_uda.data.external as external

    monkeypatch.delenv(MANIFESTS_ENV, raising=False)
    package = tmp_path / "site" / "monai_uda"
    monkeypatch.setattr(external, "__file__", str(package / "data" / "external.py"))
    assert manifests_dir() == tmp_path / "site" / "data_manifests"  # nothing there: the expected repository path
    (package / "_data_manifests").mkdir(parents=True)
    assert manifests_dir() == package / "_data_manifests"
    (tmp_path / "site" / "data_manifests").mkdir()
    assert manifests_dir() == tmp_path / "site" / "data_manifests"
    monkeypatch.setenv(MANIFESTS_ENV, str(tmp_path / "mine"))
    assert manifests_dir() == tmp_path / "mine"
