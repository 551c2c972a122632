"""Batched views: each op against torchvision's per-image kernel, the crop boxes against RandomResizedCrop, the
whole recipe against the per-image SimCLRViews (same mean view), and the data-module hook."""

from __future__ import annotations

from types import SimpleNamespace

import jsonargparse
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import RandomResizedCrop, v2
from torchvision.transforms.v2 import functional as F

from vispre.commands.checks import data_shape
from vispre.data import (BatchMultiCropViews, BatchSimCLRViews, MAEView, MultiCropViews, SimCLRViews, ViewDataset,
                         ViewTransform)
from vispre.data import batch_views as bv
from vispre.errors import VispreError

OFF = dict(scale=(1.0, 1.0), hflip=0.0, jitter_prob=0.0, grey_prob=0.0, blur_prob=0.0)


def images(count: int, chans: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, chans, side, side, generator=torch.Generator().manual_seed(seed))


def test_boxes_fit_the_image_and_follow_the_scale_and_ratio_ranges() -> None:
    torch.manual_seed(0)
    boxes = bv.resized_crop_boxes(4000, 28, 28, (0.3, 1.0))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 28).all()
    assert torch.equal(boxes, boxes.round())
    area = h * w / 784
    assert area.min() >= 0.3 - 0.05 and area.max() <= 1.0  # rounding to whole pixels moves the area a little
    assert (w / h).min() >= 0.75 * 0.9 and (w / h).max() <= 4 / 3 / 0.9


def test_box_statistics_match_torchvision_random_resized_crop() -> None:
    torch.manual_seed(1)
    ours = bv.resized_crop_boxes(20000, 28, 28, (0.2, 1.0))
    image = torch.zeros(1, 28, 28)
    theirs = torch.tensor([RandomResizedCrop.get_params(image, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(20000)],
                          dtype=torch.float32)
    for column in range(4):
        assert abs(ours[:, column].mean() - theirs[:, column].mean()) < 0.25, column
        assert abs(ours[:, column].std() - theirs[:, column].std()) < 0.25, column


def test_fallback_box_is_torchvisions_centre_crop() -> None:
    image = torch.zeros(1, 10, 100)  # no box of 99 % of the area has an aspect ratio within [3/4, 4/3]
    expected = RandomResizedCrop.get_params(image, [0.99, 1.0], [3 / 4, 4 / 3])
    boxes = bv.resized_crop_boxes(5, 10, 100, (0.99, 1.0))
    assert boxes.tolist() == [list(map(float, expected))] * 5


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_whole_image_box_is_the_identity_and_flip_mirrors(mode: str) -> None:
    x = images(3)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3)
    no_flip = torch.zeros(3, dtype=torch.bool)
    torch.testing.assert_close(bv.crop_resize(x, whole, 16, no_flip, mode), x, rtol=0, atol=1e-5)
    flip = torch.tensor([True, False, True])
    out = bv.crop_resize(x, whole, 16, flip, mode)
    torch.testing.assert_close(out[0], x[0].flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=1e-5)


def test_bilinear_crop_of_a_ramp_is_the_closed_form() -> None:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    ramp = (0.01 * rows + 0.02 * cols).view(1, 1, 28, 28)
    top, left, h, w, size = 5.0, 3.0, 12.0, 20.0, 16
    out = bv.crop_resize(ramp, torch.tensor([[top, left, h, w]]), size, torch.zeros(1, dtype=torch.bool),
                         "bilinear")[0, 0]
    i = torch.arange(size, dtype=torch.float32)
    src_rows, src_cols = top + (i + 0.5) * h / size - 0.5, left + (i + 0.5) * w / size - 0.5
    expected = 0.01 * src_rows.view(-1, 1) + 0.02 * src_cols.view(1, -1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_bicubic_crop_matches_torchvision_resized_crop_inside_the_box() -> None:
    x = images(1, chans=1, side=28)
    ours = bv.crop_resize(x, torch.tensor([[4.0, 6.0, 14.0, 12.0]]), 28, torch.zeros(1, dtype=torch.bool))[0]
    theirs = F.resized_crop(x[0], 4, 6, 14, 12, [28, 28], interpolation=v2.InterpolationMode.BICUBIC,
                            antialias=False)  # antialias=True is PIL's cubic (a = -0.5); grid_sample's is a = -0.75
    # near the box edge torchvision repeats the box's border pixels, where the batch op reads the real neighbours
    torch.testing.assert_close(ours[:, 6:22, 6:22], theirs[:, 6:22, 6:22], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,reference,low,high", [
    ("adjust_brightness", F.adjust_brightness, 0.5, 1.5), ("adjust_contrast", F.adjust_contrast, 0.5, 1.5),
    ("adjust_saturation", F.adjust_saturation, 0.5, 1.5), ("adjust_hue", F.adjust_hue, -0.5, 0.5)])
