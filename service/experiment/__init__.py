"""The A/B experiment of one worker: its state, the admin API's rules, and the live object that
routes, follows the stored state and reacts to guardrail trips and the sample ratio.

- ``state.py``: ``ExperimentState`` (what can change without a restart) and ``StateRow``, the one
  place where the state is read from and written to the store;
- ``changes.py``: the admin API's rules (token, validated changes) and the guardrail's change;
- ``live.py``: ``Experiment``, which holds the router in force, polls the stored state, runs the
  guardrail and sample-ratio checks and applies trips and admin changes.
"""

from __future__ import annotations

from service.experiment.live import Experiment
from service.experiment.state import ExperimentState

__all__ = ["Experiment", "ExperimentState"]
