"""Paths an artifact names (manifest entries, ONNX external data) must stay inside its folder."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from edgegen.runtimes.artifact import (
    Artifact,
    digest_files,
    load_artifact,
    save_manifest,
)
from edgegen.runtimes.errors import EdgegenError
from edgegen.runtimes.paths import check_graph, inside, onnx_external_locations
from helpers import assert_user_error, run_cli
from onnx import TensorProto, external_data_helper, helper, numpy_helper

IO = {"inputs": [{"name": "x", "dtype": "float32", "shape": [1, 4]}],
      "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}], "dims": {}}


def tensor(name, n=4):
    return numpy_helper.from_array(np.arange(n, dtype=np.float32).reshape(1, n), name)


def add_model(init=True):
    """y = x + w, w an initializer (or, with init=False, a Constant node's attribute)."""
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    inits = [tensor("w")]
    if not init:
        nodes.insert(0, helper.make_node("Constant", [], ["w"], value=tensor("w")))
        inits = []
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def if_model():
    """Initializers and Constant tensors at top level and inside both branches of an If."""
    def branch(name):
        c = helper.make_node("Constant", [], [f"{name}_c"], value=tensor(f"{name}_c"))
        add = helper.make_node("Add", [f"{name}_c", f"{name}_i"], [f"{name}_out"])
        return helper.make_graph([c, add], name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 4])],
                                 [tensor(f"{name}_i")])
    nodes = [helper.make_node("Constant", [], ["top_c"], value=tensor("top_c")),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch("then"), else_branch=branch("else")),
             helper.make_node("Constant", [], ["many"], value=tensor("many", 8))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [tensor("top_i")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def onnx_locations(path):
    """onnx's own listing of the external-data locations, one per tensor."""
    model = onnx.load(str(path), load_external_data=False)
    return sorted(external_data_helper.ExternalDataInfo(t).location
                  for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t))


def save_external(model, path, **kw):
    onnx.save_model(model, str(path), save_as_external_data=True, size_threshold=0, convert_attribute=True, **kw)


def set_location(model, location):
    for t in external_data_helper._get_all_tensors(model):
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location


# --- inside -------------------------------------------------------------------------------------

def test_inside_accepts_relative_paths(tmp_path):
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a/model.onnx", "graph") == tmp_path / "a/model.onnx"
    assert inside(tmp_path, "a/../b.json", "file") == tmp_path / "a/../b.json"
    assert inside(tmp_path, "missing/x", "file") == tmp_path / "missing/x"


@pytest.mark.parametrize("rel", ["../x.onnx", "a/../../x.onnx", "/etc/passwd"])
def test_inside_refuses_escapes(tmp_path, rel):
    (tmp_path / "a").mkdir()
    with pytest.raises(EdgegenError, match="outside the artifact folder") as e:
        inside(tmp_path, rel, "graph")
    assert rel in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_inside_refuses_symlinks_pointing_out(tmp_path):
    root, out = tmp_path / "art", tmp_path / "elsewhere"
    root.mkdir()
    out.mkdir()
    (out / "secret").write_text("x")
    (root / "file").symlink_to(out / "secret")
    (root / "dir").symlink_to(out)
    (root / "loop").symlink_to(root / "loop")
    for rel in ("file", "dir/secret", "dir", "loop"):
        with pytest.raises(EdgegenError, match="outside"):
            inside(root, rel, "file")
    (root / "ok").symlink_to(root / "dir2")  # a symlink that stays inside is fine
    assert inside(root, "ok/x", "file") == root / "ok/x"


def test_inside_refuses_non_paths(tmp_path):
    with pytest.raises(EdgegenError, match="not a path"):
        inside(tmp_path, None, "graph")


# --- the protobuf walker against onnx -----------------------------------------------------------

@pytest.mark.parametrize("one_file", [True, False])
def test_walker_matches_onnx(tmp_path, one_file):
    path = tmp_path / "m.onnx"
    kw = {"all_tensors_to_one_file": True, "location": "weights.data"} if one_file else {"all_tensors_to_one_file": False}
    save_external(if_model(), path, **kw)
    expected = onnx_locations(path)
    assert len(expected) == 7  # a Constant and an initializer at top level and in each branch, and "many"
    assert sorted(onnx_external_locations(path)) == expected
    assert len(set(expected)) == (1 if one_file else 7)


def test_walker_finds_constant_attribute_tensor(tmp_path):
    path = tmp_path / "m.onnx"
    save_external(add_model(init=False), path, location="const.data")
    assert onnx_locations(path) == ["const.data"]
    assert onnx_external_locations(path) == ["const.data"]


def test_walker_finds_sparse_and_function_tensors(tmp_path):
    # onnx's helper does not list these, but onnxruntime may still read them.
    model = add_model()
    values, indices = tensor("sv"), numpy_helper.from_array(np.array([0, 2], np.int64), "si")
    external_data_helper.set_external_data(values, "sparse_values.data")
    external_data_helper.set_external_data(indices, "sparse_indices.data")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1, 4]))
    fn_tensor = tensor("fc")
    external_data_helper.set_external_data(fn_tensor, "function.data")
    fn = helper.make_function("local", "f", [], ["o"], [helper.make_node("Constant", [], ["o"], value=fn_tensor)],
                              [helper.make_opsetid("", 17)])
    model.functions.append(fn)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert sorted(onnx_external_locations(path)) == ["function.data", "sparse_indices.data", "sparse_values.data"]


