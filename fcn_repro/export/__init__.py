"""fcn_repro.export: the Caffe FCNs for runtimes that no longer read Caffe files.

* :func:`to_onnx` (and ``python -m fcn_repro.export``): one ONNX file that
  runs every input size (and batch) as Caffe would, Caffe blob names as input
  and output names, checked with onnxruntime (``--check``).
* :func:`export_program`: ``torch.export`` with dynamic batch, height and width.
* :class:`TorchvisionStyle`: ``model(x)["out"]``, torchvision's segmentation API.
* :func:`translation_table`: the ONNX translations of the ``fcn_repro`` ops, for
  a direct ``torch.onnx.export(..., custom_translation_table=...)``.

onnx, onnxscript and onnxruntime are optional (``pip install "fcn_repro[onnx]"``)
and imported only when an ONNX function runs.
"""
from __future__ import annotations

from .adapters import TorchvisionStyle
from .onnx_export import DEFAULT_OPSET, OnnxExport, check_onnx, to_onnx, translation_table
from .program import ExportError, check_exportable, example_inputs, export_program

__all__ = ["TorchvisionStyle", "to_onnx", "check_onnx", "OnnxExport", "DEFAULT_OPSET", "translation_table",
           "export_program",
           "example_inputs", "check_exportable", "ExportError"]
