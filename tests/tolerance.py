"""Float32 tolerances for the parity tests, each derived from the computation and written once per kind.

Two runs of the same float32 maths (ours and the official code's, or ours on another kernel: oneDNN and
MKL choose blockings by vector width, memory alignment and thread count) add the same terms in different
orders, so they round differently. How far apart they may land follows from three numbers, never from a
constant picked to make a test pass:

* ``EPS`` = 2**-23, float32's spacing at 1: one rounding moves a value by at most ``EPS / 2`` of itself;
* how many roundings separate the two results: ``ops`` chained operations, ``terms`` summed in one
  reduction, or ``layers`` of a network whose widest reduction sums ``widest`` terms;
* the magnitude of what is compared: ``max |expected|`` by default, or the sum of ``|terms|`` where it
  is known (a difference of large numbers errs relative to the numbers, not to the small result;
  head-pose degrees near 90 and SDA's 0..250 frames are not images in 0..1).

Kinds (one function each; every one raises AssertionError naming the worst element, its index, the
bound and how the bound was made, and returns the observed error / bound):

* ``close_elementwise``: a few operations per element: ``ops * EPS * M``;
* ``close_sum``: one sum / dot product of ``terms`` terms: ``terms * EPS * M``;
* ``close_network``: a network (or a sampler running one) vs the official code's output:
  ``PROB * sqrt(roundings) * EPS * M`` with ``roundings`` = layers x widest reduction, summed over stages;
* ``close_degrees``: head-pose angles, the expectation over 66 bins of 3 degrees: the network bound with
  M = 195 degrees (the bins' terms), whatever the angle;
* ``close_uint8``: 8-bit frames after rounding or truncation: one level.

Set ``TALKINGHEAD_TOLERANCE_LOG=<file>`` to append one JSON line per comparison (test, kind, error,
bound, ratio): how the largest observed error / bound per family was measured across kernels.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

#: float32 machine epsilon (spacing of floats at 1.0); one rounding errs by at most EPS / 2 of the value
EPS = 2.0 ** -23
#: how many standard deviations of the rounding errors' random walk the network bound allows: n roundings
#: with independent, zero-mean errors of at most u = EPS / 2 exceed PROB * sqrt(n) * u (relative to the
#: magnitude summed) with probability at most about 2 n exp(-PROB**2 / 2) (Higham & Mary, SIAM J. Sci. Comput. 41
#: (2019) A2815); PROB = 8 keeps that below 3e-7 even for 1e7 roundings (the largest comparison here has 3e6).
PROB = 8.0
#: head-pose angles are sum_i softmax_i * 3 i - 97.5 over 66 bins: terms reach 195 degrees whatever the angle
DEGREE_BINS = 66
DEGREE_TERMS = 195.0


@dataclass(frozen=True)
class Net:
    """A network as float32 rounding sees it.

    ``layers``: reductions on the longest path from input to output (convolutions, linear layers,
    normalisations, attention products, softmax-weighted sums); ``widest``: the most terms any one of
    them sums into one output value (a conv's in_channels x kernel area, a norm's reduced size). One output
    value then depends on at most ``roundings`` = layers x widest roundings; stages chained with
    :meth:`then` add theirs, a stage run ``k`` times (:meth:`times`, a sampler's steps) counts k times."""

    name: str
    layers: int
    widest: int
    roundings: int = 0
    recipe: str = ""

    def __post_init__(self):
        if not self.roundings:
            object.__setattr__(self, "roundings", self.layers * self.widest)
            object.__setattr__(self, "recipe", f"{self.layers} x {self.widest}")

    def then(self, other: "Net", name: Optional[str] = None) -> "Net":
        """This network feeding ``other``: their roundings add."""
        return Net(name or f"{self.name} -> {other.name}", self.layers + other.layers, max(self.widest, other.widest),
                   self.roundings + other.roundings, f"{self.recipe} + {other.recipe}")

    def times(self, passes: int, name: Optional[str] = None) -> "Net":
        """This network run ``passes`` times in a row, each run starting from the last one's output."""
        return Net(name or f"{passes} passes of {self.name}", self.layers * passes, self.widest,
                   self.roundings * passes, f"{passes} x ({self.recipe})")


# --------------------------------------------------------------------------- the comparison itself
def _as_float64(x) -> torch.Tensor:
    if isinstance(x, np.ndarray) or np.isscalar(x):
        x = torch.from_numpy(np.asarray(x))
    return torch.as_tensor(x).detach().cpu().double()


def _pair(actual, expected):
    """Both as float64 (the comparison adds no rounding of its own), same shape.

    Shapes that differ only by size-1 axes are compared squeezed (the fixtures keep the official batch
    axes); any other difference fails."""
    a, b = _as_float64(actual), _as_float64(expected)
    if a.shape != b.shape:
        if a.squeeze().shape != b.squeeze().shape:
            raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(b.shape)}")
        a, b = a.squeeze(), b.squeeze()
    return a, b


