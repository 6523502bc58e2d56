"""The A/B experiment of one worker: its versioned state, the admin API's rules, the leader
election, the live object that routes, follows the stored state and, on the leader, makes
the guardrail, sample-ratio and rollout decisions, and the progressive rollout.

- ``state.py``: ``ExperimentState`` (what can change without a restart) and ``StateRow``, the one
  place where the state is read from and written to the store;
- ``changes.py``: the admin API's rules (token, validated changes) and the guardrail's change;
- ``leader.py``: ``Leadership``, the lease that makes one worker of the deployment the leader;
- ``live.py``: ``Experiment``, which holds the router in force, polls the stored state, applies
  admin changes and, on the leader, runs the guardrail and sample-ratio checks and trips;
- ``plan.py``, ``rollout.py``, ``judge.py``, ``events.py``: the progressive rollout: its plan in
  the state, the leader's and the admin's transitions, the figures they are judged on, and the
  event row each one writes.
"""

from __future__ import annotations

from service.experiment.live import Experiment
from service.experiment.state import ExperimentState

__all__ = ["Experiment", "ExperimentState"]
