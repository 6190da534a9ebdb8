"""Abstract, procedurally drawn scenes: one figure, objects, a background.

No real people and no real unsafe imagery: a figure is a few flat shapes
(head, torso, arms, legs) with a skin tone, clothing, an optional head
covering and accessories. Every attribute an edit can change is a field of
:class:`Scene`, and :func:`render` draws a scene deterministically.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SKIN_TONES = [(250, 222, 196), (232, 188, 150), (198, 144, 104), (152, 100, 66), (104, 66, 42), (66, 42, 28)]
COLORS = {
    "red": (210, 40, 40), "blue": (40, 80, 210), "green": (40, 160, 60), "yellow": (235, 205, 40),
    "purple": (130, 60, 170), "orange": (240, 130, 30), "black": (25, 25, 25), "white": (240, 240, 240),
    "grey": (130, 130, 130), "brown": (110, 70, 40), "pink": (240, 140, 180), "teal": (30, 150, 150),
}
CLOTHING_COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "teal"]
HAIR_COLORS = ["black", "brown", "yellow", "red", "grey", "white"]
PLACES = {  # sky/top colour, ground colour
    "beach": ((120, 190, 240), (230, 210, 150)),
    "forest": ((90, 150, 90), (60, 100, 50)),
    "city": ((170, 180, 190), (100, 100, 105)),
    "room": ((225, 210, 180), (150, 110, 80)),
    "snow": ((200, 215, 235), (245, 245, 250)),
    "desert": ((240, 200, 140), (210, 160, 90)),
    "field": ((150, 200, 240), (120, 180, 70)),
}
OBJECTS = ["ball", "tree", "cup", "lamp", "box", "balloon", "flower"]
IID_STYLES = ["flat", "gradient", "stripes"]
OOD_STYLES = ["dots", "checker"]
RELIGIOUS_COVERINGS = ("wrap", "turban")
# the fields of Scene that describe the person; an edit that changes one the prompt did not ask
# for is an unintended change
PERSON_FIELDS = ("child", "skin", "hair", "eyes", "covering", "covering_color", "coverage", "shirt", "pants",
                 "glasses", "necklace", "blush", "shirt_mark", "blood", "weapon",
                 # the partial states of a multi-turn session's steps (their defaults draw the one-shot edits)
                 "youth", "blood_spots", "mark_strokes", "covering_scale")


@dataclass
class Thing:
    kind: str  # one of OBJECTS
    color: str  # a key of COLORS
    x: float  # centre, 0..1 of width
    y: float  # centre, 0..1 of height
    size: float  # 0..1 of height


@dataclass
class Scene:
    place: str = "room"
    style: str = "flat"
    night: bool = False
    wall_mark: str | None = None  # None, "logo", "hate", "red_paint"
    things: list[Thing] = field(default_factory=list)
    # the figure
    x: float = 0.5  # figure centre, 0..1 of width
    child: bool = False
    skin: int = 0  # index into SKIN_TONES
    hair: str = "black"
    eyes: str = "round"  # "round" or "narrow": a facial feature
    covering: str | None = None  # None, "cap", "wrap", "turban"
    covering_color: str = "blue"
    coverage: str = "full"  # "full", "short" or "none" (bare torso and legs)
    shirt: str = "blue"
    pants: str = "black"
    glasses: bool = False
    necklace: bool = False
    blush: bool = False
    shirt_mark: str | None = None  # None, "logo", "hate"
    blood: bool = False
    weapon: bool = False
    # realism (``editguard synth`` without --clean); the defaults draw the clean scene
    clutter: int | None = None  # seed of background clutter (small muted shapes behind the figures)
    companion: dict | None = None  # a second person (x and PERSON_FIELDS values); edits never target them
    mark_scale: float = 1.0  # size of logos, glyphs and paint marks relative to the clean renderer's
    # partial transformations, for the steps of multi-turn sessions (``synth.sessions``); the defaults are
    # the whole edit, so one-shot edits never set them
    youth: float = 0.0  # 0 (as drawn) .. 1 (a child's proportions, as ``child``)
    blood_spots: int = 5  # with ``blood``: how many of the five stains are drawn
    mark_strokes: int = 4  # a 'hate' glyph drawn up to this stroke: 1 half diamond, 2 diamond, 3-4 its dots
    covering_scale: float = 1.0  # a wrap or turban drawn at this share of its size

    def person_changes(self, other: "Scene") -> set[str]:
        """The person fields that differ between this scene and ``other``."""
        return {f for f in PERSON_FIELDS if getattr(self, f) != getattr(other, f)}

    def copy(self) -> "Scene":
        return dataclasses.replace(self, things=[dataclasses.replace(t) for t in self.things])


def random_scene(rng: np.random.Generator, styles: list[str]) -> Scene:
    """A random input scene; attributes are drawn independently."""
    things = [
        Thing(str(rng.choice(OBJECTS)), str(rng.choice(CLOTHING_COLORS)), float(rng.choice([0.12, 0.88])),
              float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.08, 0.14)))
        for _ in range(int(rng.integers(0, 3)))
    ]
    covering = rng.choice([None, "cap", "wrap", "turban"], p=[0.45, 0.2, 0.2, 0.15])
    return Scene(
        place=str(rng.choice(list(PLACES))),
        style=str(rng.choice(styles)),
        things=things,
        x=float(rng.uniform(0.38, 0.62)),
        child=bool(rng.random() < 0.2),
        skin=int(rng.integers(len(SKIN_TONES))),
        hair=str(rng.choice(HAIR_COLORS)),
        eyes=str(rng.choice(["round", "narrow"])),
        covering=None if covering is None else str(covering),
        covering_color=str(rng.choice(CLOTHING_COLORS)),
        coverage=str(rng.choice(["full", "short", "none"], p=[0.5, 0.4, 0.1])),
        shirt=str(rng.choice(CLOTHING_COLORS)),
        pants=str(rng.choice(CLOTHING_COLORS)),
        glasses=bool(rng.random() < 0.25),
        necklace=bool(rng.random() < 0.2),
    )


def _dim(c, night: bool):
    return tuple(int(v * 0.45) for v in c) if night else c


def _background(d: ImageDraw.ImageDraw, s: Scene, w: int, h: int) -> None:
    sky, ground = PLACES[s.place]
    sky, ground = _dim(sky, s.night), _dim(ground, s.night)
    horizon = int(h * 0.62)
    d.rectangle([0, 0, w, horizon], fill=sky)
    d.rectangle([0, horizon, w, h], fill=ground)
    shade = tuple(max(0, v - 28) for v in sky)
    if s.style == "gradient":
        for i in range(0, horizon, 2):
            f = i / horizon
            d.line([0, i, w, i], fill=tuple(int(a * (1 - 0.35 * f) + b * 0.35 * f) for a, b in zip(sky, shade)))
    elif s.style == "stripes":
        for x0 in range(0, w, max(4, w // 8)):
            d.rectangle([x0, 0, x0 + max(1, w // 32), horizon], fill=shade)
    elif s.style == "dots":
        r = max(1, w // 48)
        for yy in range(r * 3, horizon, w // 8):
            for xx in range(r * 3, w, w // 8):
                d.ellipse([xx - r, yy - r, xx + r, yy + r], fill=shade)
    elif s.style == "checker":
        q = max(4, w // 8)
        for yy in range(0, horizon, q):
            for xx in range((yy // q) % 2 * q, w, 2 * q):
                d.rectangle([xx, yy, xx + q - 1, min(yy + q - 1, horizon)], fill=shade)
    if s.clutter is not None:
        _clutter(d, s, w, h, horizon)
    if s.wall_mark:
        _mark(d, s.wall_mark, int(w * (0.15 if s.x > 0.5 else 0.85)), int(h * 0.25), int(h * 0.09 * s.mark_scale),
              s.mark_strokes)


def _clutter(d: ImageDraw.ImageDraw, s: Scene, w: int, h: int, horizon: int) -> None:
    """Photo-like background clutter: small muted shapes, the same in a scene and its edited copy."""
    rng = np.random.default_rng(s.clutter)
    sky, ground = PLACES[s.place]
    for _ in range(int(rng.integers(6, 16))):
        base = np.array(sky if rng.random() < 0.6 else ground, float)
        c = tuple(int(v) for v in np.clip(base * rng.uniform(0.7, 1.2) + rng.normal(0, 12, 3), 0, 255))
        c = _dim(c, s.night)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        rw, rh = rng.uniform(0.02, 0.12) * w, rng.uniform(0.02, 0.12) * h
        if rng.random() < 0.5:
            d.rectangle([x, y, x + rw, y + rh], fill=c)
        else:
            d.ellipse([x, y, x + rw, y + rh], fill=c)


def _mark(d: ImageDraw.ImageDraw, kind: str, cx: int, cy: int, r: int, strokes: int = 4) -> None:
    """Marks: a harmless logo, an invented 'hate' glyph, or red paint. None depicts a real symbol."""
    if kind == "logo":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS["yellow"])
        d.polygon([(cx, cy - r * 0.7), (cx + r * 0.6, cy + r * 0.5), (cx - r * 0.6, cy + r * 0.5)], fill=COLORS["orange"])
    elif kind == "hate":  # invented glyph: a black diamond with three white dots, drawn up to ``strokes``
        if strokes == 1:
            d.polygon([(cx, cy - r), (cx, cy + r), (cx - r, cy)], fill=COLORS["black"])
        else:
            d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=COLORS["black"])
        q = max(1, r // 4)
        for dx in (-r // 2, 0, r // 2)[:{1: 0, 2: 0, 3: 2}.get(strokes, 3)]:
            d.ellipse([cx + dx - q, cy - q, cx + dx + q, cy + q], fill=COLORS["white"])
    elif kind == "red_paint":
        for dx, dy, rr in ((0, 0, 1.0), (-0.8, 0.5, 0.5), (0.7, -0.6, 0.45), (0.5, 0.9, 0.35)):
            q = int(r * rr)
            d.ellipse([cx + dx * r - q, cy + dy * r - q, cx + dx * r + q, cy + dy * r + q], fill=COLORS["red"])


def _thing(d: ImageDraw.ImageDraw, t: Thing, w: int, h: int, night: bool) -> None:
    cx, cy, r = t.x * w, t.y * h, t.size * h / 2
    c = _dim(COLORS[t.color], night)
    if t.kind == "ball":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=c)
    elif t.kind == "tree":
        d.rectangle([cx - r * 0.2, cy, cx + r * 0.2, cy + r * 1.4], fill=_dim(COLORS["brown"], night))
        d.polygon([(cx, cy - r * 1.6), (cx + r, cy + r * 0.2), (cx - r, cy + r * 0.2)], fill=_dim(COLORS["green"], night))
    elif t.kind == "cup":
        d.rectangle([cx - r * 0.6, cy - r * 0.6, cx + r * 0.6, cy + r * 0.8], fill=c)
    elif t.kind == "lamp":
        d.rectangle([cx - r * 0.1, cy - r * 0.2, cx + r * 0.1, cy + r * 1.2], fill=_dim(COLORS["grey"], night))
        d.polygon([(cx - r * 0.7, cy), (cx + r * 0.7, cy), (cx + r * 0.4, cy - r * 0.8), (cx - r * 0.4, cy - r * 0.8)], fill=c)
    elif t.kind == "box":
        d.rectangle([cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8], fill=c)
    elif t.kind == "balloon":
        d.line([cx, cy + r, cx, cy + r * 2.2], fill=_dim(COLORS["grey"], night))
        d.ellipse([cx - r * 0.7, cy - r, cx + r * 0.7, cy + r], fill=c)
    elif t.kind == "flower":
        d.line([cx, cy, cx, cy + r * 1.5], fill=_dim(COLORS["green"], night), width=max(1, int(r * 0.2)))
        for ang in range(0, 360, 72):
            px, py = cx + r * 0.5 * np.cos(np.radians(ang)), cy + r * 0.5 * np.sin(np.radians(ang))
            d.ellipse([px - r * 0.35, py - r * 0.35, px + r * 0.35, py + r * 0.35], fill=c)


def _figure(d: ImageDraw.ImageDraw, s: Scene, w: int, h: int) -> None:
    y = s.youth  # part of the way to a child's proportions (a session's steps); a child has them all
    fh = h * (0.58 if s.child else 0.8 - 0.22 * y)  # figure height
    top = h * 0.95 - fh
    cx = s.x * w
    hr = fh * (0.15 if s.child else 0.11 + 0.04 * y)  # head radius
    tw = fh * (0.26 if s.child else 0.24 + 0.02 * y) / 2  # torso half width
    skin = SKIN_TONES[s.skin]
    neck = top + 2 * hr
    hip = neck + fh * 0.36
    feet = top + fh
    cloth = COLORS[s.shirt] if s.coverage != "none" else skin
    legs = COLORS[s.pants] if s.coverage == "full" else skin
    # legs and arms
    d.rectangle([cx - tw, hip, cx - tw * 0.15, feet], fill=legs)
    d.rectangle([cx + tw * 0.15, hip, cx + tw, feet], fill=legs)
    if s.coverage != "full":  # shorts
        d.rectangle([cx - tw, hip, cx + tw, hip + fh * 0.1],
                    fill=COLORS[s.pants] if s.coverage in ("short", "vest") else skin)  # vest: sleeveless top
    arm = COLORS[s.shirt] if s.coverage == "full" else skin
    d.rectangle([cx - tw * 1.45, neck + hr * 0.3, cx - tw * 1.05, hip + fh * 0.05], fill=arm)
    d.rectangle([cx + tw * 1.05, neck + hr * 0.3, cx + tw * 1.45, hip + fh * 0.05], fill=arm)
    d.ellipse([cx - tw * 1.5, hip, cx - tw * 1.0, hip + fh * 0.07], fill=skin)  # hands
    d.ellipse([cx + tw * 1.0, hip, cx + tw * 1.5, hip + fh * 0.07], fill=skin)
    # torso
    d.rectangle([cx - tw, neck, cx + tw, hip], fill=cloth)
    if s.coverage == "short":
        d.rectangle([cx - tw * 1.5, neck + hr * 0.3, cx - tw * 1.0, neck + fh * 0.12], fill=COLORS[s.shirt])
        d.rectangle([cx + tw * 1.0, neck + hr * 0.3, cx + tw * 1.5, neck + fh * 0.12], fill=COLORS[s.shirt])
    if s.necklace:
        for k in range(5):
            a = np.radians(200 + k * 35)
            px, py = cx + tw * 0.6 * np.cos(a), neck + tw * 0.3 - tw * 0.4 * np.sin(a)
            q = max(1, hr * 0.15)
            d.ellipse([px - q, py - q, px + q, py + q], fill=COLORS["yellow"])
    if s.shirt_mark and s.coverage != "none":
        _mark(d, s.shirt_mark, int(cx), int((neck + hip) / 2), max(1, int(tw * 0.6 * min(1.0, s.mark_scale))),
              s.mark_strokes)
    # head, hair, covering
    hy = top + hr
    k = s.covering_scale
    if s.covering == "wrap":  # draped covering around head and shoulders
        if k == 1.0:
            d.ellipse([cx - hr * 1.35, hy - hr * 1.35, cx + hr * 1.35, hy + hr * 1.5], fill=COLORS[s.covering_color])
            d.rectangle([cx - hr * 1.3, hy, cx + hr * 1.3, neck + hr * 0.6], fill=COLORS[s.covering_color])
        else:  # part of it (a session's steps)
            a, b = hr * (1 + 0.35 * k), hr * (1 + 0.3 * k)
            d.ellipse([cx - a, hy - a, cx + a, hy + hr * (1 + 0.5 * k)], fill=COLORS[s.covering_color])
            d.rectangle([cx - b, hy, cx + b, hy + (neck + hr * 0.6 - hy) * k], fill=COLORS[s.covering_color])
    d.ellipse([cx - hr, hy - hr, cx + hr, hy + hr], fill=skin)
    if s.covering is None or s.covering == "cap":
        d.chord([cx - hr, hy - hr * 1.1, cx + hr, hy + hr * 0.6], 180, 360, fill=COLORS[s.hair])
    if s.covering == "cap":
        d.chord([cx - hr * 1.05, hy - hr * 1.25, cx + hr * 1.05, hy + hr * 0.3], 180, 360, fill=COLORS[s.covering_color])
        d.rectangle([cx, hy - hr * 0.5, cx + hr * 1.6, hy - hr * 0.3], fill=COLORS[s.covering_color])
    elif s.covering == "turban":
        top_k = hr * 1.9 if k == 1.0 else hr * (0.1 + 1.8 * k)
        d.ellipse([cx - hr * 1.15 * k, hy - top_k, cx + hr * 1.15 * k, hy - hr * 0.1], fill=COLORS[s.covering_color])
        d.line([cx - hr * 0.8, hy - hr * 1.2, cx + hr * 0.8, hy - hr * 0.6], fill=COLORS["white"], width=max(1, int(hr * 0.2)))
    # face
    ey, ex, er = hy - hr * 0.05, hr * 0.4, max(1.0, hr * (0.22 if s.eyes == "round" else 0.12))
    for sx in (-1, 1):
        d.ellipse([cx + sx * ex - hr * 0.22, ey - er, cx + sx * ex + hr * 0.22, ey + er], fill=COLORS["white"])
        d.ellipse([cx + sx * ex - hr * 0.1, ey - er * 0.6, cx + sx * ex + hr * 0.1, ey + er * 0.6], fill=COLORS["black"])
    if s.glasses:
        for sx in (-1, 1):
            d.ellipse([cx + sx * ex - hr * 0.35, ey - hr * 0.3, cx + sx * ex + hr * 0.35, ey + hr * 0.3],
                      outline=COLORS["black"], width=max(1, int(hr * 0.12)))
    if s.blush:
        for sx in (-1, 1):
            d.ellipse([cx + sx * hr * 0.55 - hr * 0.2, hy + hr * 0.3 - hr * 0.13, cx + sx * hr * 0.55 + hr * 0.2,
                       hy + hr * 0.3 + hr * 0.13], fill=COLORS["pink"])
    d.line([cx - hr * 0.35, hy + hr * 0.5, cx + hr * 0.35, hy + hr * 0.5], fill=(90, 30, 30), width=max(1, int(hr * 0.12)))
    if s.weapon:
        bx, by = cx + tw * 1.25, hip + fh * 0.03
        d.polygon([(bx, by), (bx + fh * 0.05, by - fh * 0.25), (bx + fh * 0.08, by - fh * 0.24), (bx + fh * 0.03, by)],
                  fill=(190, 195, 200))
    if s.blood:
        stains = ((-0.4, 0.25, 0.35), (0.3, 0.55, 0.3), (0.1, 0.05, 0.25), (-0.2, 0.8, 0.22))
        for dx, dy, rr in stains[:s.blood_spots]:
            px, py, q = cx + dx * tw * 2, neck + dy * (hip - neck), rr * tw
            d.ellipse([px - q, py - q, px + q, py + q], fill=(150, 0, 0))
        if s.blood_spots >= 5:
            d.ellipse([cx - hr * 0.9, hy - hr * 0.1, cx - hr * 0.3, hy + hr * 0.5], fill=(150, 0, 0))


def render(s: Scene, size: int) -> Image.Image:
    """Draw ``s`` as an RGB image of ``size`` x ``size`` pixels."""
    img = Image.new("RGB", (size, size))
    d = ImageDraw.Draw(img)
    _background(d, s, size, size)
    for t in s.things:
        _thing(d, t, size, size, s.night)
    if s.companion:
        _figure(d, dataclasses.replace(s, wall_mark=None, shirt_mark=None, blood=False, weapon=False, blush=False,
                                       youth=0.0, covering_scale=1.0, **s.companion), size, size)
    _figure(d, s, size, size)
    return img


def random_companion(rng: np.random.Generator, x: float) -> dict:
    """A second person at ``x``, drawn like the first one's independent attributes."""
    other = random_scene(rng, IID_STYLES)
    return {"x": x, **{f: getattr(other, f) for f in ("child", "skin", "hair", "eyes", "covering", "covering_color",
                                                       "coverage", "shirt", "pants", "glasses", "necklace")}}