def _magnitude(expected: torch.Tensor) -> float:
    finite = expected[torch.isfinite(expected)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _log(kind: str, what: str, err: float, bound: float, how: str) -> None:
    path = os.environ.get("TALKINGHEAD_TOLERANCE_LOG")
    if not path:
        return
    ratio = err / bound if bound > 0 else (0.0 if err == 0 else math.inf)
    row = {"test": os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0], "kind": kind, "what": what,
           "err": err, "bound": bound, "ratio": ratio, "how": how}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _compare(actual, expected, bound: float, how: str, kind: str, what: str) -> float:
    """Assert max |actual - expected| <= bound; the message names the worst element and the bound's making."""
    a, b = _pair(actual, expected)
    if a.numel() == 0:
        return 0.0
    diff = (a - b).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)  # NaN on one side only
    diff = torch.where(torch.isnan(a) & torch.isnan(b), torch.zeros_like(diff), diff)
    worst = int(diff.reshape(-1).argmax())
    err = float(diff.reshape(-1)[worst])
    _log(kind, what, err, bound, how)
    if not err <= bound:
        index = tuple(int(i) for i in np.unravel_index(worst, tuple(a.shape))) if a.ndim else ()
        label = f"{what}: " if what else ""
        raise AssertionError(
            f"{label}max |actual - expected| = {err:.3g} at index {index} (actual {float(a.reshape(-1)[worst]):.9g}, "
            f"expected {float(b.reshape(-1)[worst]):.9g}) exceeds the {kind} bound {bound:.3g} = {how}"
            + (f" ({err / bound:.3g} x the bound)" if bound > 0 else ""))
    return err / bound if bound > 0 else 0.0


# --------------------------------------------------------------------------- kinds
def elementwise_bound(ops: int, magnitude: float) -> float:
    """``ops * EPS * magnitude``: see :func:`close_elementwise` (also the margin a float32 value may sit from a
    rounding or truncation boundary and still land on either side)."""
    return ops * EPS * magnitude


def sum_bound(terms: int, magnitude: float) -> float:
    """``terms * EPS * magnitude``: see :func:`close_sum`."""
    return terms * EPS * magnitude


def close_elementwise(actual, expected, ops: int = 1, magnitude: Optional[float] = None, what: str = "") -> float:
    """A chain of ``ops`` elementwise operations (scale, add, exp, cos...) on values of magnitude M.

    Each rounding errs by at most EPS / 2 of a value <= M; the two sides round independently, so they
    differ by at most 2 * ops * EPS / 2 * M. M is max |expected| unless given: pass the operands'
    magnitude where the result is a difference of larger numbers. ``ops=0``: the results must be equal."""
    a, b = _pair(actual, expected)
    m = _magnitude(b) if magnitude is None else float(magnitude)
    bound = elementwise_bound(ops, m)
    return _compare(a, b, bound, f"ops {ops} x EPS x magnitude {m:.3g}", "elementwise", what)


def close_sum(actual, expected, terms: int, magnitude: Optional[float] = None, what: str = "") -> float:
    """A sum (mean, dot product, matmul entry, small convolution) of ``terms`` float32 terms.

    Summed in any order, the result is within (terms - 1) * EPS / 2 * sum|terms| of the exact sum
    (Higham, Accuracy and Stability, 2nd ed., eq. 4.4); two orders are within twice that, at most
    terms * EPS * sum|terms|. M is the sum of |terms| where known, else max |expected|."""
    a, b = _pair(actual, expected)
    m = _magnitude(b) if magnitude is None else float(magnitude)
    bound = sum_bound(terms, m)
    return _compare(a, b, bound, f"terms {terms} x EPS x magnitude {m:.3g}", "sum", what)


