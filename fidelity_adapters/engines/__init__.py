"""MD engines that run a potential at a named fidelity: LAMMPS (through its Python module)
and TorchSim. Each is checked against the ASE calculator, which stays the reference."""
