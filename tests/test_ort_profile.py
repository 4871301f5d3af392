"""bench/ort_profile.py's pure logic: summing onnxruntime's profiler trace, parsing --setting."""
import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "ort_profile.py"
_spec = importlib.util.spec_from_file_location("ort_profile", _PATH)
ort_profile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ort_profile)


def _run(ts):
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 90}


def _node(ts, op, dur_us, shape):
    return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur_us,
            "args": {"op_name": op, "output_type_shape": [{"float": shape}]}}


def test_node_times_skips_the_warm_up_and_groups_by_op_and_width():
    trace = [_run(0), _node(1, "Conv", 5_000_000, [1, 4, 64, 64]),  # warm-up: left out
             _run(100), _node(101, "Conv", 2_000_000, [1, 4, 64, 64]), _node(102, "Conv", 1_000_000, [1, 4, 32, 32]),
             _node(103, "MatMul", 500_000, [1, 4096, 320]),
             _run(200), _node(201, "Conv", 4_000_000, [1, 4, 64, 64]),
             {"cat": "Node", "name": "Conv_fence_before", "ts": 202, "dur": 9_000_000, "args": {}}]
    times, runs = ort_profile.node_times(trace, 1)
    assert runs == 2
    assert times == {("Conv", "64"): [6.0, 2], ("Conv", "32"): [1.0, 1], ("MatMul", "-"): [0.5, 1]}


def test_node_times_refuses_a_trace_without_enough_runs():
    with pytest.raises(SystemExit, match="holds 1 runs; need more than 1"):
        ort_profile.node_times([_run(0), _node(1, "Conv", 10, [1, 1, 1, 1])], 1)


def test_parse_setting():
    assert ort_profile.parse_setting("default") == {}
    assert ort_profile.parse_setting("mem_pattern=0,cpu_mem_arena=1") == {"mem_pattern": False, "cpu_mem_arena": True}
    with pytest.raises(SystemExit, match="'arena=0'.*cpu_mem_arena"):
        ort_profile.parse_setting("arena=0")
    with pytest.raises(SystemExit, match=r"'mem_pattern=off': want KEY=0\|1"):
        ort_profile.parse_setting("mem_pattern=off")