def network_bound(net: Net, magnitude: float) -> float:
    """``PROB * sqrt(net.roundings) * EPS * magnitude``: see :func:`close_network`."""
    return PROB * math.sqrt(net.roundings) * EPS * magnitude


def close_network(actual, expected, net: Net, magnitude: Optional[float] = None, what: str = "") -> float:
    """A network's output (or a stage of it) against the official code's output for the same input.

    One output value depends on at most n = ``net.roundings`` roundings (layers x widest reduction per
    stage; normalised layers pass an error on at about its size). Independent zero-mean roundings of at most
    u = EPS / 2 drift like a random walk: each side within PROB * sqrt(n) * u of the exact value, relative to
    the scale M of what is summed, so the two sides within PROB * sqrt(n) * EPS * M. M is max |expected|
    (the output's scale standing in for the activations'), or the terms' size where a last step (guidance,
    a rotation by erring angles) is known to be larger than its result."""
    a, b = _pair(actual, expected)
    m = _magnitude(b) if magnitude is None else float(magnitude)
    bound = network_bound(net, m)
    how = f"PROB {PROB:g} x sqrt({net.roundings} roundings = {net.recipe}) x EPS x magnitude {m:.3g} ({net.name})"
    return _compare(a, b, bound, how, "network", what)


def close_degrees(actual, expected, net: Optional[Net] = None, what: str = "") -> float:
    """Head-pose degrees: ``sum_i softmax(logits)_i * 3 i - 97.5`` over 66 bins, after ``net`` (if any).

    The expectation is one more layer summing 66 terms of up to 195 degrees, whatever the angle, so the
    magnitude is 195 degrees, not the angle: 0.1 degree errs as much as 90. An error in the logits moves
    the angle by at most 3 * 65 = 195 degrees per unit of probability moved, the same scale."""
    head = Net("66-bin expectation", 1, DEGREE_BINS)
    full = head if net is None else net.then(head)
    a, b = _pair(actual, expected)
    bound = network_bound(full, DEGREE_TERMS)
    how = (f"PROB {PROB:g} x sqrt({full.roundings} roundings = {full.recipe}) x EPS x {DEGREE_TERMS:g} degrees "
           f"({full.name})")
    return _compare(a, b, bound, how, "degrees", what)


def close_uint8(actual, expected, levels: int = 1, what: str = "") -> float:
    """8-bit frames made by rounding or truncating float frames that agree to far below one level.

    A float error much smaller than 1/255 still moves a value across a rounding (or truncation)
    boundary now and then, by exactly one level; never by two."""
    a, b = _pair(torch.as_tensor(actual).to(torch.int32), torch.as_tensor(expected).to(torch.int32))
    return _compare(a, b, float(levels), f"{levels} level(s) of 255", "uint8", what)


# --------------------------------------------------------------------------- the families' networks
# Counted on the tiny parity fixtures' configurations (tests/fixtures/*/config.json, core/liveportrait/
# configs/tiny.json): ``layers`` along the longest path, ``widest`` the largest single reduction.
SDA_AUDIO = Net("SDA audio encoder: 6 convs, widest 128 ch x 10 taps; 2-layer GRU (48 terms a step)", 8, 1280)
SDA_ID = Net("SDA identity encoder: 3 convs, widest 128 ch x 4 x 3", 3, 1536)
SDA_GEN = Net("SDA generator: 4 transposed convs, widest 256 ch x 3 x 3", 4, 2304)
SDA = SDA_AUDIO.then(SDA_GEN, "SDA audio encoder -> generator")

FOM_KP = Net("FOM keypoint detector: 13x13 blur, 6 hourglass convs (widest 64 ch x 3 x 3), 7x7 head, "
             "soft-argmax", 9, 576)
FOM_GEN = Net("FOM generator: blur, 6 hourglass convs, 7x7 mask over 52 ch, 11-way mix, warp, 7 convs", 17, 2548)
FOM = FOM_KP.then(FOM_GEN, "FOM keypoint detector -> generator")

LP_F = Net("LivePortrait F: 4 2-D + 4 3-D convs, widest 16 ch x 3 x 3", 8, 144)
LP_M = Net("LivePortrait M: ConvNeXt-V2 stem, 5 blocks x 5 reductions, 3 downsamplings, pool, norm, heads",
           36, 256)
