"""Maps the top-level folders onto the `kairos` import namespace.

The repository keeps `protos/`, `server/`, `client/` and `optimize/` at the top
(as the design asks); they install as `kairos.protos`, `kairos.server`, ...
so their names cannot collide with other packages. Metadata is in pyproject.toml.

The native parts are Rust crates of one cargo workspace (Cargo.toml at the top),
built by setuptools-rust during `pip install`: the front end as the extension
module `kairos.server.frontend._native`, and the load generator as the
`kairos-loadgen` program.
"""

from setuptools import find_packages, setup
from setuptools_rust import Binding, RustBin, RustExtension

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

rust = [
    RustExtension(
        "kairos.server.frontend._native",
        path="server/frontend/Cargo.toml",
        binding=Binding.PyO3,
        features=["extension-module"],
        py_limited_api=True,
        debug=False,
    ),
    RustBin("kairos-loadgen", path="client/loadgen/Cargo.toml", debug=False),
]

setup(packages=packages, package_dir=package_dir, rust_extensions=rust, zip_safe=False)
