"""A gate for the kill tests: Python imports this at start-up in every process whose PYTHONPATH holds this
folder (the run a test starts with `conftest.gated_env`, and that run's worker processes, which inherit the
environment). Nothing happens unless ``IIC_GATE`` is set.

``IIC_GATE = "module:function:N:needle"`` wraps ``module.function`` so that its N-th call (counted in each
process) whose non-dict arguments' text contains ``needle`` first creates the file ``IIC_GATE_MARKER``, then
waits until the test opens the FIFO ``IIC_GATE_MARKER.release`` for writing (opening a FIFO for reading blocks
until then: no polling), then runs the call. A test that never releases the gate SIGKILLs the run at a known
point: the run cannot have finished in the meantime, whatever the machine's load.
"""

import os

_GATE = os.environ.get("IIC_GATE")

if _GATE:
    import functools
    import importlib

    _module_name, _function_name, _nth, _needle = _GATE.split(":", 3)
    _module = importlib.import_module(_module_name)
    _original = getattr(_module, _function_name)
    _seen = [0]

    @functools.wraps(_original)
    def _held(*args, **kwargs):
        text = " ".join(str(a) for a in list(args) + list(kwargs.values()) if not isinstance(a, dict))
        if _needle in text:
            _seen[0] += 1
            if _seen[0] == int(_nth):
                marker = os.environ["IIC_GATE_MARKER"]
                with open(marker + ".tmp", "w") as f:
                    f.write(f"{os.getpid()}\n")
                os.replace(marker + ".tmp", marker)
                with open(marker + ".release"):  # blocks until the test opens it for writing
                    pass
        return _original(*args, **kwargs)

    setattr(_module, _function_name, _held)
