"""The scan pipeline: data -> fit -> gradients -> IHVP -> scores -> ranking, its blocks of
test points, the collectives under torchrun, the run record and signal handling."""
