"""The arrows between the parts point one way.

    ugatit_common.tf_checkpoint   (numpy only: the TF checkpoint format, naming rule, config inference)
        ^            ^                ^
    torch_port   parity_tests     weights_convert.py (command line + public API; parity_tests only
                 (library)        lazily, for --verify / --report)

Checked on the source (every import statement, also those inside functions) and by importing
the modules in a fresh interpreter with weights_convert unimportable.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUND = os.path.join(ROOT, "ugatit_common", "tf_checkpoint")
LIBRARY = ["harness", "trajectory", "golden", "kinks", "report", "activation_fixtures", "tf_checkpoints"]
# what the ground floor may import besides the standard library and itself
GROUND_ALLOWED = {"numpy", "google_crc32c", "ml_dtypes", "ugatit_common.options", "ugatit_common.atomic"}  # both stdlib-only


def _imports(path: str) -> list[tuple[str, int, bool]]:
    """(module, line, at module level) of every import in `path`; relative imports resolved."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    pkg = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
    top = set(id(n) for n in tree.body)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.append((mod, node.lineno, id(node) in top))
    return out


def _py_files(folder: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".py"))


def _under(mod: str, names) -> bool:
    return any(mod == n or mod.startswith(n + ".") for n in names)


def test_nothing_below_imports_weights_convert():
    files = _py_files(os.path.join(ROOT, "torch_port")) + _py_files(os.path.join(ROOT, "ugatit_common")) + \
        [os.path.join(ROOT, "parity_tests", m + ".py") for m in LIBRARY]
    bad = [f"{os.path.relpath(f, ROOT)}:{line} imports {mod}" for f in files for mod, line, _ in _imports(f)
           if _under(mod, ["weights_convert"])]
    assert not bad, "\n".join(bad)


def test_ground_floor_imports_numpy_and_the_standard_library_only():
    stdlib = set(sys.stdlib_module_names)
    bad = []
    for f in _py_files(GROUND):
        for mod, line, _ in _imports(f):
            if mod.split(".")[0] in stdlib or mod == "__future__" or _under(mod, ["ugatit_common.tf_checkpoint"]):
                continue
            if mod not in GROUND_ALLOWED:
                bad.append(f"{os.path.relpath(f, ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_weights_convert_imports_parity_tests_only_lazily():
    path = os.path.join(ROOT, "weights_convert.py")
    found = [(mod, line, top) for mod, line, top in _imports(path)]
    eager = [f"line {line}: {mod}" for mod, line, top in found
             if top and _under(mod, ["parity_tests", "torch_port", "tf_reference", "torch", "tensorflow", "morph"])]
    assert not eager, eager
    assert any(_under(mod, ["ugatit_common.tf_checkpoint"]) and top for mod, _, top in found)


def test_modules_import_with_weights_convert_unimportable():
    """A fresh interpreter where `import weights_convert` fails: the ground floor imports no torch,
    TF or upper part; torch_port, the parity library and morph all import."""
    script = """
import sys
sys.modules["weights_convert"] = None  # import weights_convert -> ImportError
import ugatit_common.tf_checkpoint
up = [m for m in ("torch", "tensorflow", "torch_port", "parity_tests", "tf_reference", "morph") if m in sys.modules]
assert not up, f"the ground floor imported {up}"
import importlib
for name in ("torch_port.checkpoint", "torch_port.train", "torch_port.translate", "torch_port.tf_bundle",
             "parity_tests.harness", "parity_tests.trajectory", "parity_tests.golden", "parity_tests.kinks",
             "parity_tests.report", "parity_tests.activation_fixtures", "parity_tests.tf_checkpoints", "morph.train"):
    importlib.import_module(name)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stderr[-3000:]


def test_the_checks_see_a_forbidden_import(tmp_path):
    """The source check is not vacuous: it finds an import inside a function, and a relative one."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    import weights_convert as wc\n    from torch import nn\n")
    assert [(m, top) for m, _, top in _imports(str(f))] == [("weights_convert", False), ("torch", False)]
    rel = os.path.join(GROUND, "read.py")
    assert any(m == "ugatit_common.tf_checkpoint.bundle" for m, _, _ in _imports(rel))
