"""The tiny profile's specialists: build overrides keep each family's structure, every one of the 50 tiny jobs (ten
architectures x five generated diagnosis sets, with the profile's own settings) clearly beats chance, and a resumed job
still returns a best epoch from before the interruption.

    OMP_NUM_THREADS=1 pytest -q tests/test_specialist_tiny.py
    python perf/tiny_specialists.py          # all 50 jobs with timings (not a test)
"""
from __future__ import annotations

import concurrent.futures
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from data_contracts.io import read_samples
from data_contracts.layout import RunLayout
from data_contracts.layout import SPLITS
from infra.profiles import load_profile
from tasks.specialists.architectures import ARCHS, ArchSpec, arch_recipe, arch_spec, lr_scale_of
from tasks.specialists.data import data_from_samples
from tasks.specialists.models import create_model, forward_embed
from tasks.specialists.outputs import constant_baseline, read_card
from tasks.specialists.settings import Recipe
from tasks.specialists.stage import DevicePool, job_specs, run_job, run_on_slot
from tasks.specialists.training import _loss_value, predict, train_specialist

DIAGNOSIS_SETS = ("chestmnist", "pneumoniamnist", "breastmnist", "dermnet", "ham10000")
TINY = load_profile("tiny").specialists
ARCH_NAMES = tuple(TINY.architectures)
MARGIN = 0.15  # the bar over chance; measured margins are 0.24-0.85 (perf/measured/tiny_specialists_cpu.json)
# every epoch's validation AUC on DermNet's 5-of-23 classes, and on rare ChestMNIST labels, is undefined
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning",
                                        "ignore:Only one class is present")


@pytest.fixture(scope="module")
def tiny_data(tiny_tables):
    """SpecialistData of the tiny diagnosis sets (generated in their raw formats and ingested like a user's data)."""
    return {name: data_from_samples(*[read_samples(tiny_tables, name, s) for s in SPLITS])
            for name in DIAGNOSIS_SETS}


def tiny_arch(name: str) -> ArchSpec:
    """The architecture as the tiny profile trains it."""
    return arch_spec(name, TINY.arch_settings[name])


def tiny_recipe(**changes) -> Recipe:
    """The tiny profile's recipe, with `changes`."""
    return TINY.recipe.model_copy(update=changes)


def test_tiny_profile_trains_every_architecture_from_scratch_one_thread_a_job():
    assert set(ARCH_NAMES) == set(ARCHS) and TINY.threads == 1
    assert all(tiny_arch(name).allow_scratch for name in ARCH_NAMES)


@pytest.fixture(scope="module")
def tiny_jobs(tiny_tables, tmp_path_factory):
    """All 50 tiny-profile jobs, trained as the specialists flow runs them on 2 CPU cores: the job function with the
    profile's settings, two at a time on threads of this process, one torch thread each."""
    layout = RunLayout(tmp_path_factory.mktemp("tiny-jobs"))
    layout.tables.symlink_to(tiny_tables)
    specs = job_specs(layout, list(DIAGNOSIS_SETS), TINY)
    threads = torch.get_num_threads()  # each job sets the profile's 1 thread for the process
    try:
        with concurrent.futures.ThreadPoolExecutor(TINY.cpu_slots) as pool:
            results = list(pool.map(run_job, specs))
    finally:
        torch.set_num_threads(threads)
    return {(r["dataset"], r["arch"]): r for r in results}


@pytest.mark.parametrize("dataset", DIAGNOSIS_SETS)
@pytest.mark.parametrize("arch_name", ARCH_NAMES)
def test_every_tiny_job_beats_chance(tiny_jobs, tiny_data, arch_name, dataset):
    res, data = tiny_jobs[(dataset, arch_name)], tiny_data[dataset]
    arch = tiny_arch(arch_name)
    assert res["status"] == "trained" and res["init"] == "scratch"
    assert float(res["params"]["lr"]) == pytest.approx(TINY.recipe.lr * lr_scale_of(arch))
    assert res["params"]["recipe.max_epochs"] == str(arch_recipe(arch, tiny_recipe()).max_epochs)
    m = res["metrics"]
    chance = constant_baseline(data.task_type, data.test.targets, data.num_classes)
    if data.task_type == "multilabel":
        # the best constant predictor says 'positive' for every label: macro-F1 ~0.31 at ~20% prevalence
        assert 0.25 < chance < 0.4
        assert m["test_macro_f1"] >= chance + MARGIN, m
    else:
        assert chance == pytest.approx({"pneumoniamnist": 0.5, "breastmnist": 0.5, "dermnet": 10 / 48,
                                        "ham10000": 7 / 48}[dataset], abs=0.01)
        assert m["test_accuracy"] >= chance + MARGIN, m
    if math.isfinite(m.get("test_auc", math.nan)):  # undefined on DermNet: the tiny set holds 5 of its 23 classes
        assert m["test_auc"] > 0.75, m


