"""Radial and angular bases of M3GNet, and the smooth cutoff.

- `SmoothBesselBasis`: the smooth spherical Bessel functions of Kocer et al. (J. Chem. Phys.
  2020), orthogonalised so that every function and its first two derivatives vanish at the
  cutoff; they expand bond lengths.
- `SphericalBesselHarmonics`: j_l(z_ln r / rc) * Y_l^0(theta) for l < max_l, n < max_n, the
  three-body basis of bond (i,k) and angle jik; with `smooth=True` the radial part is instead
  the first max_l * max_n smooth Bessel functions, column l * max_n + n times Y_l^0 (matgl's
  `use_smooth=True`, which its pretrained universal potentials use).
- `polynomial_cutoff`: 1 - 6x^5 + 15x^4 - 10x^3, smooth to second order at x = 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import spherical_jn
from torch import nn


def polynomial_cutoff(r: torch.Tensor, cutoff: float) -> torch.Tensor:
    x = r / cutoff
    return torch.where(x < 1.0, 1 - 6 * x**5 + 15 * x**4 - 10 * x**3, torch.zeros_like(x))


class SmoothBesselBasis(nn.Module):
    def __init__(self, n_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        n = np.arange(n_basis, dtype=np.float64)
        prefactor = (-1) ** n * math.sqrt(2) * math.pi / cutoff**1.5 * (n + 1) * (n + 2) / np.sqrt((n + 1) ** 2 + (n + 2) ** 2)
        e = n**2 * (n + 2) ** 2 / (4 * (n + 1) ** 4 + 1)
        d = np.ones(n_basis)
        for k in range(1, n_basis):
            d[k] = 1 - e[k] / d[k - 1]
        dtype = torch.get_default_dtype()
        self.register_buffer("prefactor", torch.tensor(prefactor, dtype=dtype))
        self.register_buffer("e", torch.tensor(e, dtype=dtype))
        self.register_buffer("d", torch.tensor(d, dtype=dtype))
        self.register_buffer("n", torch.tensor(n, dtype=dtype))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r[:, None] * math.pi / self.cutoff
        a, b = x * (self.n + 1), x * (self.n + 2)
        f = self.prefactor * (torch.sin(a) / a + torch.sin(b) / b)
        f = torch.where(r[:, None] < self.cutoff, f, torch.zeros_like(f))
        g = [f[:, 0]]
        for k in range(1, f.shape[1]):
            g.append((f[:, k] + torch.sqrt(self.e[k] / self.d[k - 1]) * g[-1]) / torch.sqrt(self.d[k]))
        return torch.stack(g, dim=1)


def _spherical_bessel(l: int, x: torch.Tensor) -> torch.Tensor:
    """j_l(x) for l <= 2, with a series where the closed form loses precision (small x)."""
    small = x < 0.5
    xs = torch.where(small, torch.ones_like(x), x)
    s, c = torch.sin(xs), torch.cos(xs)
    if l == 0:
        exact, series = s / xs, 1 - x**2 / 6 + x**4 / 120
    elif l == 1:
        exact, series = s / xs**2 - c / xs, x / 3 - x**3 / 30 + x**5 / 840
    elif l == 2:
        exact, series = (3 / xs**2 - 1) * s / xs - 3 * c / xs**2, x**2 / 15 - x**4 / 210 + x**6 / 7560
    else:
        raise ValueError("max_l above 3 is not supported")
    return torch.where(small, series, exact)


def _bessel_roots(max_l: int, max_n: int) -> np.ndarray:
    """First max_n positive roots of j_l for each l < max_l."""
    roots = np.zeros((max_l, max_n))
    for l in range(max_l):
        found, x = [], 1e-3
        while len(found) < max_n:
            if spherical_jn(l, x) * spherical_jn(l, x + 0.1) < 0:
                found.append(brentq(lambda t: spherical_jn(l, t), x, x + 0.1))
            x += 0.1
        roots[l] = found
    return roots


class SphericalBesselHarmonics(nn.Module):
    def __init__(self, max_n: int, max_l: int, cutoff: float, smooth: bool = False):
        super().__init__()
        self.max_n, self.max_l, self.cutoff = max_n, max_l, cutoff
        self.smooth = SmoothBesselBasis(max_n * max_l, cutoff) if smooth else None
        if smooth:
            return
        roots = _bessel_roots(max_l, max_n)
        norm = np.array([[math.sqrt(2 / cutoff**3) / abs(spherical_jn(l + 1, z)) for z in roots[l]] for l in range(max_l)])
        self.register_buffer("roots", torch.tensor(roots, dtype=torch.get_default_dtype()))
        self.register_buffer("norm", torch.tensor(norm, dtype=torch.get_default_dtype()))

    def forward(self, r: torch.Tensor, cos_theta: torch.Tensor) -> torch.Tensor:
        """(T,) distances and cosines -> (T, max_l * max_n) features."""
        return self.with_angles(self.radial(r), cos_theta)

    def radial(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) distances -> (E, max_l * max_n) normalised j_l(z_ln r / rc), or the smooth
        Bessel functions when built with smooth=True. A function of the bond ik alone: computed
        per edge and gathered to triplets, ~8x fewer evaluations."""
        if self.smooth is not None:
            return self.smooth(r)
        columns = [_spherical_bessel(l, r[:, None] * self.roots[l] / self.cutoff) * self.norm[l] for l in range(self.max_l)]
        return torch.cat(columns, dim=1)

    def with_angles(self, radial: torch.Tensor, cos_theta: torch.Tensor) -> torch.Tensor:
        """Radial features (T, max_l * max_n) times Y_l^0 of each triplet's angle."""
        legendre = [torch.ones_like(cos_theta), cos_theta, 1.5 * cos_theta**2 - 0.5]
        angular = torch.stack([math.sqrt((2 * l + 1) / (4 * math.pi)) * legendre[l] for l in range(self.max_l)], dim=1)
        return radial * angular.repeat_interleave(self.max_n, dim=1)
