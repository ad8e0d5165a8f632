"""External datasets the UDA papers use: manifests, datalist builders and (where open) downloads.

Every dataset has a JSON manifest in the repository's ``data_manifests/`` folder (override the folder
with the ``MONAI_UDA_MANIFESTS`` environment variable), validated against
``monai_uda/schemas/dataset_manifest.schema.json``. A manifest says where to get the data, under which
terms, how a local copy must be laid out (one ``images`` / ``labels`` glob per domain, relative to the
local root) and which source -> target pairs the papers use.

:func:`build_datalist` scans a local copy laid out as the manifest says and writes a UDA datalist
(see :mod:`monai_uda.data.datalist`); :func:`download` fetches the few datasets that have an open,
checksummed archive with MONAI's :func:`monai.apps.utils.download_url` and :func:`monai.apps.utils.extractall`.

Domain references: inside a manifest a domain is named by its key (``"ge_3"``); a domain of another
manifest is named ``"<manifest>:<domain>"`` (``"vnc:stack1"``), or ``"<manifest>"`` alone when that
manifest has a single domain. This is how cross-dataset pairs (EPFL -> VNC) are built.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from monai_uda.data.datalist import validate_uda_datalist, write_uda_datalist
from monai_uda.utils import file_hash

__all__ = [
    "ManifestError",
    "MANIFESTS_ENV",
    "manifests_dir",
    "schema_path",
    "list_manifests",
    "load_manifest",
    "resolve_domain",
    "scan_domain",
    "build_datalist",
    "download",
]

MANIFESTS_ENV = "MONAI_UDA_MANIFESTS"
_COMPLETE_MARKER = ".monai_uda_download_complete.json"


class ManifestError(ValueError):
    """A manifest is missing or invalid, or a local copy does not match the layout it describes."""


def manifests_dir() -> Path:
    """The folder holding the manifests, first found of: ``$MONAI_UDA_MANIFESTS``, the repository's
    ``data_manifests/`` (checkout, editable install), the copy a regular ``pip install`` ships in the
    package (``monai_uda/_data_manifests``, see ``setup.py``). None found: the repository's path."""
    env = os.environ.get(MANIFESTS_ENV)
    if env:
        return Path(env)
    package = Path(__file__).resolve().parents[1]  # the monai_uda package folder
    repo = package.parent / "data_manifests"
    packaged = package / "_data_manifests"
    return packaged if not repo.is_dir() and packaged.is_dir() else repo


def schema_path() -> Path:
    """The JSON schema every manifest must satisfy (shipped as package data)."""
    return Path(__file__).resolve().parents[1] / "schemas" / "dataset_manifest.schema.json"


def list_manifests() -> list[str]:
    """Names (file stems) of all manifests in :func:`manifests_dir`, sorted."""
    folder = manifests_dir()
    if not folder.is_dir():
        raise ManifestError(f"manifest folder not found: {folder} (set {MANIFESTS_ENV} to override)")
    return sorted(p.stem for p in folder.glob("*.json"))


def _validate_against_schema(manifest: Mapping[str, Any], where: str) -> None:
    import jsonschema

    with open(schema_path()) as f:
        schema = json.load(f)
    try:
        jsonschema.validate(manifest, schema)
    except jsonschema.ValidationError as e:
        key = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise ManifestError(f"manifest {where} is invalid at '{key}': {e.message}") from None
    for dom, spec in manifest["domains"].items():
        if "(?P<id>" not in spec.get("subject_regex", manifest["subject_regex"]):
            raise ManifestError(f"manifest {where}: domain '{dom}' subject_regex has no (?P<id>...) group")


def load_manifest(name: str, validate: bool = True) -> dict[str, Any]:
    """Read ``<manifests_dir>/<name>.json`` (and validate it against the schema).

    Raises:
        ManifestError: unknown name (the message lists the known ones) or an invalid manifest.
    """
    path = manifests_dir() / f"{name}.json"
    if not path.is_file():
        known = ", ".join(list_manifests()) if manifests_dir().is_dir() else "none"
        raise ManifestError(f"no manifest named '{name}' in {manifests_dir()} (known: {known})")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as e:
        raise ManifestError(f"manifest {path} is not valid JSON: {e}") from e
    if validate:
        _validate_against_schema(manifest, str(path))
    if manifest.get("name") != name:
        raise ManifestError(f"manifest {path}: 'name' is {manifest.get('name')!r}, expected {name!r} (the file stem)")
    return manifest


