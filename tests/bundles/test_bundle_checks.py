"""MONAI bundle checks of every bundle's inference network: ``verify_net_in_out`` and ``ckpt_export``.

The commands run exactly as ``python -m monai.bundle <command> ...``: a driver subprocess executes the
``monai.bundle`` CLI module with each command's ``sys.argv`` in turn (one interpreter for all of them:
importing MONAI costs ~7 CPU-seconds on the 2-core CI, the checks themselves ~2 s each). The checkpoint is
a freshly initialised network's state dict. The TorchScript file must load and give the eager network's
output on a random input, and the output must have the channels and spatial shape that ``metadata.json``
promises (``verify_net_in_out`` itself checks only the channels and the dtype). ``verify_metadata`` is run
by each bundle's own test module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from monai.bundle import ConfigParser

from monai_uda.bundle import bundle_dir

BUNDLES = ["source_segmentation", "bn_reestimation_segmentation", "early_feature_refinement_segmentation",
           "variance_sampling_segmentation", "shallow2deep_segmentation", "pixel_alignment_segmentation"]
# (bundle, inference config layers): every inference network, the uncertainty one of BUDA-Seg included
CASES = [(b, ["inference.json"]) for b in BUNDLES] + [
    ("variance_sampling_segmentation", ["inference.json", "inference_uncertainty.json"])]

DRIVER = textwrap.dedent("""
    import json, runpy, sys, traceback
    for i, argv in enumerate(json.loads(sys.argv[1])):
        print(f"=== COMMAND {i} ===", flush=True)
        sys.argv = ["python -m monai.bundle"] + argv
        rc = 0
        try:
            runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            rc = 1
        print(f"=== RC {i} {rc} ===", flush=True)
