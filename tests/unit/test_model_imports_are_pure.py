"""Model modules import only torch and the standard library (docs/model.md, "Modules").

Every module under `llmvox_tts.model` (found by walking the package, so new modules are covered
without editing this test) is imported in a fresh interpreter; afterwards none of the service,
I/O or hub libraries may have been loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

MODEL_PACKAGE = "llmvox_tts.model"
# numpy is not listed: `import torch` itself loads numpy in the torch build we install
# (torch==2.13.0+cpu), so its presence says nothing about the model code.
FORBIDDEN = ("grpc", "redis", "fastapi", "yaml", "huggingface_hub")

PROBE = """
import importlib, json, pkgutil, sys

forbidden, package_name = sys.argv[1].split(","), sys.argv[2]
loaded = lambda: {name for name in forbidden if name in sys.modules}
at_startup = loaded()
report = {"at_startup": sorted(at_startup), "modules": [], "culprits": {}}

def check(module_name):
    importlib.import_module(module_name)
    report["modules"].append(module_name)
    new = loaded() - at_startup - {n for names in report["culprits"].values() for n in names}
    if new:
        report["culprits"][module_name] = sorted(new)

check(package_name)
package = sys.modules[package_name]
for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
    check(info.name)
print(json.dumps(report))
"""


def test_model_modules_load_no_service_or_io_library(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ",".join(FORBIDDEN), MODEL_PACKAGE],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repo root: import the installed packages only
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"importing {MODEL_PACKAGE} failed:\n{result.stderr}"
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert report["at_startup"] == [], (
        f"the interpreter loads {report['at_startup']} before any model import; "
        "this test cannot tell what the model modules load"
    )
    assert MODEL_PACKAGE in report["modules"]
    assert report["culprits"] == {}, (
        "model modules must import only torch and the standard library; "
        f"first loaded by (module -> libraries): {report['culprits']}"
    )
