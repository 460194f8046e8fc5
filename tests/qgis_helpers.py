"""Open GeoPackage layers in real QGIS, headless, in a subprocess (QGIS owns its process:
``QgsApplication`` once per process, and its exit must not take pytest with it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = """\
import sys
from qgis.core import QgsApplication, QgsVectorLayer, QgsWkbTypes
app = QgsApplication([], False); app.initQgis()
for name in sys.argv[2:]:
    layer = QgsVectorLayer(sys.argv[1] + '|layername=' + name, name, 'ogr')
    print(name, layer.isValid(), {what}, flush=True)
    del layer
app.exitQgis()
"""


def qgis_layers(path: Path, names: list[str], what: str, tmp_path: Path) -> list[list[str]]:
    """For each layer ``names`` of ``path`` as QGIS loads it: its name, whether it is valid,
    then the values of ``what`` (Python over ``layer``, e.g. ``"layer.featureCount()"``),
    as words — one list per layer."""
    script = tmp_path / "qgis_load.py"
    script.write_text(_SCRIPT.format(what=what))
    os.chmod(tmp_path, 0o700)  # QGIS's runtime dir must be private
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, str(script), str(path), *names],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return [line.split() for line in run.stdout.splitlines()]
