"""Sequential memory mode: one stage's components loaded at a time, the same images as resident."""
import numpy as np
import pytest

from edgegen.runtimes import Pipeline
from edgegen.runtimes.errors import EdgegenError


def _watch_loads(pipe):
    """Records, at each component load, which components were still loaded just before it."""
    seen, load = [], pipe.backend.load

    def spy(spec):
        seen.append((spec.name, sorted(pipe._components)))
        return load(spec)

    pipe.backend.load = spy
    return seen


def test_sequential_holds_one_stage_and_gives_the_same_image(tiny_export):
    art, _ = tiny_export("sd15")
    resident = Pipeline.load(art)
    want = resident("a red fox in snow", steps=3, seed=4)
    assert sorted(resident._components) == ["text_encoder", "unet", "vae_decoder"]

    pipe = Pipeline.load(art, memory="sequential")
    seen = _watch_loads(pipe)
    got = pipe("a red fox in snow", steps=3, seed=4)
    np.testing.assert_array_equal(got, want)
    # CFG encodes the prompt and the empty negative with one text encoder session, then the UNet
    # runs every step on one session, then the decoder: three loads, each with the last stage gone.
    assert seen == [("text_encoder", []), ("unet", []), ("vae_decoder", [])]
    assert sorted(pipe._components) == ["vae_decoder"]

    seen.clear()
    np.testing.assert_array_equal(pipe("a red fox in snow", steps=3, seed=4), want)
    assert [name for name, _ in seen] == ["text_encoder", "unet", "vae_decoder"]   # reloaded per image


def test_sequential_img2img_releases_the_encoder_before_the_text_stage(tiny_export):
    art, _ = tiny_export("sd15")
    image = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    want = Pipeline.load(art)("a house", steps=4, seed=1, image=image, strength=0.5)
    pipe = Pipeline.load(art, memory="sequential")
    seen = _watch_loads(pipe)
    np.testing.assert_array_equal(pipe("a house", steps=4, seed=1, image=image, strength=0.5), want)
    assert seen == [("vae_encoder", []), ("text_encoder", []), ("unet", []), ("vae_decoder", [])]


def test_stage_of_groups_every_text_encoder():
    class Art:
        manifest = {"pipeline": {"text_encoders": [{"component": "text_encoder"}, {"component": "text_encoder_2"}],
                                 "denoiser": "unet"}}

    pipe = Pipeline.__new__(Pipeline)
    pipe.recipe = Art.manifest["pipeline"]
    pipe.options = {"deepcache": {"component": "unet_shallow"}}
    assert pipe.stage_of("unet_shallow") == "denoiser"
    assert {pipe.stage_of(n) for n in ("text_encoder", "text_encoder_2")} == {"text"}
    assert [pipe.stage_of(n) for n in ("unet", "vae_decoder", "vae_encoder")] == ["denoiser", "vae_decoder",
                                                                                "vae_encoder"]


def test_unknown_memory_mode_is_refused(tiny_export):
    art, _ = tiny_export("sd15")
    with pytest.raises(EdgegenError, match="unknown memory mode 'lean'; known: resident, sequential"):
        Pipeline.load(art, memory="lean")


def test_onnxruntime_memory_options_reach_the_session_and_keep_the_image(tiny_export):
    art, _ = tiny_export("sd15")
    want = Pipeline.load(art)("a boat", steps=2, seed=3)
    opts = {"cpu_mem_arena": False, "mem_pattern": False, "prepacking": False}
    pipe = Pipeline.load(art, backend_options=opts)
    np.testing.assert_array_equal(pipe("a boat", steps=2, seed=3), want)
    sess = pipe.component("unet").session
    so = sess.get_session_options()
    assert (so.enable_cpu_mem_arena, so.enable_mem_pattern) == (False, False)
    assert so.get_session_config_entry("session.disable_prepacking") == "1"


def test_unknown_onnxruntime_option_is_refused_before_a_session(tiny_export):
    art, _ = tiny_export("sd15")
    with pytest.raises(EdgegenError, match="unknown onnxruntime option 'arena'; known: cuda_graph, device_id, "
                                           "cpu_mem_arena, mem_pattern, prepacking"):
        Pipeline.load(art, backend_options={"arena": False})


def test_sequential_cpu_sessions_drop_the_arena_unless_told(tiny_export):
    art, _ = tiny_export("sd15")
    arena = lambda pipe: pipe.component("unet").session.get_session_options().enable_cpu_mem_arena  # noqa: E731
    assert arena(Pipeline.load(art)) is True
    assert arena(Pipeline.load(art, memory="sequential")) is False
    assert arena(Pipeline.load(art, memory="sequential", backend_options={"cpu_mem_arena": True})) is True


def test_cpu_sessions_run_without_the_memory_pattern_unless_told(tiny_export):
    # bench/results/ort_profile_sd15_unet_pattern.md: the pattern's block costs the 2nd run its page faults.
    art, _ = tiny_export("sd15")
    pattern = lambda pipe: pipe.component("unet").session.get_session_options().enable_mem_pattern  # noqa: E731
    assert pattern(Pipeline.load(art)) is False
    assert pattern(Pipeline.load(art, memory="sequential")) is False
    assert pattern(Pipeline.load(art, backend_options={"mem_pattern": True})) is True
