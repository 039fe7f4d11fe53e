"""Deploying a network elsewhere: ONNX export (:func:`export_onnx`, :func:`build_onnx`) and
running the exported graph in onnxruntime (:mod:`netsurgery.export.runtime`). Needs the
optional ``onnx`` / ``onnxruntime`` packages (``pip install -e '.[onnx]'``)."""
from .onnx_export import (
    DEFAULT_OPSET,
    ExportedModel,
    ExportInfo,
    ExportResult,
    OnnxOutput,
    build_onnx,
    export_heads,
    export_onnx,
    read_info,
)

__all__ = ["DEFAULT_OPSET", "ExportedModel", "ExportInfo", "ExportResult", "OnnxOutput",
           "build_onnx", "export_heads", "export_onnx", "read_info"]
