"""Fail unless the core of executus loads only standard-library modules.

Imports ``executus`` and every module of the core (everything except the optional
backends named in ``EXTRAS``) in a fresh interpreter, so nothing the test tooling has
already imported counts, and lists any module that is not part of the standard library.
"""

from __future__ import annotations

import json
import subprocess
import sys

EXTRAS = ("executus.redis", "executus._redis", "executus.cli", "executus.metrics")

PROBE = r"""
import json, pkgutil, sys, importlib
extras = tuple(sys.argv[1:])
before = set(sys.modules)
import executus
names = []
for info in pkgutil.walk_packages(executus.__path__, "executus."):
    if info.name.startswith(extras):
        continue
    importlib.import_module(info.name)
    names.append(info.name)
loaded = sorted(set(sys.modules) - before)
print(json.dumps({"core": names, "loaded": loaded}))
"""


def main() -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *EXTRAS], check=True, capture_output=True, text=True
    ).stdout
    report = json.loads(out)
    allowed = set(sys.stdlib_module_names) | {"executus", "_distutils_hack"}
    foreign = sorted({m.split(".")[0] for m in report["loaded"]} - allowed)
    if foreign:
        print(f"the core imports non-stdlib modules: {foreign}", file=sys.stderr)
        return 1
    print(f"ok: {len(report['core'])} core modules import only the standard library")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
