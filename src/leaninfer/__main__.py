"""`python -m leaninfer ...` (and `torchrun --nproc-per-node N -m leaninfer generate ...`)."""

from leaninfer.cli import main

if __name__ == "__main__":
    main()
