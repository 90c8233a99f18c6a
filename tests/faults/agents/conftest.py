"""The agent failover tests' fixture: three agents, the control worker with beat,
the simulated fleet and a throwaway Redis (:mod:`tests.faults.agents.stack`)."""

from tests.faults.agents.stack import agent_stack  # noqa: F401 (a fixture)
