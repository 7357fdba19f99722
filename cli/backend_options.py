"""Where simulations run, `--backend` and `--address`: one declaration for `simulate` and the studies."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

AddressOption = Annotated[Optional[str], typer.Option(
    help="With --backend ray: the Ray cluster to join (HOST:PORT, or auto: the one `ray start` started "
         "here); without it, a Ray cluster on this machine for the run.")]
StudyBackendOption = Annotated[str, typer.Option(
    help="Where the grid points run: local (one after another, here) or ray (at once, as Ray tasks over a "
         "Ray cluster; docs/STUDIES.md). Both give the same results.")]
