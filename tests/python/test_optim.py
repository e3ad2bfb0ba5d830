"""C++ AdamW, GradScaler and clip_grad_norm against torch.optim.AdamW, torch.amp.GradScaler and
torch.nn.utils.clip_grad_norm_ (with transformers' Trainer decay groups)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, Trainer

from enstack._C import CheckpointError
from enstack._C.train import AdamW, GradScaler, applies_weight_decay, clip_grad_norm

STEPS = 20
BASE_LR = 1e-2
WEIGHT_DECAY = 0.05


def _tiny_roberta():
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, num_labels=5)
    return RobertaForSequenceClassification(config)


def _lr(step):
    # Warmup then linear decay, changing every step.
    return BASE_LR * min((step + 1) / 5, (STEPS - step) / (STEPS - 5))


def _set_grads(params, step):
    """Deterministic grads; some parameters get none on some steps."""
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g)
        p.grad = None if (i + step) % 4 == 0 else grad


def _torch_adamw(model, fused):
    decay = set(Trainer.get_decay_parameter_names(None, model))
    groups = [
        {"params": [p for n, p in model.named_parameters() if n in decay], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in model.named_parameters() if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=BASE_LR, betas=(0.9, 0.999), eps=1e-8, fused=fused, foreach=False)


def _max_diff(a, b):
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def test_decay_groups_equal_the_trainers():
    model = _tiny_roberta()
    opt = AdamW(list(model.named_parameters()), lr=BASE_LR, weight_decay=WEIGHT_DECAY)
    expected = Trainer.get_decay_parameter_names(None, model)
    assert sorted(opt.decay_parameter_names) == sorted(expected)
    assert set(opt.no_decay_parameter_names) == {n for n, _ in model.named_parameters()} - set(expected)
    assert all(applies_weight_decay(n) == (n in expected) for n, _ in model.named_parameters())
    hp = opt.hyperparameters()
    assert hp["betas"] == [0.9, 0.999] and hp["eps"] == 1e-8 and hp["implementation"] == "fused"


def test_adamw_trajectories_equal_torch():
    reference = _tiny_roberta()
    models = {name: copy.deepcopy(reference) for name in ("ours_fused", "ours_plain", "torch", "torch_fused")}
    ours = {
        "ours_fused": AdamW(list(models["ours_fused"].named_parameters()), lr=BASE_LR, weight_decay=WEIGHT_DECAY),
        "ours_plain": AdamW(list(models["ours_plain"].named_parameters()), lr=BASE_LR, weight_decay=WEIGHT_DECAY,
                            fused=False),
    }
    assert ours["ours_plain"].implementation == "plain"
    theirs = {"torch": _torch_adamw(models["torch"], fused=False),
              "torch_fused": _torch_adamw(models["torch_fused"], fused=True)}
    worst = {"fused_vs_torch": 0.0, "fused_vs_torch_fused": 0.0, "plain_vs_torch": 0.0}
    for step in range(STEPS):
        lr = _lr(step)
        for name, model in models.items():
            _set_grads(list(model.parameters()), step)
        for opt in ours.values():
            opt.step(lr)
        for opt in theirs.values():
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
        worst["fused_vs_torch"] = max(worst["fused_vs_torch"], _max_diff(models["ours_fused"], models["torch"]))
        worst["fused_vs_torch_fused"] = max(worst["fused_vs_torch_fused"],
                                            _max_diff(models["ours_fused"], models["torch_fused"]))
        worst["plain_vs_torch"] = max(worst["plain_vs_torch"], _max_diff(models["ours_plain"], models["torch"]))
    print("max |diff| over the trajectory:", worst)
    assert worst["fused_vs_torch"] <= 1e-6
    assert worst["fused_vs_torch_fused"] <= 1e-6
    assert worst["plain_vs_torch"] == 0.0  # the plain path is torch's single-tensor math, op for op
    assert _max_diff(reference, models["torch"]) > 1e-3  # the parameters did move

    # The state matches torch's, and names the step count per parameter.
    state = ours["ours_plain"].state_tensors()
    torch_opt = theirs["torch"]
    for name, p in models["torch"].named_parameters():
        s = torch_opt.state[p]
        assert torch.equal(state[f"{name}.exp_avg"], s["exp_avg"])
        assert torch.equal(state[f"{name}.exp_avg_sq"], s["exp_avg_sq"])
        assert state[f"{name}.step"].item() == s["step"].item()
    assert set(state) == {f"{n}.{k}" for n, _ in reference.named_parameters() for k in ("exp_avg", "exp_avg_sq",
                                                                                         "step")}


def test_zero_grad_sets_none_and_bad_state_is_a_checkpoint_error():
    model = _tiny_roberta()
    opt = AdamW(list(model.named_parameters()))
    _set_grads(list(model.parameters()), 1)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    state = {k: v.clone() for k, v in opt.state_tensors().items()}
    del state["classifier.out_proj.bias.exp_avg"]
    state["classifier.dense.weight.exp_avg_sq"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"classifier\.out_proj\.bias\.exp_avg.*classifier\.dense\.weight"):
        opt.load_state_tensors(state)


# Steps whose grads get an inf or a NaN; growth_interval 3 makes the scale grow several times.
INF_STEPS = {4: math.inf, 5: math.nan, 11: -math.inf}


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))


def test_grad_scaler_equals_torch():
    ref_model, our_model = _linear(0), _linear(0)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2, weight_decay=0.0, foreach=False)
    ref_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    our_opt = AdamW(list(our_model.named_parameters()), lr=1e-2, fused=False)
    our_scaler = GradScaler(init_scale=2.0**10, growth_interval=3)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
    trajectory = []
    for step in range(16):
        decisions = []
        for model, scaler, is_ref in ((ref_model, ref_scaler, True), (our_model, our_scaler, False)):
            loss = model(x).pow(2).mean()
            scaler.scale(loss).backward()
            if step in INF_STEPS:
                next(model.parameters()).grad[0, 0] = INF_STEPS[step]
            if is_ref:
                scaler.unscale_(ref_opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                skipped = bool(sum(v.item() for v in scaler._found_inf_per_device(ref_opt).values()))
                scaler.step(ref_opt)
                scaler.update()
                ref_opt.zero_grad()
                tracker = scaler.state_dict()["_growth_tracker"]
            else:
                scaler.unscale([p.grad for p in model.parameters()])
                clip_grad_norm(list(model.parameters()), 1.0)
                skipped = scaler.step_was_skipped()
                if not skipped:
                    our_opt.step(1e-2)
                scaler.update()
                our_opt.zero_grad()
                tracker = scaler.growth_tracker
            decisions.append((scaler.get_scale(), tracker, skipped))
        assert decisions[0] == decisions[1], f"step {step}: torch {decisions[0]} vs enstack {decisions[1]}"
        trajectory.append(decisions[1])
        assert _max_diff(ref_model, our_model) <= 1e-6
    assert [s for _, _, s in trajectory] == [i in INF_STEPS for i in range(16)]
    scales = [s for s, _, _ in trajectory]
    assert max(scales) > 2.0**10 and min(scales) < 2.0**10  # it grew and backed off
    assert our_scaler.state_json()["scale"] == ref_scaler.state_dict()["scale"]
    restored = GradScaler(growth_interval=3)
    restored.load_state_tensors(our_scaler.state_tensors())
    assert (restored.get_scale(), restored.growth_tracker) == (our_scaler.get_scale(), our_scaler.growth_tracker)


def test_disabled_grad_scaler_is_a_no_op():
    scaler = GradScaler(enabled=False)
    loss = torch.tensor(3.0)
    assert scaler.scale(loss) is loss
    scaler.unscale([torch.tensor([math.inf])])
    scaler.update()
    assert scaler.get_scale() == 1.0 and not scaler.step_was_skipped() and scaler.state_tensors() == {}


@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3, 0.0])
def test_clip_grad_norm_equals_torch(max_norm):
    g = torch.Generator().manual_seed(7)
    shapes = [(64, 32), (32,), (5, 3, 2), (1,), (10,)]
    ours = [torch.zeros(s, requires_grad=True) for s in shapes]
    theirs = [torch.zeros(s, requires_grad=True) for s in shapes]
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if i == 3:
            continue  # no grad: ignored by both
        grad = torch.randn(a.shape, generator=g) * 0.1
        a.grad, b.grad = grad.clone(), grad.clone()
    norm = clip_grad_norm(ours, max_norm)
    if max_norm > 0:
        expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, foreach=True)
    else:
        expected = torch.nn.utils.get_total_norm([p.grad for p in theirs if p.grad is not None], foreach=True)
    assert abs(norm - expected.item()) <= 1e-6
    for a, b in zip(ours, theirs):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert (a.grad - b.grad).abs().max().item() <= 1e-6
    assert clip_grad_norm([torch.zeros(2, requires_grad=True)], 1.0) == 0.0
