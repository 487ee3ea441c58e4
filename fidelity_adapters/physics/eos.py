"""Equation of state of a crystal under a chosen calculator (fidelity).

Ko & Ong compare fidelities through E0, V0 and B of silicon polymorphs (their Table 1);
this module produces those numbers for any ASE calculator, tabulates and plots them.
The fit itself is ASE's `EquationOfState`; what is added here is the scan, the per-atom
units and a refusal to report a minimum that the scan did not bracket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.eos import EquationOfState, eos_names
from ase.units import GPa

SI_POLYMORPHS = ("diamond", "beta-Sn", "fcc", "sh")

# Fit forms whose third parameter is the pressure derivative B' of the bulk modulus.
_HAS_B_PRIME = ("murnaghan", "birch", "birchmurnaghan", "pouriertarantola", "vinet")


def silicon_polymorph(name: str) -> Atoms:
    """Primitive cell of a silicon polymorph at a sensible starting lattice parameter."""
    if name == "diamond":
        return bulk("Si", "diamond", a=5.47)
    if name == "beta-Sn":
        # Body-centred tetragonal, two-atom basis (I4_1/amd): (0, 0, 0) and (0, a/2, c/4).
        a, c = 4.85, 0.55 * 4.85
        cell = [[-a / 2, a / 2, c / 2], [a / 2, -a / 2, c / 2], [a / 2, a / 2, -c / 2]]
        return Atoms("Si2", positions=[[0, 0, 0], [0, a / 2, c / 4]], cell=cell, pbc=True)
    if name == "fcc":
        return bulk("Si", "fcc", a=3.87)
    if name == "sh":
        a, c = 2.64, 0.94 * 2.64
        return Atoms("Si", cell=[a, a, c, 90, 90, 120], pbc=True)
    raise ValueError(f"unknown silicon polymorph {name!r}; known: {', '.join(SI_POLYMORPHS)}")


@dataclass
class EOSResult:
    """A volume scan and its fit, all per atom; `eos` names the ASE fit form used."""

    name: str
    volumes: np.ndarray  # Å^3/atom
    energies: np.ndarray  # eV/atom
    e0: float  # eV/atom
    v0: float  # Å^3/atom
    b_gpa: float
    b_prime: float | None
    eos: str = "murnaghan"

    def fitted_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Volumes and energies of the fitted form across the scanned range (ASE refit)."""
        fit = EquationOfState(self.volumes, self.energies, eos=self.eos)
        fit.fit(warn=False)
        *_, x, y, _, _ = fit.getplotdata()
        return x, y


def equation_of_state(
    atoms: Atoms,
    calculator,
    name: str = "structure",
    volume_range: tuple[float, float] = (0.85, 1.15),
    n_points: int = 11,
    eos: str = "murnaghan",
) -> EOSResult:
    """Scale the cell isotropically over `volume_range` (relative volumes) and fit `eos`.

    The input atoms are not modified. Raises ValueError when the energy minimum is not
    inside the scanned range, since the fitted V0 and B would then be extrapolations.
    """
    if eos not in eos_names:
        raise ValueError(f"unknown equation of state {eos!r}; known: {', '.join(eos_names)}")
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError("equation of state needs a fully periodic cell with three lattice vectors")
    low, high = volume_range
    if not 0 < low < high:
        raise ValueError(f"volume_range must satisfy 0 < low < high, got {volume_range}")
    if n_points < 5:
        raise ValueError(f"need at least 5 volume points for a 4-parameter fit, got {n_points}")

    work = atoms.copy()
    work.calc = calculator
    cell = atoms.cell.copy()
    volumes, energies = [], []
    for relative in np.linspace(low, high, n_points):
        work.set_cell(cell * relative ** (1 / 3), scale_atoms=True)
        volumes.append(work.get_volume() / len(work))
        energies.append(work.get_potential_energy() / len(work))
    volumes, energies = np.array(volumes), np.array(energies)

    lowest = int(np.argmin(energies))
    if lowest in (0, n_points - 1):
        side = "smallest" if lowest == 0 else "largest"
        raise ValueError(
            f"{name}: energy minimum is not inside the scanned volume range {volume_range} "
            f"(relative to the input volume): the {side} volume has the lowest energy; "
            "use a wider range or shift it towards that side"
        )
    fit = EquationOfState(volumes, energies, eos=eos)
    try:
        v0, e0, b = fit.fit(warn=False)
    except RuntimeError as err:  # scipy's curve_fit did not converge
        raise ValueError(f"{name}: {eos} fit failed over volume range {volume_range}: {err}") from err
    if not volumes.min() < v0 < volumes.max():
        raise ValueError(
            f"{name}: fitted V0 = {v0:.3f} Å^3/atom lies outside the scanned volume range "
            f"{volume_range}; use a wider or shifted range"
        )
    b_prime = float(fit.eos_parameters[2]) if eos in _HAS_B_PRIME else None
    return EOSResult(name, volumes, energies, float(e0), float(v0), float(b / GPa), b_prime, eos)


def eos_table(
    results: dict[str, list[EOSResult]],
    reference: dict[str, tuple[float, float, float]] | None = None,
) -> str:
    """Markdown table of E0, V0, B per (label, polymorph), like Ko & Ong's Table 1.

    `reference` maps a polymorph name to (E0 eV/atom, V0 Å^3/atom, B GPa); when given,
    the table adds ΔE0 (meV/atom) and the relative errors of V0 and B (%). The column
    "E - E(diamond)" appears when some label has a diamond result.
    """
    with_diamond = any(r.name == "diamond" for rows in results.values() for r in rows)
    header = ["Model", "Structure", "E0 (eV/atom)", "V0 (Å³/atom)", "B (GPa)"]
    if with_diamond:
        header.append("E - E(diamond) (meV/atom)")
    if reference is not None:
        header += ["ΔE0 (meV/atom)", "ΔV0 (%)", "ΔB (%)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, rows in results.items():
        diamond = next((r for r in rows if r.name == "diamond"), None)
        for r in rows:
            cells = [label, r.name, f"{r.e0:.4f}", f"{r.v0:.3f}", f"{r.b_gpa:.1f}"]
            if with_diamond:
                cells.append("" if diamond is None else f"{1000 * (r.e0 - diamond.e0):.1f}")
            if reference is not None:
                if r.name in reference:
                    e_ref, v_ref, b_ref = reference[r.name]
                    cells += [
                        f"{1000 * (r.e0 - e_ref):+.1f}",
                        f"{100 * (r.v0 - v_ref) / v_ref:+.2f}",
                        f"{100 * (r.b_gpa - b_ref) / b_ref:+.2f}",
                    ]
                else:
                    cells += ["", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_eos(results: list[EOSResult], path) -> None:
    """Energy per atom against volume per atom: scanned points and fitted curve per result."""
    from matplotlib.figure import Figure

    if not results:
        raise ValueError(f"no equation-of-state results to plot in {path}")

    fig = Figure(figsize=(5, 4), layout="constrained")
    ax = fig.add_subplot()
    for r in results:
        x, y = r.fitted_curve()
        (line,) = ax.plot(x, y, label=f"{r.name} (V0 {r.v0:.2f} Å³, B {r.b_gpa:.0f} GPa)")
        ax.plot(r.volumes, r.energies, "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("Volume (Å³/atom)")
    ax.set_ylabel("Energy (eV/atom)")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