def test_walker_skips_inline_data(tmp_path):
    model = add_model()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(1 << 20, np.float32), "big"))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    assert onnx_external_locations(path) == []
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert onnx_external_locations(tmp_path / "empty.onnx") == []


@pytest.mark.parametrize("data", [b"\x3a\xff\xff", b"\x0b", b"\x3a\x10abc", b"\x00\x01", b"\x3a\x80"])
def test_walker_refuses_malformed_files(tmp_path, data):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(EdgegenError, match="not a valid ONNX file"):
        onnx_external_locations(path)


def test_walker_refuses_truncated_model(tmp_path):
    full = tmp_path / "m.onnx"
    save_external(if_model(), full, location="w.data")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full.read_bytes()[:-20])
    with pytest.raises(EdgegenError, match="not a valid ONNX file"):
        onnx_external_locations(cut)


# --- check_graph --------------------------------------------------------------------------------

@pytest.mark.parametrize("location", ["../../outside.data", "/etc/passwd", "sub/../../../x.data"])
def test_check_graph_refuses_external_data_outside(tmp_path, location):
    root = tmp_path / "art"
    (root / "m").mkdir(parents=True)
    model = add_model()
    save_external(model, root / "m/model.onnx", location="model.data")
    check_graph(root, root / "m/model.onnx")
    set_location(model, location)
    (root / "m/model.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(EdgegenError, match="outside") as e:
        check_graph(root, root / "m/model.onnx")
    assert location in str(e.value) and "model.onnx" in str(e.value)


def test_check_graph_refuses_external_data_symlinked_out(tmp_path):
    root = tmp_path / "art"
    (root / "m").mkdir(parents=True)
    save_external(add_model(), root / "m/model.onnx", location="model.data")
    shutil.move(root / "m/model.data", tmp_path / "model.data")
    (root / "m/model.data").symlink_to(tmp_path / "model.data")
    with pytest.raises(EdgegenError, match="external data model.data resolves outside"):
        check_graph(root, root / "m/model.onnx")


def test_check_graph_refuses_graph_outside(tmp_path):
    (tmp_path / "art").mkdir()
    save_external(add_model(), tmp_path / "model.onnx", location="model.data")
    with pytest.raises(EdgegenError, match="outside"):
        check_graph(tmp_path / "art", tmp_path / "art/../model.onnx")
    check_graph(tmp_path, tmp_path / "model.onnx")


def test_make_session_checks_graph_with_root(tmp_path):
    from edgegen.runtimes.onnxruntime_backend import make_session

    (tmp_path / "art").mkdir()
    save_external(add_model(), tmp_path / "model.onnx", location="model.data")
    make_session(tmp_path / "model.onnx")  # no root: no check, as before
    with pytest.raises(EdgegenError, match="outside"):
        make_session(tmp_path / "model.onnx", root=tmp_path / "art")
    y = make_session(tmp_path / "model.onnx", root=tmp_path).run(None, {"x": np.ones((1, 4), np.float32)})[0]
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]])


# --- whole artifacts ----------------------------------------------------------------------------

def make_artifact(root: Path) -> dict:
    """A one-component artifact with external data, a manifest-level file, a denoise and a sampler graph."""
    (root / "m").mkdir(parents=True)
    save_external(add_model(), root / "m/model.onnx", location="model.data")
    (root / "extra.json").write_text("{}")
    onnx.save_model(add_model(), str(root / "m/step.onnx"))
    graph_files = ["m/model.onnx", "m/model.data"]
    manifest = {
        "family": "sd15", "pipeline": {"defaults": {}},
        "components": {"m": {"graph": "m/model.onnx", "files": digest_files(root, graph_files), "io": IO}},
        "files": digest_files(root, ["extra.json", "m/step.onnx"]),
        "denoise_graphs": {"d": {"graph": "m/step.onnx", "files": digest_files(root, ["m/step.onnx"])}},
        "sampler_graphs": {"s": {p: {"graph": "m/step.onnx", "files": digest_files(root, ["m/step.onnx"])}
                                 for p in ("step", "scale")}},
    }
    save_manifest(root, manifest)
    return json.loads((root / "manifest.json").read_text())


def rewrite(root, manifest):
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def art(tmp_path):
    root = tmp_path / "art"
    return root, make_artifact(root)


def assert_refused(root):
    for verify in (True, False):
        with pytest.raises(EdgegenError, match="outside") as e:
            load_artifact(root, verify=verify)
        assert "\n" not in str(e.value)
    assert_user_error(run_cli("info", root), "outside")
    assert_user_error(run_cli("info", "--no-verify", root), "outside")


def test_untampered_artifact_loads(art):
    root, _ = art
    a = load_artifact(root)
    assert a.graph_path("m") == root / "m/model.onnx"
    assert run_cli("info", "--json", root).exit_code == 0


