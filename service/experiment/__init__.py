"""The A/B experiment of one worker: its versioned state, the admin API's rules, the leader
election, and the live object that routes, follows the stored state and, on the leader, makes
the guardrail and sample-ratio decisions.

- ``state.py``: ``ExperimentState`` (what can change without a restart) and ``StateRow``, the one
  place where the state is read from and written to the store;
- ``changes.py``: the admin API's rules (token, validated changes) and the guardrail's change;
- ``leader.py``: ``Leadership``, the lease that makes one worker of the deployment the leader;
- ``live.py``: ``Experiment``, which holds the router in force, polls the stored state, applies
  admin changes and, on the leader, runs the guardrail and sample-ratio checks and trips.
"""

from __future__ import annotations

from service.experiment.live import Experiment
from service.experiment.state import ExperimentState

__all__ = ["Experiment", "ExperimentState"]
