"""The package's one-way layers (``[tool.importlinter]`` in pyproject.toml), checked with every test run."""
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_imports_keep_the_layers_and_make_no_cycle():
    """`lint-imports`: no module imports from a layer above its own (function-level imports count),
    and no two modules of a package import each other, directly or round a circle."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_every_top_level_part_of_the_package_has_a_layer():
    """A new package or module under impumae/ must be placed in a layer, or the contract says nothing about it."""
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    parts = {f"impumae.{p.stem}" for p in (ROOT / "impumae").iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert parts == named, f"unlayered: {sorted(parts - named)}; no longer there: {sorted(named - parts)}"


def test_nested_statistics_start_nothing():
    """Nested CV's statistics (pooling, coverage, stability, tables) import no Ray, Tune or MLflow."""
    code = ("import sys, impumae.engine.nested_stats; "
            "print(sorted(m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