def resolve_domain(ref: str, default_manifest: str) -> tuple[dict[str, Any], str]:
    """Turn a domain reference (``"ge_3"``, ``"vnc:stack1"``, ``"vnc"``) into (manifest, domain key)."""
    if ":" in ref:
        mname, dom = ref.split(":", 1)
        manifest = load_manifest(mname)
    else:
        base = load_manifest(default_manifest)
        if ref in base["domains"]:
            return base, ref
        if ref in list_manifests():
            manifest, dom = load_manifest(ref), ""
        else:
            raise ManifestError(
                f"unknown domain '{ref}' for manifest '{default_manifest}' (domains: {sorted(base['domains'])}; "
                "use '<manifest>:<domain>' for another dataset)"
            )
    if not dom:
        if len(manifest["domains"]) != 1:
            raise ManifestError(
                f"manifest '{manifest['name']}' has several domains {sorted(manifest['domains'])}: "
                f"name one as '{manifest['name']}:<domain>'"
            )
        dom = next(iter(manifest["domains"]))
    if dom not in manifest["domains"]:
        raise ManifestError(
            f"manifest '{manifest['name']}' has no domain '{dom}' (domains: {sorted(manifest['domains'])})"
        )
    return manifest, dom


def _glob_checked(root: Path, pattern: str, what: str, manifest: str, domain: str) -> list[Path]:
    parts = Path(pattern).parent.parts
    # the fixed part of the pattern ends at the first folder component with a wildcard
    n_fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    fixed = Path(*parts[:n_fixed]) if n_fixed else Path(".")
    fixed_dir = root / fixed
    if not fixed_dir.is_dir():
        raise ManifestError(
            f"{manifest}/{domain}: {what} folder not found: {fixed_dir} (the manifest expects {what} at "
            f"'{pattern}' under the local root {root}; see the manifest's 'layout')"
        )
    matches = glob.glob(os.path.join(glob.escape(str(root)), pattern), recursive=True)
    files = sorted(Path(p) for p in matches if os.path.isfile(p))
    if not files and what == "images":
        raise ManifestError(
            f"{manifest}/{domain}: no {what} match '{pattern}' under {root} (folder {fixed_dir} exists but no file "
            "matches; see the manifest's 'layout')"
        )
    return files


def scan_domain(manifest: Mapping[str, Any], domain: str, local_root: str | os.PathLike) -> list[dict[str, Any]]:
    """List one domain of a local copy: ``[{"id", "image", "label"?}]`` sorted by subject id.

    Images and labels are globbed with the domain's patterns and paired by the ``id`` group of the
    subject regex; an image without a label is returned without ``"label"`` (usable as unlabelled target data).

    Raises:
        ManifestError: the local root or a folder of the layout is missing, no image matches, a label has no
            image, or two files map to the same subject id.
    """
    root = Path(local_root)
    name = manifest["name"]
    if not root.is_dir():
        raise ManifestError(f"{name}: local root not found: {root}")
    spec = manifest["domains"][domain]
    regex = re.compile(spec.get("subject_regex", manifest["subject_regex"]))

    def by_id(files: list[Path], what: str) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for p in files:
            m = regex.search(p.name)
            if m is None:
                raise ManifestError(f"{name}/{domain}: {what} file {p} does not match subject_regex {regex.pattern!r}")
            sid = m.group("id")
            if sid in out:
                raise ManifestError(
                    f"{name}/{domain}: {what} files {out[sid]} and {p} have the same subject id '{sid}'"
                )
            out[sid] = p
        return out

    images = by_id(_glob_checked(root, spec["images"], "images", name, domain), "image")
    labels: dict[str, Path] = {}
    if spec.get("labels"):
        try:
            labels = by_id(_glob_checked(root, spec["labels"], "labels", name, domain), "label")
        except ManifestError:
            if not spec.get("labels_optional", False):
                raise
            labels = {}  # e.g. challenge target scans whose labels are withheld
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise ManifestError(
            f"{name}/{domain}: labels without an image for subject(s) {orphans[:5]} (e.g. {labels[orphans[0]]})"
        )
    entries = []
    for sid in sorted(images):
        item: dict[str, Any] = {"id": sid, "image": str(images[sid])}
        if sid in labels:
            item["label"] = str(labels[sid])
        entries.append(item)
    return entries