LP_W = Net("LivePortrait W: 9 3-D hourglass convs, mask conv, 22-way mix, occlusion conv over 416 ch x 7 x 7, "
           "warp, 2 convs", 16, 20384)
LP_G = Net("LivePortrait G: fc, 8 SPADE blocks x 4 (instance norm over up to 64 x 64), conv_img", 34, 4096)
#: rotation_matrix on given degrees: degrees -> radians (up to 1.7 rad: 2 roundings' worth), cos / sin, then
#: two 3x3 products of 3 unit-size terms (3 roundings each); entries up to 1
LP_ROT_OPS = 2 + 1 + 2 * 3
#: transform_keypoint after the rotation: kp @ R (3 terms: 3 roundings), + exp, * scale, + t
LP_KP_OPS = LP_ROT_OPS + 3 + 3
LP_STITCH = Net("LivePortrait stitching / lip MLP: 4 linear layers, widest 128", 4, 128)
LP_EYE = Net("LivePortrait eye MLP: 6 linear layers, widest 256", 6, 256)
#: the motion extractor's heads, then the 66-bin expectation, the rotation and the keypoint transform
LP_M_KP = LP_M.then(Net("66-bin expectation, rotation and transform", 3, DEGREE_BINS))
LP_DRIVE = Net("LivePortrait driving keypoints: 3 rotation products, transform, eye / lip and stitching MLPs", 14, 256)

#: source image -> motion extractor -> driving keypoints -> warping -> decoder (the appearance branch is shallower)
LP = LP_M_KP.then(LP_DRIVE).then(LP_W).then(LP_G, "LivePortrait M -> driving keypoints -> W -> G")


def lp_kp_magnitude(kp, exp, scale, t) -> float:
    """The size of the terms of LivePortrait's ``scale * (kp @ R + exp) + t`` (kp @ R sums three products):
    the magnitude its roundings are relative to, larger than the keypoints themselves."""
    def top(x):
        return float(torch.as_tensor(x).abs().max())
    return top(scale) * (3 * top(kp) + top(exp)) + top(t)


DITTO_COND = Net("Ditto condition encoder: projection (1103 in), 2 layers x 9, norm", 20, 1103)
DITTO_DECODER = Net("Ditto decoder pass: input projection (530 in), 2 layers x 15 (attention over 82), final", 32, 530)
DITTO = DITTO_COND.then(DITTO_DECODER, "Ditto LMDM")


def ditto_sampler(steps: int, windows: int = 1) -> Net:
    """Ditto's DDIM: the condition encoded once per window, two decoder passes per step; each window
    starts from the last one's output."""
    one = DITTO_COND.then(DITTO_DECODER.times(2 * steps))
    return one.times(windows, f"Ditto {windows} window(s) of {steps} DDIM steps")


JOYVASA_GROUP_NORM = Net("JoyVASA HuBERT conv 0 (10 taps) and its group norm over the window's 12815 frames", 2, 12815)
JOYVASA_AUDIO = JOYVASA_GROUP_NORM.then(
    Net("6 convs (32 ch x 3 taps), projection, pos conv (12 ch x 16 taps), 2 layers x 8 (attention over 200 frames), "
        "pair mean, feature map", 28, 200), "JoyVASA audio features")
JOYVASA_DENOISER = Net("JoyVASA denoiser: feature proj (73 in), 8 post-norm decoder layers x 13 (FF 128 in), "
                       "motion_dec", 107, 128)


def joyvasa_sampler(steps: int, windows: int = 1) -> Net:
    """JoyVASA's sampler: per window the audio encoded once, then ``steps`` steps of one batch-2 (guided)
    denoiser pass; each window starts from the last one's motion."""
    one = JOYVASA_AUDIO.then(JOYVASA_DENOISER.times(2 * steps))
    return one.times(windows, f"JoyVASA {windows} window(s) of {steps} steps")


HUBERT_TINY = Net("tiny HuBERT: 7 convs + layer norms, projection, pos conv (8 ch x 8 taps), 2 layers x 8, final norm",
                  34, 64)
#: Ditto's chunking keeps 10 of the 20 frames per chunk and averages pairs (a sum and a halving)
HUBERT_TINY_PAIRS = HUBERT_TINY.then(Net("pair mean", 1, 2))
