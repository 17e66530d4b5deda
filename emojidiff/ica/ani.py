"""Adaptive noise inversion (ANI): the timestep range of ICA's one-step reconstruction, steered by identity similarity.

The target is noised to a timestep ``t ~ U{t_min, ..., round(t_hi)}`` and the UNet's one-step prediction x̂0 is decoded
and scored. Too large a ``t`` and x̂0 is a blur with no recognisable face (identity and expression losses then teach
nothing); too small and the task is trivial. After every micro-step the measured identity similarity of decode(x̂0) to
the reference enters an exponential moving average; below ``target_sim`` the upper bound shrinks by ``step``, at or
above it widens by ``step``, clamped to ``[t_hi_min, t_hi_max]``. The state is two floats, saved in checkpoints so a
resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class ANIState:
    t_hi: float
    sim_ema: float | None = None
    updates: int = 0


class ANIController:
    def __init__(
        self,
        t_min: int,
        t_hi_init: float,
        t_hi_min: float,
        t_hi_max: float,
        target_sim: float,
        step: float,
        momentum: float,
    ):
        self.t_min, self.t_hi_min, self.t_hi_max = int(t_min), float(t_hi_min), float(t_hi_max)
        self.target_sim, self.step, self.momentum = float(target_sim), float(step), float(momentum)
        self.state = ANIState(float(t_hi_init))

    @classmethod
    def from_settings(cls, s) -> ANIController:
        return cls(s.ani_t_min, s.ani_t_hi_init, s.ani_t_hi_min, s.ani_t_hi_max, s.ani_target_sim, s.ani_step,
                   s.ani_momentum)  # fmt: skip

    @property
    def t_hi(self) -> int:
        return int(round(self.state.t_hi))

    def sample(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """``n`` timesteps from the current range (int64, on the CPU)."""
        return torch.randint(self.t_min, max(self.t_min, self.t_hi) + 1, (n,), generator=gen)

    def update(self, sim: float) -> None:
        """Feed one measured mean identity similarity (a float; NaN = no measurement this time)."""
        if sim != sim:  # NaN: no sample with an identity this micro-step
            return
        st = self.state
        st.sim_ema = sim if st.sim_ema is None else self.momentum * st.sim_ema + (1 - self.momentum) * sim
        delta = -self.step if st.sim_ema < self.target_sim else self.step
        st.t_hi = min(self.t_hi_max, max(self.t_hi_min, st.t_hi + delta))
        st.updates += 1

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        self.state = ANIState(**d)
