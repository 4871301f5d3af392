"""`edgegen optimize`: registered passes over an artifact's ONNX graphs, behind a quality gate.

    from edgegen.optimize.apply import optimize
    from edgegen.optimize.registry import get_pass
    optimize("build/sd15", [get_pass("int8")], "build/sd15-int8")

registry.py  Pass, Thresholds, the registry, pass ordering/compatibility
passes/      fp16 (fp32 islands), bf16, int8 (static QDQ), int8-dynamic, fp8, int4, prune
calibrate.py trajectories of the parent pipeline: calibration inputs, gate data
gate.py      cosine / relative error per component, PSNR / SSIM end to end
apply.py     plan, run the chain per component, gate, write the artifact
commands.py  the click command
"""
