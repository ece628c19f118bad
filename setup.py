"""Build step of the wheel beyond pyproject.toml: fit-web's files (web/, js/src/, js/package.json) are copied into
the installed package as ``fit_serve/site/``, where fit_serve/static_site.py finds them. An editable install serves
the checkout's own folders instead."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SITE_FILES = ("web", "js/src", "js/package.json")        # relative to the checkout; the same layout under site/


class BuildPyWithSite(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        root, site = Path(__file__).resolve().parent, Path(self.build_lib) / "fit_serve" / "site"
        for name in SITE_FILES:
            source, target = root / name, site / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)


setup(cmdclass={"build_py": BuildPyWithSite})
