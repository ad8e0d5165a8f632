"""MONAI Label app serving monai-uda bundles: the ``monaibundle`` sample app's local-bundle path, geometry fixed.

``scripts/monailabel_serve.sh`` copies this file into a work folder (MONAI Label writes ``logs/``
and reads ``model/<bundle>`` inside the app folder) and starts ``monailabel start_server`` on it.
Like MONAI Label's own ``sample-apps/monaibundle`` (which also loads these bundles), every bundle
named by ``--conf models a,b`` is read from ``model/<name>`` (never from the model zoo with
``--conf zoo_source ngc``) and served by MONAI Label's :class:`BundleInferTask`, which reads the
bundle's ``configs/inference.json`` (``network_def``, ``preprocessing``, ``inferer``,
``postprocessing`` minus its ``SaveImaged``) and ``models/model.pt``.

Changes to what ``BundleInferTask`` returns (2D or 3D is the bundle's ``spatial_dims``; every
monai-uda bundle is 2D unless ``--conf bundle_overrides '{"spatial_dims": 3}'`` says otherwise):

- MONAI Label keeps the channel of a 2D prediction, so a H x W image got a 1 x H x W label volume
  whose axes do not match the image. Here a 2D NIfTI image gets a H x W x 1 label (the single-slice
  volume viewers such as 3D Slicer make of it, with the image's affine), a PNG/TIFF image a H x W one.
- 3D: the invertible preprocessing (RAS orientation, resampling) is undone on the prediction, so a
  volume not stored in RAS gets its label in its own voxel grid (MONAI Label's ``Restored`` alone
  wrote the RAS-ordered array under the image's affine: mirrored).
- labels are written as ``uint8`` unless the request asks for another ``result_dtype`` (MONAI
  Label's default float32 cannot be written as PNG at all).

Training, SAM2 and active-learning scoring from the sample app are left out: bundles are trained
and adapted with the toolkit; this app serves them.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, Hashable, Mapping, Sequence

import monailabel
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import get_bundle_models

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class Label2DGeometryd(MapTransform):
    """Give a 2D label the geometry of its image file: ``(1, H, W)`` -> ``(H, W, 1)`` for NIfTI, ``(H, W)`` otherwise.

    Runs after MONAI Label's ``Restored``, which leaves the channel axis on 2D predictions.

    Args:
        keys: the prediction key(s).
        image_path_key: the request key holding the input image's path (its suffix picks the layout).
    """

    def __init__(self, keys: KeysCollection, image_path_key: str = "image_path") -> None:
        super().__init__(keys)
        self.image_path_key = image_path_key

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        """Reshape each key's ``(1, H, W)`` array; anything else is left as it is."""
        d = dict(data)
        nifti = str(d.get(self.image_path_key, "")).lower().endswith(NIFTI_SUFFIXES)
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim == 3 and x.shape[0] == 1:
                x = x[0]
                d[key] = x[..., None] if nifti else x
        return d


class UDABundleInferTask(BundleInferTask):
    """:class:`BundleInferTask` whose labels match their image's geometry and are written as ``uint8``.

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` values.
        overrides: config values set on ``configs/inference.json`` before anything is parsed, like
            ``python -m monai.bundle run ... --spatial_dims 3`` (e.g. ``{"spatial_dims": 3}``).
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Dict[str, str], overrides: Mapping[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self._overrides = dict(overrides or {})
        super().__init__(path, conf, **kwargs)
        if self.is_valid():
            # the bundle's own spatial_dims, not metadata.json's spatial_shape, decides 2D or 3D
            dims = self._spatial_dims()
            if dims in (2, 3):
                self.dimension = dims

    def _load_bundle_config(self, path: str, config: str) -> Any:
        parser = super()._load_bundle_config(path, config)
        for key, value in self._overrides.items():
            parser[key] = value
        return parser

    def _spatial_dims(self) -> int | None:
        if self.bundle_config.get("spatial_dims") is None:
            return None
        return int(self.bundle_config.get_parsed_content("spatial_dims"))

    def inverse_transforms(self, data: Any = None) -> Sequence[Callable] | None:
        """3D: undo every invertible preprocessing step (RAS orientation, resampling) on the logits.

        MONAI Label's ``Restored`` would only resize the RAS-oriented prediction and write it with
        the image's original affine: a volume not stored in RAS came back mirrored. ``[]`` means
        "all invertible pre-transforms" in MONAI Label; 2D pipelines have none that move pixels.
        """
        return [] if self.dimension == 3 else None

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        """The bundle's postprocessing (without ``SaveImaged``), MONAI Label's ``Restored``, then the 2D fix."""
        post = list(super().post_transforms(data))
        if self.dimension == 2:
            post.append(Label2DGeometryd(keys=self.key_pred))
        return post

    def writer(self, data: Dict[str, Any], extension: Any = None, dtype: Any = None) -> Any:
        """MONAI Label's writer, with ``uint8`` labels unless ``dtype`` or the request's ``result_dtype`` says otherwise."""
        if dtype is None and not data.get("result_dtype"):
            dtype = "uint8"
        return super().writer(data, extension=extension, dtype=dtype)


class MyApp(MONAILabelApp):
    """Serves each local bundle of ``--conf models`` with :class:`UDABundleInferTask`."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"monai-uda bundles (MONAI Label {monailabel.__version__})",
            description="Domain-adapted monai-uda segmentation bundles served from local bundle folders",
            version=monailabel.__version__,
        )

    def init_infers(self) -> Dict[str, InferTask]:
        """One inference task per bundle; a bundle MONAI Label cannot load is logged and left out.

        ``--conf bundle_overrides '{"spatial_dims": 3}'`` (a JSON object) overrides config values
        of every served bundle's ``inference.json``.
        """
        overrides = json.loads(self.conf.get("bundle_overrides") or "{}")
        if not isinstance(overrides, dict):
            raise ValueError(f"--conf bundle_overrides must be a JSON object, got {overrides!r}")
        infers: Dict[str, InferTask] = {}
        for name, path in self.models.items():
            task = UDABundleInferTask(path, self.conf, overrides=overrides)
            if not task.is_valid():
                logger.error(f"+++ Bundle {name} at {path} cannot be served (see the warning above)")
                continue
            logger.info(f"+++ Adding Inferer:: {name} => {path}")
            infers[name] = task
        return infers

    def init_strategies(self) -> Dict[str, Strategy]:
        """``random`` and ``first`` (what the sample app offers for picking the next image)."""
        return {"random": Random(), "first": First()}