@pytest.mark.parametrize("chans", [1, 3])
def test_colour_ops_match_torchvision_per_sample(name: str, reference, low: float, high: float, chans: int) -> None:
    x = images(6, chans=chans, seed=2)
    factors = torch.linspace(low, high, 6)
    out = getattr(bv, name)(x, factors)
    for sample, factor in zip(range(6), factors.tolist()):
        torch.testing.assert_close(out[sample], reference(x[sample], factor), rtol=0, atol=2e-5)


def test_hsv_round_trip_and_grey_pixels() -> None:
    x = images(4, seed=3)
    x[0, :, :4, :4] = 0.5  # grey pixels: hue and saturation 0
    hsv = bv.rgb_to_hsv(x)
    assert (hsv[0, 0, :4, :4] == 0).all() and (hsv[0, 1, :4, :4] == 0).all()
    assert hsv[:, 0].min() >= 0 and hsv[:, 0].max() < 1
    torch.testing.assert_close(bv.hsv_to_rgb(hsv), x, rtol=0, atol=1e-5)


def test_gaussian_blur_matches_torchvision_per_sample() -> None:
    x = images(3, chans=3, side=20, seed=4)
    sigma = torch.tensor([0.3, 1.0, 2.0])
    out = bv.gaussian_blur(x, sigma, 5)
    for sample in range(3):
        s = float(sigma[sample])
        torch.testing.assert_close(out[sample], F.gaussian_blur(x[sample], [5, 5], [s, s]), rtol=0, atol=1e-5)


def test_solarize_and_apply_to_change_only_the_chosen_samples() -> None:
    x = images(4, seed=5)
    torch.testing.assert_close(bv.solarize(x), F.solarize(x, 128 / 255))
    chosen = torch.tensor([True, False, False, True])
    out = bv.apply_to(chosen, bv.adjust_brightness, x, torch.full((4,), 0.5))
    torch.testing.assert_close(out[chosen], x[chosen] * 0.5)
    assert torch.equal(out[~chosen], x[~chosen])
    assert bv.apply_to(torch.zeros(4, dtype=torch.bool), bv.solarize, x) is x


def test_all_off_is_exact_normalisation() -> None:
    batch = (images(5, chans=1, side=28) * 255).to(torch.uint8)
    views = BatchSimCLRViews(img_size=28, mean=(0.3,), std=(0.5,), **OFF).batch_views(batch)
    expected = (batch.float() / 255.0 - 0.3) / 0.5
    assert len(views) == 2
    for view in views:
        torch.testing.assert_close(view, expected, rtol=0, atol=1e-5)


def assert_same_view_distribution(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    """Views [count, C, S, S] of one image from two pipelines: mean view, its row / column profiles, and the
    spread of each view's contrast agree (a pixel's mean has a standard error of ~0.01 at count 1000)."""
    assert [a.shape for a in ours] == [b.shape for b in theirs]
    for a, b in zip(ours, theirs):
        mean_a, mean_b = a.mean(0), b.mean(0)
        assert (mean_a - mean_b).abs().max() < 0.06
        assert (mean_a.mean(dim=-1) - mean_b.mean(dim=-1)).abs().max() < 0.03  # row profiles
        assert (mean_a.mean(dim=-2) - mean_b.mean(dim=-2)).abs().max() < 0.03  # column profiles
        assert abs(mean_a.mean() - mean_b.mean()) < 0.01
        contrast_a, contrast_b = a.std(dim=(1, 2, 3)), b.std(dim=(1, 2, 3))
        assert abs(contrast_a.mean() - contrast_b.mean()) < 0.01 and abs(contrast_a.std() - contrast_b.std()) < 0.01


def two_box_image(chans: int) -> torch.Tensor:
    image = torch.zeros(chans, 20, 20, dtype=torch.uint8)
    image[:, 4:14, 3:10] = 220
    image[0, 10:18, 12:19] = 120
    return image


@pytest.mark.parametrize("chans", [1, 3])
def test_mean_view_matches_the_per_image_pipeline(chans: int) -> None:
    """Both pipelines draw from the same distributions, so the average of many views of one image agrees
    (checked to fail with no flip, scale (0.08, 1), no solarising (the mean view), no jitter or brightness 0.8
    (the spread of each view's contrast))."""
    image, count = two_box_image(chans), 1000
    settings = dict(img_size=20, scale=(0.3, 1.0), blur_prob=(0.5, 0.1), solarize_prob=(0.0, 0.2),
                    mean=(0.0,) * chans, std=(1.0,) * chans)
    torch.manual_seed(0)
    per_image = SimCLRViews(**settings)
    theirs = [torch.stack(v) for v in zip(*(per_image(image) for _ in range(count)))]
    assert_same_view_distribution(BatchSimCLRViews(**settings).batch_views(image.expand(count, -1, -1, -1)), theirs)


def test_multi_crop_mean_views_match_the_per_image_pipeline() -> None:
    image, count = two_box_image(1), 1000
    settings = dict(global_size=20, local_size=10, num_local=2, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                    global_blur_prob=(1.0, 0.1), local_blur_prob=0.5, global_solarize_prob=(0.0, 0.2),
                    mean=(0.0,), std=(1.0,))
    torch.manual_seed(0)
    per_image = MultiCropViews(**settings)
    theirs = [torch.stack(v) for v in zip(*(per_image(image) for _ in range(count)))]
    ours = BatchMultiCropViews(**settings).batch_views(image.expand(count, -1, -1, -1))
    assert [tuple(v.shape[-2:]) for v in ours] == [(20, 20)] * 2 + [(10, 10)] * 2
    assert_same_view_distribution(ours, theirs)


def test_seeded_views_are_reproducible_and_differ_between_views() -> None:
    transform = BatchSimCLRViews(img_size=20, load_size=24, jitter_prob=1.0, blur_prob=1.0)
    batch = (images(4, side=24) * 255).to(torch.uint8)
    torch.manual_seed(7)
    first = transform.batch_views(batch)
    torch.manual_seed(7)
    second = transform.batch_views(batch)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert [tuple(v.shape) for v in first] == [(4, 3, 20, 20)] * 2 and not torch.equal(first[0], first[1])


def test_per_image_call_only_loads_and_checks_its_input() -> None:
    transform = BatchSimCLRViews(img_size=20, load_size=24)
    loaded = transform(torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8))
    assert len(loaded) == 1 and loaded[0].dtype == torch.uint8 and loaded[0].shape == (3, 24, 24)
    assert transform.num_views == 2 and repr(transform).startswith("BatchSimCLRViews(load_size=24, [Compose(")
    with pytest.raises(VispreError, match=r"takes the uint8 \[B, C, H, W\] batch it loaded, got torch.float32"):
        transform.batch_views(torch.zeros(2, 3, 24, 24))
    with pytest.raises(VispreError, match="load_size must be >= 1, got -3"):
        BatchSimCLRViews(img_size=20, load_size=-3)
    with pytest.raises(VispreError, match="blur_prob must be one number or 2 numbers"):
        BatchSimCLRViews(img_size=20, blur_prob=(0.1, 0.2, 0.3))