""")


pytestmark = pytest.mark.usefixtures("one_thread")


def _shape(spec, n):
    """A metadata ``spatial_shape`` with ``"k*n"`` entries evaluated at ``n``."""
    return [int(s) if isinstance(s, int) or str(s).isdigit() else int(str(s).split("*")[0]) * n for s in spec]


def _case_id(case):
    bundle, layers = case
    return "-".join([bundle] + [c[: -len(".json")] for c in layers[1:]])


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """Run both commands for every case in one driver subprocess; ``{case id: (out dir, rcs, log)}``."""
    commands, cases = [], {}
    for bundle, layers in CASES:
        out = tmp_path_factory.mktemp(_case_id((bundle, layers)))
        d = bundle_dir(bundle)
        configs = [str(d / "configs" / c) for c in layers]
        meta_file = str(d / "configs" / "metadata.json")
        parser = ConfigParser()
        parser.read_config(configs)
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")
        common = ["--meta_file", meta_file, "--config_file", configs[0] if len(configs) == 1 else json.dumps(configs)]
        cases[_case_id((bundle, layers))] = (out, len(commands))
        commands += [
            ["verify_net_in_out", "network_def", *common],
            ["ckpt_export", "network_def", "--filepath", str(out / "model.ts"), "--ckpt_file", str(out / "model.pt"),
             *common],
        ]
    r = subprocess.run([sys.executable, "-u", "-c", DRIVER, json.dumps(commands)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    logs = r.stdout.split("=== COMMAND ")
    assert r.returncode == 0 and len(logs) == len(commands) + 1, r.stdout[-3000:]
    results = {}
    for cid, (out, i) in cases.items():
        pair = logs[i + 1 : i + 3]
        rcs = [int(part.rsplit("=== RC ", 1)[1].split()[1]) if "=== RC " in part else None for part in pair]
        results[cid] = (out, rcs, pair)
    return results


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_verify_net_in_out_and_torchscript_export(case, checked):
    bundle, layers = case
    out, rcs, (verify_log, export_log) = checked[_case_id(case)]
    assert rcs[0] == 0 and "data shape of network is verified with no error" in verify_log, verify_log[-3000:]
    assert rcs[1] == 0 and "exported to file" in export_log, export_log[-3000:]
    d = bundle_dir(bundle)
    configs = [str(d / "configs" / c) for c in layers]
    parser = ConfigParser()
    parser.read_config(configs)
    parser.read_meta(str(d / "configs" / "metadata.json"))
    eager = parser.get_parsed_content("network_def").eval()
    eager.load_state_dict(torch.load(out / "model.pt", weights_only=True))

    # the TorchScript file loads, carries the bundle's metadata and configs, and equals the eager network
    extra = {"metadata.json": "", **{c: "" for c in layers}}
    scripted = torch.jit.load(str(out / "model.ts"), map_location="cpu", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["name"] == bundle and meta["version"] == parser["_meta_"]["version"]
    assert json.loads(extra[layers[-1]]) == ConfigParser.load_config_file(configs[-1])
    fmt = parser["_meta_"]["network_data_format"]
    inp, outp = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    x = torch.rand(1, inp["num_channels"], *_shape(inp["spatial_shape"], n=3))  # 48 x 48, not the CLI's 16 x 16
    with torch.no_grad():
        y_ts, y = scripted(x), eager(x)
    assert isinstance(y_ts, torch.Tensor) and isinstance(y, torch.Tensor)  # one tensor, as MONAI Label expects
    assert torch.allclose(y_ts, y, atol=1e-5), (y_ts - y).abs().max()
    assert list(y.shape) == [1, outp["num_channels"], *_shape(outp["spatial_shape"], n=3)]
    assert str(y.dtype).endswith(outp["dtype"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_config_has_the_infer_workflow_properties(bundle):
    # MONAI's ConfigWorkflow(workflow_type="infer") checks InferProperties (dataset_dir among them);
    # the bundle's input folder is dataset_dir, and input_dir follows it
    from monai.bundle import ConfigWorkflow

    d = bundle_dir(bundle) / "configs"
    wf = ConfigWorkflow(config_file=str(d / "inference.json"), meta_file=str(d / "metadata.json"),
                        workflow_type="infer", logging_file=False)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.parser["dataset_dir"] = "/data/target"
    assert wf.parser.get_parsed_content("input_dir") == "/data/target"


# ---------------------------------------------------------------------------------------------
# config layering (MONAI model-zoo pattern) and the parts every bundle shares
# ---------------------------------------------------------------------------------------------

# the config evaluate.json is layered on: --config_file "['configs/<base>','configs/evaluate.json']"
EVAL_BASE = {b: "adapt.json" for b in BUNDLES}
EVAL_BASE.update(source_segmentation="train.json", pixel_alignment_segmentation="train.json")
# what an evaluation is, in every bundle (the validate section: data, inferer, postprocessing, handlers, ...)
SHARED_EVAL_IDS = ("eval_key", "eval_dir", "surface_tolerance", "validate", "initialize", "run", "finalize")
# a layer that runs another workflow states all its steps, even one that happens to equal the base's
WORKFLOW_STEPS = {"initialize", "run", "finalize"}
# the only items in which a bundle's inference.json may differ from source_segmentation's
INFERENCE_OWN_IDS = {"_desc_", "bundle_root", "checkpoint"}
# PAST's segmentation training = source_segmentation's train.json fed with the translated source
PAST_TRAIN_OWN_IDS = {"_desc_", "imports", "bundle_root", "translated_dir", "translated_datalist", "uda",
                      "init_from_source", "source_checkpoint", "source_dir", "source_overrides", "initialize"}


def _raw(bundle, name):
    return ConfigParser.load_config_file(str(bundle_dir(bundle) / "configs" / name))


def _layered(bundle, names):
    """The merged config of ``names`` as ``--config_file`` merges it, macros (``%``) and relative ids resolved."""
    parser = ConfigParser(ConfigParser.load_config_files([str(bundle_dir(bundle) / "configs" / n) for n in names]))
    parser.resolve_macro_and_relative_ids()
    return parser.get()


def _redundant_ids(layer, base, prefix=""):
    """Ids of ``layer`` whose value equals the base config's: a layer should hold only what differs."""
    found = []
    for key, value in layer.items():
        cid = f"{prefix}{key}"
        if key == "_desc_" or cid in WORKFLOW_STEPS:
            continue
        try:
            old = base[cid]
        except (KeyError, IndexError, ValueError, TypeError):
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            found += _redundant_ids(value, base, cid + "#")
        elif value == old:
            found.append(cid)
    return found