def test_constant_baseline():
    assert constant_baseline("binary", np.array([0, 0, 0, 1]), 2) == 0.75
    assert constant_baseline("multiclass", np.array([0, 1, 2, 3]), 23) == 0.25
    assert constant_baseline("multiclass", np.array([0, 1]), 23) == 0.5
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])  # prevalence 1/2, 1/4, 0
    assert constant_baseline("multilabel", y, 3) == pytest.approx(np.mean([2 / 3, 2 / 5, 0.0]))
    # the formula is sklearn's macro-F1 of the all-positive prediction (labels never positive score 0 either way)
    from sklearn.metrics import f1_score
    assert constant_baseline("multilabel", y, 3) == pytest.approx(
        f1_score(y, np.ones_like(y), average="macro", zero_division=0))


def test_tiny_recipe_and_profile_specs_round_trip():
    r = tiny_recipe()
    assert Recipe.model_validate(r.model_dump(mode="json")) == r and tiny_recipe(max_epochs=3).max_epochs == 3
    for name in ARCHS:
        a = tiny_arch(name)
        assert ArchSpec.model_validate(a.to_dict()) == a  # YAML/JSON-able as a profile gives it


def _blocks(model):
    return [b for stage in model.blocks for b in stage]


def test_efficientnet_b4_keeps_its_depth_at_half_width_and_starts_residuals_as_identity():
    arch = tiny_arch("efficientnet_b4")
    torch.manual_seed(0)
    model = create_model(arch, 5, arch.img_size)
    full = create_model(arch.model_copy(update={"overrides": {}}), 5, 24)  # timm's registered efficientnet_b4
    assert [len(s) for s in model.blocks] == [len(s) for s in full.blocks] == [2, 4, 4, 6, 6, 8, 2]
    assert model.conv_head.out_channels == 640 and full.conv_head.out_channels == 1792
    assert model.pretrained_cfg["tag"] == "ra2_in1k"
    skips = [b for b in _blocks(model) if b.has_skip]
    assert len(skips) == 25
    for b in skips:
        last = [m for m in b.children() if isinstance(m, nn.BatchNorm2d)][-1]
        assert torch.count_nonzero(last.weight) == 0
    assert torch.count_nonzero(model.classifier.weight) == 0 and torch.count_nonzero(full.classifier.weight) > 0
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)} == {0.5}
    model.eval()
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        logits, emb = forward_embed(model, arch, x)
    assert torch.count_nonzero(logits) == 0 and emb.std() > 0  # a zero head over live features


def test_vgg16_and_alexnet_keep_their_layer_structure():
    vgg = create_model(tiny_arch("vgg16"), 3, 32)
    convs = [m for m in vgg.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    norms = [m for m in vgg.features if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 13
    assert vgg.pre_logits.fc1.out_channels == 64 and vgg.pre_logits.fc2.out_channels == 4096
    plain = create_model(tiny_arch("vgg16").model_copy(update={"overrides": {"channel_multiplier": 0.25}}), 3, 32)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())

    alex = create_model(tiny_arch("alexnet"), 3, 64)
    assert len([m for m in alex.features if isinstance(m, nn.Conv2d)]) == 5
    fcs = [m for m in alex.classifier if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(9216, 512), (512, 512), (512, 3)]
    assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in alex.modules())


def test_build_overrides_fail_clearly_where_they_do_not_apply():
    def build(name, overrides, size=32):
        return create_model(ARCHS[name].model_copy(update={"overrides": overrides}), 3, size)

    with pytest.raises(ValueError, match="both channel_multiplier and depth_multiplier"):
        build("efficientnet_b4", {"channel_multiplier": 0.5})
    with pytest.raises(ValueError, match="not resnet18"):
        build("resnet18", {"channel_multiplier": 0.5})
    with pytest.raises(ValueError, match="fc_hidden_width"):
        build("alexnet", {"fc_hidden_width": 0}, 64)
    with pytest.raises(ValueError, match="lr_scale must be a number > 0, got 0"):
        lr_scale_of(ARCHS["vit_b16"].model_copy(update={"overrides": {"lr_scale": 0}}))
    with pytest.raises(ValueError, match="'vit_b16': epochs_scale must be a number > 0, got 'x'"):
        arch_recipe(ARCHS["vit_b16"].model_copy(update={"overrides": {"epochs_scale": "x"}}), tiny_recipe())
    # lr_scale and epochs_scale are training settings: the model is the same with or without them
    torch.manual_seed(0)
    a = build("resnet18", {"channels": [8, 16, 32, 64], "lr_scale": 4, "epochs_scale": 2})
    torch.manual_seed(0)
    b = build("resnet18", {"channels": [8, 16, 32, 64]})
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_arch_recipe_scales_lr_and_epochs_only():
    r = tiny_recipe()
    assert arch_recipe(ARCHS["vit_b16"], r) is r
    eva = arch_recipe(tiny_arch("eva02_vit_b16"), r)  # lr_scale 2, epochs_scale 6
    assert (eva.lr, eva.min_lr, eva.max_epochs) == pytest.approx((2 * r.lr, 2 * r.min_lr, 6 * r.max_epochs))
    assert (eva.patience, eva.warmup_epochs, eva.batch_size) == (r.patience, r.warmup_epochs, r.batch_size)
    short = arch_recipe(ARCHS["vit_b16"].model_copy(update={"overrides": {"epochs_scale": 0.01}}), r)
    assert short.max_epochs == 1


