"""Activation ranges for static quantization, computed with one copy of the weights in memory.

onnxruntime.quantization's `quantize_static` holds three copies of a model's weights at its
peak: the model it loads first (kept through calibration, for the quantizer), the calibrator's
own copy (kept while its session runs) and the session's: 10.77 GiB for SD-Turbo's 3.3 GB U-Net
(bench/results/cpu_peers_sdturbo.json), so about 33 for SDXL's 10.3 GB U-Net. Here calibration
runs alone first, with the calibrator's copy dropped once it has saved the augmented model its
session loads (it needs only the graph after that), and the library's calibration cache hands
the ranges to `quantize_static`, which then loads the model once and runs no calibrator. The
calibrators, their histograms and range computation are the library's; what this file adds is
the order and the dropped copy.
"""
from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import onnx

# create_calibrator's defaults for each method (the test checks that the ranges equal those of
# create_calibrator itself on the same data); its keys are the methods a pass config may name.
METHODS = {
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True},
    "entropy": {"num_bins": 128, "num_quantized_bins": 128, "symmetric": False},
    "minmax": {"symmetric": False, "moving_average": False, "averaging_constant": 0.01,
               "max_intermediate_outputs": None, "per_channel": False},
    "distribution": {"num_bins": 2048, "scenario": "same"},
}


def _calibrator_class(method: str):
    from onnxruntime.quantization import calibrate as C

    return {"percentile": C.PercentileCalibrater, "entropy": C.EntropyCalibrater,
            "minmax": C.MinMaxCalibrater, "distribution": C.DistributionCalibrater}[method]


def compute_ranges(model_path: Path, reader, method: str, op_types: list[str], options: dict,
                   cache: Path, providers: list[str] | None = None):
    """Calibrate `model_path` on `reader` (one sample at a time) and write onnxruntime's
    calibration cache to `cache`, for `quantize_static(..., calibration_cache_path=cache)`.
    `options` are create_calibrator's extra options (percentile, symmetric, num_bins, ...).
    Returns the CalibrationMethod the cache records, which quantize_static must be given."""
    from onnxruntime.quantization.calibrate import save_tensors_data

    kwargs = {**METHODS[method], **{k: v for k, v in options.items() if k in METHODS[method]}}
    with tempfile.TemporaryDirectory(prefix="edgegen-calib-", dir=cache.parent) as tmp:
        cal = _calibrator_class(method)(model_path, op_types, str(Path(tmp) / "augmented.onnx"),
                                        use_external_data_format=True, **kwargs)
        cal.augment_graph()     # saves the augmented model, weights included, for the session
        # The calibrator reads only its graph from here on: swap its copy for the saved graph
        # without the weights. (Clearing the initializers in place frees nothing: protobuf's upb
        # backend keeps a message's memory in its arena until the whole message is freed;
        # SDXL's U-Net peaked at 20.7 GiB that way: bench/results/quantize_sdxl_int8_memory.md.)
        cal.model = onnx.load(str(Path(tmp) / "augmented.onnx"), load_external_data=False)
        gc.collect()
        cal.execution_providers = providers or ["CPUExecutionProvider"]
        cal.create_inference_session()
        # One sample per call: the histogram calibrators keep every exposed activation of a
        # call before they merge it into their histograms.
        for i in range(len(reader)):
            reader.set_range(i, i + 1)
            cal.collect_data(reader)
        reader.rewind()
        ranges = cal.compute_data()
        del cal
        gc.collect()
    save_tensors_data(ranges, cache)
    return ranges.calibration_method