def _macro_files(config):
    """``%file#id`` macros (file-relative includes would break MONAI Label and runs from another folder)."""
    if isinstance(config, dict):
        return [m for v in config.values() for m in _macro_files(v)]
    if isinstance(config, list):
        return [m for v in config for m in _macro_files(v)]
    is_file_macro = isinstance(config, str) and config.startswith("%") and ConfigParser.split_path_id(config[1:])[0]
    return [config] if is_file_macro else []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluate_layer_holds_only_what_differs_from_its_base(bundle):
    layer = _raw(bundle, "evaluate.json")
    base = ConfigParser(_raw(bundle, EVAL_BASE[bundle]))
    assert _redundant_ids(layer, base) == [], f"{bundle}/evaluate.json repeats its {EVAL_BASE[bundle]}"
    assert "imports" not in layer  # the base config's imports serve the layer
    assert _macro_files(layer) == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_evaluation_is_the_same_in_every_bundle(bundle):
    ref = _layered("source_segmentation", ["train.json", "evaluate.json"])
    merged = _layered(bundle, [EVAL_BASE[bundle], "evaluate.json"])
    for cid in SHARED_EVAL_IDS:
        assert merged[cid] == ref[cid], f"{bundle}: '{cid}' of {EVAL_BASE[bundle]} + evaluate.json has drifted"
    # the split and the workers are config items, not constants
    assert ref["eval_key"] == "target_test" and "@eval_key" in ref["validate"]["dataset"]["data"]
    assert ref["validate"]["dataset"]["num_workers"] == ref["validate"]["dataloader"]["num_workers"] == "@num_workers"
    assert "num_workers" in _raw(bundle, EVAL_BASE[bundle])
    assert ref["validate"]["evaluator"]["_target_"] == "SupervisedEvaluator"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_config_is_standalone_and_the_same_in_every_bundle(bundle):
    # MONAI Label (BundleInferTask) reads configs/inference.json alone, from a bundle folder that may have been
    # copied alone: no file includes, no layering; what must not drift is checked against the source bundle's
    own, ref = _raw(bundle, "inference.json"), _raw("source_segmentation", "inference.json")
    assert _macro_files(own) == []
    differ = {k for k in own.keys() | ref.keys() if own.get(k) != ref.get(k)}
    assert differ <= INFERENCE_OWN_IDS, f"{bundle}/inference.json drifted from source_segmentation's in {differ}"
    assert own["bundle_root"] == f"$monai_uda.bundle.locate_bundle_root('{bundle}')"
    for cid in ("network_def", "preprocessing", "inferer", "postprocessing"):  # what MONAI Label uses
        assert cid in own


def test_past_segmentation_training_is_the_source_training_on_translated_images():
    src, past = _raw("source_segmentation", "train.json"), _raw("pixel_alignment_segmentation", "train.json")
    differ = {k for k in src.keys() | past.keys() if src.get(k) != past.get(k)}
    assert differ <= PAST_TRAIN_OWN_IDS, f"PAST train.json drifted from source_segmentation's in {differ}"
    assert set(src["imports"]) <= set(past["imports"])
    assert past["uda"]["datalist"] == "@translated_datalist"
    assert any(h["_target_"] == "ignite.handlers.ProgressBar" for h in past["train"]["handlers"])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_exposes_network_transforms_and_engines_as_config_items(bundle):
    base = ConfigParser(_raw(bundle, EVAL_BASE[bundle]))
    assert "network_def" in base or bundle == "variance_sampling_segmentation"  # BUDA-Seg builds it per round
    merged = ConfigParser(_layered(bundle, [EVAL_BASE[bundle], "evaluate.json"]))
    for cid in ("network_def", "network", "validate#preprocessing", "validate#evaluator"):
        assert cid in merged, f"{bundle}: {cid}"


def _trainer_target(config: dict, value):
    """The ``_target_`` a ``train#trainer`` value stands for, following ``@a#b`` references within the config."""
    seen = 0
    while isinstance(value, str) and value.startswith("@") and seen < 10:
        node = config
        for part in value[1:].split("#"):
            node = node[part]
        value, seen = node, seen + 1
    if isinstance(value, dict) and "_target_" in value:
        target = value["_target_"]
        return target if "." in target else f"monai.engines.{target}"
    return None


@pytest.mark.parametrize("path", sorted(str(p) for p in bundle_dir("source_segmentation").parent.glob("*/configs/*.json")))
def test_train_trainer_is_an_engine(path):
    """``--tracking mlflow`` looks for ``train#trainer``: where a config has one, it is a real ignite engine that
    the config runs, not a placeholder pointing at something else."""
    import importlib

    from ignite.engine import Engine

    config = json.loads(open(path).read())
    train = config.get("train")
    if not isinstance(train, dict) or "trainer" not in train:
        return
    target = _trainer_target(config, train["trainer"])
    assert target, f"{path}: train#trainer is {train['trainer']!r}, not an engine"
    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type) and issubclass(cls, Engine), f"{path}: train#trainer is {target}, not an ignite Engine"
    assert any("@train#trainer.run()" in step or "@adapt#trainer.run()" in step or "@translation#trainer.run()" in step
               for step in config.get("run", [])), f"{path}: the config does not run its train#trainer"


def test_every_validator_record_uses_the_library_default():
    """The configs' ``record_validators`` (written out in each, for a reader of the config) equal the library's."""
    from monai_uda.bundle.validator_scores import DEFAULT_RECORD_VALIDATORS

    found = {}
    for b in BUNDLES:
        for f in sorted((bundle_dir(b) / "configs").glob("*.json")):
            cfg = json.loads(f.read_text())
            if isinstance(cfg, dict) and "record_validators" in cfg:
                found[f"{b}/{f.name}"] = cfg["record_validators"]
                assert any("record_validator_scores(" in str(x) for x in cfg.get("run", [])), f"{b}/{f.name}"
    assert len(found) == 5 and all(v == list(DEFAULT_RECORD_VALIDATORS) for v in found.values()), found