def test_kaiming_init_gives_he_scaled_weights_and_zero_biases():
    torch.manual_seed(0)
    alex = create_model(tiny_arch("alexnet"), 3, 64)
    torch.manual_seed(0)
    default = create_model(tiny_arch("alexnet").model_copy(update={"overrides": {"fc_hidden_width": 512}}), 3, 64)
    for layer, ref in zip([m for m in alex.modules() if isinstance(m, (nn.Conv2d, nn.Linear))],
                          [m for m in default.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]):
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15)
        assert ref.weight.std().item() < 0.75 * (2 / fan_in) ** 0.5  # PyTorch's default: a sixth of He's variance
        assert torch.count_nonzero(layer.bias) == 0


def _vit_epochs_as_recipe() -> ArchSpec:
    """The tiny ViT-B/16 with the recipe's epoch count (no epochs_scale), for tests that script each epoch."""
    arch = tiny_arch("vit_b16")
    return arch.model_copy(update={"overrides": {k: v for k, v in arch.overrides.items() if k != "epochs_scale"}})


def test_resumed_job_returns_an_earlier_best_epoch(tiny_data, tmp_path, monkeypatch, kill_at_validation):
    # killed in epoch 2 after epoch 0 was the best; the resumed epochs 2-3 never beat it, so the job's result is the
    # epoch-0 checkpoint written before the kill (a resumed run must not have deleted it)
    data, arch = tiny_data["breastmnist"], _vit_epochs_as_recipe()
    recipe = tiny_recipe(max_epochs=4, patience=10, resume_every_s=0.0)
    real_loss, script = _loss_value, []

    def scripted_loss(*a):  # the per-epoch validation losses, then the real ones for the final metrics
        return script.pop(0) if script else real_loss(*a)

    monkeypatch.setattr("tasks.specialists.training._loss_value", scripted_loss)
    script[:] = [1.0, 2.0]
    kill_at_validation(3, data, arch, recipe, tmp_path / "job")
    assert (tmp_path / "job" / "best.safetensors").is_file() and (tmp_path / "job" / "last.pt").is_file()

    script[:] = [3.0, 4.0]
    res = train_specialist(data, arch, recipe, tmp_path / "job")
    assert res.status == "resumed" and res.epochs_run == 4 and res.best_epoch == 0
    assert [h["val_loss"] for h in res.history] == [1.0, 2.0, 3.0, 4.0]
    assert read_card(tmp_path / "job" / "best.safetensors")["epoch"] == 0
    probs, _ = predict(tmp_path / "job" / "best.safetensors", arch, data.test.images)
    np.testing.assert_allclose(np.load(tmp_path / "job" / "probs_test.npy"), probs, atol=1e-5)


def test_resume_starts_over_when_the_best_checkpoint_is_gone(tiny_data, tmp_path, kill_at_validation):
    data, arch = tiny_data["breastmnist"], _vit_epochs_as_recipe()
    recipe = tiny_recipe(max_epochs=3, patience=10, resume_every_s=0.0)
    kill_at_validation(2, data, arch, recipe, tmp_path / "job")
    (tmp_path / "job" / "best.safetensors").unlink()
    res = train_specialist(data, arch, recipe, tmp_path / "job")
    assert res.status == "trained" and res.epochs_run == 3


def test_a_subprocess_isolated_job_runs_the_recipe_and_returns_its_result(tiny_tables, tmp_path):
    # how GPU jobs run (one process each, CUDA_VISIBLE_DEVICES pinned): recipes/specialist_job.py in a child process
    layout = RunLayout(tmp_path)
    layout.tables.symlink_to(tiny_tables)
    settings = TINY.model_copy(update={"architectures": ["resnet18"],
                                       "recipe": TINY.recipe.model_copy(update={"max_epochs": 2})})
    (spec,) = job_specs(layout, ["pneumoniamnist"], settings)
    pool = DevicePool(layout.device_locks, [], cpu_slots=1)
    res = run_on_slot(spec, pool, "subprocess")
    assert res["status"] == "trained" and res["epochs_run"] == 2 and res["dataset"] == "pneumoniamnist"
    files = layout.job("pneumoniamnist", "resnet18")
    assert json.loads(files.spec.read_text())["device"] == "cpu" and files.done.is_file()
    assert run_on_slot(spec, pool, "inprocess")["status"] == "skipped"   # same job, already finished
