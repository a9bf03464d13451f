"""sandbox_magic: run a Jupyter cell's shell script inside a gVisor (runsc) sandbox.

    %load_ext sandbox_magic

    %%sandbox --timeout 60
    echo hello from $(hostname) && ls /

Python: `sandbox_magic.run(script, **options) -> SandboxResult`.
"""

from .config import SandboxConfig, make_config
from .errors import SandboxConfigError, SandboxError, SandboxExitError
from .result import SandboxResult
from .runner import run

__all__ = ["run", "SandboxConfig", "SandboxResult", "SandboxError", "SandboxConfigError",
           "SandboxExitError", "make_config", "load_ipython_extension"]


def load_ipython_extension(ipython) -> None:
    from .magic import SandboxMagics
    magics = SandboxMagics(shell=ipython)
    ipython.register_magics(magics)
    # Listed among the shell's configurables, the defaults answer to %config.
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)


def unload_ipython_extension(ipython) -> None:
    pass
