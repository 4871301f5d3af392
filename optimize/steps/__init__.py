"""Pipeline options: registered, versioned changes to how the pipeline runs (the steps it takes,
how it decodes), each behind the end-to-end quality gate. The runtime side is
runtimes/step_options.py; `apply.py` writes the gated artifact."""
