"""Fixtures for the hub tests, from shoal.hub.testing: ``hub`` starts a cluster of the
test's own, ``cluster`` is one shared by this process's tests, ``client`` a new Client
on it."""

from shoal.hub.testing import client, cluster, hub

__all__ = ["client", "cluster", "hub"]