def test_real_export_loads():
    if not Path("/tmp/eg/sd15/manifest.json").is_file():
        pytest.skip("no exported artifact at /tmp/eg/sd15")
    load_artifact("/tmp/eg/sd15", verify=False)


def test_component_graph_outside(art, tmp_path):
    root, manifest = art
    (tmp_path / "outside").mkdir()
    shutil.copy(root / "m/model.onnx", tmp_path / "outside/model.onnx")
    shutil.copy(root / "m/model.data", tmp_path / "outside/model.data")
    rel = "../outside/model.onnx"
    manifest["components"]["m"].update(graph=rel, files=digest_files(root, [rel, "../outside/model.data"]))
    rewrite(root, manifest)
    assert_refused(root)


def test_external_data_outside(art, tmp_path):
    root, manifest = art
    model = onnx.load(str(root / "m/model.onnx"), load_external_data=False)
    set_location(model, "../../outside.data")
    (root / "m/model.onnx").write_bytes(model.SerializeToString())
    shutil.copy(root / "m/model.data", tmp_path / "outside.data")
    manifest["components"]["m"]["files"] = digest_files(root, ["m/model.onnx"])
    rewrite(root, manifest)
    assert_refused(root)


@pytest.mark.parametrize("what", ["file", "dir"])
def test_graph_symlinked_out(art, tmp_path, what):
    root, _ = art
    out = tmp_path / "elsewhere"
    shutil.move(root / "m", out)
    if what == "dir":
        (root / "m").symlink_to(out)
    else:
        (root / "m").mkdir()
        for f in out.iterdir():
            (root / "m" / f.name).symlink_to(f)
    assert_refused(root)


@pytest.mark.parametrize("tamper", [
    lambda m: m["files"].update({"../x.json": {"bytes": 0, "sha256": ""}}),
    lambda m: m["components"]["m"]["files"].update({"/etc/passwd": {"bytes": 0, "sha256": ""}}),
    lambda m: m["denoise_graphs"]["d"].update(graph="../d.onnx"),
    lambda m: m["denoise_graphs"]["d"]["files"].update({"m/../../d.onnx": {}}),
    lambda m: m["sampler_graphs"]["s"]["scale"].update(graph="/tmp/scale.onnx"),
    lambda m: m["sampler_graphs"]["s"]["step"]["files"].update({"../step.onnx": {}}),
    lambda m: m["components"]["m"].update(compiled={"files": ["model.data", "../../x.engine"]}),
    lambda m: m["components"]["m"].update(compiled={"files": ["model.data"], "blob": "../../x.blob"}),
], ids=["files", "component-files", "denoise-graph", "denoise-files", "sampler-graph", "sampler-files", "compiled",
        "compiled-blob"])
def test_every_manifest_path_is_checked(art, tamper):
    root, manifest = art
    tamper(manifest)
    rewrite(root, manifest)
    assert_refused(root)


def test_compiled_files_inside_are_fine(art):
    root, manifest = art
    manifest["components"]["m"]["compiled"] = {"files": ["model.data"], "cache_dir": "cache"}
    rewrite(root, manifest)
    load_artifact(root)


def test_graph_path_checks(tmp_path):
    a = Artifact(tmp_path, {"components": {"m": {"graph": "../m.onnx"}}})
    with pytest.raises(EdgegenError, match="component m graph ../m.onnx resolves outside"):
        a.graph_path("m")


def test_relative_root(art, monkeypatch, tmp_path):
    root, _ = art
    monkeypatch.chdir(tmp_path)
    load_artifact(os.path.relpath(root, tmp_path))


# --- every backend refuses before it reads --------------------------------------------------------

def _escapes(tmp_path):
    """(label, root, graph) for a graph outside, external data outside, and a symlink out."""
    root = tmp_path / "art"
    (root / "m").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    save_external(add_model(), outside / "model.onnx", location="model.data")
    cases = [("graph path", root, root / ".." / "outside" / "model.onnx")]
    model = add_model()
    save_external(model, root / "m/model.onnx", location="model.data")
    set_location(model, "../../outside/model.data")
    (root / "m/ext.onnx").write_bytes(model.SerializeToString())
    cases.append(("external data", root, root / "m/ext.onnx"))
    (root / "m/link.onnx").symlink_to(outside / "model.onnx")
    cases.append(("symlink", root, root / "m/link.onnx"))
    return cases


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tensorrt", "tensorrt-rtx"])
def test_every_backend_refuses_paths_outside(tmp_path, backend):
    """Refused by the path check itself: no backend library is needed to get that far, so the
    TensorRT backends (not installable here) are covered too."""
    from edgegen.runtimes.backend import ComponentSpec, backend_class
    from edgegen.runtimes.iospec import IOSpec

    cls = backend_class(backend)
    if backend == "openvino" and cls.missing():
        pytest.skip(cls.missing())
    be = cls()
    io = IOSpec.from_dict(IO)
    for label, root, graph in _escapes(tmp_path):
        with pytest.raises(EdgegenError, match="resolves outside the artifact folder"):
            be.load(ComponentSpec("m", graph, io, root))