def _label_convention(src: Mapping[str, Any], tgt: Mapping[str, Any]) -> dict[str, Any]:
    if src["spatial_dims"] != tgt["spatial_dims"]:
        raise ManifestError(
            f"spatial_dims differ: {src['name']} is {src['spatial_dims']}D, {tgt['name']} is {tgt['spatial_dims']}D"
        )
    if src["labels"] != tgt["labels"]:
        raise ManifestError(f"label classes differ: {src['name']} {src['labels']} vs {tgt['name']} {tgt['labels']}")
    label_map = dict(src.get("label_map", {}))
    for k, v in tgt.get("label_map", {}).items():
        if k in label_map and label_map[k] != v:
            raise ManifestError(
                f"label_map conflict for raw value {k}: {src['name']} -> {label_map[k]}, {tgt['name']} -> {v}"
            )
        label_map[k] = v
    out: dict[str, Any] = {
        "spatial_dims": src["spatial_dims"],
        "in_channels": max(src.get("in_channels", 1), tgt.get("in_channels", 1)),
        "labels": dict(src["labels"]),
        "binarize": bool(src.get("binarize", False) or tgt.get("binarize", False)),
    }
    if label_map:
        out["label_map"] = label_map
    return out


def _with_spacing(items: list[dict[str, Any]], manifest: Mapping[str, Any], domain: str, with_label: bool) -> list:
    spacing = manifest["domains"][domain].get("spacing")
    out = []
    for it in items:
        e: dict[str, Any] = {"image": it["image"]}
        if with_label:
            e["label"] = it["label"]
        if spacing is not None and manifest["spatial_dims"] == 2:
            e["spacing"] = list(spacing)
        out.append(e)
    return out


def _take(items: list, fraction: float, minimum: int = 0) -> int:
    n = int(round(len(items) * fraction))
    return min(len(items), max(minimum, n))


