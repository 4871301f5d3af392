"""What a saved .mlpackage declares, read back from its protobuf spec (never from what the
converter was asked for): IO names, dtypes and shapes, the spec version (which fixes the oldest
OS that loads it), edgegen's metadata, and how many weight elements are stored at how many bits.

Reads model.mlmodel only: weights stay in weight.bin, so this is cheap on multi-GB models.
Needs coremltools (its protobuf classes), not torch; prediction is not involved, so it runs on
Linux.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

# Spec version -> the OS releases that introduced it (what minimum_deployment_target maps to).
SPEC_OS = {7: ("iOS16", "macOS13"), 8: ("iOS17", "macOS14"), 9: ("iOS18", "macOS15"), 10: ("iOS26", "macOS26")}
ARRAY_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}
BITS = {"FLOAT32": 32, "FLOAT16": 16, "BFLOAT16": 16, "INT32": 32, "INT16": 16, "UINT16": 16, "INT8": 8, "UINT8": 8,
        "INT4": 4, "UINT4": 4, "UINT6": 6, "UINT3": 3, "UINT2": 2, "UINT1": 1, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8}
METADATA_PREFIX = "edgegen."


def _dims(tensor_type) -> list[int]:
    return [d.constant.size for d in tensor_type.dimensions]


def _feature(f) -> dict:
    arr = f.type.multiArrayType
    return {"name": f.name, "dtype": ARRAY_DTYPES.get(arr.dataType, str(arr.dataType)), "shape": list(arr.shape)}


def _weights(spec) -> dict:
    """Stored weight elements by bit width, dense (fp16/fp32 consts in weight.bin) and compressed
    (the constexpr ops that expand palettized or quantized weights at load or run time)."""
    from coremltools.proto import MIL_pb2

    name_of = MIL_pb2.DataType.Name
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    producer = {o.name: op for op in ops for o in op.outputs}

    def value(op, key):
        """An op input or attribute as (dtype name, dims); inputs may be inline values or const refs."""
        if key in op.attributes:
            t = op.attributes[key].type.tensorType
            return name_of(t.dataType), _dims(t)
        arg = op.inputs[key].arguments[0]
        if arg.WhichOneof("binding") == "value":
            t = arg.value.type.tensorType
        else:
            t = producer[arg.name].attributes["val"].type.tensorType
        return name_of(t.dataType), _dims(t)

    dense, compressed, kinds = Counter(), Counter(), Counter()
    feeds_constexpr = set()
    for op in ops:
        if op.type.startswith("constexpr"):
            feeds_constexpr |= {a.name for v in op.inputs.values() for a in v.arguments if a.name}
    for op in ops:
        if op.type == "const":
            val = op.attributes["val"]
            if val.WhichOneof("value") == "blobFileValue" and op.outputs[0].name not in feeds_constexpr:
                t = val.type.tensorType
                dense[BITS.get(name_of(t.dataType), 0)] += math.prod(_dims(t))
        elif op.type.startswith("constexpr"):
            elems = math.prod(_dims(op.outputs[0].type.tensorType))
            if op.type == "constexpr_lut_to_dense":
                # iOS16: a flat LUT of 2**n entries; iOS18: (..., 2**n, vector size).
                _, lut = value(op, "lut")
                bits = int(math.log2(lut[0] if len(lut) == 1 else lut[-2]))
            elif op.type == "constexpr_affine_dequantize":
                bits = BITS[value(op, "quantized_data")[0]]
            elif op.type == "constexpr_blockwise_shift_scale":
                bits = BITS[value(op, "data")[0]]
            else:
                bits = 0   # a constexpr kind this reader does not size (sparse masks): counted, not sized
            compressed[bits] += elems
            kinds[op.type] += 1
    total = sum(dense.values()) + sum(compressed.values())
    stored = sum(b * n for b, n in dense.items()) + sum(b * n for b, n in compressed.items())
    return {"dense": {str(b): n for b, n in sorted(dense.items())},
            "compressed": {str(b): n for b, n in sorted(compressed.items())},
            "constexpr_ops": dict(kinds),
            "average_bits": round(stored / total, 3) if total else None}


def read_package(path: str | Path) -> dict:
    """The spec summary the manifest records for one .mlpackage."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    meta = dict(spec.description.metadata.userDefined)
    version = spec.specificationVersion
    fn = spec.mlProgram.functions["main"] if spec.WhichOneof("Type") == "mlProgram" else None
    return {
        "type": spec.WhichOneof("Type"),
        "spec_version": version,
        "deployment_target": list(SPEC_OS.get(version, ())),   # the oldest OS releases that load it
        "opset": fn.opset if fn is not None else None,
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "metadata": {k[len(METADATA_PREFIX):]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)},
        "weights": _weights(spec) if fn is not None else None,
    }
