"""Static QDQ int8 builds of an fp32 ONNX model with ONNX Runtime's quantiser (activation ranges calibrated
on training rows); the dynamic one is polyfuse.nn.onnx_int8, which the embedding pass uses too."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np


def quantize_static(src: Path, dst: Path, batches: Iterable[dict[str, np.ndarray]], per_channel: bool = True) -> None:
    """Static QDQ quantisation; ``batches`` are collated training rows used to calibrate ranges."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
    )
    from onnxruntime.quantization import quantize_static as _static

    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{k: b[k] for k in names} for b in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    logging.getLogger("root").setLevel(logging.ERROR)
    _static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": False})
