"""Ships the top-level schemas/, config/ and ops/ folders inside the wheel as package data.

Those folders stay at the top of the checkout (DESIGN.md: the layout is contract); a wheel gets a
copy in civicbus/shipped/, where civicbus.settings finds them when there is no checkout around
the package. An editable install (`pip install -e .`, `make install`) reads the checkout itself.
Everything else is declared in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED_FOLDERS = ("schemas", "config", "ops")


class BuildWithShippedFolders(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / "civicbus" / "shipped"
        for folder in SHIPPED_FOLDERS:
            shutil.copytree(folder, target / folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildWithShippedFolders})
