"""``powerq agent``: the one process per host that owns lanes and supervises their workers.

* :mod:`~powerq.agent.placement`: which live agent should run which lane
  (rendezvous hashing), a pure function.
* :mod:`~powerq.agent.leases`: the lane leases and agent heartbeats in
  PostgreSQL, one statement each.
* :mod:`~powerq.agent.deadline`: how a lane worker learns, without a
  database round trip, until when its agent last made sure it owns the lane.
* :mod:`~powerq.agent.run`: the agent's loop.
"""
