"""Scale-out: batch prediction on Ray Data, serving on Ray Serve, Kubernetes/KServe manifests.

Ray is an optional extra; ``require_ray`` names the install line when it is missing.
May import: ``polyfuse.serve`` (Ray Serve wraps its app), ``polyfuse.deploy`` and everything below.
"""
from __future__ import annotations

from types import ModuleType

from polyfuse.extras import require

RAY_EXTRA = "pip install 'polyfuse[ray]'"


def require_ray(what: str) -> ModuleType:
    """The ``ray`` module, or an error saying how to install it (``what``: the feature asked for)."""
    require("ray", what, modules=["ray"])
    import ray

    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> ModuleType:
    """Connect to the cluster at ``address``, or start a local Ray on the CPUs this process may use."""
    ray = require_ray("--engine ray" if address is None else f"--address {address}")
    from polyfuse.threads import usable_cpus

    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # the dashboard is a web server and metrics agent this job does not need
            ray.init(num_cpus=num_cpus or usable_cpus(), include_dashboard=False, log_to_driver=False)
    return ray
