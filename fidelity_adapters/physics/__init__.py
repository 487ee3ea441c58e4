"""Physics with a chosen fidelity: equation of state, relaxation, MD, structure analysis."""
