"""One training run over several processes and machines: MPI ranks as the top level of the sphere tree."""
