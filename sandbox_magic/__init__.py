"""sandbox_magic: run a Jupyter cell's shell script inside a gVisor (runsc) sandbox.

    %load_ext sandbox_magic

    %%sandbox --timeout 60
    echo hello from $(hostname) && ls /

Python: `sandbox_magic.run(script, **options) -> SandboxResult`.
"""

from .config import SandboxConfig, make_config
from .errors import SandboxConfigError, SandboxError, SandboxExitError
from .result import SandboxResult
from .runner import run, wait_for_teardowns
from .session import Session

__all__ = ["run", "Session", "SandboxPanel", "wait_for_teardowns", "SandboxConfig", "SandboxResult", "SandboxError", "SandboxConfigError",
           "SandboxExitError", "make_config", "load_ipython_extension"]


def __getattr__(name: str):
    # The panel pulls in ipywidgets: import it only when asked for.
    if name == "SandboxPanel":
        from .panel import SandboxPanel
        return SandboxPanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython) -> None:
    from .ledger import cleanup
    from .magic import SandboxMagics
    try:
        removed = cleanup()   # what kernels that died mid-cell left behind
    except Exception as exc:  # never block loading the extension
        print(f"sandbox_magic: cleanup of dead runs failed: {exc}")
    else:
        if removed:
            print(f"sandbox_magic: removed leftovers of dead kernels: {', '.join(removed)}")
    if "SandboxMagics" in ipython.magics_manager.registry:
        return   # loaded already (the cleanup above still ran)
    magics = SandboxMagics(shell=ipython)
    ipython.register_magics(magics)
    # Listed among the shell's configurables, the defaults answer to %config.
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)


def unload_ipython_extension(ipython) -> None:
    pass
