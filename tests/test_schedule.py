"""Learning-rate schedule and EMA: exact values at the landmarks, and the scheduler wiring."""

import math

import pytest
import torch

from steps.train.ema import EMA
from steps.train.schedule import LrSchedule, build_scheduler, load_scheduler_state


def test_warmup_cosine_landmarks():
    s = LrSchedule(peak_lr=2.5e-5, warmup_steps=1000, decay_steps=30_000, end_lr=2.5e-6)
    assert s.lr(0) == pytest.approx(2.5e-5 / 1001)
    assert s.lr(500) == pytest.approx(2.5e-5 / 1001 + (2.5e-5 - 2.5e-5 / 1001) * 0.5)
    assert s.lr(1000) == pytest.approx(2.5e-5)
    # Half-way through the cosine: the mean of peak and end.
    assert s.lr(1000 + 14_500) == pytest.approx((2.5e-5 + 2.5e-6) / 2)
    assert s.lr(30_000) == pytest.approx(2.5e-6)
    assert s.lr(100_000) == pytest.approx(2.5e-6)
    values = [s.lr(i) for i in range(0, 30_001, 250)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1 : peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :]))


def test_constant_after_warmup():
    s = LrSchedule(peak_lr=5e-5, warmup_steps=10, decay_steps=10, end_lr=0.0, kind="constant")
    assert s.lr(0) == pytest.approx(5e-5 / 11)
    assert s.lr(10) == s.lr(10_000) == pytest.approx(5e-5)


def test_no_warmup():
    s = LrSchedule(peak_lr=1.0, warmup_steps=0, decay_steps=100, end_lr=0.0)
    assert s.lr(0) == 1.0
    assert s.lr(50) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(peak_lr=0.0), "peak_lr"),
        (dict(end_lr=-1.0), "end_lr"),
        (dict(kind="linear"), "schedule"),
        (dict(warmup_steps=10, decay_steps=5), "decay_steps"),
    ],
)
def test_bad_schedule_names_field(kwargs, field):
    base = dict(peak_lr=1e-4, warmup_steps=0, decay_steps=10, end_lr=0.0)
    with pytest.raises(ValueError, match=field):
        LrSchedule(**{**base, **kwargs})


def test_scheduler_steps_once_per_optimizer_step_and_resumes():
    s = LrSchedule(peak_lr=1e-3, warmup_steps=3, decay_steps=10, end_lr=1e-4)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=s.peak_lr)
    sched = build_scheduler(opt, s)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr(i) for i in range(6)])
    # A fresh scheduler restored from the state dict continues at the same step.
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=s.peak_lr)
    sched2 = build_scheduler(opt2, s)
    load_scheduler_state(sched2, sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(s.lr(6))


def test_ema_update_swap_and_state():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    expected = 1 - 0.9**2
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), expected))
    with ema.swap_into(model):
        assert torch.allclose(model.weight, torch.full((1, 2), expected))
    assert torch.equal(model.weight, torch.ones(1, 2))
    other = EMA(model, decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(model, decay=1.0)
    assert math.isclose(ema.decay, 0.9)