def build_datalist(
    name: str,
    local_root: str | os.PathLike,
    source_domain: str,
    target_domain: str,
    out: str | os.PathLike,
    *,
    target_root: str | os.PathLike | None = None,
    seed: int = 0,
    source_val_fraction: float = 0.2,
    target_test_fraction: float = 0.3,
    oracle: str = "shared",
    max_source_subjects: int | None = None,
    max_target_test_subjects: int | None = None,
    setting: str = "inductive",
    validate: bool = True,
    deep: bool = False,
) -> str:
    """Scan a local copy laid out as the manifest says and write a UDA datalist for one domain pair.

    Splits are by subject (the ``id`` group of the manifest's subject regex) and deterministic for a seed:

    - source labelled subjects -> ``source_validation`` (``source_val_fraction``, at least 1 when there are 2+)
      and ``source_training`` (the rest, capped at ``max_source_subjects``); unlabelled source images are ignored.
    - target labelled subjects -> ``target_test`` (``target_test_fraction``, at least 1, capped at
      ``max_target_test_subjects``) and a training pool; ``target_training`` = the pool's images **without
      labels** plus every unlabelled target image; ``oracle_training`` = the pool with labels
      (``oracle="shared"``: the oracle sees the same target images as adaptation, labelled), or a disjoint
      half of the pool (``oracle="disjoint"``: then target_training, oracle_training and target_test share no
      subject). ``target_test`` never shares a subject with any training list in the inductive setting.
    - ``setting="transductive"``: ``target_training`` is the ``target_test`` images (adapt on the test cases,
      as in one-shot/test-time refinement); the oracle still trains on the rest.

    A target domain without released labels (e.g. challenge hrT2 scans) gives empty ``target_test`` /
    ``oracle_training`` lists and a ``"notes"`` entry saying so.

    Args:
        name: manifest of the source dataset (and of the target, unless ``target_domain`` is ``"<manifest>:<domain>"``).
        local_root: local copy of ``name``.
        source_domain: domain key (or ``"<manifest>:<domain>"``) of the labelled source.
        target_domain: domain key (or ``"<manifest>:<domain>"``) of the target.
        out: the datalist JSON to write (atomically).
        target_root: local copy of the target's dataset when it differs from ``name`` (default: ``local_root``).
        seed: shuffling seed.
        source_val_fraction: fraction of source subjects held out for validation.
        target_test_fraction: fraction of labelled target subjects kept for evaluation.
        oracle: ``"shared"`` or ``"disjoint"`` (see above).
        max_source_subjects: cap on source_training subjects (e.g. 40 for CC-359 as in Sheikh and Schultz).
        max_target_test_subjects: cap on target_test subjects (e.g. 10 as in Sheikh and Schultz).
        setting: ``"inductive"`` or ``"transductive"``.
        validate: run :func:`monai_uda.data.datalist.validate_uda_datalist` before writing.
        deep: open every file during validation (slow on full datasets).

    Returns:
        The path of the written datalist.

    Raises:
        ManifestError: unknown manifest/domain, local copy not matching the layout, or no labelled source subject.
        ValueError: bad fractions, ``oracle`` or ``setting``.
    """
    if not 0.0 <= source_val_fraction < 1.0:
        raise ValueError(f"source_val_fraction must be in [0, 1), got {source_val_fraction}")
    if not 0.0 < target_test_fraction < 1.0:
        raise ValueError(f"target_test_fraction must be in (0, 1), got {target_test_fraction}")
    if oracle not in ("shared", "disjoint"):
        raise ValueError(f"oracle must be 'shared' or 'disjoint', got {oracle!r}")
    if setting not in ("inductive", "transductive"):
        raise ValueError(f"setting must be 'inductive' or 'transductive', got {setting!r}")
    src_m, src_d = resolve_domain(source_domain, name)
    tgt_m, tgt_d = resolve_domain(target_domain, name)
    if src_m["name"] == tgt_m["name"] and src_d == tgt_d:
        raise ManifestError(f"source and target are the same domain: {src_m['name']}:{src_d}")
    src_root = Path(local_root) if src_m["name"] == name else Path(target_root or local_root)
    tgt_root = Path(local_root) if tgt_m["name"] == name else Path(target_root or local_root)
    conv = _label_convention(src_m, tgt_m)
    rng = random.Random(seed)

    src_items = [e for e in scan_domain(src_m, src_d, src_root) if "label" in e]
    if not src_items:
        raise ManifestError(
            f"{src_m['name']}/{src_d}: no labelled source subject under {src_root} "
            f"(labels glob {src_m['domains'][src_d].get('labels')!r})"
        )
    rng.shuffle(src_items)
    n_val = _take(src_items, source_val_fraction, minimum=1 if len(src_items) > 1 and source_val_fraction > 0 else 0)
    src_val, src_train = src_items[:n_val], src_items[n_val:]
    if max_source_subjects is not None:
        src_train = src_train[:max_source_subjects]

    tgt_all = scan_domain(tgt_m, tgt_d, tgt_root)
    tgt_lab = [e for e in tgt_all if "label" in e]
    tgt_unlab = [e for e in tgt_all if "label" not in e]
    rng.shuffle(tgt_lab)
    notes = []
    if tgt_lab:
        n_test = _take(tgt_lab, target_test_fraction, minimum=1)
        if max_target_test_subjects is not None:
            n_test = min(n_test, max_target_test_subjects)
        test, pool = tgt_lab[:n_test], tgt_lab[n_test:]
    else:
        test, pool = [], []
        notes.append(
            f"{tgt_m['name']}/{tgt_d} has no labels in the local copy: target_test and oracle_training are empty"
        )
    if oracle == "disjoint":
        half = len(pool) // 2
        oracle_items, adapt_lab = pool[:half], pool[half:]
    else:
        oracle_items, adapt_lab = pool, pool
    if setting == "transductive":
        tgt_train = sorted(test, key=lambda e: e["id"])
    else:
        tgt_train = sorted(adapt_lab + tgt_unlab, key=lambda e: e["id"])
    if not tgt_train:
        raise ManifestError(f"{tgt_m['name']}/{tgt_d}: no target image left for target_training under {tgt_root}")

    def srt(items: list) -> list:
        return sorted(items, key=lambda e: e["id"])

    dl: dict[str, Any] = {
        "name": f"{src_m['name']}:{src_d}->{tgt_m['name']}:{tgt_d}",
        **conv,
        "setting": setting,
        "seed": seed,
        "source": {"manifest": src_m["name"], "domain": src_d, "root": str(src_root.resolve())},
        "target": {"manifest": tgt_m["name"], "domain": tgt_d, "root": str(tgt_root.resolve())},
        "source_training": _with_spacing(srt(src_train), src_m, src_d, True),
        "source_validation": _with_spacing(srt(src_val), src_m, src_d, True),
        "target_training": _with_spacing(tgt_train, tgt_m, tgt_d, False),
        "target_test": _with_spacing(srt(test), tgt_m, tgt_d, True),
        "oracle_training": _with_spacing(srt(oracle_items), tgt_m, tgt_d, True),
    }
    if src_m.get("spacing_unit"):
        dl["spacing_unit"] = src_m["spacing_unit"]
    if notes:
        dl["notes"] = notes
    if validate:
        validate_uda_datalist(dl, deep=deep)
    return write_uda_datalist(dl, out)


