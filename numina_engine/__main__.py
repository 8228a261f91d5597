"""`python -m numina_engine ...`, the same as `numina-engine ...`; torchrun launches it with
`torchrun --nproc-per-node N -m numina_engine batch ...`."""
import sys

from .cli import main

sys.exit(main())
