"""The traffic simulator: benign personas and harvesting campaigns as labelled request records.

``generate(scenario, seed=...)`` builds the clients of one scenario, ``dataset(seed=...)``
the standard mix for training and evaluation; ``antidistill sim run`` drives a live gateway.
"""

from sim.traffic.client import SimClient
from sim.traffic.dataset import FAMILIES, dataset
from sim.traffic.scenarios import SCENARIOS, ScenarioSpec, generate

__all__ = ["FAMILIES", "SCENARIOS", "ScenarioSpec", "SimClient", "dataset", "generate"]