def test_collated_batch_gets_its_views_from_the_hook() -> None:
    stacked = (images(6, chans=1, side=28) * 255).to(torch.uint8)
    view = BatchSimCLRViews(img_size=28, mean=(0.5,), std=(0.5,))
    batch = next(iter(DataLoader(ViewDataset(stacked, torch.arange(6), view), batch_size=6)))
    assert [v.dtype for v in batch["views"]] == [torch.uint8]
    out = bv.apply_batch_views(view, batch)
    assert [tuple(v.shape) for v in out["views"]] == [(6, 1, 28, 28)] * 2
    assert out["views"][0].dtype == torch.float32 and torch.equal(out["label"], torch.arange(6))
    per_image = {"views": [torch.zeros(2, 1, 28, 28)]}
    assert bv.apply_batch_views(MAEView(28), per_image)["views"] is per_image["views"]


def view_from_yaml(yaml: str) -> ViewTransform:
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--view", type=ViewTransform)
    return parser.instantiate_classes(parser.parse_string(yaml)).view


def test_builds_from_yaml_and_the_shape_check_sees_the_views() -> None:
    view = view_from_yaml("view: {class_path: vispre.data.BatchSimCLRViews, init_args: {img_size: 20, load_size: 24, "
                          "blur_prob: [1.0, 0.1], mean: [0.3], std: [0.4]}}")
    assert isinstance(view, BatchSimCLRViews) and view.load_size == 24
    assert [recipe.blur_prob for recipe in view.recipes] == [1.0, 0.1]
    shape = data_shape(SimpleNamespace(view=view, in_chans=1), 24)
    assert shape is not None and shape.size == (20, 20) and shape.channels == 1


def test_multi_crop_builds_from_yaml_loads_at_the_global_size_and_checks_its_arguments() -> None:
    view = view_from_yaml("view: {class_path: vispre.data.BatchMultiCropViews, init_args: {global_size: 28, "
                          "local_size: 14, num_local: 3, global_blur_prob: [0.0, 0.0], mean: [0.3], std: [0.4]}}")
    assert isinstance(view, BatchMultiCropViews) and view.load_size == 28 and view.num_views == 5
    assert [(r.size, r.scale) for r in view.recipes] == [(28, (0.4, 1.0))] * 2 + [(14, (0.05, 0.4))] * 3
    loaded = view(torch.randint(0, 256, (1, 40, 30), dtype=torch.uint8))
    assert len(loaded) == 1 and loaded[0].shape == (1, 28, 28)
    views = view.batch_views(torch.stack(loaded * 4))
    assert [tuple(v.shape) for v in views] == [(4, 1, 28, 28)] * 2 + [(4, 1, 14, 14)] * 3
    with pytest.raises(VispreError, match="num_local must be >= 0, got -1"):
        BatchMultiCropViews(num_local=-1)
    with pytest.raises(VispreError, match="load_size must be >= 1, got 0"):
        BatchMultiCropViews(load_size=0)