def _how_to_get(manifest: Mapping[str, Any]) -> str:
    where = manifest.get("homepage") or "the dataset's official page (see the manifest's citations)"
    terms = manifest.get("licence", {}).get("terms", "")
    return (
        f"dataset '{manifest['name']}' has no open, checksummed download in its manifest (access: "
        f"{manifest['access']}). Obtain it from {where}{' (' + terms + ')' if terms else ''}, unpack it so that it "
        f"matches the manifest's 'layout', then call build_datalist on that folder; or pass url= (and hash_val=) "
        "if you have a direct link."
    )


def download(
    name: str,
    root: str | os.PathLike,
    *,
    url: str | None = None,
    hash_val: str | None = None,
    hash_type: str | None = None,
    progress: bool = True,
) -> str:
    """Download and extract an openly downloadable dataset into ``<root>/<name>``; return that folder.

    Uses :func:`monai.apps.utils.download_url` (hash check on the archive) and
    :func:`monai.apps.utils.extractall`. Extraction goes to a temporary folder that is renamed into place
    only when complete, and a marker file records the archive hash: calling again with the same archive
    is a no-op (nothing re-downloaded or overwritten); an existing ``<root>/<name>`` that is not a complete
    download from this function is never overwritten.

    Args:
        name: manifest name.
        root: folder receiving the archive and the extracted ``<name>/`` folder.
        url: override the manifest's URL (e.g. a mirror, or a link you got after registration).
        hash_val: expected hash of the archive (default: the manifest's, when ``url`` is not given).
        hash_type: ``md5``/``sha1``/``sha256``/``sha512`` (default: the manifest's, else ``sha256``).
        progress: show a progress bar.

    Raises:
        ManifestError: no open download for this dataset (the message says how to obtain it), or the target
            folder exists and is not a complete download.
        ValueError: the archive's hash does not match (nothing is extracted).
    """
    from monai.apps.utils import HashCheckError, download_url, extractall

    manifest = load_manifest(name)
    spec = manifest.get("download") or {}
    if url is None:
        if not spec:
            raise ManifestError(_how_to_get(manifest))
        url = spec["url"]
        hash_val = hash_val or spec.get("hash")
        hash_type = hash_type or spec.get("hash_type")
    hash_type = (hash_type or "sha256").lower()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    filename = spec.get("filename") if spec and url == spec.get("url") else None
    filename = filename or os.path.basename(url.split("?")[0]) or f"{name}.zip"
    archive = root / filename
    dest = root / name
    marker = dest / _COMPLETE_MARKER

    if dest.exists():
        if marker.is_file():
            done = json.loads(marker.read_text())
            if hash_val is None or (done.get("hash_type") == hash_type and done.get("hash") == hash_val.lower()):
                return str(dest)
            raise ManifestError(
                f"{dest} holds a complete download with {done.get('hash_type')}={done.get('hash')}, not the requested "
                f"{hash_type}={hash_val}; remove it yourself to re-download"
            )
        if any(dest.iterdir()):
            raise ManifestError(f"{dest} exists and is not a complete download by monai_uda; refusing to overwrite it")
    try:
        download_url(url, filepath=archive, hash_val=hash_val, hash_type=hash_type, progress=progress)
    except HashCheckError as e:
        raise ValueError(
            f"download of '{name}' from {url} failed the {hash_type} check (expected {hash_val}); nothing was "
            f"extracted into {dest}. Details: {e}"
        ) from e
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial.", dir=root))
    try:
        extractall(archive, output_dir=tmp, hash_val=hash_val, hash_type=hash_type, has_base=False)
        digest = hash_val.lower() if hash_val else file_hash(archive, hash_type)
        (tmp / _COMPLETE_MARKER).write_text(
            json.dumps({"url": url, "archive": filename, "hash_type": hash_type, "hash": digest})
        )
        if dest.exists():  # empty folder left by the user: replace it
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)
