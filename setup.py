"""Maps the top-level folders onto the `kairos` import namespace.

The repository keeps `protos/`, `server/`, `client/` and `optimize/` at the top
(as the design asks); they install as `kairos.protos`, `kairos.server`, ...
so their names cannot collide with other packages. Metadata is in pyproject.toml.
"""

from setuptools import find_packages, setup

FOLDERS = {
    "protos": "kairos.protos",
    "server": "kairos.server",
    "client": "kairos.client",
    "optimize": "kairos.optimize",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for folder, name in FOLDERS.items():
    package_dir[name] = folder
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=package_dir)
