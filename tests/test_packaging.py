"""Packaging: ``import plural`` is light and lazy, the dependencies are the declared ones, FAISS
has one installed distribution, and the top-level datasets/ folder is never imported as a package."""

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "faiss", "pandas", "sentence_transformers", "pyro",
         "sklearn", "matplotlib", "datasets")


def _python(code: str, cwd=None) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=cwd or ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


# ---------------------------------------------------------------------------- import plural
def test_import_plural_loads_no_heavy_module_and_is_fast():
    out = json.loads(_python(
        "import sys, time, json; t = time.perf_counter(); import plural; s = time.perf_counter() - t; "
        f"print(json.dumps({{'seconds': s, 'loaded': [m for m in {HEAVY!r} if m in sys.modules]}}))"))
    assert out["loaded"] == []
    assert out["seconds"] < 2.0, out


def test_public_names_load_on_first_use():
    out = _python(
        "import sys, plural\n"
        "assert 'torch' not in sys.modules\n"
        "from plural import fit, make_model, PreferenceData\n"
        "assert callable(fit) and fit.__module__ == 'plural.training.fit'\n"
        "assert 'torch' in sys.modules\n"
        "assert set(plural.__all__) <= set(dir(plural)) and {'data', 'core'} <= set(dir(plural))\n"
        "assert plural.load is plural.data.load and plural.__version__\n"
        "try:\n"
        "    plural.nope\n"
        "except AttributeError as err:\n"
        "    print(err)\n")
    assert "module 'plural' has no attribute 'nope'" in out


def test_star_import_gives_every_public_name():
    out = _python("from plural import *\nimport plural\n"
                  "missing = [n for n in plural.__all__ if n not in globals()]\nprint(len(plural.__all__), missing)")
    count, missing = out.split(" ", 1)
    assert int(count) >= 45 and missing.strip() == "[]"


# ---------------------------------------------------------------------------- dependencies
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(requirements) -> set[str]:
    import re

    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_declared_dependencies():
    project = _pyproject()["project"]
    core, extras = _names(project["dependencies"]), project["optional-dependencies"]
    # the project's declared foundations stay core
    assert {"torch", "pytorch-lightning", "sentence-transformers", "scikit-learn", "pyro-ppl", "faiss-cpu"} <= core
    # nothing in plural imports these: extras
    assert "matplotlib" not in core and "datasets" not in core
    assert _names(extras["plots"]) == {"matplotlib"} and _names(extras["hf"]) == {"datasets"}
    assert {"pytest", "matplotlib", "datasets"} <= _names(extras["dev"])  # make test installs dev
    # an extra cannot remove faiss-cpu, so no extra may add another faiss
    assert not any(n.startswith("faiss") for extra in extras.values() for n in _names(extra))
    assert "faiss-gpu-cu12" in (ROOT / "pyproject.toml").read_text()  # the route is documented there
    assert "gpu-faiss:" in (ROOT / "Makefile").read_text() and '-e ".[dev]"' in (ROOT / "Makefile").read_text()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_extras_are_imported_only_where_they_are_optional():
    files = [p for folder in ("plural", "user_models", "apps") for p in sorted((ROOT / folder).rglob("*.py"))]
    assert files
    for path in files:
        imports = _imports(path)
        assert "datasets" not in imports, path  # from a checkout's root that could be the data folder
        if path != ROOT / "apps" / "plots.py":
            assert "matplotlib" not in imports, path


def test_the_data_folder_is_not_a_package_and_hf_datasets_wins():
    assert not (ROOT / "datasets" / "__init__.py").exists()
    # Without the real package, `import datasets` from the root would be the data folder as an empty
    # namespace package: that is why nothing in plural imports it (test above).
    out = _python("import sys; sys.path[:] = [''] + [p for p in sys.path if 'site-packages' not in p and p]\n"
                  "import datasets; print(datasets.__file__, list(datasets.__path__))", cwd=ROOT)
    assert out.startswith("None") and str(ROOT / "datasets") in out
    pytest.importorskip("datasets.arrow_dataset")  # the real package is installed (dev extra): it wins
    out = _python("import datasets; print(datasets.__file__, hasattr(datasets, 'Dataset'))", cwd=ROOT)
    assert "site-packages" in out and out.strip().endswith("True")


# ---------------------------------------------------------------------------- FAISS
def test_two_faiss_distributions_are_refused_with_the_way_out():
    from plural.installation import (FAISS_GPU_ROUTE, FaissInstallError, check_faiss_distributions,
                                   installed_faiss_distributions)

    check_faiss_distributions((("faiss-cpu", "1.8.0"),))
    check_faiss_distributions((("faiss-gpu-cu12", "1.8.0"),))
    check_faiss_distributions(())
    with pytest.raises(ImportError) as err:
        check_faiss_distributions((("faiss-cpu", "1.9.0"), ("faiss-gpu-cu12", "1.9.0")))
    assert isinstance(err.value, FaissInstallError)
    message = str(err.value)
    assert "faiss-cpu 1.9.0, faiss-gpu-cu12 1.9.0" in message
    assert "pip uninstall -y faiss-cpu faiss-gpu-cu12 && pip install faiss-gpu-cu12" in message
    assert FAISS_GPU_ROUTE == "pip uninstall -y faiss-cpu && pip install faiss-gpu-cu12"
    installed = dict(installed_faiss_distributions())
    assert len(installed) == 1, installed  # this environment has exactly one
    check_faiss_distributions()


def test_the_store_refuses_two_faiss_builds_at_once(monkeypatch):
    from plural import installation as _packaging
    from plural.query.store_files import import_faiss

    monkeypatch.setattr(_packaging, "installed_faiss_distributions",
                        lambda: (("faiss-cpu", "1.9.0"), ("faiss-gpu-cu12", "1.9.0")))
    with pytest.raises(ImportError, match="faiss-cpu 1.9.0, faiss-gpu-cu12 1.9.0"):
        import_faiss()
