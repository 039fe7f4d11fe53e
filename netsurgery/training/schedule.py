"""Darknet's learning-rate schedule (``[net]`` policy, burn-in) and SGD settings, as
get_current_rate computes them."""
from __future__ import annotations

import math
from dataclasses import dataclass

from netsurgery.darknet.cfg import Section
from netsurgery.errors import UsageError


@dataclass(frozen=True)
class Schedule:
    """Darknet's learning-rate schedule and SGD settings (``[net]``)."""

    learning_rate: float = 0.001
    momentum: float = 0.9
    decay: float = 0.0001
    burn_in: int = 0
    power: float = 4.0
    policy: str = "constant"
    steps: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()
    step: int = 1
    scale: float = 1.0
    gamma: float = 1.0
    max_batches: int = 0

    @classmethod
    def from_cfg(cls, net: Section, lr: float | None = None) -> "Schedule":
        policy = net.get_str("policy", "constant")
        if policy not in ("constant", "step", "steps", "poly", "exp", "sigmoid"):
            raise net.error(f"policy={policy}: netsurgery's trainer supports constant, step, "
                            "steps, poly, exp and sigmoid", "policy")
        steps: tuple[int, ...] = ()
        scales: tuple[float, ...] = ()
        if policy == "steps":
            if not (net.has("steps") and net.has("scales")):
                raise net.error("policy=steps needs steps= and scales=", "policy")
            steps = tuple(net.get_ints("steps"))
            scales = tuple(net.get_floats("scales"))
            if len(steps) != len(scales):
                raise net.error(f"steps has {len(steps)} values, scales {len(scales)}: "
                                "expected as many", "scales")
        rate = net.get_float("learning_rate", 0.001) if lr is None else lr
        if not rate > 0:
            raise UsageError(f"learning rate {rate}: expected a positive number")
        return cls(learning_rate=rate,
                   momentum=net.get_float("momentum", 0.9),
                   decay=net.get_float("decay", 0.0001),
                   burn_in=net.get_int("burn_in", 0),
                   power=net.get_float("power", 4.0),
                   policy=policy, steps=steps, scales=scales,
                   step=max(net.get_int("step", 1), 1),
                   scale=net.get_float("scale", 1.0),
                   gamma=net.get_float("gamma", 1.0),
                   max_batches=net.get_int("max_batches", 0))

    def rate(self, iteration: int) -> float:
        """Darknet's get_current_rate for batch_num = ``iteration`` (updates done so far)."""
        if iteration < self.burn_in:
            return self.learning_rate * (iteration / self.burn_in) ** self.power
        lr = self.learning_rate
        if self.policy == "constant":
            return lr
        if self.policy == "step":
            return lr * self.scale ** (iteration // self.step)
        if self.policy == "steps":
            for step, scale in zip(self.steps, self.scales):
                if step > iteration:
                    break
                lr *= scale
            return lr
        if self.policy == "poly":
            if self.max_batches <= 0:
                return lr
            return lr * max(0.0, 1 - iteration / self.max_batches) ** self.power
        if self.policy == "exp":
            return lr * self.gamma ** iteration
        return lr / (1 + math.exp(self.gamma * (iteration - self.step)))  # sigmoid
